"""Calls between njit functions (issue 3): a callee is differentiated whether or
not numba (or LLVM) inlines it -- helpers called from loops and from several
call sites, nested helpers, helpers that write into array arguments or return
tuples, recursion (explicit signature) and functions that return arrays.

Each derivative is checked against finite differences (fd.check_vjp), so a
silently wrong or zero derivative fails the test.
"""

import inspect
import math
import os

import fd
import numba
import numpy as np

import enzpy
from enzpy import Active, Duplicated


def rng(seed):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------


@numba.njit
def g(x, a):
    return a * x * math.sin(x) + math.exp(-x * x)


@numba.njit(inline="always")
def g_inlined_by_numba(x, a):
    return a * x * math.sin(x) + math.exp(-x * x)


@numba.njit
def helper_in_loop(x, a):
    s = 0.0
    for i in range(x.shape[0]):
        s += g(x[i], a)
    return s


@numba.njit
def numba_inlined_helper_in_loop(x, a):
    s = 0.0
    for i in range(x.shape[0]):
        s += g_inlined_by_numba(x[i], a)
    return s


@numba.njit
def two_call_sites(x, y, a):
    s = 0.0
    for i in range(x.shape[0]):
        s += g(x[i], a) * g(y[i], 2.0 * a + 1.0)
    return s + g(a, a)


@numba.njit
def inner(x):
    return x * x + math.cos(x)


@numba.njit
def middle(x, a):
    return inner(a * x) * inner(x - a)


@numba.njit
def outer(x, a):
    s = 0.0
    for i in range(x.shape[0]):
        s += middle(x[i], a) / (1.0 + inner(x[i]))
    return s


@numba.njit
def add_scaled_square(out, x, a):
    # a helper that writes into its array argument (read-modify-write)
    for i in range(x.shape[0]):
        out[i] += a * x[i] * x[i]


@numba.njit
def scale_in_place(x, c):
    for i in range(x.shape[0]):
        x[i] *= c


@numba.njit
def helper_writes_arrays(x, out, a):
    add_scaled_square(out, x, a)
    scale_in_place(out, 1.0 + a)
    add_scaled_square(out, out, 0.5)  # aliased arguments inside the callee
    s = 0.0
    for i in range(out.shape[0]):
        s += out[i] * x[i]
    return s


@numba.njit
def polar(x, y):
    return math.sqrt(x * x + y * y), math.atan2(y, x)


@numba.njit
def helper_returns_tuple(x, y):
    s = 0.0
    for i in range(x.shape[0]):
        r, t = polar(x[i], y[i])
        s += r * math.sin(t) + t * t
    return s


@numba.njit
def stats(x):
    m = 0.0
    for i in range(x.shape[0]):
        m += x[i]
    m /= x.shape[0]
    v = 0.0
    for i in range(x.shape[0]):
        v += (x[i] - m) ** 2
    return m, v / x.shape[0]


@numba.njit
def helper_returns_tuple_from_array(x):
    m, v = stats(x)
    return m * m + v


def test_helper_called_from_a_loop():
    fd.check_vjp(helper_in_loop, fd.Dup(rng(1).uniform(-1, 1, 6)), fd.Active(0.7))


def test_helper_inlined_by_numba():
    fd.check_vjp(numba_inlined_helper_in_loop, fd.Dup(rng(2).uniform(-1, 1, 6)), fd.Active(0.7))


def test_helper_at_two_call_sites_with_different_arguments():
    r = rng(3)
    fd.check_vjp(
        two_call_sites, fd.Dup(r.uniform(-1, 1, 5)), fd.Dup(r.uniform(-1, 1, 5)), fd.Active(0.4)
    )


def test_nested_helpers():
    fd.check_vjp(outer, fd.Dup(rng(4).uniform(-1, 1, 5)), fd.Active(0.6))


def test_helper_writes_into_array_arguments():
    r = rng(5)
    fd.check_vjp(
        helper_writes_arrays,
        fd.Dup(r.uniform(-1, 1, 6)),
        fd.Dup(r.uniform(-1, 1, 6)),
        fd.Active(0.3),
    )


def test_helper_returning_a_tuple_of_scalars():
    r = rng(6)
    fd.check_vjp(helper_returns_tuple, fd.Dup(r.uniform(0.2, 1, 5)), fd.Dup(r.uniform(0.2, 1, 5)))


def test_helper_returning_a_tuple_computed_from_an_array():
    fd.check_vjp(helper_returns_tuple_from_array, fd.Dup(rng(7).uniform(-1, 1, 6)))


def test_helper_result_reused_across_calls_and_cached():
    # the same helper's derivative in two different callers, both called twice
    x = rng(8).uniform(-1, 1, 6)
    for _ in range(2):
        fd.check_vjp(helper_in_loop, fd.Dup(x), fd.Active(0.7), trials=1)
        fd.check_vjp(outer, fd.Dup(x), fd.Active(0.6), trials=1)


# ---------------------------------------------------------------------------------
# recursion
# ---------------------------------------------------------------------------------


@numba.njit("float64(float64, int64)")
def power_rec(x, n):
    if n == 0:
        return 1.0
    return x * power_rec(x, n - 1)


@numba.njit
def uses_recursion(x):
    s = 0.0
    for i in range(x.shape[0]):
        s += power_rec(x[i], i + 1)  # <- recursive call
    return s


@numba.njit("float64(float64, float64, int64)")
def fib_like(a, b, n):
    # two recursive calls per level (not tail recursive)
    if n <= 1:
        return a * b
    return fib_like(a, b, n - 1) * 0.5 + math.sin(fib_like(b, a, n - 2))


def line_of(func, marker):
    lines, first = inspect.getsourcelines(func.py_func)
    hits = [first + i for i, text in enumerate(lines) if marker in text]
    assert len(hits) == 1, hits
    return hits[0]


def test_recursive_function_with_explicit_signature():
    # A recursive callee reached from a loop of the kernel (tests/test_recursion.py
    # covers recursion in depth).
    x = rng(9).uniform(0.5, 1.2, 4)
    fd.check_vjp(uses_recursion, fd.Dup(x))


def test_recursive_function_called_directly():
    fd.check_vjp(fib_like, fd.Active(0.7), fd.Active(0.4), 5)


# ---------------------------------------------------------------------------------
# functions that return arrays
# ---------------------------------------------------------------------------------


@numba.njit
def returns_array(x, a):
    y = np.empty_like(x)
    for i in range(x.shape[0]):
        y[i] = a * x[i] * x[i]
    return y


@numba.njit
def returns_array_and_writes(x, out, a):
    y = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = a * math.sin(x[i])
        y[i] = 2.0 * out[i]
    return y


@numba.njit
def returns_copy_of_output(x, out, a):
    for i in range(x.shape[0]):
        out[i] = a * math.sin(x[i])
    return out.copy()  # <- copy


def test_array_return_is_refused_with_advice_or_works():
    x = rng(10).uniform(-1, 1, 5)
    dx = np.zeros(5)
    x0 = x.copy()
    try:
        res = enzpy.autodiff(returns_array, Duplicated(x, dx), Active(0.5))
    except enzpy.EnzpyError as e:
        msg = e.message.lower()
        assert "ret=enzpy.const" in msg or "output argument" in msg, e
        lines, first = inspect.getsourcelines(returns_array.py_func)
        assert e.line is not None and first <= e.line < first + len(lines), e
        np.testing.assert_array_equal(x, x0)
        np.testing.assert_array_equal(dx, 0.0)
        return
    # if it works, it cannot have seeded the return: the derivative is zero
    np.testing.assert_array_equal(dx, 0.0)
    assert res[1] == 0.0, res


def check_ret_const(kernel, seed):
    # ret=Const: the returned array is discarded; the derivative flows through
    # the output argument only. fd.check_vjp's primal must return None or a
    # float: FD runs a wrapper that drops the array, enzpy differentiates the
    # real function.
    def dropped(x, out, a):
        kernel(x, out, a)

    def backend(f, specs, shadows, ret_active, with_primal):
        return fd.enzpy_backend(kernel, specs, shadows, ret_active, with_primal)

    r = rng(seed)
    fd.check_vjp(
        dropped,
        fd.Dup(r.uniform(-1, 1, 5)),
        fd.DupNoNeed(np.zeros(5)),
        fd.Active(0.8),
        ret="const",
        backend=backend,
    )


def test_array_return_with_ret_const_differentiates_the_arguments():
    check_ret_const(returns_array_and_writes, 11)


def test_array_return_of_a_copy_with_ret_const():
    line = line_of(returns_copy_of_output, "# <- copy")
    try:
        check_ret_const(returns_copy_of_output, 12)
    except enzpy.UnsupportedError as e:
        assert e.line == line and "copy" in e.message, e
        raise


@numba.njit
def caller_of_array_returning_helper(x, a):
    y = returns_array(x, a)
    s = 0.0
    for i in range(y.shape[0]):
        s += y[i] * x[i]
    return s


def test_array_returning_helper_inside_a_kernel():
    fd.check_vjp(
        caller_of_array_returning_helper, fd.Dup(rng(12).uniform(-1, 1, 6)), fd.Active(0.9)
    )


def test_error_file_is_this_file():
    # sanity of line_of for the tests above
    assert os.path.samefile(inspect.getsourcefile(power_rec.py_func), __file__)
