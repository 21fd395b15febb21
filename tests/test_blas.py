"""np.dot / @ on arrays: numba calls BLAS (dot, gemv, gemm); the reverse
sweep calls BLAS again with the transposed products. Checked against finite
differences for every layout numba passes to BLAS, and with an input that is
overwritten after the product (the engine keeps a copy)."""

import fd
import numba
import numpy as np
import pytest
from test_forward import check_jvp

import enzpy
from enzpy import Active, Duplicated


def rng(seed):
    return np.random.default_rng(seed)


@numba.njit
def dot_vv(x, y):
    return np.dot(x, y) * 2.0


@numba.njit
def dot_mv(A, x):
    return np.sum(np.sin(A @ x))


@numba.njit
def dot_mtv(A, x):
    return np.sum(np.sin(A.T @ x))


@numba.njit
def dot_vm(x, A):
    return np.sum(np.cos(x @ A))


@numba.njit
def dot_mm(A, B):
    return np.sum(np.sin(A @ B))


@numba.njit
def product_then_overwrite(A, B):
    C = A @ B
    A[0, 0] = 5.0
    return np.sum(C * C) + A[0, 1]


@numba.njit
def scaled_quadratic_form(A, x, s):
    y = A @ x
    return s * np.dot(x, y)


@numba.njit
def vdot_of_strided_views(x, y):
    # np.vdot conjugates its first operand (BLAS dot with conj set): nothing
    # to do for real vectors
    return np.vdot(x[::2], np.sin(y[1::2])) + np.vdot(x, x)


def test_vector_dot():
    fd.check_vjp(dot_vv, fd.Dup(rng(1).random(6)), fd.Dup(rng(2).random(6)))


def test_vdot_of_real_vectors_in_both_modes():
    x, y = fd.Dup(rng(11).random(6)), fd.Dup(rng(12).random(6))
    fd.check_vjp(vdot_of_strided_views, x, y)
    check_jvp(vdot_of_strided_views, x, y)


def test_matrix_vector():
    fd.check_vjp(dot_mv, fd.Dup(rng(3).random((4, 3))), fd.Dup(rng(4).random(3)))


def test_transposed_matrix_vector():
    fd.check_vjp(dot_mtv, fd.Dup(rng(5).random((4, 3))), fd.Dup(rng(6).random(4)))


def test_vector_matrix():
    fd.check_vjp(dot_vm, fd.Dup(rng(7).random(4)), fd.Dup(rng(8).random((4, 3))))


@pytest.mark.parametrize("order", ["C", "F"])
def test_matrix_matrix(order):
    A = np.asarray(rng(9).random((4, 3)), order=order)
    B = np.asarray(rng(10).random((3, 2)), order=order)
    fd.check_vjp(dot_mm, fd.Dup(A), fd.Dup(B))


def test_input_overwritten_after_the_product():
    fd.check_vjp(
        product_then_overwrite, fd.Dup(rng(11).random((3, 3))), fd.Dup(rng(12).random((3, 2)))
    )


def test_one_operand_constant():
    A = rng(13).random((3, 3))
    x = rng(14).random(3)
    dx = np.zeros(3)
    _, _, ds = enzpy.autodiff(scaled_quadratic_form, A, Duplicated(x, dx), Active(1.5))
    np.testing.assert_allclose(dx, 1.5 * (A + A.T) @ x, rtol=1e-13)
    np.testing.assert_allclose(ds, x @ A @ x, rtol=1e-13)


def test_float32_matrix_vector():
    A = rng(15).random((4, 3)).astype(np.float32)
    x = rng(16).random(3).astype(np.float32)
    fd.check_vjp(dot_mv, fd.Dup(A), fd.Dup(x))


# np.linalg.norm: numba calls BLAS nrm2 for the 2-norm of a vector and the
# Frobenius norm of a matrix; the derivative is x / ||x||, and 0 at x = 0
# (docs/design.md §8.4).


@numba.njit
def vector_norm(x):
    return np.linalg.norm(x)


@numba.njit
def frobenius_norm_of_product(A, B):
    return np.linalg.norm(A @ B)


@numba.njit
def norm_of_strided_view(x):
    return np.linalg.norm(x[::2]) * 3.0


@numba.njit
def normalized_residual(x, y):
    r = x - y
    return np.sum(r) / (1.0 + np.linalg.norm(r))


@numba.njit
def one_and_inf_norms(x):
    return np.linalg.norm(x, 1) + 2.0 * np.linalg.norm(x, np.inf)


@pytest.mark.parametrize(
    "f, shapes",
    [
        (vector_norm, [(5,)]),
        (frobenius_norm_of_product, [(3, 4), (4, 2)]),
        (norm_of_strided_view, [(7,)]),
        (normalized_residual, [(4,), (4,)]),
        (one_and_inf_norms, [(5,)]),
    ],
    ids=["vector", "frobenius", "strided", "residual", "ord-1-inf"],
)
def test_norm_matches_finite_differences(f, shapes):
    r = rng(21)
    args = [fd.Dup(r.uniform(-1, 1, s)) for s in shapes]
    fd.check_vjp(f, *args)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_vector_norm_analytic_both_modes(dtype):
    x = np.array([3.0, -4.0, 12.0], dtype)
    dx = np.zeros_like(x)
    enzpy.autodiff(vector_norm, Duplicated(x, dx))
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(dx, x / 13.0, rtol=rtol)
    v = np.array([0.5, 1.0, -2.0], dtype)
    t = enzpy.autodiff(vector_norm, Duplicated(x, v), mode=enzpy.Forward)
    assert float(t) == pytest.approx(float(np.dot(x, v)) / 13.0, rel=rtol)


def test_vector_norm_at_zero_is_zero_both_modes():
    x = np.zeros(4)
    dx = np.zeros(4)
    enzpy.autodiff(vector_norm, Duplicated(x, dx))
    np.testing.assert_array_equal(dx, np.zeros(4))
    t = enzpy.autodiff(vector_norm, Duplicated(x, np.ones(4)), mode=enzpy.Forward)
    assert t == 0.0


@numba.njit
def spectral_norm(A):
    return np.linalg.norm(A, 2)  # <- refused


def test_matrix_two_norm_is_refused_naming_the_svd():
    A = rng(3).uniform(-1, 1, (3, 3))
    with pytest.raises(enzpy.UnsupportedError) as info:
        enzpy.autodiff(spectral_norm, Duplicated(A, np.zeros_like(A)))
    assert "SVD" in info.value.message and "norm" in info.value.message
    assert "numba_" not in info.value.message
