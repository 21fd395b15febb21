"""enzpy.solvers: scalar solvers whose derivatives come from the implicit
function theorem, checked against analytic formulas and finite differences,
in both modes and in batch; a solve that does not converge is an error in
every mode."""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest

import enzpy
import enzpy.solvers as solvers
from enzpy import Active, BatchDuplicated, Const, Duplicated, Forward

from . import fd


@numba.njit
def cubic(x, a, b):
    return x**3 + a * x - b


solve_cubic = solvers.newton(cubic)


@numba.njit
def cubic_roots_energy(coef, b):
    # each coefficient gives a root; the energy of the roots
    s = 0.0
    for i in range(coef.shape[0]):
        r = solve_cubic(0.5, coef[i], b)
        s += r * r * coef[i]
    return s


def test_newton_derivative_is_the_implicit_function_theorems():
    a, b = 2.0, 3.0
    x = solve_cubic(1.0, a, b)
    _, da, db = enzpy.autodiff(solve_cubic, Const(1.0), Active(a), Active(b))
    fx = 3 * x * x + a
    assert da == pytest.approx(-x / fx, rel=1e-13)
    assert db == pytest.approx(1.0 / fx, rel=1e-13)


def test_newton_inside_a_loop_matches_finite_differences_in_reverse():
    coef = np.array([1.0, 2.5, 4.0, 0.7])
    fd.check_vjp(cubic_roots_energy, fd.Dup(coef), fd.Active(3.0))


def test_newton_inside_a_loop_forward_and_batch_agree_with_reverse():
    coef = np.array([1.0, 2.5, 4.0])
    dcoef = np.zeros(3)
    (_, db) = enzpy.autodiff(cubic_roots_energy, Duplicated(coef, dcoef), Active(3.0))
    v = np.array([0.3, -1.0, 0.5])
    t = enzpy.autodiff(
        cubic_roots_energy, Duplicated(coef, v.copy()), Duplicated(3.0, 0.7), mode=Forward
    )
    assert t == pytest.approx(float(dcoef @ v) + 0.7 * db, rel=1e-12)
    lanes = enzpy.autodiff(
        cubic_roots_energy,
        BatchDuplicated(coef, (v.copy(), np.zeros(3))),
        BatchDuplicated(3.0, (0.0, 1.0)),
        mode=Forward,
    )
    assert lanes[0] == pytest.approx(float(dcoef @ v), rel=1e-12)
    assert lanes[1] == pytest.approx(db, rel=1e-12)


def test_derivative_does_not_depend_on_the_starting_point_or_iterations():
    slow = solvers.newton(cubic, tol=1e-14, maxiter=500)
    g1 = enzpy.autodiff(solve_cubic, Const(0.1), Active(2.0), Active(3.0))
    g2 = enzpy.autodiff(slow, Const(25.0), Active(2.0), Active(3.0))
    assert g1[1] == pytest.approx(g2[1], rel=1e-12)
    assert g1[2] == pytest.approx(g2[2], rel=1e-12)


@numba.njit
def lorentz_map(x, c, d):
    return c * math.cos(x) + d


solve_fixed = solvers.fixed_point(lorentz_map)


def test_fixed_point_derivative_matches_finite_differences():
    c, d = 0.6, 0.2
    x = solve_fixed(0.0, c, d)
    assert x == pytest.approx(lorentz_map(x, c, d), abs=1e-11)
    _, dc, dd = enzpy.autodiff(solve_fixed, Const(0.0), Active(c), Active(d))
    h = 1e-6
    assert dc == pytest.approx(
        (solve_fixed(0.0, c + h, d) - solve_fixed(0.0, c - h, d)) / (2 * h), rel=1e-6
    )
    gx = -c * math.sin(x)
    assert dd == pytest.approx(1.0 / (1.0 - gx), rel=1e-12)


@numba.njit
def no_params(x):
    return math.exp(-x) - x


def test_solver_of_a_function_without_parameters_has_zero_derivative_in_x0():
    solve = solvers.newton(no_params)
    assert solve(0.0) == pytest.approx(0.5671432904097838, rel=1e-14)
    assert enzpy.autodiff(solve, Active(0.0)) == (0.0,)


@numba.njit
def no_root(x, a):
    return x * x + a


def test_a_solve_that_does_not_converge_raises_in_every_mode():
    solve = solvers.newton(no_root, maxiter=20)

    @numba.njit
    def kernel(a):
        return solve(1.3, a) * 2.0

    with pytest.raises(ValueError, match="did not converge|vanished"):
        kernel(1.0)
    with pytest.raises(ValueError, match="did not converge|vanished"):
        enzpy.autodiff(kernel, Active(1.0))
    with pytest.raises(ValueError, match="did not converge|vanished"):
        enzpy.autodiff(kernel, Duplicated(1.0, 1.0), mode=Forward)


def test_solvers_need_njit_functions():
    with pytest.raises(enzpy.EnzpyTypeError):
        solvers.newton(lambda x, a: x - a)


def test_second_derivative_through_a_solver_is_refused_clearly():
    @numba.njit
    def f(v):
        return solve_cubic(1.0, v[0], v[1]) ** 2

    with pytest.raises(enzpy.UnsupportedError, match="second derivative through it"):
        enzpy.hessian(f, np.array([2.0, 3.0]))
