"""parallel=True kernels: the reverse-mode gradient's time against the parallel
primal at 1 and 2 numba threads and against the same kernel compiled serially
(``range`` for ``prange``, no ``parallel=True``). enzpy differentiates the
serial compile (docs/design.md §2.1) and runs the reverse sweeps of the
``prange`` loops it proves race-free on numba's threads (§2.1a): the heat
step's stencil and sum in place, the pairwise energy's shared reads into
per-chunk copies of the shadow. The forward sweep is serial; forward mode
(``jvp``) runs the loops in chunks on the threads. Not run in CI.

    .venv/bin/python -P bench/parallel.py [--quick] [--out bench/results/parallel.json]
"""

from __future__ import annotations

import argparse
import sys
import types as pytypes
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE)]

import numba  # noqa: E402
import numpy as np  # noqa: E402
from report import save_results  # noqa: E402
from timing import best_time  # noqa: E402

import enzpy  # noqa: E402
from enzpy import Active, Const, Duplicated, Forward  # noqa: E402

prange = numba.prange


@numba.njit(parallel=True)
def heat_parallel(u, a, steps):
    """Explicit heat steps with a cubic reaction term: serial time loop,
    parallel space sweep, buffers swapped; returns the final energy."""
    n = u.shape[0]
    old = u.copy()
    new = u.copy()
    for _ in range(steps):
        for i in prange(1, n - 1):
            new[i] = (
                old[i]
                + a * (old[i - 1] - 2.0 * old[i] + old[i + 1])
                - 0.1 * a * old[i] * old[i] * old[i]
            )
        old, new = new, old
    u[:] = old
    e = 0.0
    for i in prange(n):
        e += old[i] * old[i]
    return e


@numba.njit(parallel=True)
def pairwise_parallel(pos):
    """Soft pairwise energy over all pairs i < j, prange over i."""
    n = pos.shape[0]
    e = 0.0
    for i in prange(n):
        for j in range(i + 1, n):
            dx = pos[i, 0] - pos[j, 0]
            dy = pos[i, 1] - pos[j, 1]
            dz = pos[i, 2] - pos[j, 2]
            d2 = dx * dx + dy * dy + dz * dz
            e += 1.0 / np.sqrt(d2 + 0.5) + 0.1 * d2
    return e


def serial(kernel: Any) -> Any:
    """The kernel with ``prange`` as ``range``, compiled without parallel=True."""
    py = kernel.py_func
    scope = {**py.__globals__, "prange": range}
    return numba.njit(pytypes.FunctionType(py.__code__, scope, py.__name__))


def cases(quick: bool) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    n, steps = (20_000, 20) if quick else (200_000, 50)
    u0 = np.sin(np.linspace(0.0, np.pi, n)) + 0.01 * rng.standard_normal(n)
    atoms = 600 if quick else 2500
    pos0 = rng.standard_normal((atoms, 3)) * atoms ** (1 / 3)
    u, du = u0.copy(), np.zeros(n)
    pos, dpos = pos0.copy(), np.zeros_like(pos0)

    def heat_setup() -> None:
        u[:] = u0
        du[:] = 0.0

    def pos_setup() -> None:
        dpos[:] = 0.0

    return [
        {
            "name": "heat_parallel",
            "size": f"n={n}, steps={steps}",
            "kernel": heat_parallel,
            "args": (u, 0.2, steps),
            "setup": heat_setup,
            "grad": lambda: enzpy.autodiff(
                heat_parallel, Duplicated(u, du), Active(0.2), Const(steps)
            ),
            "jvp": lambda: enzpy.autodiff(
                heat_parallel, Duplicated(u, du), Duplicated(0.2, 1.0), Const(steps), mode=Forward
            ),
            "direction": lambda: (du, u0),
        },
        {
            "name": "pairwise_parallel",
            "size": f"atoms={atoms}",
            "kernel": pairwise_parallel,
            "args": (pos,),
            "setup": pos_setup,
            "grad": lambda: enzpy.autodiff(pairwise_parallel, Duplicated(pos, dpos)),
            "jvp": lambda: enzpy.autodiff(pairwise_parallel, Duplicated(pos, dpos), mode=Forward),
            "direction": lambda: (dpos, pos0),
        },
    ]


def check(case: dict[str, Any]) -> float:
    """Relative error of <grad, v> against a central difference along a random v."""
    case["setup"]()
    case["grad"]()
    grad, x0 = case["direction"]()
    grad = grad.copy()
    v = np.random.default_rng(1).standard_normal(x0.shape)
    h = 1e-5 * max(1.0, float(np.max(np.abs(x0))))
    args = list(case["args"])

    def at(t: float) -> float:
        args[0] = x0 + t * v
        return float(case["kernel"](*args))

    fd = (at(h) - at(-h)) / (2 * h)
    return abs(float(np.sum(grad * v)) - fd) / max(abs(fd), 1e-300)


def measure(case: dict[str, Any], budget: float) -> dict[str, Any]:
    kernel, args, setup = case["kernel"], case["args"], case["setup"]
    twin = serial(kernel)
    rec: dict[str, Any] = {"name": case["name"], "size": case["size"]}
    rec["serial_primal_s"] = best_time(lambda: twin(*args), setup, budget=budget)
    before = numba.get_num_threads()
    try:
        for t in (1, 2):
            if t > numba.config.NUMBA_NUM_THREADS:
                continue
            numba.set_num_threads(t)
            rec[f"parallel_primal_{t}t_s"] = best_time(lambda: kernel(*args), setup, budget=budget)
            rec[f"gradient_{t}t_s"] = best_time(case["grad"], setup, budget=budget)
            rec[f"jvp_{t}t_s"] = best_time(case["jvp"], setup, budget=budget)
    finally:
        numba.set_num_threads(before)
    g = rec["gradient_1t_s"]
    rec["gradient_over_serial_primal"] = g / rec["serial_primal_s"]
    for t in (1, 2):
        if f"parallel_primal_{t}t_s" in rec:
            rec[f"gradient_over_parallel_primal_{t}t"] = (
                rec[f"gradient_{t}t_s"] / rec[f"parallel_primal_{t}t_s"]
            )
    if "parallel_primal_2t_s" in rec:
        rec["primal_speedup_2t"] = rec["parallel_primal_1t_s"] / rec["parallel_primal_2t_s"]
        rec["gradient_speedup_2t"] = rec["gradient_1t_s"] / rec["gradient_2t_s"]
        rec["jvp_speedup_2t"] = rec["jvp_1t_s"] / rec["jvp_2t_s"]
        rec["jvp_over_parallel_primal_2t"] = rec["jvp_2t_s"] / rec["parallel_primal_2t_s"]
    rec["fd_relative_error"] = check(case)
    return rec


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, short budget")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "parallel.json")
    args = ap.parse_args(argv)
    budget = 0.2 if args.quick else 1.0
    records = [measure(c, budget) for c in cases(args.quick)]
    for r in records:
        print(
            f"{r['name']:18s} {r['size']:22s} serial primal {r['serial_primal_s'] * 1e3:8.2f} ms"
            f" | parallel primal 1t {r['parallel_primal_1t_s'] * 1e3:8.2f} ms"
            + (
                f" 2t {r['parallel_primal_2t_s'] * 1e3:8.2f} ms"
                if "parallel_primal_2t_s" in r
                else ""
            )
            + f" | gradient {r['gradient_1t_s'] * 1e3:8.2f} ms"
            f" (x{r['gradient_over_serial_primal']:.2f} serial primal"
            + (
                f", x{r['gradient_over_parallel_primal_2t']:.2f} parallel primal at 2t"
                if "gradient_over_parallel_primal_2t" in r
                else ""
            )
            + f") | jvp {r['jvp_1t_s'] * 1e3:8.2f} ms"
            + (f" 2t {r['jvp_2t_s'] * 1e3:8.2f} ms" if "jvp_2t_s" in r else "")
            + f" | FD rel err {r['fd_relative_error']:.1e}"
        )
    body = {
        "note": "the reverse sweeps of the prange loops and forward mode run on numba's "
        "threads; the reverse mode's forward sweep is serial",
        "records": records,
    }
    save_results(args.out, body)


if __name__ == "__main__":
    main()
