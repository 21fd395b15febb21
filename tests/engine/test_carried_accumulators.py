"""The reverse loop of a stencil adds into neighbouring shadow elements from
each iteration (transforms/CarriedAccumulators): each element's partial sum is
carried in a register to the iteration that adds last, so the loop loads and
stores each element once and vectorizes. The derivative is the one the
unoptimized reverse sweep computes, bit for bit, also when the shadow arrays
overlap (the loop then runs as it was)."""

import ctypes
import re

import llvmlite.binding as llvm
import numpy as np
import pytest

from enzpy._config import jit_target

from .conftest import const, differentiate, jit

P = ctypes.c_void_p
I64 = ctypes.c_int64

# y[i] = 0.5*x[i] - 1.5*x[i+1] + 2.5*x[i+2] for i in [0, n): a 3-point stencil
# (x has n + 2 elements), its reverse: dx[i..i+2] += (0.5, -1.5, 2.5)*dy[i].
STENCIL = """
target triple = "{triple}"

define i32 @f(ptr %retptr, ptr %excinfo, ptr %x, ptr %y, i64 %n) {{
entry:
  %empty = icmp slt i64 %n, 1
  br i1 %empty, label %exit, label %loop
loop:
  %i = phi i64 [ 0, %entry ], [ %i.next, %loop ]
  %p0 = getelementptr double, ptr %x, i64 %i
  %p1 = getelementptr double, ptr %p0, i64 1
  %p2 = getelementptr double, ptr %p0, i64 2
  %x0 = load double, ptr %p0
  %x1 = load double, ptr %p1
  %x2 = load double, ptr %p2
  %a = fmul double %x0, 0.5
  %b = fmul double %x1, -1.5
  %c = fmul double %x2, 2.5
  %ab = fadd double %a, %b
  %v = fadd double %ab, %c
  %py = getelementptr double, ptr %y, i64 %i
  store double %v, ptr %py
  %i.next = add nuw nsw i64 %i, 1
  %done = icmp eq i64 %i.next, %n
  br i1 %done, label %exit, label %loop
exit:
  store double 0.0, ptr %retptr
  ret i32 0
}}
"""

SIGNATURE = (P, P, P, P, I64, P, P, ctypes.c_double)


def _derivative(optimize: bool, noalias: bool):
    bc, _ = differentiate(
        STENCIL.format(triple=llvm.get_process_triple()),
        [{"activity": "dup", "elem": "double"}] * 2 + const(),
        return_primal=False,
        noalias=noalias,
        optimize=optimize,
        **jit_target(),
    )
    return bc, jit(bc, "df", *SIGNATURE)


def _run(df, x, y, n, dx, dy) -> None:
    out = (ctypes.c_double * 1)()
    args = (x.ctypes.data, y.ctypes.data, n, dx.ctypes.data, dy.ctypes.data, 1.0)
    assert df(ctypes.addressof(out), None, *args) == 0


@pytest.mark.parametrize("noalias", [True, False])
def test_stencil_adjoint_carries_partial_sums_and_vectorizes(noalias, rng):
    bc, df = _derivative(optimize=True, noalias=noalias)
    text = str(llvm.parse_bitcode(bc))
    assert "carried" in text, "the neighbour accumulations should be carried"
    assert re.search(r"store <\d+ x double>", text), "the reverse loop should be vectorized"
    n = 101  # a vector body and a remainder
    x, y = rng.standard_normal(n + 2), np.zeros(n)
    dx0, dy0 = rng.standard_normal(n + 2), rng.standard_normal(n)
    dx, dy = dx0.copy(), dy0.copy()
    _run(df, x, y, n, dx, dy)
    # element j gets its additions in the reverse loop's order: from i = j,
    # then j - 1, then j - 2 (each addition of the same values as numpy's)
    want = dx0.copy()
    want[:n] += 0.5 * dy0
    want[1 : n + 1] += -1.5 * dy0
    want[2 : n + 2] += 2.5 * dy0
    np.testing.assert_array_equal(dx, want)
    np.testing.assert_array_equal(dy, 0.0)  # y is overwritten: its shadow is spent


@pytest.mark.parametrize("n", [1, 2, 3, 8])
def test_short_loops_store_every_partial_sum(n, rng):
    _, df = _derivative(optimize=True, noalias=True)
    _, reference = _derivative(optimize=False, noalias=True)
    x, y = rng.standard_normal(n + 2), np.zeros(n)
    dx0, dy0 = rng.standard_normal(n + 2), rng.standard_normal(n)
    got, want = (dx0.copy(), dy0.copy()), (dx0.copy(), dy0.copy())
    _run(df, x, y, n, *got)
    _run(reference, x, y, n, *want)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("shift", [-3, -1, 0, 1, 2, 5])
def test_overlapping_shadows_run_the_loop_as_it_was(shift, rng):
    # dy's memory inside dx's: the carried sums would miss the loop's own
    # reads and writes of dx through dy, so the run-time check takes the
    # unchanged copy of the loop; the result is the unoptimized sweep's.
    _, df = _derivative(optimize=True, noalias=False)
    _, reference = _derivative(optimize=False, noalias=False)
    n = 40
    x, y = rng.standard_normal(n + 2), np.zeros(n)
    start = rng.standard_normal(n + 2 + 16)
    results = []
    for fn in (df, reference):
        buf = start.copy()
        dx = buf[8 : 8 + n + 2]
        dy = buf[8 + shift : 8 + shift + n]
        _run(fn, x, y, n, dx, dy)
        results.append(buf)
    np.testing.assert_array_equal(results[0], results[1])
