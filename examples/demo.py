"""enzpy quick start: the gradient of a 1-D heat-equation solver.

An explicit finite-difference solver for u_t = a * u_xx steps an initial profile
u0 forward in time; each step is written into row t+1 of a history array H
(H[0] = u0). The loss is the sum of squares of the final row.

enzpy differentiates the compiled numba kernel and gives d loss / d u0 (through
the shadow of u0) and d loss / d a (returned, since `a` is Active) in one
reverse sweep. The demo checks both against central finite differences in
float64, then times the primal and the gradient.

Run it with `bash scripts/demo.sh` (which sets everything up first), or
`.venv/bin/python examples/demo.py` once installed. Exit code 1 on FAIL.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# examples/ by plain name, also under `python -P` (which scripts/demo.sh uses).
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from kernels import heat  # noqa: E402

import enzpy  # noqa: E402
from enzpy import Active, Duplicated  # noqa: E402

# The loss: step the heat equation len(H) - 1 times and return sum(H[-1] ** 2).
# It lives in examples/kernels.py, shared with the benchmark and the tests.
loss = heat


def gradient(u0, H, a):
    """(d loss/d u0, d loss/d a) by enzpy's reverse mode."""
    du0 = np.zeros_like(u0)  # read-only input: the shadow accumulates, so start at 0
    dH = np.zeros_like(H)  # scratch/output array: nothing flows in from outside
    grads = enzpy.autodiff(loss, Duplicated(u0, du0), Duplicated(H, dH), Active(a))
    return du0, grads[2]


def best_of(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=1000)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--a", type=float, default=0.25, help="a * dt / dx^2, stable for a <= 0.5")
    p.add_argument("--directions", type=int, default=3, help="random directions for the u0 check")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--rtol", type=float, default=1e-6)
    args = p.parse_args(argv)

    rng = np.random.default_rng(0)
    n, steps, a = args.points, args.steps, args.a
    xs = np.linspace(0.0, 1.0, n)
    u0 = np.sin(np.pi * xs) + 0.3 * rng.standard_normal(n)
    H = np.empty((steps + 1, n))

    print(f"enzpy demo: 1-D heat equation, {n} points x {steps} steps, a = {a}")

    # First calls: numba compiles the primal; enzpy compiles the derivative.
    t0 = time.perf_counter()
    L = loss(u0, H, a)
    compile_primal = time.perf_counter() - t0
    t0 = time.perf_counter()
    g_u0, g_a = gradient(u0, H, a)
    compile_grad = time.perf_counter() - t0
    print(f"loss(u0, H, a) = {L:.10g}")

    # --- correctness: central finite differences in float64 -----------------
    # The loss is quadratic in u0, so a central difference along a direction is
    # exact up to rounding; in `a` it is a polynomial of degree 2 * steps.
    def f(u, aa):
        return loss(u, np.empty_like(H), aa)

    print("check against central finite differences (float64):")
    errors = []
    h = 1e-3  # exact for a quadratic up to rounding: a large step keeps rounding small
    for k in range(args.directions):
        v = rng.standard_normal(n)
        v /= np.linalg.norm(v)
        fd = (f(u0 + h * v, a) - f(u0 - h * v, a)) / (2 * h)
        ad = float(g_u0 @ v)
        err = abs(ad - fd) / max(abs(fd), 1e-300)
        errors.append(err)
        print(f"  <dL/du0, v{k}>  enzpy {ad: .12e}  fd {fd: .12e}  rel.err {err:.1e}")
    ha = 1e-6
    fd = (f(u0, a + ha) - f(u0, a - ha)) / (2 * ha)
    err = abs(g_a - fd) / max(abs(fd), 1e-300)
    errors.append(err)
    print(f"  dL/da          enzpy {g_a: .12e}  fd {fd: .12e}  rel.err {err:.1e}")
    max_err = max(errors)
    ok = bool(np.all(np.isfinite(g_u0))) and np.isfinite(g_a) and max_err <= args.rtol
    verdict = "PASS" if ok else "FAIL"
    print(f"max relative error {max_err:.2e} (tolerance {args.rtol:.0e}): {verdict}")

    # --- speed: best of several repeats, after warm-up ----------------------
    du0 = np.zeros_like(u0)
    dH = np.zeros_like(H)

    def run_grad():
        du0.fill(0.0)
        enzpy.autodiff(loss, Duplicated(u0, du0), Duplicated(H, dH), Active(a))

    loss(u0, H, a)
    run_grad()
    t_primal = best_of(lambda: loss(u0, H, a), args.repeats)
    t_grad = best_of(run_grad, args.repeats)
    print(f"timing (best of {args.repeats}, after warm-up):")
    print(f"  primal    {t_primal * 1e3:9.3f} ms")
    print(f"  gradient  {t_grad * 1e3:9.3f} ms   (gradient / primal = {t_grad / t_primal:.2f}x)")
    print(f"  first call (compile): primal {compile_primal:.2f} s, gradient {compile_grad:.2f} s")
    fd_cost = (2 * (n + 1) + 1) * t_primal
    print(f"  finite differences for the same gradient: ~{fd_cost:.2f} s ((2n+1) primal calls)")

    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
