"""Kernels that communicate with MPI (numba-mpi), checked on every rank.

Run under ``mpiexec -n N python tests/mpi_cases.py [case ...]`` (tests/test_mpi.py
does): every rank runs every case; rank 0 prints one JSON line per case,
``{"case": name, "ok": bool, "errors": [per-rank tracebacks]}``, as soon as the
case ends, so a case that hangs names itself by the line that never comes.

Each case differentiates a kernel whose ranks exchange data and checks, on
every rank, the derivative against an independent reference: central finite
differences of the whole distributed computation (every rank evaluates the
kernel for each perturbed input, the objective summed over ranks), the
derivative of the same computation written serially on one rank, and forward
against reverse with random directions (<J v, w> == <v, J^T w>, summed over
ranks).
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numba_mpi as mpi
import numpy as np
from mpi4py import MPI

import enzpy
import enzpy.mpi  # noqa: F401  # registers the rules
from enzpy import Active, BatchDuplicated, Const, Duplicated

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import heat_mpi  # noqa: E402  # examples/heat_mpi.py, the README's MPI example

comm = MPI.COMM_WORLD
RANK = comm.Get_rank()
SIZE = comm.Get_size()
ANY_SOURCE = MPI.ANY_SOURCE
CASES: dict[str, Callable[[], None]] = {}


def case(fn: Callable[[], None]) -> Callable[[], None]:
    CASES[fn.__name__] = fn
    return fn


def total(v: float) -> float:
    """The objective: the sum over ranks of what each rank's kernel returns."""
    return float(comm.allreduce(float(v)))


def fd_gradient(run: Callable[[list[np.ndarray], list[float]], float],
                arrays: list[np.ndarray], scalars: list[float],
                h: float = 1e-6) -> tuple[list[np.ndarray], list[float]]:  # fmt: skip
    """Central differences of ``total(run(arrays, scalars))`` in every element
    of every rank's arrays and in every rank's scalars (each rank perturbs its
    own inputs in turn; all ranks evaluate every time)."""
    grads = [np.zeros_like(a) for a in arrays]
    sgrads = [0.0 for _ in scalars]
    counts = comm.allgather([a.size for a in arrays] + [len(scalars)])
    for owner in range(SIZE):
        for k in range(len(arrays) + 1):
            n = counts[owner][k]
            for i in range(n):
                vals = []
                for sign in (1.0, -1.0):
                    xs = [a.copy() for a in arrays]
                    ss = list(scalars)
                    if RANK == owner:
                        if k < len(arrays):
                            xs[k].reshape(-1)[i] += sign * h
                        else:
                            ss[i] += sign * h
                    vals.append(total(run(xs, ss)))
                if RANK == owner:
                    d = (vals[0] - vals[1]) / (2 * h)
                    if k < len(arrays):
                        grads[k].reshape(-1)[i] = d
                    else:
                        sgrads[i] = d
    return grads, sgrads


def close(got: Any, want: Any, tol: float, what: str) -> None:
    got, want = np.asarray(got, float), np.asarray(want, float)
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    err = float(np.max(np.abs(got - want), initial=0.0))
    assert err <= tol * scale, f"{what}: max error {err:.3g}\n got {got}\nwant {want}"


def check(f: Any, arrays: list[np.ndarray], scalars: list[float], consts: tuple = (),
          tol: float = 1e-6) -> tuple[list[np.ndarray], list[float]]:  # fmt: skip
    """Reverse mode against finite differences and forward mode, on every
    rank; returns the reverse-mode gradients."""

    def run(xs: list[np.ndarray], ss: list[float]) -> float:
        return f(*[x.copy() for x in xs], *ss, *consts)

    shadows = [np.zeros_like(a) for a in arrays]
    out = enzpy.autodiff(
        f,
        *[Duplicated(a.copy(), s) for a, s in zip(arrays, shadows, strict=True)],
        *[Active(s) for s in scalars],
        *[Const(c) for c in consts],
    )
    sgrads = [float(g) for g in out[len(arrays) : len(arrays) + len(scalars)]]
    fd, fds = fd_gradient(run, arrays, scalars)
    for k, (g, want) in enumerate(zip(shadows, fd, strict=True)):
        close(g, want, tol, f"rank {RANK}: gradient of array {k} vs finite differences")
    close(sgrads, fds, tol, f"rank {RANK}: gradient of the scalars vs finite differences")

    # forward against reverse: <J v, 1> summed over ranks == <v, J^T 1>
    rng = np.random.default_rng(100 + RANK)
    vs = [rng.standard_normal(a.shape) for a in arrays]
    vsc = [float(rng.standard_normal()) for _ in scalars]
    tangent = enzpy.autodiff(
        f,
        *[Duplicated(a.copy(), v.copy()) for a, v in zip(arrays, vs, strict=True)],
        *[Duplicated(s, t) for s, t in zip(scalars, vsc, strict=True)],
        *[Const(c) for c in consts],
        mode=enzpy.Forward,
    )
    jv = total(tangent)
    vjt = total(
        sum(float((v * g).sum()) for v, g in zip(vs, shadows, strict=True))
        + sum(v * g for v, g in zip(vsc, sgrads, strict=True))
    )
    close(jv, vjt, 1e-10, f"rank {RANK}: forward <J v, 1> vs reverse <v, J^T 1>")
    return shadows, sgrads


# --- kernels -------------------------------------------------------------------


@numba.njit
def heat_halo_sendrecv(u, a, steps):
    """1-D heat on a piece of the line with one ghost cell each side; ghost
    cells exchanged with neighbours by sendrecv every step; the global ends
    are fixed. Returns this rank's share of sum(u^2 sin u)."""
    rank, size = mpi.rank(), mpi.size()
    n = u.size - 2
    new = np.empty_like(u)
    for _ in range(steps):
        if rank > 0:
            mpi.sendrecv(u[1:2], rank - 1, u[0:1], rank - 1, 1, 2)
        if rank < size - 1:
            mpi.sendrecv(u[n : n + 1], rank + 1, u[n + 1 : n + 2], rank + 1, 2, 1)
        for i in range(1, n + 1):
            new[i] = u[i] + a * (u[i - 1] - 2.0 * u[i] + u[i + 1])
        u[1 : n + 1] = new[1 : n + 1]
    s = 0.0
    for i in range(1, n + 1):
        s += u[i] * u[i] * np.sin(u[i])
    return s


@numba.njit
def heat_serial(u, a, steps):
    """The same computation on the whole line."""
    n = u.size - 2
    new = np.empty_like(u)
    for _ in range(steps):
        for i in range(1, n + 1):
            new[i] = u[i] + a * (u[i - 1] - 2.0 * u[i] + u[i + 1])
        u[1 : n + 1] = new[1 : n + 1]
    s = 0.0
    for i in range(1, n + 1):
        s += u[i] * u[i] * np.sin(u[i])
    return s


@numba.njit
def heat_halo_send_recv(u, a, steps):
    """The heat step with blocking send and recv, ordered by rank parity (even
    ranks send first), a scalar carry through the in-place sweep, and the sum
    of the objective allreduced so every rank returns the total / size."""
    rank, size = mpi.rank(), mpi.size()
    n = u.size - 2
    for _ in range(steps):
        for phase in range(2):
            if (rank + phase) % 2 == 0:
                if rank < size - 1:
                    mpi.send(u[n : n + 1], rank + 1, 5)
                    mpi.recv(u[n + 1 : n + 2], rank + 1, 6)
            else:
                if rank > 0:
                    mpi.recv(u[0:1], rank - 1, 5)
                    mpi.send(u[1:2], rank - 1, 6)
        prev = u[0]
        for i in range(1, n + 1):
            cur = u[i]
            u[i] = cur + a * (prev - 2.0 * cur + u[i + 1])
            prev = cur
    local = np.zeros(1)
    for i in range(1, n + 1):
        local[0] += np.cos(u[i])
    out = np.zeros(1)
    mpi.allreduce(local, out)
    return out[0] / size


@numba.njit
def broadcast_then_reduce(p, x):
    """Parameters broadcast from rank 0 (overwriting the others' p), a local
    model, and its sum reduced onto rank 0, which alone returns it."""
    mpi.bcast(p, 0)
    local = np.zeros(2)
    for i in range(x.size):
        local[0] += np.sin(p[0] * x[i]) + p[1] * x[i] * x[i]
        local[1] += p[2] * np.exp(-x[i])
    out = np.zeros(2)
    mpi.reduce(local, out, mpi.Operator.SUM, 0)
    if mpi.rank() == 0:
        return out[0] * out[1]
    return 0.0


@numba.njit
def global_max_normalized(x, y):
    """Elementwise maximum over ranks (ties between ranks included), used to
    scale each rank's y."""
    m = np.zeros(x.size)
    mpi.allreduce(x, m, mpi.Operator.MAX)
    lo = np.zeros(x.size)
    mpi.allreduce(-x, lo, mpi.Operator.MIN)
    s = 0.0
    for i in range(x.size):
        s += y[i] * m[i] * m[i] - lo[i] * y[i]
    return s


@numba.njit
def rayleigh_iterations(v, A, iters):
    """Power iterations on a distributed vector: each rank owns rows of A and
    a piece of v; the norm comes from a scalar allreduce every iteration and
    the full vector from an allgather."""
    n = v.size
    full = np.zeros(n * mpi.size())
    for _ in range(iters):
        mpi.allgather(v, full, n)
        w = A @ full
        sq = 0.0
        for i in range(n):
            sq += w[i] * w[i]
        tot = np.zeros(1)
        mpi.allreduce(sq, tot)
        v[:] = w / np.sqrt(tot[0])
    mpi.allgather(v, full, n)
    w = A @ full
    num = 0.0
    for i in range(n):
        num += v[i] * w[i]
    return num


@numba.njit
def scatter_square_gather(data, scale):
    """Rank 0 scatters its data, every rank transforms its block, rank 0
    gathers the blocks and returns a weighted sum."""
    size = mpi.size()
    n = data.size // size
    block = np.zeros(n)
    mpi.scatter(data, block, n, 0)
    for i in range(n):
        block[i] = scale * block[i] * block[i] + np.sin(block[i])
    back = np.zeros(n * size)
    mpi.gather(block, back, n, 0)
    if mpi.rank() != 0:
        return 0.0
    s = 0.0
    for i in range(back.size):
        s += (i + 1.0) * back[i] * data[i]
    return s


@numba.njit
def gather_any_source(x):
    """Rank 0 receives every other rank's vector from MPI_ANY_SOURCE, in
    whatever order they arrive, and sums their squares."""
    rank, size = mpi.rank(), mpi.size()
    if rank != 0:
        mpi.send(x, 0, 3)
        return 0.0
    s = 0.0
    for i in range(x.size):
        s += x[i] ** 3
    buf = np.zeros(x.size)
    for _ in range(size - 1):
        mpi.recv(buf, ANY_SOURCE, 3)
        for i in range(x.size):
            s += buf[i] * buf[i]
    return s


@numba.njit
def exchange_columns(u):
    """Ghost columns of a 2-D piece, exchanged with the neighbours to the
    left and right: the columns are strided (numba-mpi copies them through
    contiguous buffers)."""
    rank, size = mpi.rank(), mpi.size()
    m = u.shape[1] - 2
    if rank > 0:
        mpi.sendrecv(u[:, 1], rank - 1, u[:, 0], rank - 1, 11, 12)
    if rank < size - 1:
        mpi.sendrecv(u[:, m], rank + 1, u[:, m + 1], rank + 1, 12, 11)


@numba.njit
def heat_2d_column_blocks(u, k, steps):
    """2-D explicit diffusion on column blocks with a scratch array reused
    every step; the halo exchange is its own njit function."""
    n, m = u.shape[0], u.shape[1] - 2
    tmp = np.empty_like(u)
    for _ in range(steps):
        exchange_columns(u)
        for i in range(1, n - 1):
            for j in range(1, m + 1):
                tmp[i, j] = u[i, j] + k * (
                    u[i - 1, j] + u[i + 1, j] + u[i, j - 1] + u[i, j + 1] - 4.0 * u[i, j]
                )
        for i in range(1, n - 1):
            for j in range(1, m + 1):
                u[i, j] = tmp[i, j]
    s = 0.0
    for i in range(n):
        for j in range(1, m + 1):
            s += np.exp(-u[i, j]) * u[i, j]
    return s


@numba.njit
def heat_in_place_seeded(u, a, steps):
    """The heat sweep with sendrecv halos, writing its result into u (no
    return value): its derivative is seeded with u's cotangent."""
    rank, size = mpi.rank(), mpi.size()
    n = u.size - 2
    for _ in range(steps):
        if rank > 0:
            mpi.sendrecv(u[1:2], rank - 1, u[0:1], rank - 1, 1, 2)
        if rank < size - 1:
            mpi.sendrecv(u[n : n + 1], rank + 1, u[n + 1 : n + 2], rank + 1, 2, 1)
        prev = u[0]
        for i in range(1, n + 1):
            cur = u[i]
            u[i] = cur + a * (prev - 2.0 * cur + u[i + 1]) + 0.1 * np.sin(cur)
            prev = cur


@numba.njit
def mass_normalized_history(u0, H, c, steps):
    """A history array of states; after each step the state is rescaled so
    that its global mass (an allreduce) stays 1."""
    n = u0.size
    H[0, :] = u0
    for t in range(steps):
        for i in range(n):
            left = H[t, i - 1] if i > 0 else 0.0
            H[t + 1, i] = H[t, i] + c * (left - H[t, i]) + H[t, i] * H[t, i] * 0.05
        local = np.zeros(1)
        local[0] = H[t + 1, :].sum()
        mass = np.zeros(1)
        mpi.allreduce(local, mass)
        for i in range(n):
            H[t + 1, i] /= mass[0]
    s = 0.0
    for i in range(n):
        s += H[steps, i] * (i + 1.0)
    return s


@numba.njit
def receive_into(c, x):
    """Rank 1 receives rank 0's x into c."""
    if mpi.rank() == 0:
        mpi.send(x, 1, 4)
    elif mpi.rank() == 1:
        mpi.recv(c, 0, 4)
    return (c * x).sum()


# --- cases ---------------------------------------------------------------------


@numba.njit
def heat_halo_nonblocking(u, a, steps):
    """The heat step with the halo exchange posted without blocking on every
    rank (receives first, then sends), completed by one waitall, and the
    interior updated from a scratch buffer reused every step."""
    rank, size = mpi.rank(), mpi.size()
    n = u.size - 2
    new = np.empty(n)
    for _ in range(steps):
        reqs = []
        if rank > 0:
            _, r = mpi.irecv(u[0:1], rank - 1, 7)
            reqs.append(r[0])
        if rank < size - 1:
            _, r = mpi.irecv(u[n + 1 : n + 2], rank + 1, 8)
            reqs.append(r[0])
        if rank > 0:
            _, r = mpi.isend(u[1:2], rank - 1, 8)
            reqs.append(r[0])
        if rank < size - 1:
            _, r = mpi.isend(u[n : n + 1], rank + 1, 7)
            reqs.append(r[0])
        if len(reqs) > 0:
            mpi.waitall(np.array(reqs))
        for i in range(1, n + 1):
            new[i - 1] = u[i] + a * (u[i - 1] - 2.0 * u[i] + u[i + 1])
        u[1 : n + 1] = new
    s = 0.0
    for i in range(1, n + 1):
        s += u[i] * u[i] * np.sin(u[i])
    return s


@numba.njit
def ring_wait_test_and_waitany(x, c):
    """A periodic ring: each rank sends a nonlinear function of its piece to
    the right (waited for with wait), receives from the left (polled with
    test until it arrives), and exchanges a second message both ways
    completed by waitany, twice; on one rank every message is to itself."""
    rank, size = mpi.rank(), mpi.size()
    right, left = (rank + 1) % size, (rank - 1) % size
    out = np.sin(x) * c
    got = np.zeros_like(x)
    _, rr = mpi.irecv(got, left, 3)
    _, rs = mpi.isend(out, right, 3)
    mpi.wait(rs)
    while not mpi.test(rr)[1]:
        pass
    back = np.empty(2)
    back[0] = got.sum() * c
    back[1] = x[0] * x[-1]
    there = np.zeros(2)
    _, r1 = mpi.irecv(there, right, 4)
    _, r2 = mpi.isend(back, left, 4)
    pending = np.array([r1[0], r2[0]])
    mpi.waitany(pending)
    mpi.waitany(pending)
    return (got * x).sum() + there[0] * there[1] + np.cos(got[0])


@numba.njit
def receive_from_anyone_without_blocking(x):
    got = np.zeros_like(x)
    _, r = mpi.irecv(got, ANY_SOURCE, 1)
    _, s = mpi.isend(x, (mpi.rank() + 1) % mpi.size(), 1)
    mpi.waitall(np.array([r[0], s[0]]))
    return (got * got).sum()


@numba.njit
def two_messages_completed_out_of_order(x):
    """Two messages to the same rank with the same tag; the receiver waits
    for the second first."""
    peer = (mpi.rank() + 1) % mpi.size()
    src = (mpi.rank() - 1) % mpi.size()
    a, b = np.zeros(1), np.zeros(1)
    _, ra = mpi.irecv(a, src, 9)
    _, rb = mpi.irecv(b, src, 9)
    _, sa = mpi.isend(x[0:1], peer, 9)
    _, sb = mpi.isend(x[1:2], peer, 9)
    mpi.wait(rb)
    mpi.wait(ra)
    mpi.wait(sa)
    mpi.wait(sb)
    return a[0] * 2.0 + b[0] * b[0]


def _pieces(n_local: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A global line of SIZE * n_local interior points plus its two fixed
    ends, and this rank's piece of it with ghost cells."""
    g = np.random.default_rng(seed).uniform(0.2, 1.5, SIZE * n_local + 2)
    lo = RANK * n_local
    return g, g[lo : lo + n_local + 2].copy()


def serial_heat_matches(
    du: np.ndarray, abar: float, g: np.ndarray, a: float, steps: int
) -> np.ndarray:
    """Checks this rank's gradient of the distributed heat against the serial
    derivative of the whole line ``g`` (its interior piece, and the
    diffusivity's gradient summed over ranks); returns the serial gradient."""
    dg = np.zeros_like(g)
    _, ga, _ = enzpy.autodiff(heat_serial, Duplicated(g.copy(), dg), Active(a), Const(steps))
    n = du.size - 2
    lo = RANK * n
    close(du[1 : n + 1], dg[lo + 1 : lo + n + 1], 1e-12, "interior vs serial")
    close(total(abar), ga, 1e-12, "diffusivity vs serial")
    return dg


@case
def heat_halo_exchange_matches_serial_and_finite_differences() -> None:
    g, u = _pieces(4, 7)
    a, steps = 0.21, 5
    shadows, (abar,) = check(heat_halo_sendrecv, [u], [a], (steps,))
    # the serial derivative of the whole line: each rank's interior piece
    # equals the matching part; a ghost cell's gradient belongs to the
    # serial one only at the line's fixed ends
    dg = serial_heat_matches(shadows[0], abar, g, a, steps)
    n = u.size - 2
    if RANK == 0:
        close(shadows[0][0], dg[0], 1e-12, "left end vs serial")
    if RANK == SIZE - 1:
        close(shadows[0][n + 1], dg[-1], 1e-12, "right end vs serial")


@case
def blocking_send_recv_halo_with_a_scalar_carry() -> None:
    g, u = _pieces(3, 11)
    check(heat_halo_send_recv, [u], [0.17], (4,))


@case
def broadcast_and_reduce_to_the_root() -> None:
    rng = np.random.default_rng(5 + RANK)
    p = rng.uniform(0.5, 1.2, 3)
    x = rng.uniform(-1.0, 1.0, 4)
    (gp, gx), _ = check(broadcast_then_reduce, [p, x], [])
    if RANK != 0:  # p was overwritten by the broadcast
        assert not gp.any(), gp


@case
def allreduce_max_and_min_with_two_ranks_tied() -> None:
    # Two ranks tie at index 4: central differences give each half, as the
    # rule does (the tangent of the extremum is shared equally by the ties).
    base = np.random.default_rng(3).uniform(-1.0, 1.0, (SIZE, 5))
    base[0, 4] = base[SIZE - 1, 4] = 2.0
    x = base[RANK].copy()
    y = np.random.default_rng(20 + RANK).uniform(0.5, 1.5, 5)
    check(global_max_normalized, [x, y], [])


@case
def allreduce_max_tied_on_every_rank_moves_with_all_of_them() -> None:
    # Every rank ties at index 2. Each holds an equal share of the
    # extremum's cotangent, and the shares add up to the derivative along
    # the direction that moves every rank's x[2] together.
    base = np.random.default_rng(4).uniform(-1.0, 1.0, (SIZE, 5))
    base[:, 2] = 0.75
    x = base[RANK].copy()
    y = np.random.default_rng(30 + RANK).uniform(0.5, 1.5, 5)
    gx = np.zeros(5)
    enzpy.autodiff(global_max_normalized, Duplicated(x.copy(), gx), Const(y))
    shares = comm.allgather(gx[2])
    close(shares, [shares[0]] * SIZE, 1e-14, "equal shares of the tie")
    h = 1e-6
    e = np.zeros(5)
    e[2] = h
    fd = (total(global_max_normalized(x + e, y)) - total(global_max_normalized(x - e, y))) / (2 * h)
    close(total(gx[2]), fd, 1e-7, "sum of the shares vs the derivative along all ranks")


@case
def power_iterations_with_allgather_and_scalar_allreduce() -> None:
    n = 3
    rng = np.random.default_rng(1)
    A_full = rng.standard_normal((n * SIZE, n * SIZE))
    A_full = A_full + A_full.T
    A = A_full[RANK * n : (RANK + 1) * n].copy()
    v = np.random.default_rng(40 + RANK).standard_normal(n)
    check(rayleigh_iterations, [v, A], [], (3,))


@case
def scatter_then_gather_through_the_root() -> None:
    data = np.random.default_rng(9 + RANK).uniform(-1.0, 1.0, 2 * SIZE)
    (gd,), _ = check(scatter_square_gather, [data], [0.6])
    if RANK != 0:  # only the root's data is scattered and read
        assert not gd.any(), gd


@case
def receives_from_any_source_send_cotangents_to_the_actual_sender() -> None:
    x = np.random.default_rng(70 + RANK).uniform(-1.0, 1.0, 3)
    (gx,), _ = check(gather_any_source, [x], [])
    want = 3 * x**2 if RANK == 0 else 2 * x
    close(gx, want, 1e-12, "analytic gradient")


@case
def two_dimensional_blocks_exchange_strided_columns() -> None:
    u = np.random.default_rng(50 + RANK).uniform(0.0, 1.0, (4, 5))
    check(heat_2d_column_blocks, [u], [0.12], (3,))


@case
def reverse_batch_lanes_communicate_in_step() -> None:
    g, u = _pieces(3, 13)
    rng = np.random.default_rng(60 + RANK)
    seeds = (rng.standard_normal(u.size), rng.standard_normal(u.size))
    lanes = tuple(sd.copy() for sd in seeds)
    out = enzpy.autodiff(
        heat_in_place_seeded, BatchDuplicated(u.copy(), lanes), Active(0.2), Const(3)
    )
    for k, sd in enumerate(seeds):
        one = sd.copy()
        _, abar, _ = enzpy.autodiff(
            heat_in_place_seeded, Duplicated(u.copy(), one), Active(0.2), Const(3)
        )
        close(lanes[k], one, 1e-13, f"lane {k} vs a single reverse sweep")
        close(out[1][k], abar, 1e-13, f"lane {k}: the diffusivity's cotangent")
    # and a single sweep against finite differences of <seed, u(final)>
    h = 1e-6
    sd = seeds[0]
    fd = np.zeros(u.size)
    counts = comm.allgather(u.size)
    for owner in range(SIZE):
        for i in range(counts[owner]):
            vals = []
            for sign in (1.0, -1.0):
                v = u.copy()
                if RANK == owner:
                    v[i] += sign * h
                heat_in_place_seeded(v, 0.2, 3)
                vals.append(total(float(sd @ v)))
            if RANK == owner:
                fd[i] = (vals[0] - vals[1]) / (2 * h)
    close(lanes[0], fd, 1e-6, "lane 0 vs finite differences")


@case
def forward_batch_directions_match_single_directions() -> None:
    g, u = _pieces(3, 17)
    rng = np.random.default_rng(80 + RANK)
    dirs = (rng.standard_normal(u.size), rng.standard_normal(u.size))
    try:
        out = enzpy.autodiff(
            heat_halo_sendrecv,
            BatchDuplicated(u.copy(), tuple(d.copy() for d in dirs)),
            Const(0.2),
            Const(3),
            mode=enzpy.Forward,
        )
    except enzpy.UnsupportedError as e:  # the receive writes the caller's memory
        assert "batch" in str(e), e
        return
    for k, d in enumerate(dirs):
        one = enzpy.autodiff(
            heat_halo_sendrecv, Duplicated(u.copy(), d.copy()), Const(0.2), Const(3),
            mode=enzpy.Forward,
        )  # fmt: skip
        close(out[k], one, 1e-13, f"direction {k} vs a single direction")


@case
def a_history_array_renormalized_by_a_global_sum_every_step() -> None:
    u0 = np.random.default_rng(90 + RANK).uniform(0.5, 1.0, 4)
    H = np.zeros((5, 4))
    check(mass_normalized_history, [u0, H], [0.3], (4,))


@case
def receiving_into_a_const_array_is_refused_on_every_rank() -> None:
    c = np.zeros(3)
    x = np.arange(3.0) + RANK
    try:
        enzpy.autodiff(receive_into, Const(c), Duplicated(x, np.zeros(3)))
    except enzpy.EnzpyError as e:
        assert "Duplicated" in str(e), e
    else:
        raise AssertionError("a receive into Const memory was differentiated")


@case
def the_readme_example_matches_the_serial_derivative() -> None:
    assert comm.bcast(heat_mpi.main(n=5, steps=7, a=0.23), root=0) == 0


@case
def nonblocking_halo_exchange_matches_serial_and_finite_differences() -> None:
    g, u = _pieces(4, 13)
    a, steps = 0.19, 4
    shadows, (abar,) = check(heat_halo_nonblocking, [u], [a], (steps,))
    serial_heat_matches(shadows[0], abar, g, a, steps)


@case
def nonblocking_ring_completed_by_wait_test_and_waitany() -> None:
    x = np.random.default_rng(40 + RANK).uniform(0.3, 1.2, 3)
    check(ring_wait_test_and_waitany, [x], [0.7])


@case
def nonblocking_receive_from_any_source_is_refused() -> None:
    x = np.arange(2.0) + RANK
    for mode in (enzpy.Reverse, enzpy.Forward):
        try:
            enzpy.autodiff(
                receive_from_anyone_without_blocking,
                Duplicated(x.copy(), np.ones(2)),
                mode=mode,
            )
        except enzpy.UnsupportedError as e:
            assert "ANY_SOURCE" in str(e), e
        else:
            raise AssertionError("a non-blocking receive from ANY_SOURCE was differentiated")
        comm.Barrier()  # the refused call left its value messages unmatched
        _drain()


@case
def nonblocking_calls_in_batch_mode_are_refused() -> None:
    g, u = _pieces(3, 17)
    lanes = (np.ones(u.size), np.ones(u.size))
    try:
        enzpy.autodiff(
            heat_halo_nonblocking, BatchDuplicated(u.copy(), lanes), Active(0.2), Const(2)
        )
    except enzpy.UnsupportedError as e:
        assert "batch" in str(e), e
    else:
        assert SIZE == 1, "batch mode through a non-blocking call was differentiated"
    comm.Barrier()


@case
def nonblocking_messages_completed_out_of_posting_order_are_refused() -> None:
    # Last: the refused derivative leaves its requests in the tables.
    x = np.arange(2.0) + 1.0 + RANK
    try:
        enzpy.autodiff(two_messages_completed_out_of_order, Duplicated(x, np.zeros(2)))
    except enzpy.UnsupportedError as e:
        assert "order" in str(e), e
    else:
        raise AssertionError("messages completed out of order were differentiated")
    comm.Barrier()
    _drain()


def _drain() -> None:
    """Receive what a refused derivative left in flight (the tests go on in
    the same processes)."""
    st = MPI.Status()
    while comm.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG, st):
        comm.Recv(np.empty(st.Get_count(MPI.DOUBLE)), st.Get_source(), st.Get_tag())
    comm.Barrier()


def main(names: list[str]) -> int:
    failed = 0
    for name in names or list(CASES):
        err = ""
        try:
            CASES[name]()
        except Exception:
            err = traceback.format_exc()
        errors = comm.gather(err, root=0)
        if RANK == 0:
            ok = not any(errors)
            failed += not ok
            print(json.dumps({"case": name, "ok": ok, "errors": errors}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
