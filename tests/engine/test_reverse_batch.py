"""Reverse synthesis with a batch width W on small IR: one forward sweep and
one tape serve W cotangents. The derivative (native/enzpy_native.h) is

    i32 df(retptr, excinfo, <primal params>, <W shadow ptrs per dup param>,
           <W dret values when the return is seeded>)

writing {[primal return], <W adjoints per active param>} through retptr.
Checked against analytic formulas and against W calls of width one."""

import ctypes

import numpy as np

from .conftest import const, differentiate, jit

D = ctypes.c_double
F = ctypes.c_float
P = ctypes.c_void_p
I64 = ctypes.c_int64

ACTIVE = {"activity": "active", "elem": "double"}
DUP = {"activity": "dup", "elem": "double"}


def _ptr(a):
    return a.ctypes.data


STRAIGHT = """
define i32 @f(ptr %retptr, ptr %excinfo, double %a, double %b) {
entry:
  %ab = fmul double %a, %b
  %s = call double @llvm.sin.f64(double %ab)
  %q = fdiv double %s, %b
  store double %q, ptr %retptr
  ret i32 0
}
declare double @llvm.sin.f64(double)
"""


def test_scalar_lanes_are_seeded_by_their_own_dret():
    width = 3
    bc, decisions = differentiate(STRAIGHT, [ACTIVE, ACTIVE], width=width)
    assert decisions.taped() == []
    df = jit(bc, "df", P, P, D, D, *([D] * width))
    a, b = 0.7, -1.3
    seeds = [1.0, -2.5, 0.0]
    out = (D * (1 + 2 * width))()
    assert df(ctypes.addressof(out), None, a, b, *seeds) == 0
    q = np.sin(a * b) / b
    assert out[0] == q
    da = np.cos(a * b)  # d/da sin(ab)/b
    db = a * np.cos(a * b) / b - np.sin(a * b) / b**2
    for k, s in enumerate(seeds):
        np.testing.assert_allclose(out[1 + k], s * da, rtol=1e-14)  # param a, lane k
        np.testing.assert_allclose(out[1 + width + k], s * db, rtol=1e-14)  # param b
    # Bitwise the same as width one.
    bc1, _ = differentiate(STRAIGHT, [ACTIVE, ACTIVE])
    df1 = jit(bc1, "df", P, P, D, D, D)
    one = (D * 3)()
    for k, s in enumerate(seeds):
        assert df1(ctypes.addressof(one), None, a, b, s) == 0
        assert (out[1 + k], out[1 + width + k]) == (one[1], one[2])


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


def test_loop_tape_is_shared_by_the_lanes(rng):
    params = [DUP, *const(), ACTIVE]
    _, decisions1 = differentiate(SUM_SQUARES, params)
    width = 4
    bc, decisions = differentiate(SUM_SQUARES, params, width=width)
    # The same decisions as width one: the lanes add no tape.
    assert decisions.taped() == decisions1.taped()
    assert not any(block == "loop" for _, block in decisions.taped())
    df = jit(bc, "df", P, P, P, I64, D, *([P] * width), *([D] * width))
    n, scale = 13, 0.8
    x = rng.standard_normal(n)
    dxs = [rng.standard_normal(n) for _ in range(width)]
    before = [d.copy() for d in dxs]
    seeds = [1.0, 0.5, -2.0, 0.0]
    out = (D * (1 + width))()
    assert df(ctypes.addressof(out), None, _ptr(x), n, scale, *map(_ptr, dxs), *seeds) == 0
    np.testing.assert_allclose(out[0], scale**2 * np.sum(x * x), rtol=1e-14)
    for k, s in enumerate(seeds):
        np.testing.assert_allclose(dxs[k], before[k] + s * 2 * scale**2 * x, rtol=1e-14)
        np.testing.assert_allclose(out[1 + k], s * 2 * scale * np.sum(x * x), rtol=1e-14)


IN_PLACE = """
define i32 @f(ptr %retptr, ptr %excinfo, ptr %x, i64 %n) {
entry:
  br label %loop
loop:
  %i = phi i64 [ 0, %entry ], [ %i.next, %loop ]
  %p = getelementptr double, ptr %x, i64 %i
  %v = load double, ptr %p
  %vv = fmul double %v, %v
  store double %vv, ptr %p
  %i.next = add i64 %i, 1
  %done = icmp eq i64 %i.next, %n
  br i1 %done, label %exit, label %loop
exit:
  store ptr null, ptr %retptr
  ret i32 0
}
"""


def test_in_place_update_gives_each_lane_its_vjp(rng):
    params = [DUP, *const()]
    width = 3
    bc, decisions = differentiate(
        IN_PLACE, params, ret_type="void", ret_activity="const", width=width
    )
    _, decisions1 = differentiate(IN_PLACE, params, ret_type="void", ret_activity="const")
    assert decisions.taped() == decisions1.taped()
    assert ("%v", "loop") in decisions.taped()
    df = jit(bc, "df", P, P, P, I64, *([P] * width))
    x0 = rng.standard_normal(9)
    x = x0.copy()
    ws = [rng.standard_normal(9) for _ in range(width)]
    dxs = [w.copy() for w in ws]
    assert df(ctypes.addressof((D * 1)()), None, _ptr(x), 9, *map(_ptr, dxs)) == 0
    np.testing.assert_allclose(x, x0**2)
    for w, dx in zip(ws, dxs, strict=True):
        np.testing.assert_allclose(dx, 2 * x0 * w, rtol=1e-14)


BRANCH_WHILE = """
define i32 @f(ptr %retptr, ptr %excinfo, double %a, double %x) {
entry:
  br label %head
head:
  %s = phi double [ 1.0, %entry ], [ %s.next, %body ]
  %c = fcmp olt double %s, 100.0
  br i1 %c, label %body, label %after
body:
  %s.next = fmul double %s, %a
  br label %head
after:
  %pos = fcmp ogt double %x, 0.0
  br i1 %pos, label %then, label %else
then:
  %sq = fmul double %x, %x
  br label %exit
else:
  %neg = fmul double %x, -3.0
  br label %exit
exit:
  %r0 = phi double [ %sq, %then ], [ %neg, %else ]
  %r = fadd double %r0, %s
  store double %r, ptr %retptr
  ret i32 0
}
"""


def test_while_loop_and_branches():
    width = 2
    bc, _ = differentiate(BRANCH_WHILE, [ACTIVE, ACTIVE], width=width)
    df = jit(bc, "df", P, P, D, D, D, D)
    for a, x in ((1.5, 2.5), (3.7, -1.5)):
        k = 0
        s = 1.0
        while s < 100:
            s *= a
            k += 1
        out = (D * 5)()
        assert df(ctypes.addressof(out), None, a, x, 1.0, -0.5) == 0
        dx = 2 * x if x > 0 else -3.0
        da = k * a ** (k - 1)
        np.testing.assert_allclose(out[1:3], [da, -0.5 * da], rtol=1e-13)
        np.testing.assert_allclose(out[3:5], [dx, -0.5 * dx], rtol=1e-13)


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
  store ptr null, ptr %retptr
  ret i32 0
}
declare void @llvm.memcpy.p0.p0.i64(ptr, ptr, i64, i1)
declare void @llvm.memset.p0.i64(ptr, i8, i64, i1)
"""


def test_memcpy_and_memset_per_lane(rng):
    width = 2
    bc, _ = differentiate(
        COPY_FILL, [DUP, DUP, DUP, *const()], ret_type="void", ret_activity="const", width=width
    )
    df = jit(bc, "df", P, P, P, P, P, I64, *([P] * (3 * width)))
    n = 5
    x = rng.standard_normal(n)
    y, z = np.zeros(n), rng.standard_normal(n)
    dx = [rng.standard_normal(n) for _ in range(width)]
    dy = [rng.standard_normal(n) for _ in range(width)]
    dz = [rng.standard_normal(n) for _ in range(width)]
    dx0, dy0 = [d.copy() for d in dx], [d.copy() for d in dy]
    # Shadows param by param, lane by lane.
    sh = [*map(_ptr, dx), *map(_ptr, dy), *map(_ptr, dz)]
    assert df(ctypes.addressof((D * 1)()), None, _ptr(x), _ptr(y), _ptr(z), n, *sh) == 0
    for k in range(width):
        np.testing.assert_allclose(dx[k], dx0[k] + 2 * x * dy0[k], rtol=1e-14)
        np.testing.assert_array_equal(dy[k], 0.0)
        np.testing.assert_array_equal(dz[k], 0.0)


LOCAL_ARRAY = """
define i32 @f(ptr %retptr, ptr %excinfo, double %a, double %b) {
entry:
  %buf = alloca [2 x double], align 8
  %p1 = getelementptr double, ptr %buf, i64 1
  store double %a, ptr %buf
  %ab = fmul double %a, %b
  store double %ab, ptr %p1
  %u = load double, ptr %buf
  %v = load double, ptr %p1
  %r = fmul double %u, %v
  store double %r, ptr %retptr
  ret i32 0
}
"""


def test_stack_memory_gets_a_shadow_per_lane():
    width = 3
    params = [ACTIVE, ACTIVE]
    bc, _ = differentiate(LOCAL_ARRAY, params, width=width)
    df = jit(bc, "df", P, P, D, D, *([D] * width))
    a, b = 1.3, -0.4
    seeds = [1.0, 2.0, -1.0]
    out = (D * (1 + 2 * width))()
    assert df(ctypes.addressof(out), None, a, b, *seeds) == 0
    # r = a * a * b
    for k, s in enumerate(seeds):
        np.testing.assert_allclose(out[1 + k], s * 2 * a * b, rtol=1e-14)
        np.testing.assert_allclose(out[1 + width + k], s * a * a, rtol=1e-14)


def test_float32_lanes():
    ir = """
define i32 @f(ptr %retptr, ptr %excinfo, ptr %x, float %c) {
entry:
  %v = load float, ptr %x
  %w = fmul float %v, %c
  %e = fpext float %w to double
  %r = fmul double %e, %e
  store double %r, ptr %retptr
  ret i32 0
}
"""
    width = 2
    params = [{"activity": "dup", "elem": "float"}, {"activity": "active", "elem": "float"}]
    bc, _ = differentiate(ir, params, width=width)
    df = jit(bc, "df", P, P, P, F, P, P, D, D)
    x = np.array([1.5], np.float32)
    dxs = [np.zeros(1, np.float32) for _ in range(width)]
    out = (ctypes.c_char * 32)()
    assert df(ctypes.addressof(out), None, _ptr(x), 2.0, *map(_ptr, dxs), 1.0, 3.0) == 0
    # struct {double, float, float}
    res = np.frombuffer(bytes(out)[:16], dtype=np.float32)[2:4]
    w = 1.5 * 2.0
    np.testing.assert_allclose([dxs[0][0], dxs[1][0]], [2 * w * 2.0, 3 * 2 * w * 2.0], rtol=1e-6)
    np.testing.assert_allclose(res, [2 * w * 1.5, 3 * 2 * w * 1.5], rtol=1e-6)
