"""Reverse synthesis on small IR: what is taped, and the derivatives it
computes, checked against analytic formulas."""

import ctypes

import numpy as np
import pytest

from .conftest import const, differentiate, jit

D = ctypes.c_double
P = ctypes.c_void_p
I64 = ctypes.c_int64


def test_straight_line_code_tapes_nothing():
    ir = """
define i32 @f(ptr %retptr, ptr %excinfo, double %a, double %b) {
entry:
  %ab = fmul double %a, %b
  %s = call double @llvm.sin.f64(double %ab)
  store double %s, ptr %retptr
  ret i32 0
}
declare double @llvm.sin.f64(double)
"""
    active = {"activity": "active", "elem": "double"}
    bc, decisions = differentiate(ir, [active, active])
    assert decisions.taped() == []
    df = jit(bc, "df", P, P, D, D, D)
    out = (D * 3)()
    a, b = 0.7, -1.3
    assert df(ctypes.addressof(out), None, a, b, 1.0) == 0
    assert out[0] == np.sin(a * b)
    np.testing.assert_allclose(out[1], b * np.cos(a * b), rtol=1e-14)
    np.testing.assert_allclose(out[2], a * np.cos(a * b), rtol=1e-14)


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


def test_loop_tapes_per_iteration_values_and_reuses_invariants(rng):
    params = [
        {"activity": "dup", "elem": "double"},
        *const(),
        {"activity": "active", "elem": "double"},
    ]
    bc, decisions = differentiate(SUM_SQUARES, params)
    taped = decisions.taped()
    # Nothing is taped per iteration: x is never written, so %v is re-read;
    # the index comes from the loop's counter, taped once when the loop exits.
    assert not any(block == "loop" for _, block in taped), taped
    assert decisions.has("tape", "reread", "%v", block="loop")
    assert decisions.has("tape", "recompute", "%i", block="loop")
    assert any(value.startswith("%loop.iter") for value, _ in taped)
    assert not any("%s2" in t for t in taped)  # computed once before the loop
    df = jit(bc, "df", P, P, P, I64, D, P, D)
    x = rng.standard_normal(17)
    dx = np.ones(17)  # accumulates
    out = (D * 2)()
    scale = 1.5
    assert df(ctypes.addressof(out), None, x.ctypes.data, 17, scale, dx.ctypes.data, 2.0) == 0
    np.testing.assert_allclose(out[0], scale**2 * np.sum(x * x), rtol=1e-14)
    np.testing.assert_allclose(dx, 1.0 + 2.0 * 2 * x * scale**2, rtol=1e-14)
    np.testing.assert_allclose(out[1], 2.0 * 2 * scale * np.sum(x * x), rtol=1e-14)


def test_empty_loop_gives_zero_derivative():
    params = [
        {"activity": "dup", "elem": "double"},
        *const(),
        {"activity": "active", "elem": "double"},
    ]
    bc, _ = differentiate(SUM_SQUARES, params)
    df = jit(bc, "df", P, P, P, I64, D, P, D)
    out = (D * 2)()
    x = np.zeros(1)
    dx = np.zeros(1)
    assert df(ctypes.addressof(out), None, x.ctypes.data, 0, 3.0, dx.ctypes.data, 1.0) == 0
    assert out[1] == 0.0 and dx[0] == 0.0


READ_X_WRITE_Y = """
define i32 @f(ptr %retptr, ptr %excinfo, ptr %x, ptr %y, i64 %n) {
entry:
  br label %loop
loop:
  %i = phi i64 [ 0, %entry ], [ %i.next, %loop ]
  %p = getelementptr double, ptr %x, i64 %i
  %v = load double, ptr %p
  %vv = fmul double %v, %v
  %q = getelementptr double, ptr %y, i64 %i
  store double %vv, ptr %q
  %i.next = add i64 %i, 1
  %done = icmp eq i64 %i.next, %n
  br i1 %done, label %exit, label %loop
exit:
  store ptr null, ptr %retptr
  ret i32 0
}
"""


def test_reads_of_an_array_another_argument_may_alias_are_taped():
    dup = {"activity": "dup", "elem": "double"}
    _, decisions = differentiate(
        READ_X_WRITE_Y, [dup, dup, *const()], ret_type="void", ret_activity="const"
    )
    assert ("%v", "loop") in decisions.taped()  # y may be a view of x
    _, decisions = differentiate(
        READ_X_WRITE_Y,
        [dup, dup, *const()],
        ret_type="void",
        ret_activity="const",
        noalias=True,
    )
    assert decisions.has("tape", "reread", "%v", block="loop")  # proven distinct: x never changes
    assert not any(block == "loop" for _, block in decisions.taped())


def test_in_place_square_uses_values_from_before_the_overwrite(rng):
    ir = """
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
    bc, decisions = differentiate(
        ir, [{"activity": "dup", "elem": "double"}, *const()], ret_type="void", ret_activity="const"
    )
    assert ("%v", "loop") in decisions.taped()
    df = jit(bc, "df", P, P, P, I64, P)
    x0 = rng.standard_normal(9)
    x = x0.copy()
    w = rng.standard_normal(9)
    dx = w.copy()  # cotangent of x after the call
    assert df(ctypes.addressof((D * 1)()), None, x.ctypes.data, 9, dx.ctypes.data) == 0
    np.testing.assert_allclose(x, x0**2)
    np.testing.assert_allclose(dx, 2 * x0 * w, rtol=1e-14)  # Jᵀw, w.r.t. x before


def test_data_dependent_while_loop(rng):
    # s = 1; while s < 100: s = s * a   -> s = a**k, ds/da = k a**(k-1)
    ir = """
define i32 @f(ptr %retptr, ptr %excinfo, double %a) {
entry:
  br label %head
head:
  %s = phi double [ 1.0, %entry ], [ %s.next, %body ]
  %c = fcmp olt double %s, 100.0
  br i1 %c, label %body, label %exit
body:
  %s.next = fmul double %s, %a
  br label %head
exit:
  store double %s, ptr %retptr
  ret i32 0
}
"""
    bc, _ = differentiate(ir, [{"activity": "active", "elem": "double"}])
    df = jit(bc, "df", P, P, D, D)
    for a in (1.5, 2.0, 3.7, 11.0):
        out = (D * 2)()
        assert df(ctypes.addressof(out), None, a, 1.0) == 0
        k = int(np.ceil(np.log(100.0) / np.log(a) - 1e-12))
        if a**k < 100:
            k += 1
        np.testing.assert_allclose(out[0], a**k, rtol=1e-13)
        np.testing.assert_allclose(out[1], k * a ** (k - 1), rtol=1e-13)


def test_branches_follow_the_path_taken():
    ir = """
define i32 @f(ptr %retptr, ptr %excinfo, double %x) {
entry:
  %pos = fcmp ogt double %x, 0.0
  br i1 %pos, label %then, label %else
then:
  %sq = fmul double %x, %x
  br label %exit
else:
  %neg = fmul double %x, -3.0
  br label %exit
exit:
  %r = phi double [ %sq, %then ], [ %neg, %else ]
  store double %r, ptr %retptr
  ret i32 0
}
"""
    bc, _ = differentiate(ir, [{"activity": "active", "elem": "double"}])
    df = jit(bc, "df", P, P, D, D)
    for x, expect in ((2.5, 5.0), (-1.5, -3.0)):
        out = (D * 2)()
        assert df(ctypes.addressof(out), None, x, 1.0) == 0
        assert out[1] == expect


def test_raised_status_skips_the_reverse_sweep():
    ir = """
define i32 @f(ptr %retptr, ptr %excinfo, ptr %x, double %d) {
entry:
  %z = fcmp oeq double %d, 0.0
  br i1 %z, label %raise, label %ok
raise:
  ret i32 1
ok:
  %v = load double, ptr %x
  %q = fdiv double %v, %d
  store double %q, ptr %retptr
  ret i32 0
}
"""
    params = [{"activity": "dup", "elem": "double"}, {"activity": "active", "elem": "double"}]
    bc, _ = differentiate(ir, params)
    df = jit(bc, "df", P, P, P, D, P, D)
    x = np.array([3.0])
    dx = np.array([0.5])
    out = (D * 2)()
    assert df(ctypes.addressof(out), None, x.ctypes.data, 0.0, dx.ctypes.data, 1.0) == 1
    assert dx[0] == 0.5  # untouched
    assert df(ctypes.addressof(out), None, x.ctypes.data, 2.0, dx.ctypes.data, 1.0) == 0
    np.testing.assert_allclose(dx[0], 0.5 + 1 / 2.0)
    np.testing.assert_allclose(out[1], -3.0 / 4.0)


def test_float32_memory_and_scalars():
    ir = """
define i32 @f(ptr %retptr, ptr %excinfo, ptr %x, float %a) {
entry:
  %v = load float, ptr %x
  %e = fpext float %v to double
  %ae = fpext float %a to double
  %m = fmul double %e, %ae
  %r = fptrunc double %m to float
  store float %r, ptr %retptr
  ret i32 0
}
"""
    params = [{"activity": "dup", "elem": "float"}, {"activity": "active", "elem": "float"}]
    bc, _ = differentiate(ir, params, ret_type="float")
    df = jit(bc, "df", P, P, P, ctypes.c_float, P, ctypes.c_float)
    x = np.array([3.0], dtype=np.float32)
    dx = np.zeros(1, dtype=np.float32)
    out = (ctypes.c_float * 2)()
    assert df(ctypes.addressof(out), None, x.ctypes.data, 0.5, dx.ctypes.data, 1.0) == 0
    assert out[0] == np.float32(1.5)
    assert dx[0] == np.float32(0.5)
    assert out[1] == np.float32(3.0)


MOVE_THEN_SQUARE = """
define i32 @f(ptr %retptr, ptr %excinfo, ptr %u, i64 %n, i64 %dst, i64 %src, i64 %m) {
entry:
  %d = getelementptr double, ptr %u, i64 %dst
  %s = getelementptr double, ptr %u, i64 %src
  %bytes = shl i64 %m, 3
  call void @llvm.memmove.p0.p0.i64(ptr align 8 %d, ptr align 8 %s, i64 %bytes, i1 false)
  br label %loop
loop:
  %i = phi i64 [ 0, %entry ], [ %i.next, %loop ]
  %p = getelementptr double, ptr %u, i64 %i
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
declare void @llvm.memmove.p0.p0.i64(ptr, ptr, i64, i1)
"""


def move_matrix(n, dst, src, m):
    """The linear map u -> u after memmove(u + dst, u + src, m elements)."""
    M = np.eye(n)
    M[dst : dst + m] = np.eye(n)[src : src + m]
    return M


@pytest.mark.parametrize(
    "dst, src, m",
    [(1, 0, 6), (0, 1, 6), (3, 0, 4), (0, 3, 4), (2, 2, 5), (4, 0, 3)],
    ids=["right-by-1", "left-by-1", "right-by-3", "left-by-3", "onto-itself", "disjoint"],
)
def test_overlapping_memmove_adjoint(rng, dst, src, m):
    # The adjoint reads each target's adjoint before it adds into a source at
    # the same address, in either direction of the move.
    n = 7
    bc, _ = differentiate(
        MOVE_THEN_SQUARE,
        [{"activity": "dup", "elem": "double"}, *const(4)],
        ret_type="void",
        ret_activity="const",
    )
    df = jit(bc, "df", P, P, P, I64, I64, I64, I64, P)
    u0 = rng.standard_normal(n)
    w = rng.standard_normal(n)
    u, du = u0.copy(), w.copy()
    assert df(ctypes.addressof((D * 1)()), None, u.ctypes.data, n, dst, src, m, du.ctypes.data) == 0
    M = move_matrix(n, dst, src, m)
    np.testing.assert_allclose(u, (M @ u0) ** 2, rtol=1e-15)
    J = np.diag(2 * M @ u0) @ M
    np.testing.assert_allclose(du, J.T @ w, rtol=1e-14, atol=1e-15)


# s = sum_i r_i^2, r_i = sum_k (c_k - x[3 j + k])^2 with j = i wrapped as
# numba wraps negative indices: each re-read's address is six instructions
# deep (gep, mul, add, select, icmp, the induction variable).
DEEP_REREADS = """
define i32 @f(ptr %retptr, ptr %excinfo, ptr %x, i64 %n, double %c0, double %c1, double %c2) {
entry:
  %empty = icmp slt i64 %n, 1
  br i1 %empty, label %exit, label %loop
loop:
  %i = phi i64 [ 0, %entry ], [ %i.next, %loop ]
  %acc = phi double [ 0.0, %entry ], [ %acc.next, %loop ]
  %neg = icmp slt i64 %i, 0
  %wrap = select i1 %neg, i64 %n, i64 0
  %j = add i64 %wrap, %i
  %row = mul i64 %j, 3
  %p0 = getelementptr double, ptr %x, i64 %row
  %p1 = getelementptr i8, ptr %p0, i64 8
  %p2 = getelementptr i8, ptr %p0, i64 16
  %x0 = load double, ptr %p0
  %x1 = load double, ptr %p1
  %x2 = load double, ptr %p2
  %d0 = fsub double %c0, %x0
  %d1 = fsub double %c1, %x1
  %d2 = fsub double %c2, %x2
  %q0 = fmul double %d0, %d0
  %q1 = fmul double %d1, %d1
  %q2 = fmul double %d2, %d2
  %r01 = fadd double %q0, %q1
  %r = fadd double %r01, %q2
  %rr = fmul double %r, %r
  %acc.next = fadd double %acc, %rr
  %i.next = add nuw nsw i64 %i, 1
  %done = icmp eq i64 %i.next, %n
  br i1 %done, label %exit, label %loop
exit:
  %s = phi double [ 0.0, %entry ], [ %acc.next, %loop ]
  store double %s, ptr %retptr
  ret i32 0
}
"""


def test_deep_address_chains_do_not_make_the_first_value_asked_for_taped(rng):
    # The reverse asks for %d2 first (walking the block backwards). Its
    # re-read's address chain is deep; whether it is free must not depend on
    # the later loads having rebuilt that chain: no float value is taped.
    params = [{"activity": "dup", "elem": "double"}, *const(4)]
    bc, decisions = differentiate(DEEP_REREADS, params)
    taped = [v for v, _ in decisions.taped()]
    assert not [v for v in taped if v.startswith(("%d", "%q", "%r", "%x"))], taped
    df = jit(bc, "df", P, P, P, I64, D, D, D, P, D)
    n, c = 11, (0.3, -0.2, 0.5)
    x = rng.standard_normal(3 * n)
    dx = np.zeros(3 * n)
    out = (D * 1)()
    assert df(ctypes.addressof(out), None, x.ctypes.data, n, *c, dx.ctypes.data, 1.0) == 0
    d = np.asarray(c) - x.reshape(n, 3)
    r = np.sum(d * d, axis=1)
    np.testing.assert_allclose(out[0], np.sum(r * r), rtol=1e-14)
    np.testing.assert_allclose(dx.reshape(n, 3), -4 * r[:, None] * d, rtol=1e-13)
