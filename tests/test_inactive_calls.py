"""Calls that touch no differentiable data need no derivative, whatever they
call: print, seeded random numbers. They run as they are; the derivative
flows around them. A call that does touch differentiable data without a rule
stays a clear error."""

from __future__ import annotations

import numba
import numpy as np
import pytest

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
def solve_with_active_matrix(A, b):
    return np.sum(np.linalg.solve(A, b))


def test_lapack_on_differentiable_data_is_still_refused():
    A = np.eye(3) * 2.0
    with pytest.raises(enzpy.UnsupportedError, match="np.linalg.solve"):
        enzpy.autodiff(solve_with_active_matrix, Duplicated(A, np.zeros_like(A)), Const(np.ones(3)))
