"""Recursive njit functions (issue 10): self recursion, mutual recursion and tree
recursion, reached from a kernel directly, from a loop, or twice with different
active arguments. Forward mode (plain, with the primal, batched) gives each
recursive function a tangent function of its own; reverse mode gives it a reverse
function that re-runs its body forward, for recursive functions that write nothing
their caller can see. Others are refused in reverse mode with a message naming the
function, its line and split mode.

Every derivative is checked against central finite differences (fd.check_vjp,
check_jvp) and forward against reverse (<J v, w> == <v, Jᵀ w>).
"""

from __future__ import annotations

import inspect
import math

import fd
import numba
import numpy as np
import pytest
from test_forward import check_forward_reverse, check_jvp
from test_leaks import LIMIT_MB, _rss_mb
from test_reverse_batch import _batch_vs_separate

import enzpy
from enzpy import Active, BatchDuplicated, Duplicated, Forward, ForwardWithPrimal


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------------
# recursive functions
# ---------------------------------------------------------------------------------


@numba.njit
def rfact(x, n):
    # factorial-like: x * g(x, n - 1), linear recursion of depth n
    if n <= 0:
        return 1.0 + 0.1 * x
    return x * rfact(x, n - 1)


@numba.njit
def rpow(x, n):
    # power by squaring, with branches on the integer argument
    if n == 0:
        return 1.0
    if n % 2 == 0:
        h = rpow(x, n // 2)
        return h * h
    return x * rpow(x, n - 1)


@numba.njit
def rhorner(c, x, i):
    # recursive Horner: c[i] + x * (c[i+1] + x * (...)), reading an array
    if i == c.shape[0] - 1:
        return c[i]
    return c[i] + x * rhorner(c, x, i + 1)


@numba.njit
def r_even(x, n):
    if n == 0:
        return x
    return math.sin(r_odd(x, n - 1)) + 0.5 * x


@numba.njit
def r_odd(x, n):
    if n == 0:
        return x * x
    return 1.1 * r_even(0.9 * x, n - 1)


@numba.njit
def rfib(a, b, n):
    # tree recursion: two recursive calls per level
    if n <= 1:
        return a * b
    return rfib(a, b, n - 1) * 0.5 + math.sin(rfib(b, a, n - 2))


@numba.njit
def rsum_halves(x, lo, hi):
    # tree recursion over the halves of a read-only array
    if hi - lo == 1:
        return math.sin(x[lo]) * x[lo]
    mid = (lo + hi) // 2
    return rsum_halves(x, lo, mid) + rsum_halves(x, mid, hi)


@numba.njit
def rmix(a, b, n):
    if n == 0:
        return a
    return a * math.cos(b) + rmix(b, a * 0.5, n - 1)


@numba.njit
def rscratch(x, n):
    # allocates a scratch array on every level (shadow allocations)
    t = np.empty(2)
    t[0] = x * x
    t[1] = math.sin(x)
    if n == 0:
        return t[0] + t[1]
    return t[0] + t[1] * rscratch(0.8 * x, n - 1)


@numba.njit
def rwrite(x, out, i):
    # writes into its caller's array: reverse mode needs split mode
    if i == x.shape[0]:
        return 0.0
    out[i] = 2.0 * x[i] * x[i]  # <- caller-visible write
    return out[i] + rwrite(x, out, i + 1)


# ---------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------


@numba.njit
def k_fact(x, n):
    return rfact(x, n) + math.sin(x)


@numba.njit
def k_pow(x, n):
    return rpow(x, n) * 0.5


@numba.njit
def k_horner(c, x):
    return rhorner(c, x, 0)


@numba.njit
def k_even_odd(x, n):
    return r_even(x, n) + r_odd(x, n)


@numba.njit
def k_fib(a, b, n):
    return rfib(a, b, n)


@numba.njit
def k_halves(x):
    return rsum_halves(x, 0, x.shape[0])


@numba.njit
def k_loop(x):
    s = 0.0
    for i in range(x.shape[0]):
        s += rpow(x[i], i + 1)
    return s


@numba.njit
def k_loop_out(x, out):
    for i in range(x.shape[0]):
        out[i] = rfact(x[i], i)


@numba.njit
def k_twice(a, c, n):
    # the same recursive function with different arguments active
    return rmix(a, 2.0, n) + rmix(c, a, n)


@numba.njit
def k_scratch(x, n):
    return rscratch(x, n)


@numba.njit
def k_write(x, out):
    return rwrite(x, out, 0)


@numba.njit
def k_overwrite_after(c, x):
    s = rhorner(c, x, 0)  # <- recursive call
    c[0] = 0.5 * c[0]
    return s


@numba.njit
def k_into_output(c, x, out):
    out[0] = rhorner(c, x, 0)
    out[1] = rhorner(c, -x, 1)


def line_of(func, marker: str) -> int:
    lines, first = inspect.getsourcelines(func.py_func)
    hits = [first + i for i, text in enumerate(lines) if marker in text]
    assert len(hits) == 1, hits
    return hits[0]


CASES = {
    "factorial_like_depth_7": (k_fact, lambda r: (fd.Active(r.uniform(0.8, 1.2)), 7)),
    "factorial_like_depth_0": (k_fact, lambda r: (fd.Active(r.uniform(0.8, 1.2)), 0)),
    "power_by_squaring": (k_pow, lambda r: (fd.Active(r.uniform(0.8, 1.1)), 13)),
    "recursive_horner": (
        k_horner,
        lambda r: (fd.Dup(r.uniform(-1, 1, 6)), fd.Active(r.uniform(-0.9, 0.9))),
    ),
    "mutual_even_odd": (k_even_odd, lambda r: (fd.Active(r.uniform(0.3, 0.9)), 6)),
    "tree_fib_like": (
        k_fib,
        lambda r: (fd.Active(r.uniform(0.4, 0.9)), fd.Active(r.uniform(0.4, 0.9)), 6),
    ),
    "tree_sum_of_halves": (k_halves, lambda r: (fd.Dup(r.uniform(-1, 1, 11)),)),
    "in_kernel_loop": (k_loop, lambda r: (fd.Dup(r.uniform(0.7, 1.1, 5)),)),
    "in_kernel_loop_into_output": (
        k_loop_out,
        lambda r: (fd.Dup(r.uniform(0.7, 1.1, 5)), fd.Dup(np.zeros(5))),
    ),
    "called_twice_different_active_args": (
        k_twice,
        lambda r: (fd.Active(r.uniform(0.2, 0.9)), fd.Active(r.uniform(0.2, 0.9)), 4),
    ),
    "scratch_array_per_level": (k_scratch, lambda r: (fd.Active(r.uniform(0.5, 1.0)), 5)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_reverse_matches_finite_differences(name: str) -> None:
    f, make = CASES[name]
    fd.check_vjp(f, *make(rng(1)))


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_matches_finite_differences(name: str) -> None:
    f, make = CASES[name]
    check_jvp(f, *make(rng(2)))


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_agrees_with_reverse(name: str) -> None:
    f, make = CASES[name]
    check_forward_reverse(f, *make(rng(3)))


def test_factorial_like_against_analytic_derivative() -> None:
    # d/dx [x^n (1 + 0.1 x) + sin x]
    x, n = 1.07, 9
    expect = n * x ** (n - 1) * (1 + 0.1 * x) + 0.1 * x**n + math.cos(x)
    (dx, _) = enzpy.autodiff(k_fact, Active(x), n)
    fd.assert_close_to_reference(dx, expect, what="reverse")
    t = enzpy.autodiff(k_fact, Duplicated(x, 1.0), n, mode=Forward)
    fd.assert_close_to_reference(t, expect, what="forward")
    t, primal = enzpy.autodiff(k_fact, Duplicated(x, 1.0), n, mode=ForwardWithPrimal)
    fd.assert_close_to_reference(t, expect, what="forward with primal")
    assert primal == k_fact(x, n)


def test_batch_forward_equals_separate_directions() -> None:
    r = rng(4)
    x = r.uniform(-1, 1, 9)
    dirs = [r.standard_normal(9) for _ in range(3)]
    batch = enzpy.autodiff(
        k_halves, BatchDuplicated(x, tuple(d.copy() for d in dirs)), mode=Forward
    )
    assert len(batch) == 3
    for k, d in enumerate(dirs):
        one = enzpy.autodiff(k_halves, Duplicated(x, d.copy()), mode=Forward)
        np.testing.assert_allclose(batch[k], one, rtol=1e-13)
        np.testing.assert_allclose(one, float(np.dot(np.sin(x) + x * np.cos(x), d)), rtol=1e-12)


def test_batch_forward_of_mutual_recursion_with_scalar_tangents() -> None:
    x = 0.61
    batch = enzpy.autodiff(k_even_odd, BatchDuplicated(x, (1.0, -2.0, 0.5)), 5, mode=Forward)
    g = enzpy.autodiff(k_even_odd, Duplicated(x, 1.0), 5, mode=Forward)
    h = 1e-6
    fd.assert_close_to_reference(g, (k_even_odd(x + h, 5) - k_even_odd(x - h, 5)) / (2 * h), 1e-6)
    np.testing.assert_allclose(batch, [g, -2.0 * g, 0.5 * g], rtol=1e-13)


def test_batch_reverse_equals_separate_cotangents() -> None:
    r = rng(5)
    _batch_vs_separate(
        k_horner, [("dup", r.uniform(-1, 1, 7)), ("active", 0.7)], 3, (1.0, -0.5, 2.0), r
    )
    _batch_vs_separate(k_fib, [("active", 0.6), ("active", 0.45), ("const", 6)], 2, (1.0, 3.0), r)


def test_recursion_depth_from_int_argument_changes_the_derivative() -> None:
    # one compiled derivative serves every depth: n is read at run time
    d = enzpy.derivative(k_pow, Active(1.01), 1)
    for n in (1, 2, 7, 64, 1000):
        (dx,) = d(1.01, n, 1.0)
        fd.assert_close_to_reference(dx, 0.5 * n * 1.01 ** (n - 1), what=f"n={n}")


def test_recursion_into_the_kernel_itself() -> None:
    fd.check_vjp(rfib, fd.Active(0.7), fd.Active(0.4), 5)
    check_jvp(rfib, fd.Active(0.7), fd.Active(0.4), 5)


def test_forward_mode_through_recursion_that_writes_the_callers_array() -> None:
    r = rng(6)
    check_jvp(k_write, fd.Dup(r.uniform(-1, 1, 6)), fd.Dup(np.zeros(6)))


def test_reverse_mode_refuses_recursion_that_writes_the_callers_array() -> None:
    x, out = np.linspace(0.1, 0.6, 6), np.zeros(6)
    dx, dout = np.zeros(6), np.zeros(6)
    with pytest.raises(enzpy.UnsupportedError) as info:
        enzpy.autodiff(k_write, Duplicated(x, dx), Duplicated(out, dout))
    e = info.value
    assert "rwrite" in e.message and "split mode" in e.message, e.message
    assert e.line == line_of(rwrite, "# <- caller-visible write"), e
    np.testing.assert_array_equal(dx, 0.0)


def test_reverse_mode_refuses_an_array_changed_after_the_recursive_call() -> None:
    # the reverse sweep re-runs the recursive function on the array's contents
    c = np.linspace(0.1, 0.6, 6)
    with pytest.raises(enzpy.UnsupportedError) as info:
        enzpy.autodiff(k_overwrite_after, Duplicated(c, np.zeros(6)), Active(0.3))
    e = info.value
    assert "rhorner" in e.message and "'c'" in e.message and "split mode" in e.message, e
    # the call, in the kernel or (numba specializes rhorner for the literal 0 and
    # that specialization is inlined) the recursive call inside rhorner
    calls = (
        line_of(k_overwrite_after, "# <- recursive call"),
        line_of(rhorner, "rhorner(c, x, i + 1)"),
    )
    assert e.line in calls, e
    check_jvp(k_overwrite_after, fd.Dup(c), fd.Active(0.3))


def test_reverse_mode_with_the_kernel_writing_another_array() -> None:
    r = rng(7)
    args = (fd.Dup(r.uniform(-1, 1, 5)), fd.Active(0.6), fd.Dup(np.zeros(2)))
    fd.check_vjp(k_into_output, *args)
    check_jvp(k_into_output, *args)


def test_second_derivatives_through_recursion_are_refused() -> None:
    # hessian and hvp differentiate a derivative again; through recursion that
    # is refused, never a wrong number
    x = np.linspace(0.2, 0.9, 5)
    for second in (lambda: enzpy.hessian(k_halves, x), lambda: enzpy.hvp(k_halves, x, x)):
        with pytest.raises(enzpy.UnsupportedError) as info:
            second()
        assert "rsum_halves" in info.value.message, info.value
        assert "differentiated again" in info.value.message, info.value


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_no_leak_over_repeated_calls(mode: str) -> None:
    x = np.linspace(0.2, 0.9, 64)
    if mode == "reverse":
        d = enzpy.derivative(k_scratch, Active(0.7), 30)
        halves = enzpy.derivative(k_halves, Duplicated(x, np.zeros(64)))

        def call() -> None:
            d(0.7, 30, 1.0)
            halves(x, np.zeros(64), 1.0)

    else:
        d = enzpy.derivative(k_scratch, Duplicated(0.7, 1.0), 30, mode=Forward)
        halves = enzpy.derivative(k_halves, Duplicated(x, np.ones(64)), mode=Forward)

        def call() -> None:
            d(0.7, 1.0, 30)
            halves(x, np.ones(64))

    for _ in range(200):
        call()
    before = _rss_mb()
    for _ in range(20_000):
        call()
    assert _rss_mb() - before < LIMIT_MB / 4
