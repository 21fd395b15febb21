"""Rows of the rule table at special points (docs/design.md §8.4) that numba
code does not reach directly: llvm.powi, llvm.maxnum/minnum with a NaN
operand, the frem instruction. Forward and reverse on one-instruction IR."""

import ctypes
import ctypes.util
import math

import llvmlite.binding as llvm
import pytest

from .conftest import const, differentiate, jit

D = ctypes.c_double
P = ctypes.c_void_p
I32 = ctypes.c_int32
ACTIVE = {"activity": "active", "elem": "double"}
INF = math.inf
NAN = math.nan


def _same(got, want):
    if math.isnan(want):
        return math.isnan(got)
    return got == want or abs(got - want) <= 1e-15 * abs(want)


def _powi_runtime():
    """llvm.powi lowers to a call of __powidf2 (libgcc), which the JIT must find."""
    if llvm.address_of_symbol("__powidf2") is None:
        lib = ctypes.util.find_library("gcc_s")
        if lib is None:
            pytest.skip("no libgcc_s for __powidf2")
        llvm.load_library_permanently(lib)
    assert llvm.address_of_symbol("__powidf2") is not None


POWI = """
define i32 @f(ptr %retptr, ptr %excinfo, double %x, i32 %n) {
entry:
  %r = call double @llvm.powi.f64.i32(double %x, i32 %n)
  store double %r, ptr %retptr
  ret i32 0
}
declare double @llvm.powi.f64.i32(double, i32)
"""


@pytest.mark.parametrize(
    "x, n, want",
    [
        (0.0, 0, 0.0),
        (-0.0, 0, 0.0),
        (0.0, 1, 1.0),
        (0.0, 2, 0.0),
        (-2.0, 3, 12.0),
        (2.0, -1, -0.25),
    ],
)
def test_powi(x, n, want):
    _powi_runtime()
    params = [ACTIVE, *const()]
    df = jit(differentiate(POWI, params, mode="forward")[0], "df", P, P, D, I32, D)
    out = (D * 2)()
    assert df(ctypes.addressof(out), None, x, n, 1.0) == 0
    assert _same(out[1], want), f"forward: {out[1]!r}, want {want!r}"
    dr = jit(differentiate(POWI, params)[0], "df", P, P, D, I32, D)
    out = (D * 2)()
    assert dr(ctypes.addressof(out), None, x, n, 1.0) == 0
    assert _same(out[1], want), f"reverse: {out[1]!r}, want {want!r}"


def _binary(body):
    return f"""
define i32 @f(ptr %retptr, ptr %excinfo, double %a, double %b) {{
entry:
  {body}
  store double %r, ptr %retptr
  ret i32 0
}}
declare double @llvm.maxnum.f64(double, double)
declare double @llvm.minnum.f64(double, double)
"""


BINARY = [
    # maxnum/minnum return the operand that is not NaN, and the derivative goes with it
    ("maxnum", "%r = call double @llvm.maxnum.f64(double %a, double %b)", 1.0, NAN, 1.0, 0.0),
    ("maxnum", "%r = call double @llvm.maxnum.f64(double %a, double %b)", NAN, 1.0, 0.0, 1.0),
    ("minnum", "%r = call double @llvm.minnum.f64(double %a, double %b)", 1.0, NAN, 1.0, 0.0),
    ("minnum", "%r = call double @llvm.minnum.f64(double %a, double %b)", NAN, 1.0, 0.0, 1.0),
    # ties: the first operand
    ("maxnum", "%r = call double @llvm.maxnum.f64(double %a, double %b)", 2.0, 2.0, 1.0, 0.0),
    ("minnum", "%r = call double @llvm.minnum.f64(double %a, double %b)", 2.0, 2.0, 1.0, 0.0),
    # frem(1, 0.1) = 1 - 9 * 0.1 although 1 / 0.1 rounds to 10
    ("frem", "%r = frem double %a, %b", 1.0, 0.1, 1.0, -9.0),
    ("frem", "%r = frem double %a, %b", -5.5, 2.0, 1.0, 2.0),
]


@pytest.mark.parametrize(
    "name, body, a, b, da, db", BINARY, ids=[f"{c[0]}({c[2]},{c[3]})" for c in BINARY]
)
def test_binary(name, body, a, b, da, db):
    ir = _binary(body)
    fwd = jit(differentiate(ir, [ACTIVE, ACTIVE], mode="forward")[0], "df", P, P, D, D, D, D)
    out = (D * 2)()
    for ta, tb, want in ((1.0, 0.0, da), (0.0, 1.0, db)):
        assert fwd(ctypes.addressof(out), None, a, b, ta, tb) == 0
        assert _same(out[1], want), f"forward ({ta}, {tb}): {out[1]!r}, want {want!r}"
    rev = jit(differentiate(ir, [ACTIVE, ACTIVE])[0], "df", P, P, D, D, D)
    out = (D * 3)()
    assert rev(ctypes.addressof(out), None, a, b, 1.0) == 0
    assert _same(out[1], da) and _same(out[2], db), f"reverse: {out[1]!r}, {out[2]!r}"
