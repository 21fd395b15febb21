"""numpy functions whose numba implementation is differentiated by a rule, not
through its body (docs/design.md §8.5): numba's np.logaddexp and np.logaddexp2
return ``x + log(2)`` (``x + 1``) where ``x == y``, whose derivative is (1, 0)
instead of the function's (1/2, 1/2). These kernels use them the ways numerical
code does (softplus of zero-initialised parameters, a running log-sum-exp over
tied values, whole-array expressions) and compare with analytic derivatives at
the ties and with central finite differences elsewhere, in reverse, forward and
batch modes.
"""

from __future__ import annotations

import re

import numba
import numpy as np
import pytest
from fd import check_gradient

import enzpy
from enzpy import BatchDuplicated, Const, Duplicated, Forward


def _sigmoid(t):
    return 1.0 / (1.0 + np.exp(-t))


@numba.njit
def logistic_loss(w, X, y):
    # mean(log(1 + exp(-y * (X w)))) written as numpy code does
    return np.mean(np.logaddexp(0.0, -y * (X @ w)))


def logistic_loss_grad(w, X, y):
    z = -y * (X @ w)
    return X.T @ (-y * _sigmoid(z)) / len(y)


@numba.njit
def running_logsumexp(x):
    s = -np.inf
    for v in x:
        s = np.logaddexp(s, v)
    return s


@numba.njit
def softplus_sum(x):
    return np.sum(np.logaddexp(x, 0.0))


@numba.njit
def logaddexp2_pairs(x, y):
    s = 0.0
    for i in range(x.shape[0]):
        s += np.logaddexp2(x[i], y[i]) * (i + 1.0)
    return s


@numba.njit
def logaddexp2_expr(x, y, out):
    t = np.logaddexp2(x, y) - x
    for i in range(t.size):
        out[i] = t[i]


def _data(rng, n=6, d=3):
    X = rng.standard_normal((n, d))
    y = np.where(rng.standard_normal(n) > 0, 1.0, -1.0)
    return X, y


@pytest.mark.parametrize("w0", ["zeros", "random"])
def test_logistic_loss_gradient_matches_analytic(w0):
    rng = np.random.default_rng(1)
    X, y = _data(rng)
    w = np.zeros(3) if w0 == "zeros" else rng.standard_normal(3)
    dw = np.zeros(3)
    enzpy.autodiff(logistic_loss, Duplicated(w, dw), Const(X), Const(y))
    np.testing.assert_allclose(dw, logistic_loss_grad(w, X, y), rtol=1e-13, atol=1e-15)
    # forward mode, one unit direction per coordinate
    for k in range(3):
        e = np.zeros(3)
        e[k] = 1.0
        t = enzpy.autodiff(logistic_loss, Duplicated(w, e), Const(X), Const(y), mode=Forward)
        assert t == pytest.approx(dw[k], rel=1e-13, abs=1e-15)


def test_logistic_loss_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    X, y = _data(rng)
    w = rng.standard_normal(3)
    check_gradient(lambda w_: logistic_loss(w_, X, y), w, grad=lambda f, w_: _grad_w(w_, X, y))


def _grad_w(w, X, y):
    dw = np.zeros_like(w)
    enzpy.autodiff(logistic_loss, Duplicated(w, dw), Const(X), Const(y))
    return dw


@pytest.mark.parametrize(
    "x", [np.zeros(4), np.array([1.0, 1.0, -2.0, 1.0]), np.array([0.3, -1.2, 2.5])]
)
def test_running_logsumexp_gradient_is_softmax(x):
    want = np.exp(x - np.log(np.sum(np.exp(x))))
    dx = np.zeros_like(x)
    enzpy.autodiff(running_logsumexp, Duplicated(x, dx))
    np.testing.assert_allclose(dx, want, rtol=1e-13)
    # forward batch: all unit directions at once give the same gradient
    dirs = tuple(np.eye(len(x))[k] for k in range(len(x)))
    t = enzpy.autodiff(running_logsumexp, BatchDuplicated(x, dirs), mode=Forward)
    np.testing.assert_allclose(np.array(t), want, rtol=1e-13)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_softplus_of_zeros_in_an_array_expression(dtype):
    x = np.zeros(5, dtype)
    dx = np.zeros(5, dtype)
    enzpy.autodiff(softplus_sum, Duplicated(x, dx))
    np.testing.assert_array_equal(dx, np.full(5, 0.5, dtype))
    t = enzpy.autodiff(softplus_sum, Duplicated(x, np.ones(5, dtype)), mode=Forward)
    assert t == 2.5


def test_softplus_hessian_at_zero():
    # second order (reverse over forward) goes through the rule as well:
    # d2/dx2 log(1 + e^x) = s (1 - s), 1/4 at 0
    x = np.array([0.0, 0.0, 1.0])
    s = _sigmoid(x)
    np.testing.assert_allclose(enzpy.hessian(softplus_sum, x), np.diag(s * (1 - s)), rtol=1e-13)


def test_logaddexp2_reverse_batch_and_forward_agree():
    rng = np.random.default_rng(3)
    x = np.array([0.0, 1.0, -2.0, 0.5])
    y = np.array([0.0, 1.0, 3.0, -0.25])  # ties at 0 and 1
    p = 2.0**x / (2.0**x + 2.0**y) * np.arange(1.0, 5.0)
    dx, dy = np.zeros(4), np.zeros(4)
    enzpy.autodiff(logaddexp2_pairs, Duplicated(x, dx), Duplicated(y, dy))
    np.testing.assert_allclose(dx, p, rtol=1e-13)
    np.testing.assert_allclose(dy, np.arange(1.0, 5.0) - p, rtol=1e-13)
    # reverse batch of two cotangents of the array-expression form
    out = np.zeros(4)
    w1, w2 = rng.standard_normal(4), rng.standard_normal(4)
    bx, by = (np.zeros(4), np.zeros(4)), (np.zeros(4), np.zeros(4))
    enzpy.autodiff(
        logaddexp2_expr,
        BatchDuplicated(x, bx),
        BatchDuplicated(y, by),
        BatchDuplicated(out, (w1.copy(), w2.copy())),
    )
    q = 2.0**x / (2.0**x + 2.0**y)
    for w, gx, gy in ((w1, bx[0], by[0]), (w2, bx[1], by[1])):
        np.testing.assert_allclose(gx, w * (q - 1.0), rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(gy, w * (1.0 - q), rtol=1e-13)
    # forward: <J v, w> = <v, J^T w>
    v = rng.standard_normal(4)
    dout = np.zeros(4)
    enzpy.autodiff(logaddexp2_expr, Duplicated(x, v), Const(y), Duplicated(out, dout), mode=Forward)
    assert np.dot(dout, w1) == pytest.approx(np.dot(v, bx[0]), rel=1e-12)


# x ** n with an integer n: numba's square-and-multiply loop. With a constant
# n >= 0 its derivative is powi's (no tape of the loop's iterations); other
# exponents (negative, computed at run time) are differentiated through the
# loop as before.
@numba.njit
def lennard_jones(pos, eps):
    # pairwise energy, the powers written as numerical code writes them
    e = 0.0
    for i in range(pos.shape[0]):
        for j in range(i + 1, pos.shape[0]):
            r2 = (pos[i] - pos[j]) ** 2 + 1.0
            inv6 = (1.0 / r2) ** 3
            e += eps * (inv6**2 - inv6)
    return e


@numba.njit
def powers(x, k):
    s = 0.0
    for i in range(x.shape[0]):
        s += x[i] ** 0 + x[i] ** 1 + 0.5 * x[i] ** 3 + x[i] ** 7 + x[i] ** -2 + x[i] ** k
    return s


def test_integer_powers_match_analytic_derivatives():
    x = np.random.default_rng(3).uniform(0.5, 1.5, 9)
    dx = np.zeros_like(x)
    enzpy.autodiff(powers, Duplicated(x, dx), Const(4))
    want = 1 + 1.5 * x**2 + 7 * x**6 - 2 * x**-3 + 4 * x**3
    np.testing.assert_allclose(dx, want, rtol=1e-13)
    tx = np.random.default_rng(4).standard_normal(9)
    tangent = enzpy.autodiff(powers, Duplicated(x, tx), Const(4), mode=Forward)
    np.testing.assert_allclose(tangent, want @ tx, rtol=1e-13)


def test_constant_integer_powers_keep_no_tape_of_the_power_loop():
    pos = np.random.default_rng(5).uniform(-2, 2, 12)
    check_gradient(lambda p: lennard_jones(p, 0.7), pos)
    log = enzpy.explain(lennard_jones, Duplicated(pos, np.zeros_like(pos)), Const(0.7))
    taped = [line for line in log.splitlines() if line.startswith("  tape %")]
    # per pair: the values the partials need (r2, 1/r2, inv6), nothing of
    # the square-and-multiply loops (their running products, their counts)
    inlined_loop = re.compile(r"in block %B\d+\.i\d*$")
    assert not [line for line in taped if inlined_loop.search(line)], taped
    assert len(taped) <= 6, taped
