"""Slice assignment between arrays (issue #10, "Constructs users hit next").

numba lowers ``dst[...] = src`` to a copy loop. When the two arrays may overlap it
first copies the source into a raw temporary buffer (``NRT_Allocate``, a memcpy
or a loop) and copies the temporary into the destination; the buffer is freed
with ``NRT_Free`` on the same path. Array expressions on the right-hand side are
evaluated into an allocated array first. The engine traces raw buffers as
allocations of their own (with a shadow buffer), and copies, memmove included,
have exact tangents and adjoints (docs/design.md §7.3, §8.3).

Every kernel is checked in reverse mode against central finite differences
(``fd.check_vjp``), in forward mode against finite differences (``check_jvp``),
and forward against reverse on random directions (``<J v, w> == <v, Jᵀ w>``).
"""

from __future__ import annotations

import fd
import numba
import numpy as np
import pytest
from test_forward import check_forward_reverse, check_jvp

import enzpy


def rng(seed):
    return np.random.default_rng(seed)


def uniform(seed, shape, dtype=np.float64):
    return fd.random_array(rng(seed), shape, dtype=dtype)


# ---------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------


@numba.njit
def copy_whole(x, y):
    y[:] = x
    return (y * y * x).sum()


@numba.njit
def copy_ellipsis(x, y):
    y[...] = x
    return np.sin(y).sum()


@numba.njit
def assign_affine_expression(x, y):
    y[:] = x * 2.0 + 1.0
    return (y * y).sum()


@numba.njit
def assign_scaled(x, y, a):
    y[:] = x * a


@numba.njit
def assign_row(M, v, i):
    M[i, :] = v
    return (M * M).sum()


@numba.njit
def assign_column(M, v, j):
    M[:, j] = np.cos(v)
    return (M * M * M).sum()


@numba.njit
def assign_last_row_to_first(A):
    A[0, :] = A[-1, :] * 2
    return (A * A).sum()


@numba.njit
def jacobi_slices(u, a, steps):
    for _ in range(steps):
        u[1:-1] += a * (u[:-2] - 2 * u[1:-1] + u[2:])
    return (u * u * u).sum()


@numba.njit
def shift_right(u):
    u[1:] = u[:-1]
    return (u * np.arange(1.0, u.shape[0] + 1.0) * u).sum()


@numba.njit
def shift_left(u):
    u[:-1] = u[1:]
    return (u * np.arange(1.0, u.shape[0] + 1.0) * u).sum()


@numba.njit
def shift_rows_down(A):
    A[1:, :] = A[:-1, :]
    return (A * A * A).sum()


@numba.njit
def column_sums_into_row(X, out, i):
    out[i, :] = np.sum(X, axis=0)
    return (out * out).sum()


@numba.njit
def row_sums_into_column(X, out, j):
    out[:, j] = np.sum(X * X, axis=1)


@numba.njit
def diff_energy(x):
    d = np.diff(x)
    return (d * d).sum()


@numba.njit
def strided_copy(x, y):
    y[::2] = x[1::2]
    return (y * y).sum()


@numba.njit
def reversed_copy(x, y):
    y[:] = x[::-1]
    return (y * np.arange(1.0, y.shape[0] + 1.0)).sum()


@numba.njit
def transposed_copy(A, B):
    B[:, :] = A.T
    return (B * B * B).sum()


@numba.njit
def broadcast_row(M, v):
    M[:, :] = v
    return (M * np.arange(1.0, M.size + 1.0).reshape(M.shape)).sum()


@numba.njit
def scratch_reused_in_loop(x, a):
    tmp = np.empty_like(x)
    s = 0.0
    for k in range(4):
        tmp[:] = x * (a + k)
        tmp[1:] = tmp[:-1] * x[1:]
        s += (tmp * tmp).sum()
    return s


@numba.njit
def copy_then_update_in_place(x, y):
    y[:] = x
    for i in range(y.shape[0]):
        y[i] = y[i] * y[i] + 1.0
    y *= 2.0
    return y.sum()


@numba.njit
def const_source_overwrites(x, y, c):
    s = (y * x).sum()
    y[1:3] = c[1:3]
    return s + (y * y * x).sum()


@numba.njit
def local_slice_of_differences(x):
    t = np.zeros(x.shape[0])
    t[1:-1] = x[2:] - x[:-2]
    return (t * t * x).sum()


@numba.njit
def copy_of_a_copy(x, y):
    t = x.copy()
    y[:] = t
    return (y * y * t).sum()


@numba.njit
def narrowing_copy(x, y):
    y[:] = x
    return (y * y).sum()


def _cases():
    return [
        ("copy", copy_whole, lambda: (fd.Dup(uniform(1, 6)), fd.Dup(uniform(2, 6)))),
        ("ellipsis", copy_ellipsis, lambda: (fd.Dup(uniform(3, 5)), fd.Dup(uniform(4, 5)))),
        ("affine", assign_affine_expression, lambda: (fd.Dup(uniform(5, 7)), fd.Dup(np.zeros(7)))),
        (
            "scaled",
            assign_scaled,
            lambda: (fd.Dup(uniform(6, 4)), fd.Dup(np.zeros(4)), fd.Active(0.7)),
        ),
        ("row", assign_row, lambda: (fd.Dup(uniform(7, (3, 4))), fd.Dup(uniform(8, 4)), 1)),
        ("column", assign_column, lambda: (fd.Dup(uniform(9, (3, 4))), fd.Dup(uniform(10, 3)), 2)),
        ("last-row-to-first", assign_last_row_to_first, lambda: (fd.Dup(uniform(11, (3, 4))),)),
        ("jacobi", jacobi_slices, lambda: (fd.Dup(uniform(12, 9)), fd.Active(0.3), 3)),
        ("shift-right", shift_right, lambda: (fd.Dup(uniform(13, 7)),)),
        ("shift-left", shift_left, lambda: (fd.Dup(uniform(14, 7)),)),
        ("shift-rows", shift_rows_down, lambda: (fd.Dup(uniform(15, (4, 3))),)),
        (
            "axis0-sum-into-row",
            column_sums_into_row,
            lambda: (fd.Dup(uniform(16, (3, 4))), fd.Dup(uniform(17, (2, 4))), 1),
        ),
        (
            "axis1-sum-into-column",
            row_sums_into_column,
            lambda: (fd.Dup(uniform(18, (3, 4))), fd.Dup(uniform(19, (3, 2))), 0),
        ),
        ("diff", diff_energy, lambda: (fd.Dup(uniform(20, 8)),)),
        ("strided", strided_copy, lambda: (fd.Dup(uniform(21, 8)), fd.Dup(uniform(22, 8)))),
        ("reversed", reversed_copy, lambda: (fd.Dup(uniform(23, 6)), fd.Dup(uniform(24, 6)))),
        (
            "transposed",
            transposed_copy,
            lambda: (fd.Dup(uniform(25, (3, 4))), fd.Dup(uniform(26, (4, 3)))),
        ),
        ("broadcast", broadcast_row, lambda: (fd.Dup(uniform(27, (3, 4))), fd.Dup(uniform(28, 4)))),
        (
            "scratch-in-loop",
            scratch_reused_in_loop,
            lambda: (fd.Dup(uniform(29, 5)), fd.Active(0.4)),
        ),
        (
            "copy-then-in-place",
            copy_then_update_in_place,
            lambda: (fd.Dup(uniform(30, 5)), fd.Dup(uniform(31, 5))),
        ),
        (
            "const-source",
            const_source_overwrites,
            lambda: (fd.Dup(uniform(32, 5)), fd.Dup(uniform(33, 5)), fd.Const(uniform(34, 5))),
        ),
        ("local-differences", local_slice_of_differences, lambda: (fd.Dup(uniform(35, 7)),)),
        ("copy-of-copy", copy_of_a_copy, lambda: (fd.Dup(uniform(36, 5)), fd.Dup(uniform(37, 5)))),
        (
            "float32",
            assign_affine_expression,
            lambda: (fd.Dup(uniform(38, 6, np.float32)), fd.Dup(np.zeros(6, np.float32))),
        ),
        (
            "float32-from-float64",
            narrowing_copy,
            lambda: (fd.Dup(uniform(39, 6)), fd.Dup(np.zeros(6, np.float32))),
        ),
    ]


CASES = _cases()
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("name, f, make", CASES, ids=IDS)
def test_reverse_matches_finite_differences(name, f, make):
    fd.check_vjp(f, *make())


@pytest.mark.parametrize("name, f, make", CASES, ids=IDS)
def test_forward_matches_finite_differences(name, f, make):
    check_jvp(f, *make())


@pytest.mark.parametrize("name, f, make", CASES, ids=IDS)
def test_forward_agrees_with_reverse(name, f, make):
    check_forward_reverse(f, *make())


@numba.njit
def shifted_products(x):
    y = np.empty_like(x)
    y[:] = x * x
    y[1:] = y[:-1] * x[1:]
    return (y * x).sum()


def test_hessian_through_overlapping_slice_assignment():
    # f = x0^3 + sum_{i>=1} x_{i-1}^2 x_i^2 (y[1:] = y[:-1] * x[1:] reads the old y)
    x = np.array([0.3, -0.5, 0.8, 1.1])
    n = x.shape[0]
    H = np.zeros((n, n))
    H[0, 0] = 6 * x[0]
    for i in range(1, n):
        H[i - 1, i - 1] += 2 * x[i] ** 2
        H[i, i] += 2 * x[i - 1] ** 2
        H[i - 1, i] += 4 * x[i - 1] * x[i]
        H[i, i - 1] += 4 * x[i - 1] * x[i]
    np.testing.assert_allclose(enzpy.hessian(shifted_products, x.copy()), H, rtol=1e-12)


@pytest.mark.parametrize("mode", [enzpy.Reverse, enzpy.Forward], ids=["reverse", "forward"])
def test_batch_lanes_equal_separate_calls(mode):
    # every lane has its own shadow of numba's temporary buffer
    A, B = uniform(40, (3, 4)), uniform(41, (4, 3))
    dA = [uniform(42 + k, (3, 4)) for k in range(3)]
    dB = [uniform(45 + k, (4, 3)) for k in range(3)]
    kw = {"ret": (1.0, -0.5, 2.0)} if mode is enzpy.Reverse else {"mode": mode}
    batch_dA, batch_dB = [d.copy() for d in dA], [d.copy() for d in dB]
    batch = enzpy.autodiff(
        transposed_copy,
        enzpy.BatchDuplicated(A.copy(), tuple(batch_dA)),
        enzpy.BatchDuplicated(B.copy(), tuple(batch_dB)),
        **kw,
    )
    for k in range(3):
        one_dA, one_dB = dA[k].copy(), dB[k].copy()
        kw1 = {"ret": enzpy.Active} if mode is enzpy.Reverse else {"mode": mode}
        args = (enzpy.Duplicated(A.copy(), one_dA), enzpy.Duplicated(B.copy(), one_dB))
        if mode is enzpy.Reverse:
            # the seed scales the return's cotangent: seed it through dret
            one = enzpy.derivative(transposed_copy, *args, **kw1)
            one(A.copy(), one_dA, B.copy(), one_dB, kw["ret"][k])
        else:
            tangent = enzpy.autodiff(transposed_copy, *args, **kw1)
            np.testing.assert_allclose(batch[k], tangent, rtol=1e-13)
        np.testing.assert_allclose(batch_dA[k], one_dA, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(batch_dB[k], one_dB, rtol=1e-13, atol=1e-15)
