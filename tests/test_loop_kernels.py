"""Elementwise maps with math functions, reductions, weighted sums and
axpy-style updates: the loops whose derivatives the engine leaves in a shape
LLVM vectorizes (docs/design.md §6, reverse loops). Each kernel is checked in
reverse mode against central finite differences (fd.check_vjp), in forward
mode against them (check_jvp), and forward against reverse
(<J v, w> = <v, J^T w>), in float64 and float32, at sizes that leave a
vector body and a remainder (and a loop too short for vectors)."""

from __future__ import annotations

import fd
import numba
import numpy as np
import pytest
from test_forward import check_forward_reverse, check_jvp


@numba.njit
def map_exp_log(x, y):
    for i in range(x.shape[0]):
        y[i] = np.exp(0.5 * x[i]) * np.log(1.0 + x[i] * x[i])


@numba.njit
def map_sin_cos(x, y):
    n = len(x)
    for i in range(n):
        xi = x[i]
        y[i] = np.sin(xi) * np.cos(2.0 * xi) - np.cos(xi)


@numba.njit
def tanh_in_place(x, a):
    for i in range(x.size):
        x[i] = np.tanh(a * x[i])


@numba.njit
def sum_gauss(x):
    s = 0.0
    for i in range(x.shape[0]):
        s += np.exp(-x[i] * x[i])
    return s


@numba.njit
def weighted_sum(w, x):
    total = 0.0
    for i in range(len(x)):
        total = total + w[i] * np.sin(x[i]) / (1.0 + x[i] * x[i])
    return total


@numba.njit
def axpy_cos(a, x, y):
    for i in range(x.shape[0]):
        y[i] += a * np.cos(x[i])


@numba.njit
def dot_log(x, y):
    acc = 0.0
    for i in range(x.shape[0]):
        acc += x[i] * np.log(y[i])
    return acc


@numba.njit
def sum_x2_sin_scaled(x, c):
    s = 0.0
    for i in range(x.shape[0]):
        v = c * x[i]
        s += v * v * np.sin(v)
    return s


SIZES = [37, 3]
DTYPES = [np.float64, np.float32]


def _x(n, dtype, low=-1.5, high=1.5, seed=0):
    return fd.random_array(np.random.default_rng(seed + n), n, dtype, low, high)


def _checks(f, *args, ret="active"):
    fd.check_vjp(f, *args, ret=ret)
    check_jvp(f, *args, ret=ret)
    check_forward_reverse(f, *args, ret=ret)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_maps_of_math_functions_into_an_output(n, dtype):
    for f in (map_exp_log, map_sin_cos):
        x, y = _x(n, dtype), np.zeros(n, dtype)
        _checks(f, fd.Dup(x), fd.Dup(y), ret="const")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_an_in_place_tanh_map_with_an_active_scale(n, dtype):
    x = _x(n, dtype)
    _checks(tanh_in_place, fd.Dup(x), fd.Active(dtype(0.8)), ret="const")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_reductions_of_math_functions(n, dtype):
    x = _x(n, dtype)
    _checks(sum_gauss, fd.Dup(x))
    _checks(sum_x2_sin_scaled, fd.Dup(_x(n, dtype, seed=1)), fd.Active(1.3))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_weighted_sums_and_dot_products(n, dtype):
    w, x = _x(n, dtype, seed=2), _x(n, dtype, seed=3)
    _checks(weighted_sum, fd.Dup(w), fd.Dup(x))
    _checks(weighted_sum, fd.Const(w), fd.Dup(x))
    y = _x(n, dtype, low=0.5, high=2.0, seed=4)
    _checks(dot_log, fd.Dup(x), fd.Dup(y))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_axpy_style_update(n, dtype):
    x, y = _x(n, dtype, seed=5), _x(n, dtype, seed=6)
    _checks(axpy_cos, fd.Active(dtype(-0.7)), fd.Dup(x), fd.Dup(y), ret="const")
