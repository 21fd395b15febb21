"""Example numba kernels shared by the demo (examples/demo.py), the benchmark
(bench/) and the tests (tests/): one definition each, so that the function the
demo shows, the one the benchmark times and the one the tests check are the
same code.

Import it by plain name (``from kernels import heat``) with this folder on
``sys.path``: pytest has it in ``pythonpath`` (pyproject.toml), and the demo and
the benchmark scripts add it themselves.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit
def heat(u0, H, a):
    """Explicit 1-D heat equation u_t = a * u_xx with fixed ends: step t is
    written into row t+1 of the history array H (H[0] = u0), len(H) - 1 steps.
    Returns the sum of squares of the final row."""
    steps = H.shape[0] - 1
    n = H.shape[1]
    for i in range(n):
        H[0, i] = u0[i]
    for t in range(steps):
        H[t + 1, 0] = H[t, 0]  # fixed ends
        H[t + 1, n - 1] = H[t, n - 1]
        for i in range(1, n - 1):
            H[t + 1, i] = H[t, i] + a * (H[t, i - 1] - 2.0 * H[t, i] + H[t, i + 1])
    s = 0.0
    for i in range(n):
        s += H[steps, i] * H[steps, i]
    return s


@numba.njit
def dot(x, y):
    """Dot product of two 1-D arrays as an explicit loop."""
    s = 0.0
    for i in range(x.shape[0]):
        s += x[i] * y[i]
    return s


@numba.njit
def lorenz_rhs(s, k, sigma, rho, beta):
    """Right-hand side of the Lorenz system at the state s (length 3), written
    into k (length 3)."""
    k[0] = sigma * (s[1] - s[0])
    k[1] = s[0] * (rho - s[2]) - s[1]
    k[2] = s[0] * s[1] - beta * s[2]


@numba.njit
def wave_rotating_buffers(u0, v0, c, steps):
    """1-D wave equation, leapfrog, fixed ends: three buffers rotated every
    step (no history). Returns the energy of the final two states."""
    n = u0.shape[0]
    prev = u0.copy()
    cur = v0.copy()
    nxt = np.empty(n)
    c2 = c * c
    for _ in range(steps):
        nxt[0] = 0.0
        nxt[n - 1] = 0.0
        for i in range(1, n - 1):
            nxt[i] = 2.0 * cur[i] - prev[i] + c2 * (cur[i - 1] - 2.0 * cur[i] + cur[i + 1])
        prev, cur, nxt = cur, nxt, prev
    e = 0.0
    for i in range(n):
        e += cur[i] * cur[i] + 0.5 * (cur[i] - prev[i]) ** 2
    return e
