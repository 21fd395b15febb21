"""Recursion at the engine level, on hand-written IR: a requested function that
calls itself (preprocessing gives it a copy that takes its recursive calls) and
a pair of mutually recursive functions, in forward and reverse mode, checked
against analytic derivatives; and the decision log naming the tangent call."""

import ctypes

import numpy as np
import pytest

from .conftest import const, differentiate, jit

D = ctypes.c_double
P = ctypes.c_void_p
I64 = ctypes.c_int64

ACTIVE = {"activity": "active", "elem": "double"}

# p(x, n) = x * p(x, n - 1), p(x, 0) = 1 + x: d/dx = n x^(n-1) (1 + x) + x^n
SELF = """
define i32 @f(ptr %retptr, ptr %excinfo, double %x, i64 %n) {
entry:
  %slot = alloca double
  %base = icmp sle i64 %n, 0
  br i1 %base, label %stop, label %more
stop:
  %one = fadd double %x, 1.0
  store double %one, ptr %retptr
  ret i32 0
more:
  %m = sub i64 %n, 1
  %st = call i32 @f(ptr %slot, ptr %excinfo, double %x, i64 %m)
  %ok = icmp eq i32 %st, 0
  br i1 %ok, label %use, label %raise
use:
  %r = load double, ptr %slot
  %p = fmul double %x, %r
  store double %p, ptr %retptr
  ret i32 0
raise:
  ret i32 %st
}
"""


def _level(name: str, callee: str, combine: str) -> str:
    """A function of the mutually recursive pair: x at n <= 0, else ``combine``
    of %r = callee(x, n - 1) (an instruction defining %v)."""
    return f"""
define internal i32 @{name}(ptr %retptr, ptr %excinfo, double %x, i64 %n) {{
entry:
  %slot = alloca double
  %base = icmp sle i64 %n, 0
  br i1 %base, label %stop, label %more
stop:
  store double %x, ptr %retptr
  ret i32 0
more:
  %m = sub i64 %n, 1
  %st = call i32 @{callee}(ptr %slot, ptr %excinfo, double %x, i64 %m)
  %r = load double, ptr %slot
  {combine}
  store double %v, ptr %retptr
  ret i32 %st
}}
"""


# f(x, n) = g(x, n) with g(x, n) = sin(h(x, n - 1)), h(x, n) = x * g(x, n - 1)
# (n > 0), g(x, 0) = h(x, 0) = x
MUTUAL = (
    """
define i32 @f(ptr %retptr, ptr %excinfo, double %x, i64 %n) {
entry:
  %slot = alloca double
  %st = call i32 @g(ptr %slot, ptr %excinfo, double %x, i64 %n)
  %r = load double, ptr %slot
  store double %r, ptr %retptr
  ret i32 %st
}
declare double @llvm.sin.f64(double)
"""
    + _level("g", "h", "%v = call double @llvm.sin.f64(double %r)")
    + _level("h", "g", "%v = fmul double %x, %r")
)


def _self(x, n):
    return x**n * (1 + x), n * x ** (n - 1) * (1 + x) + x**n if n else 1.0


def _mutual(x, n):
    """(g(x, n), dg/dx) by the chain rule, level by level."""
    if n <= 0:
        return x, 1.0
    v, dv = _mutual_h(x, n - 1)
    return np.sin(v), np.cos(v) * dv


def _mutual_h(x, n):
    if n <= 0:
        return x, 1.0
    v, dv = _mutual(x, n - 1)
    return x * v, v + x * dv


CASES = {"self": (SELF, _self), "mutual": (MUTUAL, _mutual)}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("n", [0, 1, 6])
def test_forward_tangent(case, n):
    ir, ref = CASES[case]
    bc, decisions = differentiate(ir, [ACTIVE, *const()], mode="forward")
    if n:
        assert decisions.of("forward", "tangent-recursive-call")
    df = jit(bc, "df", P, P, D, I64, D)
    out = (D * 2)()
    x = 0.83
    value, slope = ref(x, n)
    assert df(ctypes.addressof(out), None, x, n, 2.0) == 0
    np.testing.assert_allclose(out[0], value, rtol=1e-14)
    np.testing.assert_allclose(out[1], 2.0 * slope, rtol=1e-13)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("n", [0, 1, 6])
def test_reverse_adjoint(case, n):
    ir, ref = CASES[case]
    bc, _ = differentiate(ir, [ACTIVE, *const()])
    df = jit(bc, "df", P, P, D, I64, D)
    out = (D * 2)()
    x = 0.83
    value, slope = ref(x, n)
    assert df(ctypes.addressof(out), None, x, n, -1.5) == 0
    np.testing.assert_allclose(out[0], value, rtol=1e-14)
    np.testing.assert_allclose(out[1], -1.5 * slope, rtol=1e-13)
