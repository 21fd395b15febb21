"""Kernels compiled with ``@numba.njit(parallel=True)``: ``prange`` loops (maps,
reductions, stencils, 2-D sweeps, prange inside a serial time loop), array
expressions that numba fuses into parallel loops, and parallel kernels calling
parallel kernels. enzpy differentiates their serial compile (docs/design.md §2.1,
capture), so each derivative is checked

  * against central finite differences (reverse, forward, ``enzpy.gradient``),
  * against the derivative of the same kernel written with ``range`` and compiled
    without ``parallel=True`` (equal to ~1e-12: the same serial code),
  * forward against reverse (``<J v, w> == <v, Jᵀ w>``), and batch lanes against
    single calls,

with the primal run on 1 and on 2 numba threads (``numba.set_num_threads``).
"""

from __future__ import annotations

import functools
import re
import types as pytypes
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fd
import numba
import numpy as np
import pytest
from numba.core.registry import CPUDispatcher
from test_disk_cache import check_against_fd, entries, run
from test_forward import check_forward_reverse, check_jvp

import enzpy
from enzpy import Active, BatchDuplicated, Const, Duplicated, Forward, Reverse, _cache, _parallel

# The kernels name the parallel loop ``prange``; their serial twins (``_twin``)
# run the same code with ``prange`` bound to ``range``.
prange = numba.prange
parallel = numba.njit(parallel=True)


@parallel
def map_and_reduce(x, y):
    s = 0.0
    for i in prange(x.shape[0]):
        y[i] = np.sin(x[i]) * 2.0
        s += x[i] * x[i]
    return s


@parallel
def scaled_reductions(x, a):
    # two reductions, one a product, and an Active scalar in the body
    s = 0.0
    p = 1.0
    for i in prange(x.shape[0]):
        s += a * np.exp(-x[i] * x[i]) + x[i] / a
        p *= 1.0 + 0.1 * np.tanh(a * x[i])
    return s * p


@parallel
def stencil(x, y):
    # each iteration reads x[i-1], x[i], x[i+1]: three shadow elements per adjoint
    n = x.shape[0]
    s = 0.0
    for i in prange(1, n - 1):
        y[i] = x[i - 1] * x[i] - 2.0 * np.sin(x[i]) + x[i + 1] ** 2
        s += y[i] * x[i]
    return s


@parallel
def heat_swap(u, a, steps):
    # the PDE pattern: serial time steps, parallel space sweep, buffers swapped
    n = u.shape[0]
    old = u.copy()
    new = u.copy()
    for _ in range(steps):
        for i in prange(1, n - 1):
            lap = old[i - 1] - 2.0 * old[i] + old[i + 1]
            new[i] = old[i] + a * lap - 0.1 * a * old[i] ** 3
        old, new = new, old
    u[:] = old
    energy = 0.0
    for i in prange(n):
        energy += old[i] * old[i]
    return energy


@parallel
def heat_copy(u, a, steps):
    # the same step, written back through a copy each time
    n = u.shape[0]
    tmp = np.empty_like(u)
    for _ in range(steps):
        for i in prange(1, n - 1):
            tmp[i] = u[i] + a * (u[i - 1] - 2.0 * u[i] + u[i + 1]) + 0.05 * np.sin(u[i])
        for i in prange(1, n - 1):
            u[i] = tmp[i]


@parallel
def rows(a, out):
    # 2-D: prange over rows, serial over columns, a reduction per row and overall
    m, n = a.shape
    s = 0.0
    for i in prange(m):
        acc = 0.0
        for j in range(n):
            out[i, j] = np.tanh(a[i, j]) * a[i, (j + 1) % n]
            acc += a[i, j] * a[i, j]
        s += np.sqrt(acc + 1.0)
    return s


@parallel
def array_expressions(x, y, out, c):
    # no explicit prange: numba turns these array expressions into parallel loops
    out[:] = c * x + y
    return np.sum(x**2) + np.sum(np.exp(-y * y) * x) + c * np.sum(out)


@parallel
def pairwise_energy(pos):
    # soft pairwise potential over the upper triangle, prange over the first atom
    n = pos.shape[0]
    e = 0.0
    for i in prange(n):
        for j in range(i + 1, n):
            d2 = 0.0
            for k in range(pos.shape[1]):
                d = pos[i, k] - pos[j, k]
                d2 += d * d
            e += 1.0 / np.sqrt(d2 + 0.5) + 0.1 * d2
    return e


@parallel
def energy_over_steps(u, a, steps):
    # a sum carried across the serial time steps: the prange loop's sum
    # starts from a value with a derivative
    n = u.shape[0]
    old = u.copy()
    new = u.copy()
    e = 0.0
    for _ in range(steps):
        for i in prange(1, n - 1):
            new[i] = old[i] + a * (old[i - 1] - 2.0 * old[i] + old[i + 1])
        for i in prange(n):
            e += a * new[i] * new[i] - 0.5 * np.sin(new[i])
        old, new = new, old
    return e


@parallel
def branchy_sum(x, y):
    # a sum added to on different branches
    s = 0.0
    for i in prange(x.shape[0]):
        if x[i] > 0.0:
            s += x[i] * np.exp(-x[i])
        else:
            s += -0.5 * np.sin(x[i])
        y[i] = x[i] * x[i]
    return s


@parallel
def guarded_division(x, c):
    # numba checks the division (ZeroDivisionError): a way out that raises
    s = 0.0
    for i in prange(x.shape[0]):
        s += x[i] / (x[i] * x[i] + c)
    return s


@parallel
def matvec_tanh(a, x, y):
    # every row reads all of x: chunks share x's elements (copies of its
    # shadow), each reads its own rows of a (in place)
    m, n = a.shape
    s = 0.0
    for i in prange(m):
        acc = 0.0
        for j in range(n):
            acc += a[i, j] * x[j]
        y[i] = np.tanh(acc)
        s += acc * acc
    return s


@parallel
def charged_pairs(pos, q):
    # a triangular loop over two arrays, both read at rows other chunks read
    n = pos.shape[0]
    e = 0.0
    for i in prange(n):
        for j in range(i + 1, n):
            dx = pos[i, 0] - pos[j, 0]
            dy = pos[i, 1] - pos[j, 1]
            e += q[i] * q[j] / np.sqrt(dx * dx + dy * dy + 1.0)
    return e


@parallel
def rows_stencil(u, out, a):
    # 2-D: a row reads the rows above and below it; its stores move by a row
    # length the engine checks is not zero
    m, n = u.shape
    s = 0.0
    for i in prange(1, m - 1):
        for j in range(n):
            out[i, j] = u[i, j] + a * (u[i - 1, j] - 2.0 * u[i, j] + u[i + 1, j])
            s += out[i, j] * out[i, j]
    return s


@parallel
def gram_tanh(x, g):
    # every row reads all rows: shared reads of x, own rows of g
    n, d = x.shape
    for i in prange(n):
        for j in range(n):
            acc = 0.0
            for k in range(d):
                acc += x[i, k] * x[j, k]
            g[i, j] = np.tanh(acc)


@parallel
def two_sums(x):
    s = 0.0
    t = 0.0
    for i in prange(x.shape[0]):
        s += np.exp(-x[i] * x[i])
        t += x[i] * np.cos(x[i])
    return s * t + s


@parallel
def parallel_callee(x):
    s = 0.0
    for i in prange(x.shape[0]):
        s += np.cos(x[i]) * x[i]
    return s


@parallel
def calls_parallel_callee(x, y):
    for i in prange(x.shape[0]):
        y[i] = x[i] * parallel_callee(x)
    return parallel_callee(y) + np.sum(x * y)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _specs(name: str) -> list[Any]:
    """fd specs of a call of the kernel ``name`` (fresh arrays each time)."""
    r = _rng(len(name))
    u = np.sin(np.linspace(0.0, 3.0, 12)) + 0.2 * r.standard_normal(12)
    cases: dict[str, list[Any]] = {
        "map_and_reduce": [fd.Dup(r.standard_normal(9)), fd.Dup(np.zeros(9))],
        "scaled_reductions": [fd.Dup(r.standard_normal(11)), fd.Active(0.7)],
        "stencil": [fd.Dup(r.standard_normal(10)), fd.Dup(np.zeros(10))],
        "heat_swap": [fd.Dup(u), fd.Active(0.2), fd.Const(5)],
        "heat_copy": [fd.Dup(u), fd.Const(0.2), fd.Const(4)],
        "rows": [fd.Dup(r.standard_normal((5, 4))), fd.Dup(np.zeros((5, 4)))],
        "array_expressions": [
            fd.Dup(r.standard_normal(8)),
            fd.Dup(r.standard_normal(8)),
            fd.Dup(np.zeros(8)),
            fd.Active(1.3),
        ],
        "pairwise_energy": [fd.Dup(r.standard_normal((7, 3)))],
        "calls_parallel_callee": [fd.Dup(0.5 * r.standard_normal(6)), fd.Dup(np.zeros(6))],
        "energy_over_steps": [fd.Dup(u), fd.Active(0.15), fd.Const(4)],
        "branchy_sum": [fd.Dup(r.standard_normal(13)), fd.Dup(np.zeros(13))],
        "guarded_division": [fd.Dup(r.standard_normal(11)), fd.Active(0.8)],
        "charged_pairs": [fd.Dup(r.standard_normal((9, 2))), fd.Dup(r.standard_normal(9))],
        "rows_stencil": [
            fd.Dup(r.standard_normal((7, 5))),
            fd.Dup(np.zeros((7, 5))),
            fd.Active(0.3),
        ],
        "gram_tanh": [fd.Dup(0.5 * r.standard_normal((6, 3))), fd.Dup(np.zeros((6, 6)))],
        "two_sums": [fd.Dup(r.standard_normal(14))],
        "matvec_tanh": [
            fd.Dup(r.standard_normal((7, 5))),
            fd.Dup(r.standard_normal(5)),
            fd.Dup(np.zeros(7)),
        ],
    }
    return cases[name]


KERNELS = {
    f.py_func.__name__: f
    for f in (
        map_and_reduce,
        scaled_reductions,
        stencil,
        heat_swap,
        heat_copy,
        rows,
        array_expressions,
        pairwise_energy,
        calls_parallel_callee,
        energy_over_steps,
        branchy_sum,
        guarded_division,
        matvec_tanh,
        charged_pairs,
        rows_stencil,
        gram_tanh,
        two_sums,
    )
}


@functools.cache
def _twin(kernel: CPUDispatcher) -> CPUDispatcher:
    """The same kernel with ``prange`` bound to ``range``, compiled without
    ``parallel=True`` (the parallel kernels it calls replaced by their twins)."""
    py = kernel.py_func
    scope = dict(py.__globals__)
    scope["prange"] = range
    for name in py.__code__.co_names:
        value = scope.get(name)
        if isinstance(value, CPUDispatcher) and value.targetoptions.get("parallel"):
            scope[name] = _twin(value)
    twin = numba.njit(pytypes.FunctionType(py.__code__, scope, py.__name__))
    assert not twin.targetoptions.get("parallel")
    return twin


@pytest.fixture(autouse=True)
def launch_always() -> Iterator[None]:
    """Derivative loops run in chunks whenever they may (however short): the
    chunked code is what these tests check."""
    before = _parallel.set_min_cycles(0)
    try:
        yield
    finally:
        _parallel.set_min_cycles(before)


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request: pytest.FixtureRequest) -> Iterator[int]:
    """The number of numba threads the parallel primal runs on."""
    n = request.param
    if n > numba.config.NUMBA_NUM_THREADS:
        pytest.skip(f"numba has {numba.config.NUMBA_NUM_THREADS} thread(s)")
    before = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield n
    finally:
        numba.set_num_threads(before)


names = pytest.mark.parametrize("name", list(KERNELS))


@names
def test_reverse_matches_finite_differences(name: str, threads: int) -> None:
    fd.check_vjp(KERNELS[name], *_specs(name), with_primal=True)


@names
def test_forward_matches_finite_differences(name: str, threads: int) -> None:
    check_jvp(KERNELS[name], *_specs(name))


@names
def test_forward_and_reverse_are_adjoint(name: str, threads: int) -> None:
    check_forward_reverse(KERNELS[name], *_specs(name))


def _annotated(specs: list[Any], shadows: dict[int, np.ndarray]) -> list[Any]:
    out: list[Any] = []
    for i, s in enumerate(specs):
        if isinstance(s, fd.Dup):
            out.append(Duplicated(s.value, shadows[i]))
        elif isinstance(s, fd.Active):
            out.append(Active(s.value))
        else:
            out.append(Const(s.value))
    return out


def _reverse(f: Callable[..., Any], specs: list[Any], seed: int) -> list[Any]:
    """Reverse mode with random shadows: the final shadows and the Active
    derivatives, on copies of the arrays."""
    specs = [type(s)(np.copy(s.value)) if isinstance(s.value, np.ndarray) else s for s in specs]
    r = _rng(seed)
    shadows = {
        i: r.standard_normal(np.shape(s.value))
        for i, s in enumerate(specs)
        if isinstance(s, fd.Dup)
    }
    derivs = enzpy.autodiff(f, *_annotated(specs, shadows))
    return [shadows[i] if i in shadows else d for i, d in enumerate(derivs)]


def _forward(f: Callable[..., Any], specs: list[Any], seed: int) -> list[Any]:
    """Forward mode along a random direction: the return's tangent and the
    final shadows, on copies of the arrays."""
    r = _rng(seed)
    ann: list[Any] = []
    shadows = []
    for s in specs:
        x = np.copy(s.value) if isinstance(s.value, np.ndarray) else s.value
        if isinstance(s, fd.Dup):
            dx = r.standard_normal(np.shape(x))
            shadows.append(dx)
            ann.append(Duplicated(x, dx))
        elif isinstance(s, fd.Active):
            ann.append(Duplicated(x, float(r.standard_normal())))
        else:
            ann.append(Const(x))
    tangent = enzpy.autodiff(f, *ann, mode=Forward)
    return [tangent, *shadows]


def _assert_same(ours: list[Any], twins: list[Any]) -> None:
    for a, b in zip(ours, twins, strict=True):
        if a is None or b is None:
            assert a is None and b is None
            continue
        scale = max(float(np.max(np.abs(b), initial=0.0)), 1.0)
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * scale)


@names
def test_derivatives_equal_those_of_the_serial_twin(name: str, threads: int) -> None:
    kernel, twin = KERNELS[name], _twin(KERNELS[name])
    specs = _specs(name)
    _assert_same(_reverse(kernel, specs, 1), _reverse(twin, specs, 1))
    _assert_same(_forward(kernel, specs, 2), _forward(twin, specs, 2))


@names
def test_primal_equals_the_serial_twin(name: str, threads: int) -> None:
    # the reference for the claim that the serial compile has the parallel one's
    # semantics (up to the order of the reductions)
    specs = _specs(name)
    args = [s.value for s in specs]
    copies = [np.copy(a) if isinstance(a, np.ndarray) else a for a in args]
    ours = KERNELS[name](*args)
    theirs = _twin(KERNELS[name])(*copies)
    if ours is not None:
        assert ours == pytest.approx(theirs, rel=1e-13)
    for a, b in zip(args, copies, strict=True):
        if isinstance(a, np.ndarray):
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize(
    "kernel, xs",
    [
        (pairwise_energy, lambda r: (r.standard_normal((8, 3)),)),
        (scaled_reductions, lambda r: (r.standard_normal(10), 0.4)),
        (parallel_callee, lambda r: (r.standard_normal(13),)),
    ],
    ids=["pairwise_energy", "scaled_reductions", "parallel_callee"],
)
def test_gradient_matches_finite_differences(kernel: Any, xs: Any, threads: int) -> None:
    fd.check_gradient(kernel, *xs(_rng(5)))


# What the engine decides for each prange loop (its log), the same in both
# modes: a sum (s += t), each iteration's own elements and elements that
# chunks share (in reverse mode added into copies of the shadow) run on
# numba's threads; a product, or an index the engine cannot bound, stay
# serial.
ON_THREADS = {
    "map_and_reduce": ["parallel"],
    "stencil": ["parallel"],
    "heat_swap": ["parallel", "parallel"],
    "heat_copy": ["parallel", "parallel"],
    "energy_over_steps": ["parallel", "parallel"],
    "branchy_sum": ["parallel"],
    "guarded_division": ["parallel"],
    "scaled_reductions": ["serial: it carries a value with a derivative"],
    "pairwise_energy": ["parallel", "parallel"],  # and a copy for pos.shape[1] == 0
    "matvec_tanh": ["parallel", "parallel"],  # and a copy for a.shape[1] == 0
    "charged_pairs": ["parallel"],
    "rows_stencil": ["parallel"],
    "gram_tanh": ["parallel", "parallel"],  # and a copy for x.shape[1] == 0
    "two_sums": ["parallel"],
    "rows": ["parallel", "serial: the engine cannot bound the elements"],
}


@pytest.mark.parametrize("mode", [Reverse, Forward], ids=["reverse", "forward"])
@pytest.mark.parametrize("name", list(ON_THREADS))
def test_prange_loops_run_on_threads_where_they_are_race_free(name: str, mode: Any) -> None:
    specs = _specs(name)
    if mode is Forward:
        specs = [fd.Dup(s.value) if isinstance(s, fd.Active) else s for s in specs]
    shadows = {
        i: np.ones_like(s.value) if isinstance(s.value, np.ndarray) else 1.0
        for i, s in enumerate(specs)
        if isinstance(s, fd.Dup)
    }
    log = enzpy.explain(KERNELS[name], *_annotated(specs, shadows), mode=mode)
    decided = sorted(
        m.group(1)
        for line in log.splitlines()
        if (m := re.match(r"\s*parallel .*:\d+: (.*)$", line))
    )
    expected = sorted(ON_THREADS[name])
    assert len(decided) == len(expected), log
    for got, want in zip(decided, expected, strict=True):
        assert got.startswith(want), log


def test_a_strided_view_keeps_the_reverse_serial_and_right(threads: int) -> None:
    # a view's steps are run-time values of unknown sign: the engine cannot
    # bound what a chunk reads, so the loop's reverse stays serial, and says why
    big = _rng(11).standard_normal((9, 6))
    pos = big[:, ::2]
    log = enzpy.explain(pairwise_energy, Duplicated(pos, np.zeros_like(pos)))
    assert "serial: the engine cannot bound the elements" in log
    fd.check_gradient(pairwise_energy, pos)


@pytest.mark.parametrize("mode", [Reverse, Forward], ids=["reverse", "forward"])
def test_loops_too_short_for_a_launch_run_serially_and_right(mode: Any) -> None:
    # with the default floor, a short loop learns its cost on its first run
    # and stays on one thread; the results are the chunked ones
    _parallel.set_min_cycles(_parallel.DEFAULT_MIN_CYCLES)
    numba.set_num_threads(2)
    specs = _specs("heat_swap")
    run = _reverse if mode is Reverse else _forward
    first, again = run(heat_swap, specs, 4), run(heat_swap, specs, 4)
    _parallel.set_min_cycles(0)
    chunked = run(heat_swap, specs, 4)
    _assert_same(first, chunked)
    _assert_same(again, chunked)


def test_the_launch_floor_is_validated() -> None:
    with pytest.raises(enzpy.EnzpyValueError, match="0 or more"):
        _parallel.set_min_cycles(-1)


def test_an_exception_in_a_parallel_loop_propagates_and_the_next_call_is_right(
    threads: int,
) -> None:
    # the chunk that divides by zero is one of several (forward mode runs the
    # loop's chunks on the threads; the reverse sweep never starts)
    x = np.array([0.5, 0.3, -1.5, 2.0, 1.0, 0.0, -0.2, 0.7])
    with pytest.raises(ZeroDivisionError):
        enzpy.autodiff(guarded_division, Duplicated(x, np.zeros(8)), Active(0.0))
    with pytest.raises(ZeroDivisionError):
        enzpy.autodiff(
            guarded_division, Duplicated(x, np.ones(8)), Duplicated(0.0, 1.0), mode=Forward
        )
    dx = np.zeros(8)
    _, dc = enzpy.autodiff(guarded_division, Duplicated(x, dx), Active(0.5))
    np.testing.assert_allclose(dx, (0.5 - x**2) / (x**2 + 0.5) ** 2, rtol=1e-13)
    assert dc == pytest.approx(float(np.sum(-x / (x**2 + 0.5) ** 2)), rel=1e-13)
    tangent = enzpy.autodiff(
        guarded_division, Duplicated(x, np.ones(8)), Duplicated(0.5, 1.0), mode=Forward
    )
    assert tangent == pytest.approx(float(np.sum(dx) + dc), rel=1e-13)


def test_reverse_with_primal_returns_the_serial_primal(threads: int) -> None:
    # the primal the derivative returns is the serial code's: equal to the
    # parallel primal up to the order of the reduction's additions
    x = _rng(3).standard_normal(1000)
    y = np.zeros_like(x)
    _, primal = enzpy.autodiff(
        map_and_reduce,
        Duplicated(x, np.zeros_like(x)),
        Duplicated(y, np.zeros_like(y)),
        mode=enzpy.ReverseWithPrimal,
    )
    assert primal == pytest.approx(map_and_reduce(x, np.zeros_like(x)), rel=1e-13)
    assert primal == pytest.approx(_twin(map_and_reduce)(x, np.zeros_like(x)), rel=1e-15)


def test_batch_forward_lanes_equal_single_calls() -> None:
    r = _rng(7)
    pos = r.standard_normal((6, 3))
    dirs = tuple(r.standard_normal(pos.shape) for _ in range(3))
    lanes = enzpy.autodiff(
        pairwise_energy, BatchDuplicated(pos, tuple(d.copy() for d in dirs)), mode=Forward
    )
    for lane, d in zip(lanes, dirs, strict=True):
        single = enzpy.autodiff(pairwise_energy, Duplicated(pos, d.copy()), mode=Forward)
        assert lane == pytest.approx(single, rel=1e-13)
    # and along the gradient: <grad, d>
    grad = enzpy.gradient(pairwise_energy, pos)
    for lane, d in zip(lanes, dirs, strict=True):
        assert lane == pytest.approx(float(np.sum(grad * d)), rel=1e-11)


def test_batch_reverse_lanes_equal_single_calls() -> None:
    r = _rng(8)
    x = r.standard_normal(9)
    seeds = tuple(r.standard_normal(9) for _ in range(2))
    dxs = tuple(np.zeros(9) for _ in range(2))
    dys = tuple(s.copy() for s in seeds)
    enzpy.autodiff(
        map_and_reduce, BatchDuplicated(x, dxs), BatchDuplicated(np.zeros(9), dys), ret=(1.0, 2.0)
    )
    for dx, seed, dret in zip(dxs, seeds, (1.0, 2.0), strict=True):
        # d/dx of dret * sum(x^2) + <seed, 2 sin(x)>
        np.testing.assert_allclose(dx, 2.0 * dret * x + 2.0 * seed * np.cos(x), rtol=1e-13)


def test_batch_reverse_lanes_through_shadow_copies_equal_single_gradients(threads: int) -> None:
    # each lane's shadow gets copies of its own in every chunk
    r = _rng(12)
    pos, q = r.standard_normal((11, 2)), r.standard_normal(11)
    dpos = (np.zeros_like(pos), np.zeros_like(pos))
    dq = (np.zeros_like(q), np.zeros_like(q))
    enzpy.autodiff(
        charged_pairs, BatchDuplicated(pos, dpos), BatchDuplicated(q, dq), ret=(1.0, -3.0)
    )
    gpos, gq = enzpy.gradient(charged_pairs, pos, q)
    for lane, seed in enumerate((1.0, -3.0)):
        np.testing.assert_allclose(dpos[lane], seed * gpos, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(dq[lane], seed * gq, rtol=1e-12, atol=1e-14)


def test_heat_gradient_with_respect_to_the_diffusivity(threads: int) -> None:
    u = np.sin(np.linspace(0.0, np.pi, 16))

    def energy(a: float) -> float:
        return float(heat_swap(u.copy(), a, 6))

    _, (g_fd,) = fd.fd_gradient(energy, 0.15)
    _, da, _ = enzpy.autodiff(heat_swap, Duplicated(u.copy(), np.zeros(16)), Active(0.15), 6)
    assert da == pytest.approx(g_fd, rel=1e-6)


def test_derivative_is_callable_from_njit_code(threads: int) -> None:
    x = _rng(9).standard_normal(10)
    d = enzpy.derivative(scaled_reductions, Duplicated(x, np.zeros_like(x)), Active(0.7))

    @numba.njit
    def descent_step(x, a, lr):
        dx = np.zeros_like(x)
        (da,) = d(x, dx, a, 1.0)
        return x - lr * dx, a - lr * da

    @numba.njit(parallel=True)
    def from_parallel_code(x, a):
        dx = np.zeros_like(x)
        (da,) = d(x, dx, a, 1.0)
        return np.sum(dx) + da

    gx, ga = enzpy.gradient(scaled_reductions, x, 0.7)
    new_x, new_a = descent_step(x, 0.7, 0.1)
    np.testing.assert_allclose(new_x, x - 0.1 * gx, rtol=1e-14)
    assert new_a == pytest.approx(0.7 - 0.1 * ga, rel=1e-14)
    assert from_parallel_code(x, 0.7) == pytest.approx(np.sum(gx) + ga, rel=1e-13)


def _reduction_reading(name: str, value: Any, term: str) -> tuple[Any, dict[str, Any]]:
    """A parallel kernel summing ``term`` over a prange loop, whose globals
    (the dict returned) hold ``name = value``, to be rebound by the test."""
    scope: dict[str, Any] = {"np": np, "prange": prange, name: value}
    body = f"    s = 0.0\n    for i in prange(x.shape[0]):\n        s += {term}\n    return s\n"
    exec("def f(x):\n" + body, scope)
    return parallel(scope["f"]), scope


def test_rebound_global_read_in_a_prange_body_is_refused() -> None:
    # numba froze the old value into the parallel loop's body: a derivative of
    # the new value would be of another function than the one f(...) runs
    f, scope = _reduction_reading("C", 2.0, "C * x[i] * x[i]")
    x = np.linspace(0.1, 1.0, 5)
    f(x)
    scope["C"] = 3.0
    with pytest.raises(enzpy.UnsupportedError, match="'C'.*recompile"):
        enzpy.gradient(f, x)
    f.recompile()
    np.testing.assert_allclose(enzpy.gradient(f, x), 6.0 * x, rtol=1e-14)


def test_global_array_changed_in_place_is_refused() -> None:
    f, scope = _reduction_reading("W", np.linspace(1.0, 2.0, 5), "W[i] * np.sin(x[i])")
    x = np.linspace(0.1, 1.0, 5)
    np.testing.assert_allclose(enzpy.gradient(f, x), scope["W"] * np.cos(x), rtol=1e-14)
    scope["W"][:] = np.linspace(3.0, 5.0, 5)
    _cache.clear()
    with pytest.raises(enzpy.UnsupportedError, match="global array"):
        enzpy.gradient(f, x)


def test_options_other_than_parallel_are_kept() -> None:
    # error_model='numpy' (kept) makes 1/0 an inf; the default 'python' raises
    @numba.njit(parallel=True, error_model="numpy")
    def f(x, d):
        s = 0.0
        for i in prange(x.shape[0]):
            s += x[i] / d[i]
        return s

    x = np.ones(3)
    dx = np.zeros(3)
    enzpy.autodiff(f, Duplicated(x, dx), Const(np.array([1.0, 0.0, 2.0])))
    np.testing.assert_array_equal(dx, [1.0, np.inf, 0.5])


def test_parallel_options_given_as_a_dict() -> None:
    @numba.njit(parallel={"fusion": False, "prange": True})
    def f(x):
        s = 0.0
        for i in prange(x.shape[0]):
            s += np.exp(x[i]) * x[i]
        return s

    x = np.linspace(-1.0, 1.0, 9)
    np.testing.assert_allclose(enzpy.gradient(f, x), np.exp(x) * (1.0 + x), rtol=1e-14)


PARALLEL_KERNEL = """
import math
import numba
import numpy as np

SCALE = 1.5


@numba.njit(cache=True)
def weight(v):
    return v * math.sin(v)


@numba.njit(parallel=True, cache=True)
def f(x, a):
    s = 0.0
    for i in numba.prange(x.shape[0]):
        s += weight(x[i]) * a * SCALE * x[i]
    return s
"""


def test_parallel_kernel_derivatives_are_disk_cached(tmp_path: Path) -> None:
    (tmp_path / "kern.py").write_text(PARALLEL_KERNEL)
    first = run(tmp_path)
    assert first["info"]["disk_writes"] == 2
    check_against_fd(first, np.sin)
    second = run(tmp_path)
    assert (second["info"]["disk_hits"], second["info"]["disk_writes"]) == (2, 0)
    assert second["compiles"]["engine"] == 0
    check_against_fd(second, np.sin)
    assert len(entries(tmp_path)) == 2


def test_parallel_callee_alone_matches_its_analytic_derivative() -> None:
    x = np.linspace(0.1, 1.0, 4)
    dx = np.zeros(4)
    enzpy.autodiff(parallel_callee, Duplicated(x, dx), mode=Reverse)
    np.testing.assert_allclose(dx, np.cos(x) - x * np.sin(x), rtol=1e-14)


@parallel
def pair_energy(pos, c):
    # triangular pair loop: a prange reduction over rows, serial inner loops
    n, e = pos.shape[0], 0.0
    for i in prange(n):
        for j in range(i + 1, n):
            d2 = 0.0
            for k in range(pos.shape[1]):
                d2 += (pos[i, k] - pos[j, k]) ** 2
            e += c / (d2 + 0.5) ** 3
    return e


def test_hessian_vector_products_of_a_parallel_kernel(threads: int) -> None:
    # hvp differentiates the forward derivative again: its prange loops stay
    # serial loops there (an outlined launch was refused as a call into
    # numba's runtime), and the result is the finite difference of gradients.
    rng = np.random.default_rng(50)
    x, v = rng.random((6, 2)), rng.standard_normal((6, 2))
    hv = enzpy.hvp(pair_energy, x, v, 0.9)
    h = 1e-5
    gp = enzpy.gradient(pair_energy, x + h * v, 0.9)[0]
    gm = enzpy.gradient(pair_energy, x - h * v, 0.9)[0]
    np.testing.assert_allclose(hv, (gp - gm) / (2 * h), rtol=1e-5, atol=1e-6)
    serial = _twin(scaled_reductions)
    y = rng.uniform(-1, 1, 5)
    w = rng.standard_normal(5)
    np.testing.assert_allclose(
        enzpy.hvp(scaled_reductions, y, w, 0.7), enzpy.hvp(serial, y, w, 0.7), rtol=1e-12
    )
