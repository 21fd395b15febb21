"""enzpy.split: fwd runs the primal and returns a tape, rev runs the reverse
sweep later, equal to the combined reverse derivative even when the
arguments change in between; tapes are used once and by their own split."""

from __future__ import annotations

import numba
import numpy as np
import pytest

import enzpy
from enzpy import Active, Const, Duplicated

from . import fd

RNG = np.random.default_rng(3)


@numba.njit
def sweep(u, a, w):
    # truly in place: the old u[i-1] is carried in a scalar
    prev = u[0]
    for i in range(1, u.shape[0] - 1):
        cur = u[i]
        u[i] = cur + a * (prev - 2.0 * cur + u[i + 1]) * w[i]
        prev = cur
    return (u * u).sum()


def _combined(u0, a, w, dret=1.0):
    du = np.zeros_like(u0)
    _, da, _ = enzpy.autodiff(
        lambda u, a, w: sweep(u, a, w) * dret, Duplicated(u0.copy(), du), Active(a), Const(w)
    )
    return du, da


def test_rev_equals_the_combined_gradient_after_the_arguments_changed():
    u0 = RNG.standard_normal(9)
    w = RNG.uniform(0.5, 1.0, 9)
    fwd, rev = enzpy.split(sweep, Duplicated(u0.copy(), np.zeros(9)), Active(0.3), Const(w))
    u = u0.copy()
    r, tape = fwd(u, 0.3, w)
    expected_u = u0.copy()
    assert r == pytest.approx(sweep(expected_u, 0.3, w), rel=1e-15)
    np.testing.assert_array_equal(u, expected_u)  # fwd's side effects happened
    u[:] = 7.0  # overwritten between fwd and rev
    w_saved = w.copy()
    w[:] = 0.0
    du = np.zeros(9)
    (da,) = rev(tape, du, 1.0)
    edu, eda = _combined(u0, 0.3, w_saved)
    np.testing.assert_allclose(du, edu, rtol=1e-14)
    assert da == pytest.approx(eda, rel=1e-14)


def test_rev_gradient_matches_finite_differences_with_a_seed():
    u0 = RNG.standard_normal(7)
    w = RNG.uniform(0.5, 1.0, 7)
    fwd, rev = enzpy.split(sweep, Duplicated(u0.copy(), np.zeros(7)), Active(0.2), Const(w))
    _, tape = fwd(u0.copy(), 0.2, w)
    du = np.zeros(7)
    (da,) = rev(tape, du, 2.5)
    g_fd = fd.fd_gradient(sweep, u0.copy(), 0.2, w)
    np.testing.assert_allclose(du, 2.5 * np.asarray(g_fd[1][0]), rtol=1e-6)
    assert da == pytest.approx(2.5 * float(g_fd[1][1]), rel=1e-6)


@numba.njit
def scale_into(x, out, c):
    for i in range(x.shape[0]):
        out[i] = c * x[i] * x[i]


def test_shadow_of_an_output_array_receives_the_input_cotangents():
    x = RNG.standard_normal(5)
    fwd, rev = enzpy.split(
        scale_into,
        Duplicated(x, np.zeros(5)),
        Duplicated(np.zeros(5), np.zeros(5)),
        Active(1.5),
        ret=enzpy.Const,
    )
    out = np.zeros(5)
    r, tape = fwd(x.copy(), out, 1.5)
    assert r is None
    np.testing.assert_allclose(out, 1.5 * x * x)
    dx, dout = np.zeros(5), RNG.standard_normal(5)
    seed = dout.copy()
    (dc,) = rev(tape, dx, dout)
    np.testing.assert_allclose(dx, 2 * 1.5 * x * seed, rtol=1e-14)
    assert dc == pytest.approx(float(np.sum(x * x * seed)), rel=1e-14)
    np.testing.assert_array_equal(dout, 0.0)  # the output's cotangent is consumed


def test_strided_arrays_and_shadows_are_staged():
    base = RNG.standard_normal(14)
    u0 = base[::2]
    w = np.ones(7) * 0.8
    fwd, rev = enzpy.split(sweep, Duplicated(u0.copy(), np.zeros(7)), Active(0.1), Const(w))
    dbase = np.zeros(14)
    _, tape = fwd(u0.copy(), 0.1, w)
    (da,) = rev(tape, dbase[::2], 1.0)
    edu, eda = _combined(np.ascontiguousarray(u0), 0.1, w)
    np.testing.assert_allclose(dbase[::2], edu, rtol=1e-14)
    np.testing.assert_array_equal(dbase[1::2], 0.0)
    assert da == pytest.approx(eda, rel=1e-14)


def test_not_overwritten_arguments_are_kept_by_reference():
    u0 = RNG.standard_normal(6)
    w = np.full(6, 0.9)
    fwd, rev = enzpy.split(
        sweep,
        Duplicated(u0.copy(), np.zeros(6)),
        Active(0.3),
        Const(w),
        overwritten=[True, True, False],
    )
    _, tape = fwd(u0.copy(), 0.3, w)
    w[0] = 5.0  # w[0] is not read: the declared promise holds for what matters
    du = np.zeros(6)
    (da,) = rev(tape, du, 1.0)
    edu, eda = _combined(u0, 0.3, np.full(6, 0.9))
    np.testing.assert_allclose(du, edu, rtol=1e-14)


def test_a_tape_is_used_once_and_only_by_its_own_split():
    u0 = RNG.standard_normal(5)
    w = np.ones(5)
    fwd, rev = enzpy.split(sweep, Duplicated(u0.copy(), np.zeros(5)), Active(0.3), Const(w))
    fwd2, rev2 = enzpy.split(sweep, Duplicated(u0.copy(), np.zeros(5)), Active(0.3), Const(w))
    _, tape = fwd(u0.copy(), 0.3, w)
    rev(tape, np.zeros(5), 1.0)
    with pytest.raises(ValueError, match="used by rev already"):
        rev(tape, np.zeros(5), 1.0)
    _, other = fwd2(u0.copy(), 0.3, w)
    with pytest.raises(ValueError, match="another function's split"):
        rev(other, np.zeros(5), 1.0)


def test_fwd_and_rev_are_callable_from_njit_code():
    u0 = RNG.standard_normal(6)
    w = np.ones(6) * 0.7
    fwd, rev = enzpy.split(sweep, Duplicated(u0.copy(), np.zeros(6)), Active(0.3), Const(w))

    @numba.njit
    def two_phase(u, a, w, du):
        r, tape = fwd(u, a, w)
        u[:] = 0.0
        return r, rev(tape, du, 1.0)

    du = np.zeros(6)
    r, (da,) = two_phase(u0.copy(), 0.3, w, du)
    edu, eda = _combined(u0, 0.3, w)
    np.testing.assert_allclose(du, edu, rtol=1e-14)
    assert da == pytest.approx(eda, rel=1e-14)


def test_split_refuses_what_it_cannot_snapshot():
    @numba.njit
    def f(t, a):
        return t[0].sum() * a

    with pytest.raises(enzpy.UnsupportedError, match="tuple of arrays"):
        enzpy.split(f, Const((np.ones(2), np.ones(2))), Active(1.0))
    with pytest.raises(enzpy.EnzpyValueError, match="overwritten"):
        enzpy.split(
            sweep,
            Duplicated(np.ones(3), np.zeros(3)),
            Active(0.1),
            Const(np.ones(3)),
            overwritten=[True],
        )


@numba.njit
def _scale_through(x, y):
    y[1] = y[1] * x[0]
    y[2] = y[2] * x[1]
    return y[2]


def test_arguments_sharing_memory_are_refused_before_the_function_runs():
    # the tape keeps a copy of each array: a buffer passed twice would come
    # back as two, and the gradient would miss the path through the alias
    fwd, rev = enzpy.split(
        _scale_through,
        Duplicated(np.array([2.0, 3.0, 5.0]), np.zeros(3)),
        Duplicated(np.array([2.0, 3.0, 5.0]), np.zeros(3)),
    )
    x = np.array([2.0, 3.0, 5.0])
    with pytest.raises(ValueError, match="a0 and a1 share memory"):
        fwd(x, x)
    np.testing.assert_array_equal(x, [2.0, 3.0, 5.0])
    loss, tape = fwd(x, x.copy())
    d = np.zeros(3)
    with pytest.raises(ValueError, match="shadows that share memory"):
        rev(tape, d, d, 1.0)
