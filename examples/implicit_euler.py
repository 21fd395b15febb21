"""An implicit integrator differentiated through its Newton solves by the
implicit function theorem (enzpy.solvers), against differentiating the Newton
iterations themselves.

Backward Euler for the stiff ODE  y' = -k y^3 + a sin(t): each step solves

    F(y_new; y, k, a, t, dt) = y_new - y - dt (-k y_new^3 + a sin(t)) = 0

for y_new. The loss is the squared misfit of the trajectory against data. Two
versions of the same kernel:

* `loss_rule`: each step calls `solve_step = enzpy.solvers.newton(residual)`,
  whose derivative is -F_p / F_y at the solution (one evaluation of F's
  partials per step, nothing taped inside the solve);
* `loss_iterations`: the same Newton iterations written inline, which enzpy
  differentiates line by line (every iteration's values are taped).

The example checks both gradients (d loss / d k, d loss / d a) against
central finite differences and prints their cost: time per gradient and peak
memory of one gradient call.

Run: `.venv/bin/python examples/implicit_euler.py` (after scripts/setup.sh).
Exit code 1 on FAIL.
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
from enzpy import Active, Const

# bench/peakmem measures the resident set growth of one call.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from peakmem import peak_growth  # noqa: E402


@numba.njit
def residual(y_new, y, k, a, t, dt):
    return y_new - y - dt * (-k * y_new**3 + a * math.sin(t))


solve_step = enzpy.solvers.newton(residual, tol=1e-13)


@numba.njit
def loss_rule(k, a, data, dt):
    y = 1.0
    misfit = 0.0
    for n in range(data.shape[0]):
        y = solve_step(y, y, k, a, (n + 1) * dt, dt)
        misfit += (y - data[n]) ** 2
    return misfit


@numba.njit
def loss_iterations(k, a, data, dt):
    y = 1.0
    misfit = 0.0
    for n in range(data.shape[0]):
        t = (n + 1) * dt
        x = y
        for _ in range(100):
            r = x - y - dt * (-k * x**3 + a * math.sin(t))
            step = r / (1.0 + 3.0 * dt * k * x * x)
            x -= step
            if abs(step) <= 1e-13 * (1.0 + abs(x)):
                break
        y = x
        misfit += (y - data[n]) ** 2
    return misfit


def best_time(fn, repeat: int = 5) -> float:
    fn()
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    steps, dt = 20000, 5e-3
    rng = np.random.default_rng(0)
    data = 0.5 * np.sin(np.arange(1, steps + 1) * dt) + 0.01 * rng.standard_normal(steps)
    k, a = 2.0, 0.8

    ok = True
    h = 1e-6
    fd_k = (loss_rule(k + h, a, data, dt) - loss_rule(k - h, a, data, dt)) / (2 * h)
    fd_a = (loss_rule(k, a + h, data, dt) - loss_rule(k, a - h, data, dt)) / (2 * h)
    rows = []
    for name, f in (("solver rule", loss_rule), ("iterations", loss_iterations)):
        dk, da, _, _ = enzpy.autodiff(f, Active(k), Active(a), Const(data), Const(dt))
        err = max(abs(dk - fd_k) / abs(fd_k), abs(da - fd_a) / abs(fd_a))
        good = err < 1e-6
        ok &= good

        def grad(f=f):
            return enzpy.autodiff(f, Active(k), Active(a), Const(data), Const(dt))

        t_primal = best_time(lambda f=f: f(k, a, data, dt))
        t_grad = best_time(grad)
        try:
            mem = f"{peak_growth(grad) / 1e6:8.1f} MB"
        except OSError:
            mem = "     n/a"
        rows.append((name, dk, da, err, good, t_primal, t_grad, mem))

    print(f"backward Euler, {steps} steps; finite differences: dk={fd_k:.10g} da={fd_a:.10g}")
    print(
        f"{'gradient by':<12} {'d/dk':>16} {'d/da':>16} {'rel err':>9}  "
        f"{'primal':>9} {'gradient':>9} {'ratio':>6} {'peak mem':>11}"
    )
    for name, dk, da, err, good, tp, tg, mem in rows:
        print(
            f"{name:<12} {dk:16.10g} {da:16.10g} {err:9.1e}  {tp * 1e3:7.2f}ms "
            f"{tg * 1e3:7.2f}ms {tg / tp:6.2f} {mem}  {'ok' if good else 'FAIL'}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
