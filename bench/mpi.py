"""MPI kernels: the reverse-mode gradient's time against the primal at 1, 2 and 4
ranks (examples/heat_mpi.py's halo-exchange heat solver, the line of a fixed
length split over the ranks; its exchange by sendrecv, and posted without
blocking with irecv/isend and waitall). Each rank computes on one thread; on a machine
with fewer cores than ranks the ranks share them (MPICH's ranks poll while they
wait), so the ratio is what to read there, not the speed-up. Not run in CI.

    .venv/bin/python -P bench/mpi.py [--quick] [--out bench/results/mpi.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "examples"


KERNELS = ("heat", "heat_nonblocking")


def worker(points: int, steps: int, repeat: int, which: int) -> None:
    sys.path[:0] = [str(HERE), str(EXAMPLES)]
    import heat_mpi
    import numpy as np
    from heat_mpi import best_of
    from mpi4py import MPI

    import enzpy
    from enzpy import Active, Const, Duplicated

    heat = getattr(heat_mpi, KERNELS[which])
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    n = points // size
    line = np.sin(np.linspace(0.0, 3.0, size * n + 2)) + 1.0
    u = line[rank * n : rank * n + n + 2].copy()

    def grad() -> None:
        enzpy.autodiff(heat, Duplicated(u.copy(), np.zeros_like(u)), Active(0.2), Const(steps))

    grad()  # compile
    primal = best_of(comm, lambda: heat(u.copy(), 0.2, steps), repeat)
    gradient = best_of(comm, grad, repeat)
    if rank == 0:
        print(json.dumps({"ranks": size, "primal_s": primal, "gradient_s": gradient}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "mpi.json"))
    ap.add_argument("--worker", nargs=4, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    points, steps, repeat = (8000, 100, 3) if args.quick else (40000, 500, 7)
    mpiexec = Path(sys.executable).parent / "mpiexec"
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    rows = []
    for which, kernel in enumerate(KERNELS):
        for ranks in (1, 2, 4):
            out = subprocess.run(
                [str(mpiexec), "-n", str(ranks), sys.executable, "-P", __file__, "--worker",
                 str(points), str(steps), str(repeat), str(which)],
                capture_output=True, text=True, check=True, env=env,
            ).stdout  # fmt: skip
            row = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
            row["kernel"] = kernel
            row["ratio"] = row["gradient_s"] / row["primal_s"]
            rows.append(row)
    print(f"heat, {points} points x {steps} steps")
    print(f"{'kernel':>17} {'ranks':>5} {'primal ms':>10} {'gradient ms':>12} {'ratio':>6}")
    for r in rows:
        print(
            f"{r['kernel']:>17} {r['ranks']:>5} {r['primal_s'] * 1e3:>10.2f} "
            f"{r['gradient_s'] * 1e3:>12.2f} {r['ratio']:>6.2f}"
        )
    sys.path[:0] = [str(HERE)]
    from report import save_results

    body = {
        "kernels": "examples/heat_mpi.py heat (sendrecv), heat_nonblocking (irecv/isend, waitall)",
        "points": points,
        "steps": steps,
        "rows": rows,
    }
    save_results(Path(args.out), body)


if __name__ == "__main__":
    main()
