"""The engine's last stage (transforms/PostOpt): O3 on the derivative, for the
CPU numba's JIT targets when the request names it (target_cpu and
target_features), so that the loaded derivative needs no second O3."""

import ctypes

import llvmlite.binding as llvm
import numpy as np

from enzpy._config import jit_target

from .conftest import const, differentiate, jit

D = ctypes.c_double
P = ctypes.c_void_p
I64 = ctypes.c_int64

DUP = {"activity": "dup", "elem": "double"}

# y[i] = a * x[i] * x[i] for i < n: a loop with no reduction, which a
# vectorizer that knows the CPU's vector registers turns into vector code.
SQUARE_MAP = """
target triple = "{triple}"

define i32 @f(ptr %retptr, ptr %excinfo, ptr %x, ptr %y, i64 %n, double %a) {{
entry:
  %empty = icmp sle i64 %n, 0
  br i1 %empty, label %exit, label %loop
loop:
  %i = phi i64 [ 0, %entry ], [ %i1, %loop ]
  %px = getelementptr inbounds double, ptr %x, i64 %i
  %py = getelementptr inbounds double, ptr %y, i64 %i
  %v = load double, ptr %px
  %v2 = fmul double %v, %v
  %w = fmul double %a, %v2
  store double %w, ptr %py
  %i1 = add nuw nsw i64 %i, 1
  %done = icmp eq i64 %i1, %n
  br i1 %done, label %exit, label %loop
exit:
  store double 0.0, ptr %retptr
  ret i32 0
}}
"""


def _derivative(**target):
    ir = SQUARE_MAP.format(triple=llvm.get_process_triple())
    bc, _ = differentiate(
        ir,
        [DUP, DUP, *const(2)],
        mode="forward",
        ret_activity="const",
        return_primal=False,
        **target,
    )
    return bc


def _check_tangent(bc, rng, n, a):
    df = jit(bc, "df", P, P, P, P, I64, D, P, P)
    x, dx = rng.standard_normal(n), rng.standard_normal(n)
    y, dy = np.zeros(n), np.zeros(n)
    out = (D * 1)()
    args = (x.ctypes.data, y.ctypes.data, n, a, dx.ctypes.data, dy.ctypes.data)
    assert df(ctypes.addressof(out), None, *args) == 0
    np.testing.assert_allclose(y, a * x * x, rtol=1e-15)
    np.testing.assert_allclose(dy, 2 * a * x * dx, rtol=1e-14)


def test_derivative_is_optimized_for_the_named_cpu_and_stays_right(rng):
    bc = _derivative(**jit_target())
    text = str(llvm.parse_bitcode(bc))
    assert "x double>" in text, "the tangent loop should be vectorized for this CPU"
    _check_tangent(bc, rng, 37, 0.75)


def test_without_a_named_cpu_the_derivative_is_optimized_target_independently(rng):
    _check_tangent(_derivative(target_cpu="", target_features=""), rng, 9, -1.25)
