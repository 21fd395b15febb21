"""The gradient of a heat-equation solver whose line is split over MPI ranks.

Each rank owns ``n`` points of the line plus one ghost cell on each side; every
time step the ranks exchange their edge values with their neighbours
(``numba_mpi.sendrecv``), then update their points in place. The loss is the sum
over all ranks of their points' squares.

enzpy differentiates the kernel on every rank: the halo exchanges' derivatives
travel between the ranks as the values did (in reverse, the other way). The
example checks the gradient, gathered onto rank 0, against the serial
derivative of the whole line, and prints the gradient/primal time ratio; then
the same for ``heat_nonblocking``, whose exchange is posted without blocking
(``irecv``/``isend``) and completed by ``waitall``.

    .venv/bin/mpiexec -n 4 .venv/bin/python examples/heat_mpi.py

Needs ``pip install 'enzpy[mpi]'``. Exit code 1 on FAIL (rank 0 decides).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import numba
import numba_mpi as mpi
import numpy as np
from mpi4py import MPI

import enzpy
import enzpy.mpi  # noqa: F401  # the rules for numba-mpi's calls
from enzpy import Active, Const, Duplicated


@numba.njit
def heat(u, a, steps):
    """This rank's piece u (ghost cells u[0], u[-1]) after ``steps`` explicit
    steps; returns this rank's share of the loss."""
    rank, size, n = mpi.rank(), mpi.size(), u.size - 2
    for _ in range(steps):
        if rank > 0:
            mpi.sendrecv(u[1:2], rank - 1, u[0:1], rank - 1, 1, 2)
        if rank < size - 1:
            mpi.sendrecv(u[n : n + 1], rank + 1, u[n + 1 : n + 2], rank + 1, 2, 1)
        u[1:-1] = u[1:-1] + a * (u[:-2] - 2 * u[1:-1] + u[2:])
    return (u[1:-1] ** 2).sum()


@numba.njit
def heat_nonblocking(u, a, steps):
    """The same solver with the halo exchange posted without blocking
    (irecv, isend), completed by one waitall."""
    rank, size, n = mpi.rank(), mpi.size(), u.size - 2
    requests = np.empty(4, dtype=mpi.RequestType)
    for _ in range(steps):
        k = 0
        if rank > 0:
            requests[k] = mpi.irecv(u[0:1], rank - 1, 1)[1][0]
            requests[k + 1] = mpi.isend(u[1:2], rank - 1, 2)[1][0]
            k += 2
        if rank < size - 1:
            requests[k] = mpi.irecv(u[n + 1 : n + 2], rank + 1, 2)[1][0]
            requests[k + 1] = mpi.isend(u[n : n + 1], rank + 1, 1)[1][0]
            k += 2
        mpi.waitall(requests[:k])
        u[1:-1] = u[1:-1] + a * (u[:-2] - 2 * u[1:-1] + u[2:])
    return (u[1:-1] ** 2).sum()


@numba.njit
def heat_serial(u, a, steps):
    """The same solver on the whole line, on one process."""
    for _ in range(steps):
        u[1:-1] = u[1:-1] + a * (u[:-2] - 2 * u[1:-1] + u[2:])
    return (u[1:-1] ** 2).sum()


def best_of(comm: Any, run: Callable[[], object], repeat: int = 5) -> float:
    """The least wall time of ``run`` over ``repeat`` runs, every rank in step."""
    times = []
    for _ in range(repeat):
        comm.Barrier()
        t0 = time.perf_counter()
        run()
        comm.Barrier()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(n: int = 2000, steps: int = 200, a: float = 0.2) -> int:
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    line = np.sin(np.linspace(0.0, 3.0, size * n + 2)) + 1.0  # the same on every rank
    u = line[rank * n : rank * n + n + 2].copy()
    want = np.zeros_like(line)
    _, want_a, _ = enzpy.autodiff(
        heat_serial, Duplicated(line.copy(), want), Active(a), Const(steps)
    )
    failed = 0
    for kernel in (heat, heat_nonblocking):
        du = np.zeros_like(u)
        _, da, _ = enzpy.autodiff(kernel, Duplicated(u.copy(), du), Active(a), Const(steps))
        da_total = comm.allreduce(da)  # every rank's a is the same parameter

        t_primal = best_of(comm, lambda kernel=kernel: kernel(u.copy(), a, steps))
        t_grad = best_of(
            comm,
            lambda kernel=kernel: enzpy.autodiff(
                kernel, Duplicated(u.copy(), np.zeros_like(u)), Active(a), Const(steps)
            ),
        )
        pieces = comm.gather(du[1:-1], root=0)
        ends = comm.gather((du[0], du[-1]), root=0)
        if rank != 0:
            continue
        assert pieces is not None and ends is not None
        got = np.concatenate([[ends[0][0]], *pieces, [ends[-1][1]]])
        err = max(np.max(np.abs(got - want)), abs(da_total - want_a)) / np.max(np.abs(want))
        ok = err < 1e-12
        failed += not ok
        ratio = t_grad / t_primal
        print(f"{kernel.__name__}: {size} ranks x {n} points, {steps} steps")
        print(f"  gradient vs the serial derivative: relative error {err:.2e}")
        print(
            f"  primal {t_primal * 1e3:.2f} ms, gradient {t_grad * 1e3:.2f} ms, "
            f"ratio {ratio:.2f}: {'PASS' if ok else 'FAIL'}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(MPI.COMM_WORLD.bcast(main(), root=0))
