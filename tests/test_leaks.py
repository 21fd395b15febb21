"""Every way out of a derivative releases what it took: the normal return, an
exception the kernel raises, and an array the kernel returns that the caller
does not take. Checked by the growth of the process's resident memory over
thousands of calls of kernels with a 400 kB scratch or result array (a leak of
one array a call would grow it by more than 1 GB)."""

from __future__ import annotations

import numba
import numpy as np
import pytest

import enzpy
from enzpy import Const, Duplicated, Forward, Reverse

N = 50_000  # doubles: 400 kB a scratch array
CALLS = 3_000
LIMIT_MB = 64.0


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


@numba.njit
def scratch_then_maybe_raise(x, flag):
    t = np.empty(N)
    s = 0.0
    for i in range(N):
        t[i] = x[i % x.shape[0]] * 2.0
        s += t[i] * t[i]
    if flag > 0:
        raise ValueError("requested")
    return s


@numba.njit
def returns_an_array(x):
    t = np.empty(N)
    for i in range(N):
        t[i] = x[i % x.shape[0]] * 2.0
    return t


def _growth(call) -> float:
    for _ in range(20):
        call()
    before = _rss_mb()
    for _ in range(CALLS):
        call()
    return _rss_mb() - before


def _shadow(mode, x):
    return np.zeros_like(x) if mode is Reverse else np.ones_like(x)


@pytest.mark.parametrize("mode", [Reverse, Forward], ids=["reverse", "forward"])
def test_a_kernel_that_raises_leaks_nothing(mode):
    x = np.random.default_rng(0).random(7)

    def call():
        with pytest.raises(ValueError, match="requested"):
            enzpy.autodiff(
                scratch_then_maybe_raise, Duplicated(x, _shadow(mode, x)), Const(1), mode=mode
            )

    assert _growth(call) < LIMIT_MB


@pytest.mark.parametrize("mode", [Reverse, Forward], ids=["reverse", "forward"])
def test_a_kernel_that_returns_normally_leaks_nothing(mode):
    x = np.random.default_rng(1).random(7)

    def call():
        enzpy.autodiff(
            scratch_then_maybe_raise, Duplicated(x, _shadow(mode, x)), Const(0), mode=mode
        )

    assert _growth(call) < LIMIT_MB


@pytest.mark.parametrize("mode", [Reverse, Forward], ids=["reverse", "forward"])
def test_a_returned_array_the_caller_does_not_take_leaks_nothing(mode):
    x = np.random.default_rng(2).random(7)

    def call():
        enzpy.autodiff(returns_an_array, Duplicated(x, _shadow(mode, x)), mode=mode, ret=Const)

    assert _growth(call) < LIMIT_MB


def test_a_returned_array_handed_to_the_caller_is_the_primal_and_leaks_nothing():
    x = np.random.default_rng(3).random(7)
    _, out = enzpy.autodiff(
        returns_an_array, Duplicated(x, np.zeros_like(x)), mode=enzpy.ReverseWithPrimal, ret=Const
    )
    np.testing.assert_array_equal(out, returns_an_array(x))

    def call():
        enzpy.autodiff(
            returns_an_array,
            Duplicated(x, np.zeros_like(x)),
            mode=enzpy.ReverseWithPrimal,
            ret=Const,
        )

    assert _growth(call) < LIMIT_MB


@numba.njit
def long_sweep_in_place(u, steps):
    for _ in range(steps):
        for i in range(1, u.shape[0] - 1):
            u[i] = u[i] * u[i - 1] * 0.5 + 0.25 * u[i + 1]
    return u.sum()


def test_a_call_refused_by_the_tape_budget_frees_its_tape():
    # Small arrays, a long loop: the tape grows to the 4 MB budget, then the
    # call is refused and the tape is freed (12 GB over these calls if it were
    # not). The references the primal held at that point are not dropped
    # (docs/design.md §7.8b): a few hundred bytes per call here.
    before = enzpy.set_tape_budget("4M")
    try:
        u0 = np.random.default_rng(2).random(7)

        def call():
            with pytest.raises(enzpy.TapeBudgetError):
                enzpy.autodiff(
                    long_sweep_in_place, Duplicated(u0.copy(), np.zeros(7)), Const(10**6)
                )

        assert _growth(call) < LIMIT_MB
    finally:
        enzpy.set_tape_budget(before)
