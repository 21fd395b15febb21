"""The tape's memory budget (enzpy/_tape_budget.py, synthesis/Tape): a reverse-mode
call whose tape would grow past the budget raises TapeBudgetError before it takes the
memory, and an allocation of the derivative's own that fails raises MemoryError (it
used to surface as numba's "returned NULL without setting an exception")."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import fd
import numba
import numpy as np
import pytest

import enzpy
from enzpy import Active, Const, Duplicated, EnzpyError, EnzpyValueError, TapeBudgetError


@numba.njit
def heat_in_place(u0, a, steps):
    # a scalar carries the old left neighbour through the in-place sweep
    u = u0.copy()
    n = u.shape[0]
    for _ in range(steps):
        left = u[0]
        for i in range(1, n - 1):
            cur = u[i]
            u[i] = cur + a * (left - 2.0 * cur + u[i + 1])
            left = cur
    return np.sum(u * u)


@numba.njit
def tanh_history(x, w, steps):
    # a while loop (no trip count to reserve from): the tape grows as it goes
    h = x.copy()
    t = 0
    while t < steps:
        for i in range(h.shape[0]):
            h[i] = np.tanh(w * h[i] + 0.1 * i)
        t += 1
    return np.sum(h)


@numba.njit
def no_loop(x, a):
    return np.sin(x[0]) * a + x[1] * x[1]


@pytest.fixture
def budget():
    previous = enzpy.tape_budget()
    yield enzpy.set_tape_budget
    enzpy.set_tape_budget(previous)


def rng(seed):
    return np.random.default_rng(seed)


@pytest.mark.parametrize(
    "f,extra", [(heat_in_place, (0.2, 400)), (tanh_history, (0.7, 400))], ids=["range", "while"]
)
def test_tape_past_the_budget_raises_before_updating_shadows(budget, f, extra):
    budget("64K")
    x = rng(1).uniform(-1, 1, 500)
    dx = np.zeros(500)
    with pytest.raises(TapeBudgetError) as info:
        enzpy.autodiff(f, Duplicated(x, dx), Active(extra[0]), Const(extra[1]))
    err = info.value
    assert isinstance(err, MemoryError) and isinstance(err, EnzpyError)
    text = str(err)
    assert f.__name__ in text and "64 KiB" in text and "set_tape_budget" in text, text
    assert np.all(dx == 0.0)


@pytest.mark.parametrize(
    "f,extra", [(heat_in_place, (0.2, 40)), (tanh_history, (0.7, 40))], ids=["range", "while"]
)
def test_within_the_budget_after_a_refusal_the_gradient_is_right(budget, f, extra):
    x = rng(2).uniform(-1, 1, 60)
    budget(1 << 10)
    with pytest.raises(TapeBudgetError):
        enzpy.autodiff(f, Duplicated(x.copy(), np.zeros(60)), Active(extra[0]), Const(extra[1]))
    budget("1G")
    fd.check_vjp(f, fd.Dup(x), fd.Active(extra[0]), extra[1])


def test_batch_reverse_is_refused_whole_and_then_right(budget):
    # W cotangents share one forward sweep and one tape: a refusal leaves every
    # lane's shadow untouched, and within the budget each lane is the
    # single-direction gradient.
    x = rng(5).uniform(-1, 1, 50)
    seeds = [rng(6 + k).standard_normal(50) for k in range(3)]
    budget(1 << 10)
    lanes = [s.copy() for s in seeds]
    with pytest.raises(TapeBudgetError):
        enzpy.autodiff(
            heat_in_place, enzpy.BatchDuplicated(x.copy(), lanes), Active(0.2), Const(30)
        )
    for lane, seed in zip(lanes, seeds, strict=True):
        np.testing.assert_array_equal(lane, seed)
    budget("1G")
    _, das, _ = enzpy.autodiff(
        heat_in_place, enzpy.BatchDuplicated(x.copy(), lanes), Active(0.2), Const(30)
    )
    _, (dx_ref, da_ref, _) = fd.fd_gradient(heat_in_place, x, 0.2, 30)
    for lane, seed, da in zip(lanes, seeds, das, strict=True):
        np.testing.assert_allclose(lane - seed, dx_ref, rtol=1e-6, atol=1e-8)
        assert da == pytest.approx(da_ref, rel=1e-6)


def test_budget_counts_only_the_tape(budget):
    # no loop, nothing on the tape; forward mode has no tape at all
    budget(0)
    x = np.array([0.3, -1.2])
    dx = np.zeros(2)
    _, da = enzpy.autodiff(no_loop, Duplicated(x, dx), Active(2.0))
    np.testing.assert_allclose(dx, [2.0 * np.cos(0.3), -2.4], rtol=1e-14)
    assert da == pytest.approx(np.sin(0.3), rel=1e-14)
    x2 = rng(3).uniform(-1, 1, 30)
    v = rng(4).standard_normal(30)
    tangent = enzpy.autodiff(
        heat_in_place, Duplicated(x2, v.copy()), Duplicated(0.2, 0.0), Const(5), mode=enzpy.Forward
    )
    h = 1e-6
    reference = (heat_in_place(x2 + h * v, 0.2, 5) - heat_in_place(x2 - h * v, 0.2, 5)) / (2 * h)
    assert tangent == pytest.approx(reference, rel=1e-6)


def test_njit_callers_get_the_error_too(budget):
    x = rng(4).uniform(-1, 1, 300)
    d = enzpy.derivative(heat_in_place, Duplicated(x, np.zeros(300)), Active(0.2), Const(300))

    @numba.njit
    def caller(x, dx, steps):
        return d(x, dx, 0.2, steps, 1.0)

    dx = np.zeros(300)
    caller(x, dx, 2)
    budget("16K")
    with pytest.raises(TapeBudgetError, match="tape budget"):
        caller(x, dx, 300)


@pytest.mark.parametrize(
    "given,expected",
    [(0, 0), (123, 123), ("512", 512), ("8K", 8 << 10), ("3M", 3 << 20), ("2G", 2 << 30)],
)
def test_set_tape_budget_takes_bytes_and_units(budget, given, expected):
    previous = enzpy.tape_budget()
    assert budget(given) == previous
    assert enzpy.tape_budget() == expected


@pytest.mark.parametrize("bad", [-1, 1.5, True, "lots", "-3G", None])
def test_set_tape_budget_refuses_what_is_not_a_size(budget, bad):
    before = enzpy.tape_budget()
    with pytest.raises(EnzpyValueError):
        budget(bad)
    assert enzpy.tape_budget() == before


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that imports this enzpy."""
    environ = {**os.environ, "PYTHONPATH": str(Path(enzpy.__file__).parent.parent), **env}
    return subprocess.run(
        [sys.executable, "-P", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=environ,
        timeout=300,
    )


def test_budget_from_the_environment():
    ok = _python("import enzpy; print(enzpy.tape_budget())", ENZPY_TAPE_BUDGET="3M")
    assert ok.returncode == 0, ok.stderr
    assert int(ok.stdout) == 3 << 20
    bad = _python("import enzpy", ENZPY_TAPE_BUDGET="plenty")
    assert bad.returncode != 0 and "ENZPY_TAPE_BUDGET='plenty'" in bad.stderr


def test_failed_tape_allocation_is_a_memory_error():
    # The address space is capped below what the tape asks for, the budget is not:
    # realloc fails and the call raises MemoryError with enzpy's message.
    done = _python(
        """
        import resource
        import numpy as np, numba, enzpy
        from enzpy import Duplicated, Active

        @numba.njit
        def run(u0, a, steps):
            u = u0.copy()
            for _ in range(steps):
                for i in range(1, u.shape[0] - 1):
                    u[i] = u[i] + a * (u[i - 1] - 2.0 * u[i] + u[i + 1])
            return np.sum(u * u)

        u0 = np.random.rand(10000)
        enzpy.autodiff(run, Duplicated(u0, np.zeros(10000)), Active(0.2), 2)
        enzpy.set_tape_budget(1 << 50)
        with open("/proc/self/status") as status:
            kb = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (kb * 1024 + (1 << 30), hard))
        try:
            enzpy.autodiff(run, Duplicated(u0, np.zeros(10000)), Active(0.2), 100000)
        except MemoryError as e:
            print(type(e).__name__, e)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("MemoryError enzpy: the derivative could not allocate"), (
        done.stdout,
        done.stderr,
    )
