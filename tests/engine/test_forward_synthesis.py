"""Forward synthesis on small IR: tangents of straight-line code, loops,
branches, float32, in-place updates and batches, checked against analytic
formulas. The derivative's ABI is native/enzpy_native.h's forward one:

    i32 df(retptr, excinfo, <primal params>, <width shadow ptrs per dup param>,
           <width tangents per active param>)

writing {[primal return], [width tangents of the return]} through retptr."""

import ctypes

import numpy as np
import pytest

from enzpy import _native

from .conftest import const, differentiate, jit

D = ctypes.c_double
F = ctypes.c_float
P = ctypes.c_void_p
I64 = ctypes.c_int64

ACTIVE = {"activity": "active", "elem": "double"}
DUP = {"activity": "dup", "elem": "double"}


def forward(ir, params, **fields):
    return differentiate(ir, params, mode="forward", **fields)


def _ptr(a):
    return a.ctypes.data


STRAIGHT = """
define i32 @f(ptr %retptr, ptr %excinfo, double %a, double %b) {
entry:
  %ab = fmul double %a, %b
  %s = call double @llvm.sin.f64(double %ab)
  %q = fdiv double %s, %b
  %r = fsub double %q, %a
  store double %r, ptr %retptr
  ret i32 0
}
declare double @llvm.sin.f64(double)
"""


def _straight(a, b):
    return np.sin(a * b) / b - a


def _straight_grad(a, b):
    c = np.cos(a * b)
    return c - 1.0, (a * c * b - np.sin(a * b)) / (b * b)


def test_straight_line_tangent():
    bc, decisions = forward(STRAIGHT, [ACTIVE, ACTIVE])
    assert decisions.has("forward", "tangent", "%r")
    assert decisions.of("tape") == []
    df = jit(bc, "df", P, P, D, D, D, D)
    out = (D * 2)()
    a, b = 0.7, -1.3
    ga, gb = _straight_grad(a, b)
    for ta, tb in ((1.0, 0.0), (0.0, 1.0), (0.3, -2.0)):
        assert df(ctypes.addressof(out), None, a, b, ta, tb) == 0
        assert out[0] == _straight(a, b)
        np.testing.assert_allclose(out[1], ga * ta + gb * tb, rtol=1e-14)


def test_tangent_without_primal_and_with_one_constant_argument():
    bc, _ = forward(STRAIGHT, [*const(), ACTIVE], return_primal=False)
    df = jit(bc, "df", P, P, D, D, D)
    out = (D * 1)()
    a, b = 0.7, -1.3
    assert df(ctypes.addressof(out), None, a, b, 2.0) == 0
    np.testing.assert_allclose(out[0], 2.0 * _straight_grad(a, b)[1], rtol=1e-14)


def test_primal_only_when_the_return_is_not_active():
    bc, _ = forward(STRAIGHT, [ACTIVE, ACTIVE], ret_activity="const")
    df = jit(bc, "df", P, P, D, D, D, D)
    out = (D * 1)()
    assert df(ctypes.addressof(out), None, 0.7, -1.3, 1.0, 1.0) == 0
    assert out[0] == _straight(0.7, -1.3)


SUM_SQUARES = """
define i32 @f(ptr %retptr, ptr %excinfo, ptr %x, i64 %n, double %scale) {
entry:
  %empty = icmp slt i64 %n, 1
  %s2 = fmul double %scale, %scale
  br i1 %empty, label %exit, label %loop
loop:
  %i = phi i64 [ 0, %entry ], [ %i.next, %loop ]
  %acc = phi double [ 0.0, %entry ], [ %acc.next, %loop ]
  %p = getelementptr double, ptr %x, i64 %i
  %v = load double, ptr %p
  %vv = fmul double %v, %v
  %t = fmul double %vv, %s2
  %acc.next = fadd double %acc, %t
  %i.next = add i64 %i, 1
  %done = icmp eq i64 %i.next, %n
  br i1 %done, label %exit, label %loop
exit:
  %r = phi double [ 0.0, %entry ], [ %acc.next, %loop ]
  store double %r, ptr %retptr
  ret i32 0
}
"""


def test_loop_reduction_tangent_phis(rng):
    bc, decisions = forward(SUM_SQUARES, [DUP, *const(), ACTIVE])
    assert decisions.has("forward", "tangent", "%acc")
    assert decisions.has("forward", "tangent", "%v")
    df = jit(bc, "df", P, P, P, I64, D, P, D)
    n, scale = 17, 1.5
    x, dx = rng.standard_normal(n), rng.standard_normal(n)
    dx_before = dx.copy()
    out = (D * 2)()
    assert df(ctypes.addressof(out), None, _ptr(x), n, scale, _ptr(dx), 0.25) == 0
    np.testing.assert_allclose(out[0], scale**2 * np.sum(x * x), rtol=1e-14)
    ref = 2 * scale**2 * np.dot(x, dx) + 0.25 * 2 * scale * np.sum(x * x)
    np.testing.assert_allclose(out[1], ref, rtol=1e-13)
    np.testing.assert_array_equal(dx, dx_before)  # a read-only input's tangent is kept
    # an empty loop: zero tangent
    assert df(ctypes.addressof(out), None, _ptr(x), 0, scale, _ptr(dx), 1.0) == 0
    assert out[0] == 0.0 and out[1] == 0.0


def test_loop_reduction_float32(rng):
    ir = SUM_SQUARES.replace("double", "float").replace("0.0", "0.0")
    bc, _ = forward(
        ir,
        [{"activity": "dup", "elem": "float"}, *const(), {"activity": "active", "elem": "float"}],
        ret_type="float",
    )
    df = jit(bc, "df", P, P, P, I64, F, P, F)
    n, scale = 33, np.float32(0.75)
    x = rng.standard_normal(n).astype(np.float32)
    dx = rng.standard_normal(n).astype(np.float32)
    out = (F * 2)()
    assert df(ctypes.addressof(out), None, _ptr(x), n, scale, _ptr(dx), np.float32(-1.0)) == 0
    xd, dxd, s = x.astype(np.float64), dx.astype(np.float64), float(scale)
    ref = 2 * s * s * np.dot(xd, dxd) - 2 * s * np.sum(xd * xd)
    np.testing.assert_allclose(out[1], ref, rtol=1e-5)


BRANCHY_MAP = """
define i32 @f(ptr %retptr, ptr %excinfo, ptr %x, ptr %y, i64 %n) {
entry:
  br label %loop
loop:
  %i = phi i64 [ 0, %entry ], [ %i.next, %join ]
  %p = getelementptr double, ptr %x, i64 %i
  %v = load double, ptr %p
  %pos = fcmp ogt double %v, 0.0
  br i1 %pos, label %then, label %else
then:
  %e = call double @llvm.exp.f64(double %v)
  br label %join
else:
  %vv = fmul double %v, %v
  %c = fmul double %vv, %v
  br label %join
join:
  %r = phi double [ %e, %then ], [ %c, %else ]
  %neg = fcmp olt double %v, -0.5
  %s = select i1 %neg, double 4.0, double %r
  %q = getelementptr double, ptr %y, i64 %i
  store double %s, ptr %q
  %i.next = add i64 %i, 1
  %done = icmp eq i64 %i.next, %n
  br i1 %done, label %exit, label %loop
exit:
  ret i32 0
}
declare double @llvm.exp.f64(double)
"""


def test_branches_and_select_write_output_tangents(rng):
    bc, _ = forward(BRANCHY_MAP, [DUP, DUP, *const()], ret_type="void", ret_activity="const")
    df = jit(bc, "df", P, P, P, P, I64, P, P)
    x = np.array([0.3, -0.2, -0.9, 1.1, -0.4, 0.05, -3.0])
    n = x.size
    dx = rng.standard_normal(n)
    y, dy = np.zeros(n), np.full(n, 7.0)  # dy's contents are overwritten
    out = (D * 1)()
    assert df(ctypes.addressof(out), None, _ptr(x), _ptr(y), n, _ptr(dx), _ptr(dy)) == 0
    ref_y = np.where(x > 0, np.exp(x), np.where(x < -0.5, 4.0, x**3))
    np.testing.assert_allclose(y, ref_y, rtol=1e-15)
    deriv = np.where(x > 0, np.exp(x), np.where(x < -0.5, 0.0, 3 * x * x))
    np.testing.assert_allclose(dy, deriv * dx, rtol=1e-14)


IN_PLACE = """
define i32 @f(ptr %retptr, ptr %excinfo, ptr %u, i64 %n, double %a, i64 %steps) {
entry:
  br label %outer
outer:
  %s = phi i64 [ 0, %entry ], [ %s.next, %inner.exit ]
  br label %inner
inner:
  %i = phi i64 [ 1, %outer ], [ %i.next, %inner ]
  %prev.i = sub i64 %i, 1
  %pp = getelementptr double, ptr %u, i64 %prev.i
  %up = load double, ptr %pp
  %pc = getelementptr double, ptr %u, i64 %i
  %uc = load double, ptr %pc
  %d = fsub double %up, %uc
  %ad = fmul double %a, %d
  %new = fadd double %uc, %ad
  store double %new, ptr %pc
  %i.next = add i64 %i, 1
  %done = icmp eq i64 %i.next, %n
  br i1 %done, label %inner.exit, label %inner
inner.exit:
  %s.next = add i64 %s, 1
  %sdone = icmp eq i64 %s.next, %steps
  br i1 %sdone, label %exit, label %outer
exit:
  %last.p = getelementptr double, ptr %u, i64 %prev.i
  %last = load double, ptr %last.p
  store double %last, ptr %retptr
  ret i32 0
}
"""


def _in_place_primal(u, a, steps):
    u = u.copy()
    for _ in range(steps):
        for i in range(1, u.size):
            u[i] = u[i] + a * (u[i - 1] - u[i])
    return u


def test_in_place_update_over_time_steps(rng):
    # u[i] += a * (u[i-1] - u[i]) in place, several sweeps: every tangent read
    # sees the tangent the previous store left in the shadow
    bc, _ = forward(IN_PLACE, [DUP, *const(), ACTIVE, *const()])
    df = jit(bc, "df", P, P, P, I64, D, I64, P, D)
    n, a, steps = 9, 0.3, 4
    u0 = rng.standard_normal(n)
    du0 = rng.standard_normal(n)
    da = 0.7
    u, du = u0.copy(), du0.copy()
    out = (D * 2)()
    assert df(ctypes.addressof(out), None, _ptr(u), n, a, steps, _ptr(du), da) == 0
    np.testing.assert_allclose(u, _in_place_primal(u0, a, steps), rtol=1e-14)
    # the map is polynomial in (u0, a): central differences are exact up to rounding
    h = 1e-6
    plus = _in_place_primal(u0 + h * du0, a + h * da, steps)
    minus = _in_place_primal(u0 - h * du0, a - h * da, steps)
    ref = (plus - minus) / (2 * h)
    np.testing.assert_allclose(du, ref, rtol=1e-7, atol=1e-9)
    assert out[0] == u[-2]  # the function returns u[n - 2]
    np.testing.assert_allclose(out[1], ref[-2], rtol=1e-7, atol=1e-9)


def test_batch_equals_separate_calls(rng):
    width = 3
    bc, _ = forward(SUM_SQUARES, [DUP, *const(), ACTIVE], width=width)
    df = jit(bc, "df", P, P, P, I64, D, *([P] * width), *([D] * width))
    n, scale = 11, -0.6
    x = rng.standard_normal(n)
    dxs = [rng.standard_normal(n) for _ in range(width)]
    dss = [0.5, 0.0, -1.5]
    out = (D * (1 + width))()
    assert df(ctypes.addressof(out), None, _ptr(x), n, scale, *map(_ptr, dxs), *dss) == 0
    np.testing.assert_allclose(out[0], scale**2 * np.sum(x * x), rtol=1e-14)
    bc1, _ = forward(SUM_SQUARES, [DUP, *const(), ACTIVE])
    df1 = jit(bc1, "df", P, P, P, I64, D, P, D)
    one = (D * 2)()
    for k in range(width):
        assert df1(ctypes.addressof(one), None, _ptr(x), n, scale, _ptr(dxs[k]), dss[k]) == 0
        assert out[1 + k] == one[1]


def test_batch_in_place_update(rng):
    width = 2
    bc, _ = forward(IN_PLACE, [DUP, *const(), ACTIVE, *const()], width=width)
    df = jit(bc, "df", P, P, P, I64, D, I64, P, P, D, D)
    n, a, steps = 7, 0.45, 3
    u0 = rng.standard_normal(n)
    dus = [rng.standard_normal(n) for _ in range(width)]
    das = [0.0, 1.0]
    u = u0.copy()
    batch = [d.copy() for d in dus]
    out = (D * 3)()
    assert df(ctypes.addressof(out), None, _ptr(u), n, a, steps, *map(_ptr, batch), *das) == 0
    bc1, _ = forward(IN_PLACE, [DUP, *const(), ACTIVE, *const()])
    df1 = jit(bc1, "df", P, P, P, I64, D, I64, P, D)
    one = (D * 2)()
    for k in range(width):
        u1, du1 = u0.copy(), dus[k].copy()
        assert df1(ctypes.addressof(one), None, _ptr(u1), n, a, steps, _ptr(du1), das[k]) == 0
        np.testing.assert_array_equal(batch[k], du1)
        assert out[1 + k] == one[1]


COPY_FILL = """
define i32 @f(ptr %retptr, ptr %excinfo, ptr %x, ptr %y, ptr %z, i64 %n) {
entry:
  %bytes = shl i64 %n, 3
  call void @llvm.memcpy.p0.p0.i64(ptr align 8 %y, ptr align 8 %x, i64 %bytes, i1 false)
  call void @llvm.memset.p0.i64(ptr align 8 %z, i8 0, i64 %bytes, i1 false)
  br label %loop
loop:
  %i = phi i64 [ 0, %entry ], [ %i.next, %loop ]
  %p = getelementptr double, ptr %y, i64 %i
  %v = load double, ptr %p
  %vv = fmul double %v, %v
  store double %vv, ptr %p
  %i.next = add i64 %i, 1
  %done = icmp eq i64 %i.next, %n
  br i1 %done, label %exit, label %loop
exit:
  ret i32 0
}
declare void @llvm.memcpy.p0.p0.i64(ptr, ptr, i64, i1)
declare void @llvm.memset.p0.i64(ptr, i8, i64, i1)
"""


def test_copies_and_fills_are_mirrored_on_shadows(rng):
    bc, decisions = forward(
        COPY_FILL, [DUP, DUP, DUP, *const()], ret_type="void", ret_activity="const"
    )
    assert decisions.of("forward", "tangent-copy") and decisions.of("forward", "tangent-fill")
    df = jit(bc, "df", P, P, P, P, P, I64, P, P, P)
    n = 6
    x, dx = rng.standard_normal(n), rng.standard_normal(n)
    y, dy = np.zeros(n), np.full(n, 3.0)
    z, dz = np.ones(n), np.full(n, 5.0)
    out = (D * 1)()
    args = (_ptr(x), _ptr(y), _ptr(z), n, _ptr(dx), _ptr(dy), _ptr(dz))
    assert df(ctypes.addressof(out), None, *args) == 0
    np.testing.assert_array_equal(y, x * x)
    np.testing.assert_array_equal(z, 0.0)
    np.testing.assert_allclose(dy, 2 * x * dx, rtol=1e-15)  # y = x copied, then squared
    np.testing.assert_array_equal(dz, 0.0)  # filled with a constant


RAISES = """
define i32 @f(ptr %retptr, ptr %excinfo, double %x) {
entry:
  %bad = fcmp olt double %x, 0.0
  br i1 %bad, label %raise, label %ok
raise:
  %junk = call double @mystery(double %x)
  store double %junk, ptr %excinfo
  ret i32 1
ok:
  %y = fmul double %x, %x
  store double %y, ptr %retptr
  ret i32 0
}
declare double @mystery(double)
"""


def test_raise_only_code_needs_no_tangent():
    bc, _ = forward(RAISES, [ACTIVE])
    df = jit(bc, "df", P, P, D, D)
    out = (D * 2)()
    assert df(ctypes.addressof(out), None, 1.5, 1.0) == 0
    assert out[0] == 2.25 and out[1] == 3.0
    # (the raise path is not run here: @mystery has no definition to call)


def test_raise_status_is_returned():
    ir = RAISES.replace("  %junk = call double @mystery(double %x)\n", "").replace(
        "store double %junk", "store double %x"
    )
    bc, _ = forward(ir, [ACTIVE])
    df = jit(bc, "df", P, P, D, D)
    out = (D * 2)()
    exc = (D * 1)()
    assert df(ctypes.addressof(out), ctypes.addressof(exc), -1.0, 1.0) == 1
    assert exc[0] == -1.0


def test_width_is_validated():
    with pytest.raises(_native.EnzpyError, match="width"):
        forward(STRAIGHT, [ACTIVE, ACTIVE], width=0)
    with pytest.raises(_native.EnzpyError, match="width"):
        differentiate(STRAIGHT, [ACTIVE, ACTIVE], width=65)


def test_unknown_call_is_reported_in_forward_mode():
    ir = """
define i32 @f(ptr %retptr, ptr %excinfo, double %x) {
entry:
  %y = call double @mystery(double %x)
  store double %y, ptr %retptr
  ret i32 0
}
declare double @mystery(double)
"""
    with pytest.raises(_native.UnsupportedError, match="mystery"):
        forward(ir, [ACTIVE])


@pytest.mark.parametrize("dst, src, m", [(1, 0, 6), (0, 1, 6), (3, 0, 4), (0, 3, 4)])
def test_overlapping_memmove_tangent(rng, dst, src, m):
    from .test_reverse_synthesis import MOVE_THEN_SQUARE, move_matrix

    n = 7
    bc, decisions = forward(
        MOVE_THEN_SQUARE, [DUP, *const(4)], ret_type="void", ret_activity="const"
    )
    assert decisions.of("forward", "tangent-copy")
    df = jit(bc, "df", P, P, P, I64, I64, I64, I64, P)
    u0, v = rng.standard_normal(n), rng.standard_normal(n)
    u, du = u0.copy(), v.copy()
    assert df(ctypes.addressof((D * 1)()), None, _ptr(u), n, dst, src, m, _ptr(du)) == 0
    M = move_matrix(n, dst, src, m)
    np.testing.assert_allclose(du, 2 * (M @ u0) * (M @ v), rtol=1e-14, atol=1e-15)
