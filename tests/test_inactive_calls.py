"""Calls that touch no differentiable data need no derivative, whatever they
call: print, seeded random numbers. They run as they are; the derivative
flows around them. A call that does touch differentiable data without a rule
stays a clear error."""

from __future__ import annotations

import inspect

import numba
import numpy as np
import pytest
from fd import check_gradient

import enzpy
from enzpy import Const, Duplicated, Forward


@numba.njit
def prints_as_it_goes(x):
    s = 0.0
    for i in range(x.shape[0]):
        s += np.sin(x[i])
    print("sum is", s)
    return s


@numba.njit
def seeded_noise(x):
    np.random.seed(7)  # noqa: NPY002 (numba supports the legacy API only)
    noise = np.random.rand(x.shape[0])  # noqa: NPY002
    s = 0.0
    for i in range(x.shape[0]):
        s += noise[i] * x[i] ** 3
    return s


@pytest.fixture
def x():
    return np.random.default_rng(5).random(4) + 0.5


def test_print_inside_a_kernel_works(x, capfd):
    dx = np.zeros_like(x)
    enzpy.autodiff(prints_as_it_goes, Duplicated(x, dx))
    np.testing.assert_allclose(dx, np.cos(x), rtol=1e-14)
    assert "sum is" in capfd.readouterr().out
    v = np.random.default_rng(8).random(4)
    t = enzpy.autodiff(prints_as_it_goes, Duplicated(x, v), mode=Forward)
    assert t == pytest.approx(np.cos(x) @ v, rel=1e-12)


def test_seeded_random_noise_is_a_constant(x):
    np.random.seed(7)  # noqa: NPY002 (numba supports the legacy API only)
    noise = np.random.rand(4)  # noqa: NPY002
    dx = np.zeros_like(x)
    enzpy.autodiff(seeded_noise, Duplicated(x, dx))
    np.testing.assert_allclose(dx, 3 * noise * x**2, rtol=1e-12)


@numba.njit
def svd_with_active_matrix(A, b):
    return np.sum(np.linalg.svd(A)[1] * b)


def test_lapack_without_a_rule_on_differentiable_data_is_still_refused():
    A = np.eye(3) * 2.0
    with pytest.raises(enzpy.UnsupportedError, match="np.linalg.svd"):
        enzpy.autodiff(svd_with_active_matrix, Duplicated(A, np.zeros_like(A)), Const(np.ones(3)))


# LAPACK on constant matrices: the calls read and write only constant data, so
# they need no derivative; their results are constants of the kernel.

_A = np.array([[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 2.0]])  # SPD
_B = np.array([1.0, -2.0, 0.5])


@numba.njit
def solve_then_weigh(x, A, b):
    w = np.linalg.solve(A, b)
    return np.sum(np.sin(x) * w)


@numba.njit
def inverse_quadratic_form(x, A):
    Ai = np.linalg.inv(A)
    return x @ (Ai @ x)


@numba.njit
def scaled_by_determinant(x, A):
    return np.linalg.det(A) * np.sum(x**3)


@numba.njit
def through_cholesky_factor(x, A):
    L = np.linalg.cholesky(A)
    y = L @ x
    return np.dot(y, y)


@numba.njit
def least_squares_weights(x, A, b):
    w = np.linalg.lstsq(A, b)[0]
    return np.sum(np.exp(x) * w)


@numba.njit
def eigenvalue_weights(x, A):
    lam = np.linalg.eigh(A)[0]
    return np.sum(lam * x * x)


_CONST_LAPACK = [
    (solve_then_weigh, lambda x: np.cos(x) * np.linalg.solve(_A, _B), (_A, _B)),
    (inverse_quadratic_form, lambda x: (np.linalg.inv(_A) + np.linalg.inv(_A).T) @ x, (_A,)),
    (scaled_by_determinant, lambda x: np.linalg.det(_A) * 3 * x**2, (_A,)),
    (
        through_cholesky_factor,
        lambda x: 2 * np.linalg.cholesky(_A).T @ (np.linalg.cholesky(_A) @ x),
        (_A,),
    ),
    (
        least_squares_weights,
        lambda x: np.exp(x) * np.linalg.lstsq(_A, _B, rcond=None)[0],
        (_A, _B),
    ),
    (eigenvalue_weights, lambda x: 2 * np.linalg.eigvalsh(_A) * x, (_A,)),
]


@pytest.mark.parametrize(
    "kernel, grad, consts", _CONST_LAPACK, ids=[k.py_func.__name__ for k, _, _ in _CONST_LAPACK]
)
def test_lapack_on_constant_matrices_with_active_arithmetic(kernel, grad, consts):
    x = np.array([0.3, -0.7, 1.1])
    dx = np.zeros(3)
    enzpy.autodiff(kernel, Duplicated(x, dx), *(Const(c.copy()) for c in consts))
    np.testing.assert_allclose(dx, grad(x), rtol=1e-12, atol=1e-14)
    check_gradient(lambda x_: kernel(x_, *consts), x)
    v = np.array([0.2, 0.5, -1.0])
    t = enzpy.autodiff(kernel, Duplicated(x, v), *(Const(c.copy()) for c in consts), mode=Forward)
    assert t == pytest.approx(np.dot(grad(x), v), rel=1e-12)


@numba.njit
def qr_of_active(A, b):
    return np.sum(np.linalg.qr(A)[1] @ b)  # <- refused


@pytest.mark.parametrize(
    "kernel, name",
    # solve, inv, det, cholesky, eigh and lstsq have LAPACK rules
    # (test_lapack_rules.py).
    [(qr_of_active, "np.linalg.qr")],
)
@pytest.mark.parametrize("mode", [enzpy.Reverse, Forward], ids=["reverse", "forward"])
def test_lapack_on_active_matrices_is_refused_naming_the_function(kernel, name, mode):
    A = _A.copy()
    extra = (Const(_B.copy()),) if kernel is qr_of_active else ()
    with pytest.raises(enzpy.UnsupportedError) as info:
        enzpy.autodiff(kernel, Duplicated(A, np.zeros_like(A)), *extra, mode=mode)
    e = info.value
    assert name in e.message and "numba_" not in e.message, e.message
    lines, first = inspect.getsourcelines(kernel.py_func)
    assert e.line == first + next(i for i, t in enumerate(lines) if "# <- refused" in t)


@numba.njit
def prints_an_array(x, w):
    s = 0.0
    for i in range(x.shape[0]):
        s += w[i] * x[i] ** 2
    print("w =", w)  # even a constant array
    return s


def test_printing_an_array_is_refused_naming_the_line(x):
    w = np.arange(4.0)
    with pytest.raises(enzpy.UnsupportedError, match=r"print\(\) of an array") as info:
        enzpy.autodiff(prints_an_array, Duplicated(x, np.zeros_like(x)), Const(w))
    assert info.value.line == inspect.getsourcelines(prints_an_array.py_func)[1] + 5
