"""Mutation-aware reverse mode (issue 3): kernels that overwrite memory they read.

Every kernel updates at least one array in place; fd.check_vjp treats each
Duplicated array's final contents as an output and its initial contents as an
input, so these tests check <w, J v> (central differences) == <Jᵀw, v> (enzpy)
on the map (initial state, Active scalars) -> (final state, float return).
A reverse sweep that re-reads an overwritten value instead of the value as it
was when it was read gives an O(1) error here.

Aliasing (the same array passed twice, overlapping views of one buffer) is
checked against finite differences of the map on the *underlying buffer*: the
derivative must be right, or enzpy must raise an EnzpyError (and leave the
arrays as they were) -- never return a wrong derivative.
"""

import inspect
import os

import fd
import numba
import numpy as np
import pytest
from kernels import lorenz_rhs

import enzpy
from enzpy import Active, Duplicated


def rng(seed):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------------
# 1-D stencil updated truly in place (Gauss-Seidel-like sweep, left to right)
# ---------------------------------------------------------------------------------


@numba.njit
def stencil_in_place(u, a, steps):
    n = u.shape[0]
    for _ in range(steps):
        for i in range(1, n - 1):
            # u[i-1] is already this step's value, u[i+1] still the last step's
            u[i] = u[i] + a * (u[i - 1] - 2.0 * u[i] + u[i + 1])


@numba.njit
def stencil_in_place_energy(u, a, steps):
    stencil_in_place(u, a, steps)
    s = 0.0
    for i in range(u.shape[0]):
        s += u[i] * u[i] * u[i]
    return s


def test_stencil_in_place_many_steps():
    u = rng(1).uniform(-1, 1, 9)
    fd.check_vjp(stencil_in_place, fd.Dup(u), fd.Active(0.3), 12)


def test_stencil_in_place_one_step_matches_hand_adjoint():
    # One sweep is a lower-triangular recurrence; its adjoint can be written
    # out: this pins the derivative itself, not only its consistency with FD.
    n, a = 6, 0.3
    u0 = rng(2).uniform(-1, 1, n)
    w = rng(3).standard_normal(n)
    # Forward Jacobian by recurrence: rows of J for the new u.
    J = np.eye(n)
    for i in range(1, n - 1):
        J[i] = (1 - 2 * a) * J[i] + a * J[i - 1] + a * J[i + 1]
    u, du = u0.copy(), w.copy()
    (_, da, _) = enzpy.autodiff(stencil_in_place, Duplicated(u, du), Active(a), 1)
    np.testing.assert_allclose(du, J.T @ w, rtol=1e-13, atol=1e-14)
    # d(new u)/da by recurrence
    v, d = u0.copy(), np.zeros(n)
    for i in range(1, n - 1):
        d[i] = d[i] + (v[i - 1] - 2 * v[i] + v[i + 1]) + a * (d[i - 1] - 2 * d[i] + d[i + 1])
        v[i] = v[i] + a * (v[i - 1] - 2 * v[i] + v[i + 1])
    np.testing.assert_allclose(da, w @ d, rtol=1e-12)


def test_stencil_in_place_with_float_return():
    u = rng(4).uniform(-1, 1, 8)
    fd.check_vjp(stencil_in_place_energy, fd.Dup(u), fd.Active(0.2), 7)


@numba.njit
def stencil_2d_in_place(U, a, steps):
    n, m = U.shape
    for _ in range(steps):
        for i in range(1, n - 1):
            for j in range(1, m - 1):
                U[i, j] += a * (U[i - 1, j] + U[i + 1, j] + U[i, j - 1] + U[i, j + 1] - 4 * U[i, j])


@numba.njit
def row_sweep(v, a):
    for i in range(1, v.shape[0] - 1):
        v[i] = v[i] + a * (v[i - 1] - 2.0 * v[i] + v[i + 1])


@numba.njit
def sweeps_on_overlapping_views(u, a):
    # a helper updating in place two overlapping views of the argument
    row_sweep(u[1:], a)
    row_sweep(u[:-1], a)
    row_sweep(u[::2], a)


@numba.njit
def vectorized_stencil_in_place(u, a, steps):
    for _ in range(steps):
        # numpy semantics: the right-hand side is evaluated first (Jacobi step)
        u[1:-1] += a * (u[:-2] - 2.0 * u[1:-1] + u[2:])  # <- slice update


@numba.njit
def reversed_slice_assignment(x):
    x[:] = x[::-1] * x  # <- slice update


def test_stencil_2d_in_place():
    fd.check_vjp(stencil_2d_in_place, fd.Dup(rng(40).uniform(-1, 1, (5, 6))), fd.Active(0.1), 3)


def test_helper_sweeps_overlapping_views_of_an_argument():
    fd.check_vjp(sweeps_on_overlapping_views, fd.Dup(rng(41).uniform(-1, 1, 9)), fd.Active(0.3))


def test_vectorized_slice_stencil_in_place():
    # numba evaluates the right-hand side into a temporary (and copies it
    # through a raw buffer when the operands may overlap)
    fd.check_vjp(vectorized_stencil_in_place, fd.Dup(rng(42).uniform(-1, 1, 8)), fd.Active(0.3), 4)


def test_slice_assignment_from_an_overlapping_reversed_view():
    fd.check_vjp(reversed_slice_assignment, fd.Dup(rng(43).uniform(-1, 1, 7)))


# ---------------------------------------------------------------------------------
# two buffers swapped every step
# ---------------------------------------------------------------------------------


@numba.njit
def swap_buffers(u, v, a, steps):
    n = u.shape[0]
    for _ in range(steps):
        v[0] = u[0]
        v[n - 1] = u[n - 1]
        for i in range(1, n - 1):
            v[i] = u[i] + a * (u[i - 1] - 2.0 * u[i] + u[i + 1]) + 0.1 * u[i] * u[i]
        u, v = v, u
    s = 0.0
    for i in range(n):
        s += np.sin(u[i])
    return s


@pytest.mark.parametrize("steps", [4, 5])  # the result ends in either buffer
def test_swapped_buffers(steps):
    r = rng(5)
    fd.check_vjp(
        swap_buffers,
        fd.Dup(r.uniform(-1, 1, 7)),
        fd.Dup(r.uniform(-1, 1, 7)),
        fd.Active(0.25),
        steps,
    )


# ---------------------------------------------------------------------------------
# x[i] = x[i] * x[i] in a loop; in-place cumulative sum
# ---------------------------------------------------------------------------------


@numba.njit
def square_in_place(x, reps):
    for _ in range(reps):
        for i in range(x.shape[0]):
            x[i] = x[i] * x[i]


def test_square_in_place_repeated():
    x0 = rng(6).uniform(0.6, 1.2, 6) * rng(7).choice([-1.0, 1.0], 6)
    fd.check_vjp(square_in_place, fd.Dup(x0), 3)
    # analytic: x -> x^8, so dx <- 8 x^7 w
    w = rng(8).standard_normal(6)
    x, dx = x0.copy(), w.copy()
    enzpy.autodiff(square_in_place, Duplicated(x, dx), 3)
    np.testing.assert_allclose(x, x0**8, rtol=1e-14)
    np.testing.assert_allclose(dx, 8 * x0**7 * w, rtol=1e-13)


@numba.njit
def cumsum_in_place(x):
    for i in range(1, x.shape[0]):
        x[i] += x[i - 1]


@numba.njit
def weighted_cumsum_in_place(x, c):
    # x[i] <- c * x[i-1] (new) + x[i]^2 (old): reads both kinds of values
    for i in range(1, x.shape[0]):
        x[i] = c * x[i - 1] + x[i] * x[i]
    return x[x.shape[0] - 1]


def test_cumsum_in_place():
    x0 = rng(9).uniform(-1, 1, 8)
    fd.check_vjp(cumsum_in_place, fd.Dup(x0))
    # adjoint of cumsum: reverse cumulative sum of the cotangent
    w = rng(10).standard_normal(8)
    x, dx = x0.copy(), w.copy()
    enzpy.autodiff(cumsum_in_place, Duplicated(x, dx))
    np.testing.assert_allclose(x, np.cumsum(x0), rtol=1e-14)
    np.testing.assert_allclose(dx, np.cumsum(w[::-1])[::-1], rtol=1e-13)


def test_weighted_cumsum_in_place():
    fd.check_vjp(weighted_cumsum_in_place, fd.Dup(rng(11).uniform(-1, 1, 7)), fd.Active(0.8))


# ---------------------------------------------------------------------------------
# in-place sort: the permutation depends on the data
# ---------------------------------------------------------------------------------


@numba.njit
def sort_method_then_weighted_sum(x, w):
    x.sort()
    s = 0.0
    for i in range(x.shape[0]):
        s += w[i] * x[i]
    return s


@numba.njit
def np_sort_then_weighted_sum(x, w):
    y = np.sort(x)
    s = 0.0
    for i in range(y.shape[0]):
        s += w[i] * y[i] * y[i]
    return s


def distinct_values(r, n):
    # well separated, so that an FD step never reorders them
    return r.permutation(np.linspace(-1.0, 1.0, n)) + r.uniform(-0.01, 0.01, n)


def line_of(func, marker):
    """The source line of ``func`` that contains ``marker``."""
    lines, first = inspect.getsourcelines(func.py_func)
    hits = [first + i for i, text in enumerate(lines) if marker in text]
    assert len(hits) == 1, hits
    return hits[0]


def expect_unsupported_at(func, marker, *names):
    """Context: an UnsupportedError raised inside must carry ``func``'s line
    that contains ``marker`` and name one of ``names``; it is re-raised (for
    xfail(raises=UnsupportedError)), anything wrong with it becomes an
    AssertionError (so the xfail does not hide a bad error)."""
    return _ExpectUnsupported(func, marker, names)


class _ExpectUnsupported:
    def __init__(self, func, marker, names):
        self.line = line_of(func, marker)
        self.file = inspect.getsourcefile(func.py_func)
        self.names = names

    def __enter__(self):
        return self

    def __exit__(self, tp, e, tb):
        if tp is not None and issubclass(tp, enzpy.UnsupportedError):
            assert e.line == self.line, f"error at line {e.line}, expected {self.line}: {e}"
            assert e.file and os.path.samefile(e.file, self.file), e
            assert any(n in e.message for n in self.names), (
                f"message names none of {self.names}: {e}"
            )
        return False


def test_sort_in_place_then_weighted_sum():
    r = rng(12)
    x0, w = distinct_values(r, 9), r.uniform(0.5, 2.0, 9)
    with expect_unsupported_at(sort_method_then_weighted_sum, "x.sort()", "sort", "NRT_"):
        fd.check_vjp(sort_method_then_weighted_sum, fd.Dup(x0), fd.Dup(w))
    # analytic: d/dx[p[i]] = w[i] with p = argsort(x); plus the sorted-array
    # cotangent routed back through the permutation
    x, dx, dw = x0.copy(), np.zeros(9), np.zeros(9)
    enzpy.autodiff(sort_method_then_weighted_sum, Duplicated(x, dx), Duplicated(w, dw))
    expected = np.zeros(9)
    expected[np.argsort(x0)] = w
    np.testing.assert_allclose(dx, expected, rtol=1e-14)
    np.testing.assert_allclose(dw, np.sort(x0), rtol=1e-14)


def test_np_sort_then_weighted_sum():
    r = rng(13)
    x0, w = distinct_values(r, 9), r.uniform(0.5, 2.0, 9)
    with expect_unsupported_at(np_sort_then_weighted_sum, "np.sort(x)", "sort", "NRT_"):
        fd.check_vjp(np_sort_then_weighted_sum, fd.Dup(x0), fd.Const(w))
    dx = np.zeros(9)
    enzpy.autodiff(np_sort_then_weighted_sum, Duplicated(x0.copy(), dx), w)
    expected = np.zeros(9)
    p = np.argsort(x0)
    expected[p] = 2 * w * x0[p]
    np.testing.assert_allclose(dx, expected, rtol=1e-14)


@numba.njit
def insertion_sort_then_weighted_sum(x, w):
    # a hand-written in-place sort: data-dependent while loop and swaps
    for i in range(1, x.shape[0]):
        v = x[i]
        j = i - 1
        while j >= 0 and x[j] > v:
            x[j + 1] = x[j]
            j -= 1
        x[j + 1] = v
    s = 0.0
    for i in range(x.shape[0]):
        s += w[i] * x[i] * x[i]
    return s


def test_hand_written_insertion_sort_in_place():
    r = rng(16)
    x0, w = distinct_values(r, 9), r.uniform(0.5, 2.0, 9)
    fd.check_vjp(insertion_sort_then_weighted_sum, fd.Dup(x0), fd.Dup(w))
    dx = np.zeros(9)
    enzpy.autodiff(insertion_sort_then_weighted_sum, Duplicated(x0.copy(), dx), w)
    expected = np.zeros(9)
    p = np.argsort(x0)
    expected[p] = 2 * w * x0[p]
    np.testing.assert_allclose(dx, expected, rtol=1e-14)


@numba.njit
def newton_sqrt2_in_place(x, tol):
    # data-dependent trip count (a while loop) updating x in place
    it = 0
    while True:
        m = 0.0
        for i in range(x.shape[0]):
            nx = 0.5 * (x[i] + 2.0 / x[i])
            m = max(m, abs(nx - x[i]))
            x[i] = nx * (1.0 + 0.01 * x[i])
        it += 1
        if m < tol or it >= 30:
            break
    s = 0.0
    for i in range(x.shape[0]):
        s += x[i]
    return s


def test_while_loop_in_place():
    fd.check_vjp(newton_sqrt2_in_place, fd.Dup(rng(44).uniform(1, 2, 4)), 1e-9)


# ---------------------------------------------------------------------------------
# Gauss-Seidel sweeps on a small tridiagonal system
# ---------------------------------------------------------------------------------


@numba.njit
def gauss_seidel(lo, d, up, b, c, x, sweeps):
    # (A + c I) x = b with A tridiagonal (lo, d, up); x holds the initial guess
    n = b.shape[0]
    for _ in range(sweeps):
        for i in range(n):
            s = b[i]
            if i > 0:
                s -= lo[i] * x[i - 1]
            if i < n - 1:
                s -= up[i] * x[i + 1]
            x[i] = s / (d[i] + c)


def tridiag(n, r):
    lo = r.uniform(-1, -0.5, n)
    up = r.uniform(-1, -0.5, n)
    d = r.uniform(3.0, 4.0, n)  # diagonally dominant: Gauss-Seidel converges
    return lo, d, up


def test_gauss_seidel_few_sweeps_all_inputs():
    r = rng(14)
    n = 6
    lo, d, up = tridiag(n, r)
    b, x0 = r.uniform(-1, 1, n), r.uniform(-1, 1, n)
    fd.check_vjp(
        gauss_seidel, fd.Dup(lo), fd.Dup(d), fd.Dup(up), fd.Dup(b), fd.Active(0.5), fd.Dup(x0), 4
    )


def test_gauss_seidel_converged_derivative_is_the_linear_solves():
    # After many sweeps x = (A + cI)^-1 b: d<w,x>/db = (A + cI)^-T w and
    # d<w,x>/dc = -<(A + cI)^-T w, x>.
    r = rng(15)
    n = 6
    lo, d, up = tridiag(n, r)
    b, c = r.uniform(-1, 1, n), 0.5
    M = np.diag(d + c) + np.diag(lo[1:], -1) + np.diag(up[:-1], 1)
    xs = np.linalg.solve(M, b)
    w = r.standard_normal(n)
    x, dx, db = np.zeros(n), w.copy(), np.zeros(n)
    res = enzpy.autodiff(
        gauss_seidel, lo, d, up, Duplicated(b, db), Active(c), Duplicated(x, dx), 60
    )
    lam = np.linalg.solve(M.T, w)
    np.testing.assert_allclose(x, xs, rtol=1e-12)
    np.testing.assert_allclose(db, lam, rtol=1e-10)
    np.testing.assert_allclose(res[4], -lam @ xs, rtol=1e-10)
    np.testing.assert_allclose(dx, 0.0, atol=1e-12)  # the initial guess is forgotten


# ---------------------------------------------------------------------------------
# explicit RK4 with the state in a small array, updated in place for thousands of steps
# ---------------------------------------------------------------------------------


@numba.njit
def lorenz_rk4_state(state, sigma, rho, beta, t_end, nsteps):
    dt = t_end / nsteps
    k1 = np.empty(3)
    k2 = np.empty(3)
    k3 = np.empty(3)
    k4 = np.empty(3)
    tmp = np.empty(3)
    for _ in range(nsteps):
        lorenz_rhs(state, k1, sigma, rho, beta)
        for j in range(3):
            tmp[j] = state[j] + 0.5 * dt * k1[j]
        lorenz_rhs(tmp, k2, sigma, rho, beta)
        for j in range(3):
            tmp[j] = state[j] + 0.5 * dt * k2[j]
        lorenz_rhs(tmp, k3, sigma, rho, beta)
        for j in range(3):
            tmp[j] = state[j] + dt * k3[j]
        lorenz_rhs(tmp, k4, sigma, rho, beta)
        for j in range(3):
            state[j] += dt / 6.0 * (k1[j] + 2.0 * k2[j] + 2.0 * k3[j] + k4[j])
    return state[0] + state[1] + state[2]


@numba.njit
def oscillator_rk4_state(state, omega, gamma, dt, nsteps):
    # x'' + 2 gamma x' + omega^2 x = 0 with state = (x, v), no temporaries:
    # every stage reads the state array that the previous step overwrote
    for _ in range(nsteps):
        x = state[0]
        v = state[1]
        k1x = v
        k1v = -2.0 * gamma * v - omega * omega * x
        k2x = v + 0.5 * dt * k1v
        k2v = -2.0 * gamma * k2x - omega * omega * (x + 0.5 * dt * k1x)
        k3x = v + 0.5 * dt * k2v
        k3v = -2.0 * gamma * k3x - omega * omega * (x + 0.5 * dt * k2x)
        k4x = v + dt * k3v
        k4v = -2.0 * gamma * k4x - omega * omega * (x + dt * k3x)
        state[0] = x + dt / 6.0 * (k1x + 2.0 * k2x + 2.0 * k3x + k4x)
        state[1] = v + dt / 6.0 * (k1v + 2.0 * k2v + 2.0 * k3v + k4v)


def test_lorenz_rk4_array_state_2000_steps():
    fd.check_vjp(
        lorenz_rk4_state,
        fd.Dup(np.array([1.0, 1.0, 1.0])),
        fd.Active(10.0),
        fd.Active(28.0),
        fd.Active(8.0 / 3.0),
        fd.Active(2.0),  # t_end; an Active dt = 1e-3 would be fine too, but
        2000,  # fd.py's step (1e-6 absolute below 1) is then too coarse for FD
        trials=1,
    )


def test_oscillator_rk4_array_state_matches_exact_solution_derivative():
    # 2000 steps of RK4 approximate the exact solution to ~1e-12; the derivative
    # of x(T) with respect to omega is compared with the exact one by FD of the
    # closed form, and the full VJP against FD of the kernel.
    omega, gamma, dt, n = 2.0, 0.1, 1e-3, 2000
    fd.check_vjp(
        oscillator_rk4_state,
        fd.Dup(np.array([1.0, 0.0])),
        fd.Active(omega),
        fd.Active(gamma),
        fd.Active(dt),
        n,
    )

    def exact_x(om):
        wd = np.sqrt(om * om - gamma * gamma)
        t = n * dt
        return np.exp(-gamma * t) * (np.cos(wd * t) + gamma / wd * np.sin(wd * t))

    s, ds = np.array([1.0, 0.0]), np.array([1.0, 0.0])  # cotangent picks x(T)
    _, d_omega, _, _, _ = enzpy.autodiff(
        oscillator_rk4_state, Duplicated(s, ds), Active(omega), Active(gamma), Active(dt), n
    )
    h = 1e-6
    ref = (exact_x(omega + h) - exact_x(omega - h)) / (2 * h)
    np.testing.assert_allclose(d_omega, ref, rtol=1e-6)


# ---------------------------------------------------------------------------------
# aliasing: the same array twice, overlapping views
# ---------------------------------------------------------------------------------


def check_on_buffer(kernel, buf0, views, scalars=(), seed=0, h=1e-6, rtol=1e-7):
    """Run ``kernel(*views(buf), *scalars)`` through enzpy with every view
    Duplicated (the shadow the same view of one shadow buffer) and every
    scalar Active, and compare with finite differences of the map
    (buf, scalars) -> (buf after the call, float return) on the underlying
    buffer. A correct derivative passes; an EnzpyError is accepted if the
    arrays are left untouched (and re-raised for the caller to inspect);
    anything else fails."""
    r = rng(seed)
    m, k = buf0.size, len(scalars)

    def F(z):
        b = np.array(z[:m]).reshape(buf0.shape)
        ret = kernel(*views(b), *z[m:])
        return np.concatenate([b.ravel(), [0.0 if ret is None else float(ret)]])

    z0 = np.concatenate([buf0.ravel(), np.asarray(scalars, dtype=np.float64)])
    J = np.empty((m + 1, m + k))
    for j in range(m + k):
        e = np.zeros(m + k)
        e[j] = h * max(1.0, abs(z0[j]))
        J[:, j] = (F(z0 + e) - F(z0 - e)) / (2 * e[j])
    wbuf = r.standard_normal(buf0.shape)
    wret = 1.0
    buf, dbuf = buf0.copy(), wbuf.copy()
    args = [Duplicated(x, dx) for x, dx in zip(views(buf), views(dbuf))]
    args += [Active(s) for s in scalars]
    try:
        res = enzpy.autodiff(kernel, *args)
    except enzpy.EnzpyError:
        np.testing.assert_array_equal(buf, buf0, err_msg="failed call changed the array")
        np.testing.assert_array_equal(dbuf, wbuf, err_msg="failed call changed the shadow")
        raise
    np.testing.assert_allclose(buf, F(z0)[:m].reshape(buf0.shape), rtol=1e-13, atol=1e-15)
    has_ret = kernel(*views(buf0.copy()), *scalars) is not None
    w = np.concatenate([wbuf.ravel(), [wret if has_ret else 0.0]])
    ref = J.T @ w
    got = np.concatenate([dbuf.ravel(), [res[len(args) - k + i] for i in range(k)]])
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * np.max(np.abs(ref)))


@numba.njit
def axpy_into(x, y, a):
    for i in range(x.shape[0]):
        y[i] = y[i] + a * x[i] * x[i]


@numba.njit
def reverse_product_into(x, y):
    # with y is x, the second half reads values the first half overwrote
    n = x.shape[0]
    for i in range(n):
        y[i] = x[n - 1 - i] * y[i]


@numba.njit
def shift_right(x, y, a):
    # y[i] = x[i] + a x[i]^2; with y = buf[1:] and x = buf[:-1] each iteration
    # reads the value the previous one wrote
    for i in range(y.shape[0]):
        y[i] = x[i] + a * x[i] * x[i]
    return y[y.shape[0] - 1]


@numba.njit
def transpose_add(A, B):
    n = A.shape[0]
    for i in range(n):
        for j in range(n):
            B[i, j] = A[i, j] * A[j, i] + B[i, j]


def test_same_array_twice_axpy():
    check_on_buffer(axpy_into, rng(20).uniform(-1, 1, 6), lambda b: (b, b), (0.7,))


def test_same_array_twice_reads_overwritten_values():
    check_on_buffer(reverse_product_into, rng(21).uniform(-1, 1, 7), lambda b: (b, b))


def test_overlapping_views_shifted_right():
    check_on_buffer(shift_right, rng(22).uniform(-1, 1, 8), lambda b: (b[:-1], b[1:]), (0.4,))


def test_overlapping_views_shifted_left():
    check_on_buffer(shift_right, rng(23).uniform(-1, 1, 8), lambda b: (b[1:], b[:-1]), (0.4,))


def test_view_and_its_transpose():
    check_on_buffer(transpose_add, rng(24).uniform(-1, 1, (4, 4)), lambda b: (b, b.T))


def test_strided_interleaved_views_do_not_overlap_but_share_a_buffer():
    # x = even elements, y = odd elements: extents overlap, memory does not
    check_on_buffer(axpy_into, rng(25).uniform(-1, 1, 10), lambda b: (b[0::2], b[1::2]), (0.3,))


def test_same_array_twice_with_different_shadows():
    # Two shadows for one memory: either an EnzpyError, or a result consistent
    # with one buffer whose cotangent is the sum (Enzyme requires one shadow).
    n = 6
    x0 = rng(26).uniform(-1, 1, n)
    w1, w2 = rng(27).standard_normal(n), rng(28).standard_normal(n)
    x, d1, d2 = x0.copy(), w1.copy(), w2.copy()
    try:
        res = enzpy.autodiff(axpy_into, Duplicated(x, d1), Duplicated(x, d2), Active(0.7))
    except enzpy.EnzpyError:
        np.testing.assert_array_equal(x, x0)
        np.testing.assert_array_equal(d1, w1)
        np.testing.assert_array_equal(d2, w2)
        return
    # x_out = x + a x^2 (elementwise): Jᵀ(w) = (1 + 2 a x) w, d/da = <w, x^2>
    w = w1 + w2
    np.testing.assert_allclose(d1 + d2, (1 + 1.4 * x0) * w, rtol=1e-12)
    np.testing.assert_allclose(res[2], w @ (x0 * x0), rtol=1e-12)


def test_const_and_duplicated_views_of_one_array():
    # arg 0 Const, arg 1 Duplicated, both the same memory: the values read
    # through the Const alias are the Duplicated array's, so dropping their
    # derivative is wrong for the buffer. Either an EnzpyError (the aliasing of
    # a Const and a Duplicated argument is detectable at call time) or the
    # buffer's derivative.
    n = 6
    x0 = rng(29).uniform(-1, 1, n)
    w = rng(30).standard_normal(n)
    x, dx = x0.copy(), w.copy()
    try:
        res = enzpy.autodiff(axpy_into, enzpy.Const(x), Duplicated(x, dx), Active(0.7))
    except enzpy.EnzpyError:
        np.testing.assert_array_equal(x, x0)
        np.testing.assert_array_equal(dx, w)
        return
    np.testing.assert_allclose(dx, (1 + 1.4 * x0) * w, rtol=1e-12)
    np.testing.assert_allclose(res[2], w @ (x0 * x0), rtol=1e-12)
