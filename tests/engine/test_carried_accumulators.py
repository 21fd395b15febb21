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


# h[t+1, i] = h[t, i] + a*(h[t, i-1] - 2 h[t, i] + h[t, i+1]) for t < steps,
# 0 < i < n-1: rows of one history array (n columns), a an active scalar.
HISTORY = """
target triple = "{triple}"

define i32 @f(ptr %retptr, ptr %excinfo, ptr %h, i64 range(i64 0, 4611686018427387904) %n, i64 %steps, double %a) {{
entry:
  %last = add i64 %n, -1
  %wide = icmp sgt i64 %last, 1
  %any = icmp sgt i64 %steps, 0
  %go = and i1 %wide, %any
  br i1 %go, label %outer, label %exit
outer:
  %t = phi i64 [ 0, %entry ], [ %t.next, %latch ]
  %start = mul nsw i64 %t, %n
  %row = getelementptr inbounds double, ptr %h, i64 %start
  %next = getelementptr inbounds double, ptr %row, i64 %n
  br label %inner
inner:
  %i = phi i64 [ 1, %outer ], [ %i.next, %inner ]
  %pc = getelementptr inbounds double, ptr %row, i64 %i
  %pl = getelementptr inbounds double, ptr %pc, i64 -1
  %pr = getelementptr inbounds double, ptr %pc, i64 1
  %c = load double, ptr %pc
  %l = load double, ptr %pl
  %r = load double, ptr %pr
  %c2 = fmul double %c, 2.0
  %d = fsub double %l, %c2
  %lap = fadd double %d, %r
  %al = fmul double %a, %lap
  %v = fadd double %c, %al
  %po = getelementptr inbounds double, ptr %next, i64 %i
  store double %v, ptr %po
  %i.next = add nuw nsw i64 %i, 1
  %idone = icmp eq i64 %i.next, %last
  br i1 %idone, label %latch, label %inner
latch:
  %t.next = add nuw nsw i64 %t, 1
  %tdone = icmp eq i64 %t.next, %steps
  br i1 %tdone, label %exit, label %outer
exit:
  store double 0.0, ptr %retptr
  ret i32 0
}}
"""


def test_history_stencil_adjoint_vectorizes_without_overlap_checks(rng):
    # The reverse of row t+1 from row t adds into three elements of row t
    # (carried) and reads and zeroes row t+1 of the same shadow, at a
    # distance only known at run time. The carried loop's own load and
    # store are two elements apart, so run-time overlap checks between them
    # would always fail: the loop must vectorize with no such checks, and
    # the coefficient's adjoint is summed in vector lanes.
    params = [{"activity": "dup", "elem": "double"}, *const(2)]
    params.append({"activity": "active", "elem": "double"})
    bc, _ = differentiate(
        HISTORY.format(triple=llvm.get_process_triple()), params, noalias=True, **jit_target()
    )
    text = str(llvm.parse_bitcode(bc))
    assert "carried" in text, "the neighbour accumulations should be carried"
    assert re.search(r"store <\d+ x double>", text), "the reverse loop should be vectorized"
    # (The forward sweep's loop may check its tape against h; the reverse's
    # blocks are named rev.*.)
    checked = re.findall(r"^vector\.memcheck\d*:.*preds = (.*)$", text, re.M)
    assert not [p for p in checked if "rev." in p], "the carried loop should need no overlap checks"
    assert re.search(r"phi <\d+ x double>", text), "the adjoint of a should sum in lanes"
    df = jit(bc, "df", P, P, P, I64, I64, ctypes.c_double, P, ctypes.c_double)
    n, steps, a = 53, 7, 0.23
    h = rng.standard_normal((steps + 1, n))
    dh0 = rng.standard_normal((steps + 1, n))
    dh = dh0.copy()
    out = (ctypes.c_double * 2)()
    args = (h.ctypes.data, n, steps, a, dh.ctypes.data, 1.0)
    assert df(ctypes.addressof(out), None, *args) == 0
    # Reference: the primal and its adjoint, one row at a time in numpy.
    want_h, want = h.copy(), dh0.copy()
    want_h[1:, 1:-1] = h[1:, 1:-1]  # boundary columns of later rows are kept
    for t in range(steps):
        r = want_h[t]
        want_h[t + 1, 1:-1] = r[1:-1] + a * (r[:-2] - 2 * r[1:-1] + r[2:])
    da = 0.0
    for t in reversed(range(steps)):
        r = want_h[t]
        g = want[t + 1, 1:-1].copy()
        want[t + 1, 1:-1] = 0.0
        da += g @ (r[:-2] - 2 * r[1:-1] + r[2:])
        want[t, 1:-1] += (1 - 2 * a) * g
        want[t, :-2] += a * g
        want[t, 2:] += a * g
    np.testing.assert_array_equal(h, want_h)
    np.testing.assert_allclose(dh, want, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(out[1], da, rtol=1e-12)


# Two stencils in one loop, on two arrays: y[i] from x[i..i+2], w[i] from
# z[i..i+2] (a coupled system, or two batch lanes): two groups of updates.
TWO_STENCILS = STENCIL.replace(
    "ptr %x, ptr %y, i64 %n", "ptr %x, ptr %y, ptr %z, ptr %w, i64 %n"
).replace(
    "  %i.next = add nuw nsw i64 %i, 1",
    """  %q0 = getelementptr double, ptr %z, i64 %i
  %q1 = getelementptr double, ptr %q0, i64 1
  %q2 = getelementptr double, ptr %q0, i64 2
  %z0 = load double, ptr %q0
  %z1 = load double, ptr %q1
  %z2 = load double, ptr %q2
  %za = fmul double %z0, 3.0
  %zb = fmul double %z1, -0.25
  %zc = fmul double %z2, 1.75
  %zab = fadd double %za, %zb
  %zv = fadd double %zab, %zc
  %pw = getelementptr double, ptr %w, i64 %i
  store double %zv, ptr %pw
  %i.next = add nuw nsw i64 %i, 1""",
)


@pytest.mark.parametrize("noalias", [True, False])
def test_every_stencil_of_a_loop_carries_its_partial_sums(noalias, rng):
    params = [{"activity": "dup", "elem": "double"}] * 4 + const()
    ir = TWO_STENCILS.format(triple=llvm.get_process_triple())
    bc, _ = differentiate(ir, params, return_primal=False, noalias=noalias, **jit_target())
    text = str(llvm.parse_bitcode(bc))
    # Two neighbours carried per stencil (each loaded once before the loop),
    # for both stencils.
    assert len(re.findall(r"%carried\.init\d* = load", text)) == 4, "both should be carried"
    assert re.search(r"store <\d+ x double>", text), "the reverse loop should be vectorized"
    df = jit(bc, "df", P, P, P, P, P, P, I64, P, P, P, P, ctypes.c_double)
    n = 101
    x, z = rng.standard_normal(n + 2), rng.standard_normal(n + 2)
    y, w = np.zeros(n), np.zeros(n)
    dx0, dz0 = rng.standard_normal(n + 2), rng.standard_normal(n + 2)
    dy0, dw0 = rng.standard_normal(n), rng.standard_normal(n)
    dx, dz, dy, dw = dx0.copy(), dz0.copy(), dy0.copy(), dw0.copy()
    out = (ctypes.c_double * 1)()
    arrays = (x, y, z, w)
    shadows = (dx, dy, dz, dw)
    args = (*(a.ctypes.data for a in arrays), n, *(a.ctypes.data for a in shadows), 1.0)
    assert df(ctypes.addressof(out), None, *args) == 0
    for d0, g, got, taps in ((dx0, dy0, dx, (0.5, -1.5, 2.5)), (dz0, dw0, dz, (3.0, -0.25, 1.75))):
        want = d0.copy()
        for k, c in enumerate(taps):
            want[k : n + k] += c * g
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(dy, 0.0)
    np.testing.assert_array_equal(dw, 0.0)
