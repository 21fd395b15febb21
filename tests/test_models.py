"""Whole models written the way numba users write them: a 2-layer MLP with
explicit loops, the same MLP with array expressions and @, and the ADBench
GMM objective (log-sum-exp over mixture components). Gradients with respect
to every parameter against central finite differences, and forward against
reverse on random directions."""

import math

import fd
import numba
import numpy as np

import enzpy
from enzpy import Duplicated


@numba.njit
def mlp_loops(W1, b1, W2, b2, X, y):
    n, d = X.shape
    h = W1.shape[0]
    loss = 0.0
    for s in range(n):
        z = np.empty(h)
        for j in range(h):
            acc = b1[j]
            for k in range(d):
                acc += W1[j, k] * X[s, k]
            z[j] = math.tanh(acc)
        out = b2[0]
        for j in range(h):
            out += W2[0, j] * z[j]
        loss += (out - y[s]) ** 2
    return loss / n


@numba.njit
def mlp_arrays(W1, b1, W2, X):
    H = np.tanh(X @ W1.T + b1)
    return np.sum((H @ W2.T) ** 2)


@numba.njit
def gmm_objective(alphas, means, icf, x):
    n, d = x.shape
    k = alphas.shape[0]
    total = 0.0
    for i in range(n):
        lse = np.empty(k)
        for c in range(k):
            s = 0.0
            for j in range(d):
                q = math.exp(icf[c, j]) * (x[i, j] - means[c, j])
                s += q * q
            lse[c] = alphas[c] + np.sum(icf[c, :d]) - 0.5 * s
        m = np.max(lse)
        total += m + math.log(np.sum(np.exp(lse - m)))
    return total


def rng(seed):
    return np.random.default_rng(seed)


def test_mlp_with_explicit_loops():
    r = rng(1)
    fd.check_vjp(
        mlp_loops,
        fd.Dup(r.standard_normal((4, 3))),
        fd.Dup(r.standard_normal(4)),
        fd.Dup(r.standard_normal((1, 4))),
        fd.Dup(r.standard_normal(1)),
        fd.Const(r.standard_normal((6, 3))),
        fd.Const(r.standard_normal(6)),
    )


def test_mlp_with_array_expressions_and_matmul():
    r = rng(2)
    fd.check_vjp(
        mlp_arrays,
        fd.Dup(r.standard_normal((4, 3))),
        fd.Dup(r.standard_normal(4)),
        fd.Dup(r.standard_normal((2, 4))),
        fd.Const(r.standard_normal((5, 3))),
    )


def test_gmm_objective():
    r = rng(3)
    fd.check_vjp(
        gmm_objective,
        fd.Dup(r.standard_normal(3)),
        fd.Dup(r.standard_normal((3, 2))),
        fd.Dup(0.1 * r.standard_normal((3, 2))),
        fd.Const(r.standard_normal((7, 2))),
    )


def test_gmm_forward_agrees_with_reverse():
    r = rng(4)
    alphas, means, icf = r.standard_normal(3), r.standard_normal((3, 2)), r.standard_normal((3, 2))
    x = r.standard_normal((7, 2))
    v = [r.standard_normal(a.shape) for a in (alphas, means, icf)]
    tangent = enzpy.autodiff(
        gmm_objective,
        *[Duplicated(a, t.copy()) for a, t in zip((alphas, means, icf), v)],
        x,
        mode=enzpy.Forward,
    )
    grads = [np.zeros_like(a) for a in (alphas, means, icf)]
    enzpy.autodiff(
        gmm_objective, *[Duplicated(a, g) for a, g in zip((alphas, means, icf), grads)], x
    )
    reverse = sum(float(np.sum(g * t)) for g, t in zip(grads, v))
    np.testing.assert_allclose(tangent, reverse, rtol=1e-12)
