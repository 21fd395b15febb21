"""A stiff system integrated by backward Euler, differentiated through its
Newton solves by the implicit function theorem (enzpy.solvers.newton_system),
against differentiating the Newton iterations themselves.

A reaction-diffusion chain of N cells, u' = D (u_{i-1} - 2 u_i + u_{i+1}) -
k u_i^3 + a sin(t) (zero ends). Each step solves the N x N nonlinear system

    F(u_new; p) = u_new - u - dt (D L u_new - k u_new^3 + a sin(t)) = 0,

with p = (u, D, k, a, t, dt) packed in one vector. The loss is the squared
misfit of the first cell against data. Two versions of the same kernel:

* `loss_rule`: each step calls `step = enzpy.solvers.newton_system(residual,
  jacobian)`, whose reverse solves one transposed system per step at the
  solution (nothing of the iterations is taped);
* `loss_iterations`: the same Newton iterations written inline, with
  `np.linalg.solve` per iteration, which enzpy differentiates line by line
  (through its LAPACK rule, every iteration's factors taped).

Both gradients (d loss / d (D, k, a)) are checked against central finite
differences; time per gradient and peak memory of one gradient call are
printed. Run: `.venv/bin/python examples/implicit_euler_system.py`. Exit
code 1 on FAIL.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numba
import numpy as np

import enzpy
import enzpy.solvers
from enzpy import Const, Duplicated

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from peakmem import peak_growth  # noqa: E402

N = 8


@numba.njit
def residual(v, p):
    """p = (u (N values), D, k, a, t, dt)."""
    n = v.shape[0]
    d, k, a, t, dt = p[n], p[n + 1], p[n + 2], p[n + 3], p[n + 4]
    r = np.empty(n)
    for i in range(n):
        left = v[i - 1] if i > 0 else 0.0
        right = v[i + 1] if i < n - 1 else 0.0
        rate = d * (left - 2.0 * v[i] + right) - k * v[i] ** 3 + a * math.sin(t)
        r[i] = v[i] - p[i] - dt * rate
    return r


@numba.njit
def jacobian(v, p):
    n = v.shape[0]
    d, k, dt = p[n], p[n + 1], p[n + 4]
    j = np.zeros((n, n))
    for i in range(n):
        j[i, i] = 1.0 + dt * (2.0 * d + 3.0 * k * v[i] ** 2)
        if i > 0:
            j[i, i - 1] = -dt * d
        if i < n - 1:
            j[i, i + 1] = -dt * d
    return j


step = enzpy.solvers.newton_system(residual, jacobian, tol=1e-13)


@numba.njit
def pack(u, theta, t, dt):
    n = u.shape[0]
    p = np.empty(n + 5)
    p[:n] = u
    p[n] = theta[0]
    p[n + 1] = theta[1]
    p[n + 2] = theta[2]
    p[n + 3] = t
    p[n + 4] = dt
    return p


@numba.njit
def loss_rule(theta, data, dt):
    u = np.full(N, 0.5)
    misfit = 0.0
    for s in range(data.shape[0]):
        u = step(u, pack(u, theta, (s + 1) * dt, dt))
        misfit += (u[0] - data[s]) ** 2
    return misfit


@numba.njit
def loss_iterations(theta, data, dt):
    u = np.full(N, 0.5)
    misfit = 0.0
    for s in range(data.shape[0]):
        p = pack(u, theta, (s + 1) * dt, dt)
        v = u.copy()
        for _ in range(100):
            delta = np.linalg.solve(jacobian(v, p), residual(v, p))
            v = v - delta
            if np.max(np.abs(delta)) <= 1e-13 * (1.0 + np.max(np.abs(v))):
                break
        u = v
        misfit += (u[0] - data[s]) ** 2
    return misfit


def best_time(fn, repeat: int = 3) -> float:
    fn()
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    steps, dt = 400, 2e-2
    rng = np.random.default_rng(0)
    data = 0.3 * np.sin(np.arange(1, steps + 1) * dt) + 0.01 * rng.standard_normal(steps)
    theta = np.array([4.0, 2.0, 0.8])

    h = 1e-6
    fd = np.array(
        [
            (loss_rule(theta + h * e, data, dt) - loss_rule(theta - h * e, data, dt)) / (2 * h)
            for e in np.eye(3)
        ]
    )
    ok = True
    rows = []
    for name, f in (("solver rule", loss_rule), ("iterations", loss_iterations)):

        def grad(f=f):
            g = np.zeros(3)
            enzpy.autodiff(f, Duplicated(theta, g), Const(data), Const(dt))
            return g

        g = grad()
        err = float(np.max(np.abs(g - fd) / np.abs(fd)))
        good = err < 1e-6
        ok &= good
        t_primal = best_time(lambda f=f: f(theta, data, dt))
        t_grad = best_time(grad)
        try:
            mem = f"{peak_growth(grad) / 1e6:8.1f} MB"
        except OSError:
            mem = "     n/a"
        rows.append((name, g, err, good, t_primal, t_grad, mem))

    print(f"backward Euler, {N} cells, {steps} steps; finite differences: {fd}")
    print(
        f"{'gradient by':<12} {'rel err':>9}  {'primal':>9} {'gradient':>9} {'ratio':>6} "
        f"{'peak mem':>11}"
    )
    for name, _, err, good, tp, tg, mem in rows:
        print(
            f"{name:<12} {err:9.1e}  {tp * 1e3:7.2f}ms {tg * 1e3:7.2f}ms {tg / tp:6.2f} {mem}  "
            f"{'ok' if good else 'FAIL'}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
