"""enzpy.solvers for vectors: ``newton_system`` and ``implicit`` give the
solution of F(x, p) = 0 the implicit function theorem's derivative, checked
against finite differences of the whole solve, in both modes, inside time
loops; a solve that did not converge is an error in every mode."""

from __future__ import annotations

import numba
import numpy as np
import pytest

import enzpy
import enzpy.solvers as solvers
from enzpy import Const, Duplicated, Forward
from enzpy.testing import check_derivative

from . import fd


@numba.njit
def coupled_cubic(x, p):
    """x_i^3 + p0 x_i + p1 sum(x) - p2 - i/10: coupled through the sum."""
    n = x.shape[0]
    r = np.empty(n)
    s = x.sum()
    for i in range(n):
        r[i] = x[i] ** 3 + p[0] * x[i] + p[1] * s - p[2] - 0.1 * i
    return r


@numba.njit
def coupled_cubic_jacobian(x, p):
    n = x.shape[0]
    j = np.full((n, n), p[1])
    for i in range(n):
        j[i, i] += 3.0 * x[i] ** 2 + p[0]
    return j


solve_cubic = solvers.newton_system(coupled_cubic)
solve_cubic_given_j = solvers.newton_system(coupled_cubic, coupled_cubic_jacobian)


@numba.njit
def weighted_energy(x0, p, w):
    x = solve_cubic(x0, p)
    return (w * x * x).sum()


@numba.njit
def weighted_energy_given_j(x0, p, w):
    x = solve_cubic_given_j(x0, p)
    return (w * x * x).sum()


P = np.array([2.0, 0.3, 1.0])
W = np.array([1.0, -2.0, 0.5])


@pytest.mark.parametrize("kernel", [weighted_energy, weighted_energy_given_j])
def test_newton_system_derivative_matches_finite_differences_of_the_solve(kernel):
    x0 = np.zeros(3)
    dp = np.zeros(3)
    enzpy.autodiff(kernel, Const(x0), Duplicated(P.copy(), dp), Const(W))
    _, (_, g, _) = fd.fd_gradient(kernel, x0, P, W)
    np.testing.assert_allclose(dp, g, rtol=1e-6)
    v = np.array([0.3, -1.0, 0.7])
    t = enzpy.autodiff(kernel, Const(x0), Duplicated(P.copy(), v), Const(W), mode=Forward)
    assert t == pytest.approx(float(g @ v), rel=1e-6)


def test_the_derivative_does_not_depend_on_the_starting_point():
    grads = []
    for x0 in (np.zeros(3), np.full(3, 0.5), np.array([1.0, -0.2, 0.4])):
        dp = np.zeros(3)
        enzpy.autodiff(weighted_energy, Const(x0), Duplicated(P.copy(), dp), Const(W))
        grads.append(dp)
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-9)
    np.testing.assert_allclose(grads[2], grads[0], rtol=1e-9)


@numba.njit
def pendulums(x):
    """Two coupled stiff oscillators' residual for a backward Euler step:
    F(u, p) = u - u_prev - h f(u), p = (u_prev, k, h)."""
    return x


@numba.njit
def backward_euler_residual(u, p):
    # p = [u_prev (2), k, c, h]
    k, c, h = p[2], p[3], p[4]
    r = np.empty(2)
    r[0] = u[0] - p[0] - h * u[1]
    r[1] = u[1] - p[1] - h * (-k * np.sin(u[0]) - c * u[1] - 50.0 * (u[0] - u[1]) ** 3)
    return r


euler_step = solvers.newton_system(backward_euler_residual)


@numba.njit
def trajectory_loss(u0, k, c, steps):
    """Each step solves a nonlinear system; the state is carried in a scratch
    parameter vector updated in place."""
    p = np.empty(5)
    u = u0.copy()
    p[2] = k
    p[3] = c
    p[4] = 0.05
    loss = 0.0
    for _ in range(steps):
        p[0] = u[0]
        p[1] = u[1]
        u = euler_step(u, p)
        loss += u[0] * u[0] + 0.1 * u[1]
    return loss


def test_a_time_loop_with_a_nonlinear_solve_each_step_matches_finite_differences():
    u0 = np.array([0.8, -0.2])
    rep = check_derivative(trajectory_loss, u0, 1.7, 0.4, 12, report=True)
    assert rep.ok, rep


@numba.njit
def damped_iteration(x0, p):
    """A user's own solver of x = tanh(A x + b) (A = p[0] * ones/n, b = p[1:]):
    a damped fixed-point iteration, not Newton."""
    x = x0.copy()
    n = x.shape[0]
    for _ in range(500):
        s = x.sum() * p[0] / n
        nxt = np.tanh(s + p[1:])
        x = 0.5 * x + 0.5 * nxt
    return x


@numba.njit
def fixed_point_residual(x, p):
    n = x.shape[0]
    return x - np.tanh(x.sum() * p[0] / n + p[1:])


solve_fixed = solvers.implicit(damped_iteration, fixed_point_residual, tol=1e-10)


@numba.njit
def fixed_point_loss(p):
    x = solve_fixed(np.zeros(p.shape[0] - 1), p)
    return (x * np.arange(1.0, x.shape[0] + 1.0)).sum()


def test_implicit_gives_a_users_solver_the_implicit_function_theorems_derivative():
    p = np.array([0.6, 0.2, -0.4, 0.9])
    rep = check_derivative(fixed_point_loss, p, report=True)
    assert rep.ok, rep


def test_implicit_refuses_an_answer_that_does_not_solve_the_system_in_every_mode():
    @numba.njit
    def one_sweep(x0, p):
        return np.tanh(x0 + p[1:])  # one iteration: not a solution

    bad = solvers.implicit(one_sweep, fixed_point_residual, tol=1e-10)

    @numba.njit
    def use(p):
        return bad(np.zeros(2), p).sum()

    p = np.array([0.6, 0.2, -0.4])
    with pytest.raises(ValueError, match="returned no solution"):
        use(p)
    with pytest.raises(ValueError, match="returned no solution"):
        enzpy.autodiff(use, Duplicated(p, np.zeros(3)))
    with pytest.raises(ValueError, match="returned no solution"):
        enzpy.autodiff(use, Duplicated(p, np.ones(3)), mode=Forward)


def test_newton_system_that_does_not_converge_raises_in_every_mode():
    short = solvers.newton_system(coupled_cubic, maxiter=2)

    @numba.njit
    def use(p):
        return short(np.full(3, 5.0), p).sum()

    with pytest.raises(ValueError, match="did not converge in 2 steps"):
        use(P)
    with pytest.raises(ValueError, match="did not converge"):
        enzpy.autodiff(use, Duplicated(P.copy(), np.zeros(3)))
    with pytest.raises(ValueError, match="did not converge"):
        enzpy.autodiff(use, Duplicated(P.copy(), np.ones(3)), mode=Forward)


def test_vector_solvers_need_njit_functions_of_x_and_p():
    with pytest.raises(enzpy.EnzpyTypeError, match="must take \\(x, p\\)"):
        solvers.newton_system(pendulums)
    with pytest.raises(enzpy.EnzpyTypeError, match="njit"):
        solvers.implicit(lambda x0, p: x0, fixed_point_residual)


def test_the_system_example_gradients_agree_with_finite_differences():
    # examples/implicit_euler_system.py's solver-rule kernel on a short
    # trajectory (the example itself compares it with the iterations).
    import implicit_euler_system as ex

    dt = 2e-2
    data = 0.3 * np.sin(np.arange(1, 21) * dt)
    theta = np.array([4.0, 2.0, 0.8])
    _, (want, _, _) = fd.fd_gradient(ex.loss_rule, theta, data, dt)
    g = np.zeros(3)
    enzpy.autodiff(ex.loss_rule, Duplicated(theta.copy(), g), Const(data), Const(dt))
    np.testing.assert_allclose(g, want, rtol=1e-6)


# --- conjugate gradients: A x = b, A symmetric positive definite --------------

cg = solvers.conjugate_gradient(tol=1e-13)


@numba.njit
def cg_loss(M, b, w):
    S = 0.5 * (M + M.T)  # symmetric whatever M's perturbation
    x = cg(S, b)
    return (w * x * x).sum() + x[0]


@numba.njit
def cg_time_loop(M, b, steps):
    """b is overwritten from each solution; the matrix is updated in place."""
    s = 0.0
    for _ in range(steps):
        x = cg(M, b)
        for i in range(b.shape[0]):
            b[i] = 0.5 * b[i] + 0.1 * np.tanh(x[i])
            M[i, i] += 0.05 * x[i] * x[i]
        s += x @ x
    return s


def _spd(n, seed):
    rng = np.random.default_rng(seed)
    Q = rng.uniform(-1, 1, (n, n))
    return Q @ Q.T + n * np.eye(n)


def test_conjugate_gradient_matches_finite_differences_in_every_mode_and_pattern():
    M = _spd(5, 1)
    b = np.linspace(-1.0, 1.0, 5)
    w = np.linspace(0.5, 1.5, 5)
    np.testing.assert_allclose(cg(M, b), np.linalg.solve(M, b), rtol=1e-11)
    rep = check_derivative(cg_loss, M, b, w, report=True)
    assert rep.ok, rep


def test_conjugate_gradient_in_a_loop_over_overwritten_operands():
    rep = check_derivative(cg_time_loop, _spd(4, 2), np.linspace(0.2, 1.0, 4), 3, report=True)
    assert rep.ok, rep


def test_conjugate_gradient_that_does_not_converge_raises_in_the_derivative_too():
    few = solvers.conjugate_gradient(tol=1e-14, maxiter=1)

    @numba.njit
    def loss(M, b):
        return few(M, b).sum()

    M, b = _spd(6, 3), np.ones(6)
    with pytest.raises(ValueError, match="conjugate_gradient"):
        loss(M, b)
    with pytest.raises(ValueError, match="conjugate_gradient"):
        enzpy.autodiff(loss, Duplicated(M, np.zeros_like(M)), Duplicated(b, np.zeros(6)))
