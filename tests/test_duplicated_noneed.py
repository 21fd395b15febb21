"""DuplicatedNoNeed: the primal's writes to an array whose contents the caller does not
need are skipped when nothing reads them back (synthesis/UnneededStores), and the
derivatives are those of Duplicated.

Each kernel is checked in reverse mode against central finite differences (the
harness treats the array's final contents as outputs, computed by the plain primal),
in forward mode against finite differences and against reverse mode, and the engine's
log says whether the stores were dropped or why they were kept.
"""

from __future__ import annotations

import math
import re

import fd
import numba
import numpy as np
import pytest
from test_forward import check_both

import enzpy
from enzpy import Active, Const, Duplicated, DuplicatedNoNeed, Forward


def rng(seed):
    return np.random.default_rng(seed)


@numba.njit
def softplus_into(x, out):
    for i in range(x.shape[0]):
        out[i] = math.log1p(math.exp(x[i]))


@numba.njit
def outer_lower_into(x, L):
    n = x.shape[0]
    for i in range(n):
        for j in range(i + 1):
            L[i, j] = math.sin(x[i]) * x[j]


@numba.njit
def scaled_exp_slice(x, a, out):
    out[:] = np.exp(x) * a


@numba.njit
def tanh_into_and_sum(x, out):
    s = 0.0
    for i in range(x.shape[0]):
        t = math.tanh(x[i])
        out[i] = t
        s += t * x[i]
    return s


@numba.njit
def normalized_squares_into(x, out):
    # out is read back in a second loop: its stores must stay.
    n = x.shape[0]
    for i in range(n):
        out[i] = x[i] * x[i]
    s = 0.0
    for i in range(n):
        s += out[i]
    for i in range(n):
        out[i] = out[i] / s


@numba.njit
def reversed_products_into(x, out):
    n = x.shape[0]
    for i in range(n):
        out[i] = math.cos(x[i])
    s = 0.0
    for i in range(n):
        s += out[i] * out[n - 1 - i]
    return s


@numba.njit
def sin_and_square_into_pair(x, outs):
    a, b = outs
    for i in range(x.shape[0]):
        a[i] = math.sin(x[i])
        b[i] = x[i] * x[i]
    return (a * b).sum()


@numba.njit(parallel=True)
def softplus_prange(x, out):
    for i in numba.prange(x.shape[0]):
        out[i] = math.log1p(math.exp(x[i]))


def _no_need_line(log: str, name: str) -> str:
    found = re.findall(rf"no-need %arg\.{name}\.\d+ (.*)", log)
    assert len(found) == 1, log
    return found[0]


WRITE_ONLY = [
    (softplus_into, lambda r: (fd.Dup(r.uniform(-2, 2, 11)), fd.DupNoNeed(np.zeros(11))), "out"),
    (
        outer_lower_into,
        lambda r: (fd.Dup(r.uniform(-2, 2, 6)), fd.DupNoNeed(np.zeros((6, 6)))),
        "L",
    ),
    (
        scaled_exp_slice,
        lambda r: (fd.Dup(r.uniform(-2, 2, 7)), fd.Active(0.7), fd.DupNoNeed(np.zeros(7))),
        "out",
    ),
    (tanh_into_and_sum, lambda r: (fd.Dup(r.uniform(-2, 2, 9)), fd.DupNoNeed(np.zeros(9))), "out"),
]

READ_BACK = [
    (normalized_squares_into, lambda r: (fd.Dup(r.uniform(0.5, 2, 8)), fd.DupNoNeed(np.zeros(8)))),
    (reversed_products_into, lambda r: (fd.Dup(r.uniform(-2, 2, 8)), fd.DupNoNeed(np.zeros(8)))),
]


def _annotations(specs, mode):
    out = []
    for s in specs:
        if isinstance(s, fd.DupNoNeed):
            out.append(DuplicatedNoNeed(s.value.copy(), np.zeros_like(s.value)))
        elif isinstance(s, fd.Dup):
            out.append(Duplicated(s.value.copy(), np.zeros_like(s.value)))
        elif mode is Forward:
            out.append(Duplicated(s.value, 1.0))
        else:
            out.append(Active(s.value))
    return out


def _ret(f):
    return Const if f in (softplus_into, outer_lower_into, scaled_exp_slice) else Active


@pytest.mark.parametrize("f,make,name", WRITE_ONLY, ids=lambda p: getattr(p, "__name__", ""))
def test_write_only_output_against_fd_in_both_modes(f, make, name):
    ret = "active" if _ret(f) is Active else "const"
    fd.check_vjp(f, *make(rng(1)), ret=ret)
    check_both(f, *make(rng(2)), ret=ret)


@pytest.mark.parametrize("f,make,name", WRITE_ONLY, ids=lambda p: getattr(p, "__name__", ""))
@pytest.mark.parametrize("mode", [enzpy.Reverse, Forward], ids=["reverse", "forward"])
def test_write_only_output_stores_are_dropped(f, make, name, mode):
    log = enzpy.explain(f, *_annotations(make(rng(3)), mode), mode=mode, ret=_ret(f))
    assert _no_need_line(log, name).startswith("dropped"), log


@pytest.mark.parametrize("mode", [enzpy.Reverse, Forward], ids=["reverse", "forward"])
def test_write_only_output_is_left_as_it_was(mode):
    x = rng(4).uniform(-2, 2, 10)
    out = np.full(10, -7.0)
    dx, dout = np.zeros(10), rng(5).standard_normal(10)
    enzpy.autodiff(softplus_into, Duplicated(x, dx), DuplicatedNoNeed(out, dout), mode=mode)
    assert np.all(out == -7.0)
    # Duplicated computes the contents
    enzpy.autodiff(softplus_into, Duplicated(x, dx), Duplicated(out, dout), mode=mode)
    np.testing.assert_allclose(out, np.log1p(np.exp(x)), rtol=1e-15)


@pytest.mark.parametrize("f,make", READ_BACK, ids=lambda p: getattr(p, "__name__", ""))
def test_output_read_back_keeps_its_stores_and_is_right(f, make):
    ret = "const" if f is normalized_squares_into else "active"
    fd.check_vjp(f, *make(rng(6)), ret=ret)
    check_both(f, *make(rng(7)), ret=ret)
    for mode in (enzpy.Reverse, Forward):
        kw = {"ret": Const} if ret == "const" else {}
        log = enzpy.explain(f, *_annotations(make(rng(8)), mode), mode=mode, **kw)
        assert _no_need_line(log, "out") == "kept: the derivative reads it", log


def test_no_need_same_derivatives_as_duplicated():
    x = rng(9).uniform(-2, 2, 12)
    w = rng(10).standard_normal(12)
    got = {}
    for ann in (Duplicated, DuplicatedNoNeed):
        dx, dout = np.zeros(12), w.copy()
        r = enzpy.autodiff(tanh_into_and_sum, Duplicated(x.copy(), dx), ann(np.zeros(12), dout))
        assert np.all(dout == 0.0)  # consumed where written, as for Duplicated
        got[ann] = (dx, r)
    np.testing.assert_allclose(got[DuplicatedNoNeed][0], got[Duplicated][0], rtol=1e-14)


def test_overlapping_arrays_keep_the_stores():
    # x and out are views of one buffer: the caller cannot prove them apart, so
    # the stores stay (another argument may read them) and the result is
    # Duplicated's.
    buf = rng(11).uniform(-1, 1, 12)
    results = []
    for ann in (Duplicated, DuplicatedNoNeed):
        b, db = buf.copy(), rng(12).standard_normal(12)
        args = (Duplicated(b[2:], db[2:]), ann(b[:-2], db[:-2]))
        log = enzpy.explain(softplus_into, *args, ret=Const)
        if ann is DuplicatedNoNeed:
            assert _no_need_line(log, "out").startswith("kept: the arrays were not checked apart")
        enzpy.autodiff(softplus_into, *args, ret=Const)
        results.append((b, db))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-14)


def test_prange_output_is_dropped_and_runs_on_threads():
    x = rng(13).uniform(-2, 2, 4000)
    fd.check_vjp(softplus_prange, fd.Dup(x[:40]), fd.DupNoNeed(np.zeros(40)), ret="const")
    for mode in (enzpy.Reverse, Forward):
        anns = _annotations((fd.Dup(x), fd.DupNoNeed(np.zeros(4000))), mode)
        log = enzpy.explain(softplus_prange, *anns, mode=mode, ret=Const)
        assert _no_need_line(log, "out").startswith("dropped"), log
        assert re.search(r"^  parallel %\S+ \S+:\d+: parallel$", log, re.M), log
    x32 = x[:50]
    got = {}
    for ann in (Duplicated, DuplicatedNoNeed):
        dx, dout = np.zeros(50), rng(14).standard_normal(50)
        enzpy.autodiff(softplus_prange, Duplicated(x32, dx), ann(np.zeros(50), dout), ret=Const)
        got[ann] = dx
    np.testing.assert_allclose(got[DuplicatedNoNeed], got[Duplicated], rtol=1e-14)


def test_float32_write_only_output_is_dropped_and_right():
    x = rng(15).uniform(-2, 2, 9).astype(np.float32)
    fd.check_vjp(softplus_into, fd.Dup(x), fd.DupNoNeed(np.zeros(9, np.float32)), ret="const")
    check_both(softplus_into, fd.Dup(x), fd.DupNoNeed(np.zeros(9, np.float32)), ret="const")
    log = enzpy.explain(
        softplus_into,
        Duplicated(x, np.zeros_like(x)),
        DuplicatedNoNeed(np.zeros_like(x), np.zeros_like(x)),
        ret=Const,
    )
    assert _no_need_line(log, "out").startswith("dropped"), log


@pytest.mark.parametrize("mode", [enzpy.Reverse, Forward], ids=["reverse", "forward"])
def test_tuple_of_outputs_read_back_gets_duplicated_derivatives(mode):
    # The outputs are read back for the returned sum: whatever the step keeps
    # or drops, the derivatives are Duplicated's (and the analytic ones).
    x = rng(16).uniform(-1, 1, 7)
    w = (rng(17).standard_normal(7), rng(18).standard_normal(7))
    v = rng(19).standard_normal(7)
    got = {}
    for ann in (Duplicated, DuplicatedNoNeed):
        outs = (np.zeros(7), np.zeros(7))
        if mode is Forward:
            douts = (np.zeros(7), np.zeros(7))
            r = enzpy.autodiff(
                sin_and_square_into_pair,
                Duplicated(x.copy(), v.copy()),
                ann(outs, douts),
                mode=mode,
            )
            got[ann] = (r, *douts)
        else:
            dx, douts = np.zeros(7), (w[0].copy(), w[1].copy())
            enzpy.autodiff(sin_and_square_into_pair, Duplicated(x.copy(), dx), ann(outs, douts))
            got[ann] = (dx,)
    c, s = np.cos(x), np.sin(x)
    if mode is Forward:
        expected = ((c * x * x + 2 * x * s) @ v, c * v, 2 * x * v)
    else:
        expected = (c * x * x + 2 * x * s + w[0] * c + w[1] * 2 * x,)
    for ann in got:
        for g, e in zip(got[ann], expected, strict=True):
            np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-14)
