"""Kernels written the way C and Fortran programmers write them, where the
reverse sweep must decide what to keep: scratch vectors allocated once and
overwritten on every iteration, triangular loops with a running index into
packed storage, history arrays written row by row and read later, scalars
carried across an in-place sweep, loads that do not change inside an inner
loop. Each gradient is checked against central finite differences in reverse
and forward mode, and forward against reverse (<J v, w> == <v, Jᵀ w>)."""

from __future__ import annotations

import math

import fd
import numba
import numpy as np
from test_forward import check_both


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


@numba.njit
def packed_cholesky_energy(icf, X):
    # Per sample: y = L x with L lower triangular, diag exp(icf[:d]) and the
    # strict lower part packed column by column in icf[d:] (running index li);
    # y is a scratch vector allocated once; returns sum log(1 + |y|^2).
    n, d = X.shape
    y = np.empty(d)
    total = 0.0
    for s in range(n):
        for j in range(d):
            y[j] = math.exp(icf[j]) * X[s, j]
        li = d
        for col in range(d):
            for row in range(col + 1, d):
                y[row] += icf[li] * X[s, col]
                li += 1
        sq = 0.0
        for j in range(d):
            sq += y[j] * y[j]
        total += math.log(1.0 + sq)
    return total


@numba.njit
def packed_upper_forms(U, B):
    # Quadratic forms b^T U b for each column b of B, with U upper triangular
    # stored row-major in a flat array (index i*n + j, j >= i); the column is
    # copied into a scratch vector reused for every column.
    n, m = B.shape
    tmp = np.empty(n)
    out = 0.0
    for c in range(m):
        for i in range(n):
            tmp[i] = B[i, c]
        for i in range(n):
            acc = 0.0
            for j in range(i, n):
                acc += U[i * n + j] * tmp[j]
            out += tmp[i] * math.sin(acc)
    return out


@numba.njit
def history_decay(u0, H, a):
    # H[t + 1, i] from H[t, i - 1], H[t, i], H[t, i + 1] with periodic ends
    # (wrapped indices); returns the last row's sum of squares.
    H[0, :] = u0
    for t in range(H.shape[0] - 1):
        n = H.shape[1]
        for i in range(n):
            left = H[t, (i - 1) % n]
            right = H[t, (i + 1) % n]
            H[t + 1, i] = H[t, i] + a * math.tanh(left - 2.0 * H[t, i] + right)
    return np.sum(H[-1] * H[-1])


@numba.njit
def history_sine(u0, H, a):
    # H[t + 1, i] = a sin(H[t, i]): row t is read after it was written, and
    # only rows above it are written later.
    steps = H.shape[0] - 1
    n = H.shape[1]
    for i in range(n):
        H[0, i] = u0[i]
    for t in range(steps):
        for i in range(n):
            H[t + 1, i] = a * math.sin(H[t, i]) + H[t, i]
    s = 0.0
    for i in range(n):
        s += H[steps, i] * H[steps, i]
    return s


@numba.njit
def carried_sweep(u, a, steps):
    # In place, left to right: the old u[i - 1] is carried in a scalar while
    # u[i] is overwritten.
    n = u.shape[0]
    for _ in range(steps):
        prev = u[0]
        for i in range(1, n - 1):
            cur = u[i]
            u[i] = cur + a * (prev - 2.0 * cur + u[i + 1]) + 0.1 * cur * cur
            prev = cur
    s = 0.0
    for i in range(n):
        s += u[i] * u[i]
    return s


@numba.njit
def scratch_bilinear(W, M, X):
    # Per sample a hidden vector h (scratch, reused) and the bilinear form
    # h^T M h: h[i] is loaded once per row of the inner loop, unchanged there.
    n, d = X.shape
    k = W.shape[0]
    h = np.empty(k)
    total = 0.0
    for s in range(n):
        for i in range(k):
            acc = 0.0
            for j in range(d):
                acc += W[i, j] * X[s, j]
            h[i] = math.tanh(acc)
        for i in range(k):
            for j in range(k):
                total += h[i] * M[i, j] * h[j]
    return total


def check_all_modes(f, *args) -> None:
    """Reverse and forward mode against finite differences, forward against reverse."""
    fd.check_vjp(f, *args)
    check_both(f, *args)


def test_packed_cholesky_energy_with_scratch_and_running_index():
    r = rng(1)
    d = 4
    args = (
        fd.Dup(0.3 * r.standard_normal(d + d * (d - 1) // 2)),
        fd.Const(r.standard_normal((5, d))),
    )
    check_all_modes(packed_cholesky_energy, *args)


def test_packed_upper_forms_with_flat_triangular_index():
    r = rng(2)
    n = 5
    args = (fd.Dup(r.standard_normal(n * n)), fd.Dup(r.standard_normal((n, 3))))
    check_all_modes(packed_upper_forms, *args)


def test_history_array_read_after_rows_are_written():
    r = rng(3)
    args = (fd.Dup(r.standard_normal(6)), fd.Dup(np.zeros((5, 6))), fd.Active(0.3))
    check_all_modes(history_decay, *args)


def test_history_array_with_rows_reread_in_the_time_loop():
    r = rng(6)
    args = (fd.Dup(r.standard_normal(5)), fd.Dup(np.zeros((4, 5))), fd.Active(0.6))
    check_all_modes(history_sine, *args)


def test_in_place_sweep_with_carried_scalar():
    r = rng(4)
    args = (fd.Dup(0.5 * r.standard_normal(7)), fd.Active(0.2), 3)
    check_all_modes(carried_sweep, *args)


def test_scratch_hidden_vector_read_unchanged_in_inner_loop():
    r = rng(5)
    args = (
        fd.Dup(0.5 * r.standard_normal((3, 4))),
        fd.Dup(r.standard_normal((3, 3))),
        fd.Const(r.standard_normal((4, 4))),
    )
    check_all_modes(scratch_bilinear, *args)


# --- Loops with constant bounds ------------------------------------------------------
# A constant trip count makes the extent of a loop's reads a constant, and the
# per-access overwrite check compares it with where the stores start. These
# kernels update memory in place where reads reach above the lowest store; a check
# that let them be re-read (a negative gap taken as a huge positive one) gave a wrong
# gradient without an error.

FIXED = 40


@numba.njit
def gauss_seidel_scratch(x, steps):
    # a scratch copy relaxed in place by a nonlinear Gauss-Seidel sweep
    u = np.empty(FIXED)
    for i in range(FIXED):
        u[i] = x[i % x.shape[0]]
    for _ in range(steps):
        for i in range(1, FIXED - 1):
            u[i] = u[i] * u[i - 1] * 0.5 + 0.25 * u[i + 1]
    return u.sum()


@numba.njit
def gauss_seidel_argument(u, steps):
    for _ in range(steps):
        for i in range(1, FIXED - 1):
            u[i] = u[i] * u[i - 1] * 0.5 + 0.25 * u[i + 1]
    return u.sum()


@numba.njit
def rows_relaxed_in_place(x):
    # a fixed-shape scratch matrix, each row relaxed in place from its right
    # neighbour, rows coupled through the first column
    S = np.empty((6, 24))
    for r in range(6):
        for i in range(24):
            S[r, i] = x[(r + i) % x.shape[0]]
    for r in range(6):
        for i in range(23):
            S[r, i] = math.sin(S[r, i]) * S[r, i + 1]
        if r + 1 < 6:
            S[r + 1, 0] += S[r, 0]
    total = 0.0
    for r in range(6):
        for i in range(24):
            total += S[r, i] * S[r, i]
    return total


@numba.njit
def fixed_history(x, a):
    # the re-readable case with constant bounds: row t + 1 from row t
    H = np.empty((8, 30))
    for i in range(30):
        H[0, i] = x[i % x.shape[0]]
    for t in range(7):
        H[t + 1, 0] = H[t, 0]
        H[t + 1, 29] = H[t, 29]
        for i in range(1, 29):
            H[t + 1, i] = H[t, i] + a * H[t, i - 1] * H[t, i + 1]
    s = 0.0
    for i in range(30):
        s += H[7, i] * H[7, i]
    return s


@numba.njit
def backward_sweep_scratch(x, steps):
    u = np.empty(FIXED)
    for i in range(FIXED):
        u[i] = x[i % x.shape[0]]
    for _ in range(steps):
        for i in range(FIXED - 2, 0, -1):
            u[i] = u[i] * u[i + 1] * 0.5 + 0.25 * u[i - 1]
    return np.sum(u * u)


@numba.njit
def shifted_reads_in_place(x, steps):
    # reads reach three elements above the element written
    u = np.empty(FIXED)
    for i in range(FIXED):
        u[i] = x[i % x.shape[0]]
    for _ in range(steps):
        for i in range(FIXED - 3):
            u[i] = u[i + 3] * u[i + 1] + 0.1 * u[i]
    return np.sum(u * u)


@numba.njit
def cubic_heat_carried_scalar(x, a, steps):
    u = np.empty(FIXED)
    for i in range(FIXED):
        u[i] = x[i % x.shape[0]]
    for _ in range(steps):
        left = u[0]
        for i in range(1, FIXED - 1):
            cur = u[i]
            u[i] = cur + a * (left - 2.0 * cur + u[i + 1]) - 0.1 * cur * cur * cur
            left = cur
    return np.sum(u * u)


@numba.njit
def window_products_in_place(x):
    u = np.empty(FIXED)
    for i in range(FIXED):
        u[i] = x[i % x.shape[0]]
    for i in range(FIXED - 4):
        u[i] = (u[i] * u[i + 1] + u[i + 2] * u[i + 3]) * 0.5
    return np.sum(u * u)


def test_constant_bound_backward_sweep():
    check_all_modes(backward_sweep_scratch, fd.Dup(rng(11).uniform(0.5, 1.5, 7)), 2)


def test_constant_bound_reads_above_the_write():
    check_all_modes(shifted_reads_in_place, fd.Dup(rng(12).uniform(-1, 1, 7)), 2)


def test_constant_bound_cubic_heat_with_carried_scalar():
    args = (fd.Dup(rng(13).uniform(-1, 1, 7)), fd.Active(0.2), 3)
    check_all_modes(cubic_heat_carried_scalar, *args)


def test_constant_bound_window_products_in_place():
    check_all_modes(window_products_in_place, fd.Dup(rng(14).uniform(-1, 1, 7)))


def test_constant_bound_nonlinear_sweep_of_a_scratch_copy():
    check_all_modes(gauss_seidel_scratch, fd.Dup(rng(7).uniform(0.5, 1.5, 7)), 3)


def test_constant_bound_nonlinear_sweep_of_an_argument():
    check_all_modes(gauss_seidel_argument, fd.Dup(rng(8).uniform(0.5, 1.5, FIXED)), 2)


def test_constant_bound_rows_relaxed_in_place():
    check_all_modes(rows_relaxed_in_place, fd.Dup(rng(9).uniform(-1, 1, 11)))


def test_constant_bound_history_rows():
    check_all_modes(fixed_history, fd.Dup(rng(10).uniform(-1, 1, 9)), fd.Active(0.3))
