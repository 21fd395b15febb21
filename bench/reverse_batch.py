"""Reverse-mode batch: one BatchDuplicated call with W = 8 cotangents against 8
separate reverse calls, on kernels of the benchmark (bench/cases.py). Prints primal time, one
reverse call, the batch call, and batch / (8 separate calls). Not run in CI.

    .venv/bin/python -P bench/reverse_batch.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

# This folder and examples/ (shared kernels) by plain name, also under `python -P`.
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "examples")]

import cases as B  # noqa: E402
import numpy as np  # noqa: E402

import enzpy  # noqa: E402
from enzpy import Active, BatchDuplicated, Const, Duplicated  # noqa: E402

W = 8


def best(fn, reps=15):
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def report(name, primal, one, batch):
    tp, t1, tb = best(primal), best(one), best(batch)
    print(
        f"{name:26s} primal {tp * 1e3:8.3f} ms | 1 reverse {t1 * 1e3:8.3f} ms "
        f"({t1 / tp:5.2f}x) | batch {W} {tb * 1e3:8.3f} ms ({tb / tp:5.2f}x) | "
        f"batch / {W} separate = {tb / (W * t1):.3f}"
    )


def heat(rng):
    n, steps, a = 10**4, 200, 0.2
    u0 = rng.standard_normal(n)
    ws = [rng.standard_normal(n) for _ in range(W)]
    u, du1 = np.empty(n), np.empty(n)
    dus = tuple(np.empty(n) for _ in range(W))

    def primal():
        np.copyto(u, u0)
        B.heat_in_place(u, a, steps)

    def one():
        np.copyto(u, u0)
        np.copyto(du1, ws[0])
        enzpy.autodiff(B.heat_in_place, Duplicated(u, du1), Active(a), Const(steps))

    def batch():
        np.copyto(u, u0)
        for d, w in zip(dus, ws, strict=True):
            np.copyto(d, w)
        enzpy.autodiff(B.heat_in_place, BatchDuplicated(u, dus), Active(a), Const(steps))

    report("heat_in_place 1e4 x 200", primal, one, batch)


def sum_x2_sin(rng):
    x = rng.standard_normal(10**6)
    g1 = np.zeros_like(x)
    gs = tuple(np.zeros_like(x) for _ in range(W))
    report(
        "sum_x2_sin 1e6",
        lambda: B.sum_x2_sin(x),
        lambda: enzpy.autodiff(B.sum_x2_sin, Duplicated(x, g1)),
        lambda: enzpy.autodiff(B.sum_x2_sin, BatchDuplicated(x, gs)),
    )


def lorenz(rng):
    s0 = np.array([1.0, 1.0, 1.0])
    args = (10.0, 28.0, 8 / 3, 1e-3, 10**4)
    s, d1 = np.empty(3), np.empty(3)
    ds = tuple(np.empty(3) for _ in range(W))

    def primal():
        np.copyto(s, s0)
        B.lorenz_rk4_array(s, *args)

    def one():
        np.copyto(s, s0)
        d1[:] = 1.0
        enzpy.autodiff(B.lorenz_rk4_array, Duplicated(s, d1), *args)

    def batch():
        np.copyto(s, s0)
        for d in ds:
            d[:] = 1.0
        enzpy.autodiff(B.lorenz_rk4_array, BatchDuplicated(s, ds), *args)

    report("lorenz_rk4_array 1e4", primal, one, batch)


def main():
    rng = np.random.default_rng(0)
    heat(rng)
    sum_x2_sin(rng)
    lorenz(rng)


if __name__ == "__main__":
    main()
