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

from enzpy import Duplicated
from enzpy.testing import check_derivative


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


@numba.njit
def coupled_fields(u0, v0, du, dv, k, steps):
    # Two fields diffusing and reacting in one sweep (Gray-Scott style):
    # two stencils per loop, scratch buffers swapped every step, and the
    # coefficients' adjoints summed over every point and step.
    n = u0.shape[0]
    u, v = u0.copy(), v0.copy()
    un, vn = np.empty(n), np.empty(n)
    for _ in range(steps):
        un[0], un[n - 1], vn[0], vn[n - 1] = u[0], u[n - 1], v[0], v[n - 1]
        for i in range(1, n - 1):
            r = u[i] * v[i] * v[i]
            un[i] = u[i] + du * (u[i - 1] - 2.0 * u[i] + u[i + 1]) - r + k * (1.0 - u[i])
            vn[i] = v[i] + dv * (v[i - 1] - 2.0 * v[i] + v[i + 1]) + r - 2.0 * k * v[i]
        u, un = un, u
        v, vn = vn, v
    return np.sum(u * v) + np.sum(v**2)


@numba.njit
def history_of_two_rows(h, c):
    # A history array whose row t+1 reads row t's neighbours: the reverse
    # reads and clears one shadow row and adds into the one before.
    for t in range(h.shape[0] - 1):
        for i in range(1, h.shape[1] - 1):
            h[t + 1, i] = h[t, i] + c * (h[t, i - 1] - 2.0 * h[t, i] + h[t, i + 1]) ** 2
    return np.sum(h[-1] ** 2)


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
    "coupled_fields": lambda r: (
        coupled_fields,
        [
            Dup(r.uniform(0.2, 1, 24)),
            Dup(r.uniform(0.2, 1, 24)),
            Active(0.2),
            Active(0.1),
            Active(0.03),
            Const(5),
        ],
    ),
    "history_of_two_rows": lambda r: (
        history_of_two_rows,
        [Dup(r.uniform(0.2, 1, (6, 17))), Active(0.3)],
    ),
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


def test_coupled_fields_in_batches_match_finite_differences():
    # Widths 1 and 3: a reverse batch carries both stencils' partial sums for
    # every lane, and a forward batch keeps the lanes' shadows apart.
    r = _rng()
    check_derivative(
        coupled_fields,
        r.uniform(0.2, 1, 24),
        r.uniform(0.2, 1, 24),
        0.2,
        0.1,
        0.03,
        5,
        activities=[Duplicated, Duplicated, None, None, None, None],
    )
