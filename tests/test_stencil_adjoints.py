"""Stencil kernels written the ways numerical code writes them: their reverse
adds into neighbouring shadow elements from each iteration, which the engine
keeps in registers (transforms/CarriedAccumulators, design §7.9). Each is
checked against central finite differences and forward against reverse:
rotated buffers, a five-point stencil with the update copied back, a loop
that runs downwards, a 2-D sweep, a view of the array and float32."""

import numba
import numpy as np
import pytest
from fd import Active, Const, Dup, check_vjp
from kernels import wave_rotating_buffers
from test_forward import check_forward_reverse


@numba.njit
def five_point_copied_back(u, a, steps):
    n = u.shape[0]
    v = np.empty(n)
    for _ in range(steps):
        v[:2] = u[:2]
        v[n - 2 :] = u[n - 2 :]
        for i in range(2, n - 2):
            v[i] = u[i] + a * (-u[i - 2] + 16 * u[i - 1] - 30 * u[i] + 16 * u[i + 1] - u[i + 2])
        u[:] = v
    return np.sum(u**2)


@numba.njit
def downward_sweep(u, b):
    n = u.shape[0]
    w = np.zeros(n)
    for i in range(n - 2, 0, -1):
        w[i] = b[i] * u[i - 1] + u[i] * u[i] - 0.5 * u[i + 1]
    return np.sum(w * np.sin(w))


@numba.njit
def rows_of_a_grid(U, a):
    n, m = U.shape
    V = np.zeros((n, m))
    for i in range(1, n - 1):
        for j in range(1, m - 1):
            V[i, j] = a * (U[i + 1, j] + U[i - 1, j] + U[i, j + 1] + U[i, j - 1] - 4 * U[i, j])
    return np.sum(V * V)


@numba.njit
def through_a_view(x):
    y = x[1:]
    z = np.zeros(x.shape[0])
    for i in range(1, x.shape[0] - 2):
        z[i] = 2 * y[i - 1] + 3 * y[i] - 4 * y[i + 1]
    return np.sum(z**2)


@numba.njit
def float32_neighbours(u, a):
    n = u.shape[0]
    s = np.float32(0.0)
    for i in range(1, n - 1):
        w = u[i - 1] + a * u[i] + u[i + 1]
        s += w * w
    return s


def _rng():
    return np.random.default_rng(17)


CASES = {
    "wave_rotating": lambda r: (
        wave_rotating_buffers,
        [Dup(r.uniform(0.2, 1, 30)), Dup(r.uniform(0.2, 1, 30)), Active(0.4), Const(6)],
    ),
    "five_point_copied_back": lambda r: (
        five_point_copied_back,
        [Dup(r.uniform(0.2, 1, 25)), Active(0.05), Const(3)],
    ),
    "downward_sweep": lambda r: (
        downward_sweep,
        [Dup(r.uniform(0.2, 1, 21)), Dup(r.uniform(0.2, 1, 21))],
    ),
    "rows_of_a_grid": lambda r: (rows_of_a_grid, [Dup(r.uniform(0.2, 1, (7, 9))), Active(0.3)]),
    "through_a_view": lambda r: (through_a_view, [Dup(r.uniform(0.2, 1, 23))]),
    "float32_neighbours": lambda r: (
        float32_neighbours,
        [Dup(r.uniform(0.2, 1, 19).astype(np.float32)), Active(np.float32(0.3))],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_stencil_reverse_matches_finite_differences(name):
    f, specs = CASES[name](_rng())
    check_vjp(f, *specs)


@pytest.mark.parametrize("name", list(CASES))
def test_stencil_forward_and_reverse_are_adjoint(name):
    f, specs = CASES[name](_rng())
    check_forward_reverse(f, *specs)
