"""enzpy.scipy: objectives and residuals for scipy.optimize from njit kernels,
against central finite differences and enzpy's own derivatives; the ODE
fitting example."""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest
from fd import fd_gradient

import enzpy
import enzpy.scipy

optimize = pytest.importorskip("scipy.optimize")


@numba.njit
def rosenbrock(x, c):
    s = 0.0
    for i in range(x.shape[0] - 1):
        s += c * (x[i + 1] - x[i] ** 2) ** 2 + (1.0 - x[i]) ** 2
    return s


@numba.njit
def rosenbrock_residuals(x, out, c):
    for i in range(x.shape[0] - 1):
        out[2 * i] = math.sqrt(c) * (x[i + 1] - x[i] ** 2)
        out[2 * i + 1] = 1.0 - x[i]


@numba.njit
def logistic_loss(w, X, y, lam):
    """Regularized logistic regression: data as constant arrays, a scalar."""
    s = 0.0
    for i in range(X.shape[0]):
        z = 0.0
        for j in range(X.shape[1]):
            z += X[i, j] * w[j]
        s += math.log1p(math.exp(-y[i] * z))
    return s / X.shape[0] + 0.5 * lam * np.sum(w * w)


def test_value_and_grad_matches_finite_differences_and_enzpy_gradient():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 4))
    y = np.sign(rng.standard_normal(20))
    obj = enzpy.scipy.Objective(logistic_loss, X, y, 0.1)
    w = rng.standard_normal(4)
    value, g = obj.value_and_grad(w)
    assert value == pytest.approx(logistic_loss(w, X, y, 0.1), rel=1e-14)
    fd_value, fd = fd_gradient(lambda w: logistic_loss(w, X, y, 0.1), w)
    np.testing.assert_allclose(g, fd[0], rtol=1e-6)
    np.testing.assert_allclose(g, enzpy.gradient(logistic_loss, w, X, y, 0.1)[0], rtol=1e-14)


def test_hessp_matches_finite_differences_of_the_gradient():
    obj = enzpy.scipy.Objective(rosenbrock, 100.0)
    x = np.array([-0.5, 0.3, 0.9, 1.2])
    p = np.array([0.2, -1.0, 0.5, 0.7])
    h = 1e-6
    fd = (obj.grad(x + h * p) - obj.grad(x - h * p)) / (2 * h)
    np.testing.assert_allclose(obj.hessp(x, p), fd, rtol=1e-6)


def test_lbfgs_and_trust_ncg_reach_the_minimum_with_one_compiled_derivative():
    obj = enzpy.scipy.Objective(rosenbrock, 100.0)
    x0 = np.full(6, -0.5)
    res = optimize.minimize(obj.value_and_grad, x0, jac=True, method="L-BFGS-B")
    assert res.success
    # Where the optimizer stopped, not a derivative: L-BFGS-B's default gradient
    # tolerance leaves x within about 1e-5 of the minimum; a wrong gradient
    # (sign, missing term) stops it far away or makes it fail.
    np.testing.assert_allclose(res.x, 1.0, atol=1e-4)
    first = obj._vg
    res = optimize.minimize(obj, x0, jac=obj.grad, hessp=obj.hessp, method="trust-ncg")
    assert res.success
    np.testing.assert_allclose(res.x, 1.0, atol=1e-4)
    assert obj._vg is first and len(first.signatures) == 1  # compiled once, reused


def test_least_squares_jacobian_matches_finite_differences_in_both_modes():
    x = np.array([-0.5, 0.3, 0.9, 1.2])
    for mode in (enzpy.Forward, enzpy.Reverse):
        res = enzpy.scipy.Residuals(rosenbrock_residuals, 6, 100.0, mode=mode)
        J = res.jac(x)
        assert J.shape == (6, 4)
        for j in range(4):
            e = np.zeros(4)
            e[j] = 1e-6
            np.testing.assert_allclose(
                J[:, j], (res(x + e) - res(x - e)) / 2e-6, rtol=1e-6, atol=1e-8
            )
    fit = optimize.least_squares(res, np.full(4, -0.5), jac=res.jac)
    np.testing.assert_allclose(fit.x, 1.0, atol=1e-6)


def test_bad_points_raise_enzpy_errors():
    obj = enzpy.scipy.Objective(rosenbrock, 100.0)
    obj.value_and_grad(np.zeros(3))
    with pytest.raises(enzpy.EnzpyValueError, match="length 3"):
        obj.value_and_grad(np.zeros(4))
    with pytest.raises(enzpy.EnzpyTypeError, match="real vector"):
        obj(np.zeros(3, complex))
    with pytest.raises(enzpy.EnzpyValueError, match="positive int"):
        enzpy.scipy.Residuals(rosenbrock_residuals, 0, 100.0)
    with pytest.raises(enzpy.EnzpyTypeError, match="must return a float"):
        enzpy.scipy.Objective(numba.njit(lambda x: x.shape[0])).value_and_grad(np.zeros(3))


def test_fit_ode_example_recovers_the_parameters():
    import fit_ode

    out = fit_ode.fit()
    np.testing.assert_allclose(out["grad"], out["fd"], rtol=1e-6)
    # The derivative itself is checked above (1e-6). The fitted parameters carry
    # the data's noise (about 2e-4 relative here), so they are compared with the
    # true ones at 1e-2, and the two optimizers' answers with each other at 1e-3.
    np.testing.assert_allclose(out["lbfgs"].x, fit_ode.TRUE, rtol=1e-2)
    assert out["lbfgs"].fun < 1.5 * fit_ode.NOISE**2  # misfit at the noise level
    np.testing.assert_allclose(out["least_squares"].x, out["lbfgs"].x, rtol=1e-3)
