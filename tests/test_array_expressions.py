"""numpy-style array expressions in time loops (numba's broadcasting loops,
temporaries and slice assignments), differentiated in every mode and checked
against finite differences: operands of the same shape, operands broadcast
along an axis of extent 1, and in-place slice updates of a state."""

from __future__ import annotations

import fd
import numba
import numpy as np
import pytest

import enzpy
from enzpy import Duplicated
from enzpy.testing import check_derivative


@numba.njit
def heat_slices(u, a, steps):
    for _ in range(steps):
        u[1:-1] = u[1:-1] + a * (u[:-2] - 2.0 * u[1:-1] + u[2:])
    return (u[1:-1] ** 2).sum()


@numba.njit
def broadcast_rows_and_columns(M, row, col, steps):
    # row has shape (1, m) and col (n, 1): their indices stay 0 along the
    # axis of extent 1 while the loop runs over M's.
    for _ in range(steps):
        M[:, :] = np.tanh(M * row + col) + 0.1 * M
    return (M * M * row).sum() + (col * col).sum()


@numba.njit
def scalar_broadcast_in_a_sweep(x, y, c):
    s = 0.0
    for k in range(3):
        y[:] = np.sin(x * c + k) * y + x
        s += (y * y).sum()
    return s


def test_in_place_slice_update_of_a_heat_line():
    u = np.sin(np.linspace(0.0, 3.0, 12)) + 1.0
    rep = check_derivative(heat_slices, u, 0.2, 4, report=True)
    assert rep.ok, rep


@pytest.mark.parametrize("n, m", [(3, 4), (1, 4), (3, 1)])
def test_operands_broadcast_along_axes_of_extent_one(n, m):
    # Reverse mode only: this kernel's derivative takes half a minute to
    # build (numba's 2-D broadcasting code), a known compile-time cost.
    r = np.random.default_rng(n * 10 + m)
    M = r.uniform(-1.0, 1.0, (n, m))
    row = r.uniform(0.5, 1.5, (1, m))
    col = r.uniform(-0.5, 0.5, (n, 1))
    fd.check_vjp(broadcast_rows_and_columns, fd.Dup(M), fd.Dup(row), fd.Dup(col), 3)


def test_a_scalar_broadcast_against_arrays_in_a_loop():
    r = np.random.default_rng(3)
    rep = check_derivative(
        scalar_broadcast_in_a_sweep, r.uniform(-1, 1, 5), r.uniform(-1, 1, 5), 0.7, report=True
    )
    assert rep.ok, rep


@numba.njit
def reversed_rows_assigned_in_place(A):
    # numba checks the shapes of the assignment at run time and formats the
    # shape error's message (string code) in a callee that always raises
    A[::-1, :] = A * 0.5
    return np.sum(A * A)


def test_code_that_only_formats_an_error_message_gets_no_derivative():
    # The callee that raises the shape error leaves its caller a branch to
    # the normal path that is never taken; folded in preprocessing, the
    # message's string code no longer reaches the normal exit, and nothing of
    # it is taped (it was: 76 tape decisions in unicode code, and 15k blocks).
    A = np.random.default_rng(9).uniform(0.5, 1.5, (3, 3))
    log = enzpy.explain(reversed_rows_assigned_in_place, Duplicated(A.copy(), np.zeros((3, 3))))
    tape = log.split("\ntape:\n", 1)[1]
    assert "unicode" not in tape, tape
    rep = check_derivative(
        reversed_rows_assigned_in_place,
        A,
        modes=(enzpy.ReverseWithPrimal,),
        widths=(1,),
        report=True,
    )
    assert rep.ok, str(rep)
