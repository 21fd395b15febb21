"""DuplicatedNoNeed: what skipping the primal's unread writes saves.

For kernels that write an output array (a softplus map, a Gaussian-kernel
matrix from a triangular loop, a normalized log-softmax over rows), the
derivative's time with the output annotated ``Duplicated`` and
``DuplicatedNoNeed``, in reverse mode (cotangent of the output -> gradient)
and forward mode (tangent of the input -> tangent of the output), against
the numba primal. With DuplicatedNoNeed the engine erases the stores to the
output when nothing reads them back (docs/design.md §7.8a), and O3 drops what
was computed only for them. Not run in CI.

    .venv/bin/python -P bench/noneed.py [--quick] [--out bench/results/noneed.json]
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE)]

import numba  # noqa: E402
import numpy as np  # noqa: E402
from report import save_results  # noqa: E402
from timing import best_time  # noqa: E402

import enzpy  # noqa: E402
from enzpy import Const, Duplicated, DuplicatedNoNeed, Forward, Reverse  # noqa: E402


@numba.njit
def softplus_into(x, out):
    for i in range(x.shape[0]):
        out[i] = math.log1p(math.exp(x[i]))


@numba.njit
def gaussian_kernel_into(x, K):
    # symmetric, filled from the lower triangle
    n = x.shape[0]
    for i in range(n):
        for j in range(i + 1):
            d = x[i] - x[j]
            k = math.exp(-0.5 * d * d)
            K[i, j] = k
            K[j, i] = k


@numba.njit
def log_softmax_rows_into(X, out):
    m, n = X.shape
    for r in range(m):
        mx = X[r, 0]
        for c in range(1, n):
            mx = max(mx, X[r, c])
        s = 0.0
        for c in range(n):
            s += math.exp(X[r, c] - mx)
        lse = mx + math.log(s)
        for c in range(n):
            out[r, c] = X[r, c] - lse


def cases(quick: bool) -> list[tuple[str, Callable[..., Any], np.ndarray, tuple[int, ...]]]:
    rng = np.random.default_rng(3)
    n = 10**5 if quick else 10**6
    k = 300 if quick else 1500
    return [
        ("softplus map", softplus_into, rng.standard_normal(n), (n,)),
        ("gaussian kernel matrix", gaussian_kernel_into, rng.standard_normal(k), (k, k)),
        (
            "log-softmax rows",
            log_softmax_rows_into,
            rng.standard_normal((n // 100, 100)),
            (n // 100, 100),
        ),
    ]


def measure(name: str, f: Callable[..., Any], x: np.ndarray, shape: tuple[int, ...], budget: float):
    out = np.zeros(shape)
    dx, dout = np.zeros_like(x), np.zeros(shape)
    f(x, out)
    rec: dict[str, Any] = {"name": name, "size": list(shape)}
    rec["primal_s"] = best_time(lambda: f(x, out), budget=budget)
    for mode, label in ((Reverse, "reverse"), (Forward, "forward")):
        for ann in (Duplicated, DuplicatedNoNeed):
            args = (Duplicated(x, dx), ann(out, dout))

            def call(args: tuple[Any, ...] = args, mode: Any = mode) -> None:
                enzpy.autodiff(f, *args, mode=mode, ret=Const)

            call()
            t = best_time(call, budget=budget)
            rec[f"{label}_{ann.__name__}_s"] = t
            rec[f"{label}_{ann.__name__}_ratio"] = t / rec["primal_s"]
    return rec


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, short budget")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "noneed.json")
    args = ap.parse_args(argv)
    budget = 0.2 if args.quick else 1.0
    records = [measure(*c, budget=budget) for c in cases(args.quick)]
    print(f"{'kernel':24s} {'primal':>10s}   reverse: Dup / NoNeed      forward: Dup / NoNeed")
    for r in records:
        cols = [
            f"x{r[f'{m}_{a}_ratio']:5.2f}"
            for m in ("reverse", "forward")
            for a in ("Duplicated", "DuplicatedNoNeed")
        ]
        print(
            f"{r['name']:24s} {r['primal_s'] * 1e3:8.2f} ms   {cols[0]} / {cols[1]}"
            f"      {cols[2]} / {cols[3]}"
        )
    body = {"note": "ratio = derivative time / numba primal time, one thread", "records": records}
    save_results(args.out, body)


if __name__ == "__main__":
    main()
