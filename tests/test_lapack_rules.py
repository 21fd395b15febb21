"""The LAPACK rules behind numba's np.linalg (enzpy/_lapack_rules.py): forward
mode against reverse mode on random directions, finite differences for the
functions tests/test_numpy_functions.py does not cover, LAPACK inside loops
whose matrices are overwritten, and the clear refusals."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from fd import fd_gradient
from test_numpy_functions import k_cholesky, k_det, k_eigh, k_inv, k_solve, spd

import enzpy
from enzpy import BatchDuplicated, Const, Duplicated
from enzpy.testing import check_derivative

RNG = np.random.default_rng(20261130)


def _well_conditioned(n):
    return RNG.uniform(-1, 1, (n, n)) + 3.0 * np.eye(n)


@numba.njit
def k_slogdet(A):
    sign, logdet = np.linalg.slogdet(A)
    return sign * logdet


@numba.njit
def k_eigvalsh(S, w):
    vals = np.linalg.eigvalsh(S)
    return (vals * w).sum()


@numba.njit
def k_solve_sweeps(A, b, steps):
    """A Newton-like sweep: the matrix and right-hand side are overwritten in
    place every step, and each step solves with the current ones."""
    x = b.copy()
    for _ in range(steps):
        y = np.linalg.solve(A, x)
        for i in range(A.shape[0]):
            A[i, i] += 0.1 * y[i] * y[i]
            x[i] = np.sin(y[i])
    return (x * x).sum() + np.linalg.det(A)


def _directional(kernel, args, vs):
    """Forward mode along the directions vs (one per argument)."""
    ann = [Duplicated(a.copy(), v.copy()) for a, v in zip(args, vs, strict=True)]
    return enzpy.autodiff(kernel, *ann, mode=enzpy.Forward)


def _gradients(kernel, args):
    """Reverse mode, every argument differentiated (as test_numpy_functions'
    finite-difference checks do: the same derivative, built once)."""
    gs = [np.zeros_like(a) for a in args]
    enzpy.autodiff(kernel, *[Duplicated(a.copy(), g) for a, g in zip(args, gs, strict=True)])
    return gs


CASES = {
    "solve": (
        k_solve,
        lambda: [_well_conditioned(4), RNG.uniform(-1, 1, 4), RNG.uniform(-1, 1, 4)],
    ),
    "inv": (k_inv, lambda: [_well_conditioned(3), RNG.uniform(-1, 1, (3, 3))]),
    "det": (k_det, lambda: [_well_conditioned(4)]),
    "slogdet": (k_slogdet, lambda: [_well_conditioned(4)]),
    "cholesky": (k_cholesky, lambda: [spd(RNG, 4), RNG.uniform(-1, 1, (4, 4))]),
    "eigh": (k_eigh, lambda: [spd(RNG, 4), RNG.uniform(-1, 1, 4)]),
    "eigvalsh": (k_eigvalsh, lambda: [spd(RNG, 4), RNG.uniform(-1, 1, 4)]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_forward_mode_agrees_with_reverse_mode_on_random_directions(name):
    kernel, make = CASES[name]
    args = make()
    vs = [RNG.standard_normal(a.shape) for a in args]
    jv = _directional(kernel, args, vs)
    gs = _gradients(kernel, args)
    expected = sum(float((g * v).sum()) for g, v in zip(gs, vs, strict=True))
    assert jv == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", ["slogdet", "eigvalsh"])
def test_reverse_matches_finite_differences(name):
    """The other functions' finite-difference checks are in test_numpy_functions."""
    kernel, make = CASES[name]
    args = make()
    gs = _gradients(kernel, args)
    _, refs = fd_gradient(kernel, *args)
    for g, ref in zip(gs, refs, strict=True):
        np.testing.assert_allclose(g, ref, rtol=1e-6, atol=1e-8)


def test_lapack_in_a_loop_over_an_overwritten_matrix_matches_finite_differences():
    A0 = _well_conditioned(4)
    b = RNG.uniform(-1, 1, 4)
    gA = np.zeros_like(A0)
    gb = np.zeros_like(b)
    enzpy.autodiff(k_solve_sweeps, Duplicated(A0.copy(), gA), Duplicated(b, gb), Const(3))
    _, (rA, rb, _) = fd_gradient(lambda A, b, s: k_solve_sweeps(A.copy(), b, s), A0, b, 3)
    np.testing.assert_allclose(gA, rA, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gb, rb, rtol=1e-6, atol=1e-8)


def test_float32_matrices_with_derivatives_are_refused_clearly():
    A = _well_conditioned(3).astype(np.float32)
    with pytest.raises(ValueError, match="float64 arrays only"):
        enzpy.autodiff(k_det, Duplicated(A, np.zeros_like(A)))


@numba.njit
def k_lstsq(A, b):
    x, res, rank, sv = np.linalg.lstsq(A, b)
    return (x * x).sum() + 0.3 * x[0]


@numba.njit
def k_lstsq_truncated(A, b):
    """Singular values below 1e-10 of the largest count as zero."""
    x = np.linalg.lstsq(A, b, rcond=1e-10)[0]
    return (x * x).sum() + 0.3 * x[0]


@numba.njit
def k_lstsq_all_outputs(A, B, w):
    """The solution, the residual sums of squares and the singular values."""
    x, res, rank, sv = np.linalg.lstsq(A, B)
    return (x * x).sum() + (res * w[: res.shape[0]]).sum() + (sv * sv * sv).sum()


@numba.njit
def k_lstsq_refit(A, b, steps):
    """Least squares in a loop whose matrix and right-hand side are updated
    in place from each fit."""
    s = 0.0
    for _ in range(steps):
        x = np.linalg.lstsq(A, b)[0]
        for i in range(A.shape[0]):
            b[i] = b[i] - 0.2 * np.tanh(A[i, :] @ x)
            A[i, 0] += 0.1 * x[0]
        s += (x * x).sum()
    return s


@pytest.mark.parametrize("shape", [(6, 3), (3, 5), (4, 4)])
def test_lstsq_matches_finite_differences_in_every_mode_and_pattern(shape):
    # Overdetermined (residuals), underdetermined (minimum norm), square.
    m, n = shape
    A = RNG.uniform(-1, 1, (m, n))
    B = RNG.uniform(-1, 1, (m, 2))
    w = RNG.uniform(0.5, 1.5, 2)
    # Batch lanes through the rule are checked on k_lstsq; the kernel of all
    # outputs (seven activity patterns) is checked one direction at a time,
    # which keeps this test's compiles to what CI's budget affords.
    for kernel, args, widths in (
        (k_lstsq, (A, B[:, 0].copy()), (1, 3)),
        (k_lstsq_all_outputs, (A, B, w), (1,)),
    ):
        rep = check_derivative(kernel, *args, widths=widths, report=True)
        assert rep.ok, str(rep)


def test_lstsq_of_a_rank_deficient_matrix_differentiates_the_fit_it_made():
    # rank 2 of 3: the derivative at constant rank, against finite
    # differences along perturbations that keep the rank.
    U = RNG.uniform(-1, 1, (6, 2))
    V = RNG.uniform(-1, 1, (2, 3))
    A = U @ V
    b = RNG.uniform(-1, 1, 6)
    gb = np.zeros(6)
    enzpy.autodiff(k_lstsq_truncated, Const(A), Duplicated(b, gb))
    _, (_, rb) = fd_gradient(k_lstsq_truncated, A, b)
    np.testing.assert_allclose(gb, rb, rtol=1e-6, atol=1e-8)
    dU = RNG.standard_normal(U.shape)
    h = 1e-6
    f = k_lstsq_truncated
    fd = (f((U + h * dU) @ V, b) - f((U - h * dU) @ V, b)) / (2 * h)
    jv = enzpy.autodiff(f, Duplicated(A, dU @ V), Const(b), mode=enzpy.Forward)
    assert jv == pytest.approx(fd, rel=1e-6, abs=1e-8)


def test_lstsq_in_a_loop_over_overwritten_operands_matches_finite_differences():
    A = RNG.uniform(-1, 1, (7, 3))
    b = RNG.uniform(-1, 1, 7)
    rep = check_derivative(k_lstsq_refit, A, b, 3, report=True)
    assert rep.ok, str(rep)


@pytest.mark.parametrize("name", list(CASES))
def test_forward_batch_lanes_equal_one_direction_at_a_time(name):
    kernel, make = CASES[name]
    args = make()
    lanes = [[RNG.standard_normal(a.shape) for a in args] for _ in range(3)]
    batch = enzpy.autodiff(
        kernel,
        *[
            BatchDuplicated(a.copy(), [lane[i].copy() for lane in lanes])
            for i, a in enumerate(args)
        ],
        mode=enzpy.Forward,
    )
    for got, vs in zip(batch, lanes, strict=True):
        assert got == pytest.approx(_directional(kernel, args, vs), rel=1e-12, abs=1e-14)
