"""enzpy.register_jvp: a rule from the Jacobian-vector product alone; enzpy
derives the reverse from the JVP's own code. Checked against finite
differences in every activity pattern, in loops that overwrite the
arguments, in reverse batch mode, and for functions whose bodies enzpy could
not differentiate."""

from __future__ import annotations

import ctypes
import ctypes.util
import math

import numba
import numpy as np
import pytest

import enzpy
from enzpy import Active, BatchDuplicated, Const, Duplicated
from enzpy.testing import check_derivative

# --- an array result: a softmax with a temperature ---------------------------


@numba.njit
def softmax(z, t):
    e = np.exp((z - z.max()) / t)
    return e / e.sum()


def softmax_jvp(z, dz, t, dt):
    s = softmax(z, t)
    u = dz / t - (z - z.max()) * dt / (t * t)  # the max's own tangent cancels
    return s * (u - np.sum(s * u))


enzpy.register_jvp(softmax, softmax_jvp)


@numba.njit
def attention_loss(z, t, w):
    p = softmax(z, t)
    return np.sum(w * np.log(p + 1.0))


def test_a_jvp_rule_gives_reverse_and_forward_derivatives_in_every_activity_pattern():
    z = np.array([0.3, -1.2, 0.8, 0.1])
    w = np.array([1.0, 2.0, -1.0, 0.5])
    rep = check_derivative(attention_loss, z, 0.7, w, report=True)
    assert rep.ok, rep


@numba.njit
def sharpening(z, t, steps):
    """The argument is overwritten with the rule's result every step: the
    reverse must use the values of each call's time (the tape's copies)."""
    for _ in range(steps):
        p = softmax(z, t)
        for i in range(z.shape[0]):
            z[i] = 3.0 * p[i] + 0.2 * z[i]
    return z[0] - z[-1]


def test_a_jvp_rule_in_a_loop_that_overwrites_its_argument():
    rep = check_derivative(sharpening, np.array([0.3, -0.2, 0.5]), 0.9, 4, report=True)
    assert rep.ok, rep


def test_reverse_batch_lanes_through_a_jvp_rule():
    z = np.array([0.3, -1.2, 0.8, 0.1])
    w = np.array([1.0, 2.0, -1.0, 0.5])
    dzs = (np.zeros(4), np.zeros(4))
    res = enzpy.autodiff(
        attention_loss, BatchDuplicated(z, dzs), Active(0.7), Const(w), ret=(1.0, -3.0)
    )
    dz = np.zeros(4)
    _, dt, _ = enzpy.autodiff(attention_loss, Duplicated(z, dz), Active(0.7), Const(w))
    np.testing.assert_allclose(dzs[0], dz, rtol=1e-12)
    np.testing.assert_allclose(dzs[1], -3.0 * dz, rtol=1e-12)
    assert res[1] == pytest.approx((dt, -3.0 * dt), rel=1e-12)


# --- a float result of a function enzpy could not differentiate ---------------

_libm = ctypes.CDLL(ctypes.util.find_library("m"))
c_erf = _libm.erf
c_erf.argtypes = (ctypes.c_double,)
c_erf.restype = ctypes.c_double


@numba.njit
def erf_mass(x, s):
    """sum_i erf(s x_i), through a C function enzpy has no rule for."""
    total = 0.0
    for i in range(x.shape[0]):
        total += c_erf(s * x[i])
    return total


def erf_mass_jvp(x, dx, s, ds):
    g = 2.0 / math.sqrt(math.pi) * np.exp(-((s * x) ** 2))
    return np.sum(g * (s * dx + ds * x))


@numba.njit
def uses_erf_mass(x, s):
    return erf_mass(x, s) ** 2


def test_a_jvp_rule_for_a_function_whose_body_calls_c_code():
    x = np.array([0.2, -0.5, 1.1])
    with pytest.raises(enzpy.UnsupportedError):
        enzpy.autodiff(uses_erf_mass, Duplicated(x, np.zeros(3)), Active(1.3))
    enzpy.register_jvp(erf_mass, erf_mass_jvp)
    rep = check_derivative(uses_erf_mass, x, 1.3, report=True)
    assert rep.ok, rep


# --- mistakes ----------------------------------------------------------------


def test_the_harness_catches_a_wrong_jvp():
    @numba.njit
    def cube(x):
        return x * x * x

    def wrong(x, dx):
        return -3.0 * x * x * dx  # wrong sign

    enzpy.register_jvp(cube, wrong)

    @numba.njit
    def use(x):
        return np.sum(cube(x))

    assert not check_derivative(use, np.array([0.5, 1.5]), widths=(1,), report=True).ok


def test_a_jvp_with_the_wrong_number_of_arguments_is_refused():
    @numba.njit
    def twice(x):
        return 2.0 * x

    with pytest.raises(enzpy.EnzpyTypeError, match="must take 2 arguments"):
        enzpy.register_jvp(twice, lambda x: 2.0 * x)
    with pytest.raises(enzpy.EnzpyTypeError, match="njit function"):
        enzpy.register_jvp(lambda x: x, lambda x, dx: dx)


def test_a_jvp_of_the_wrong_shape_is_an_error_naming_the_rule():
    @numba.njit
    def doubled(x):
        return np.concatenate((x, x))

    enzpy.register_jvp(doubled, lambda x, dx: dx.copy())

    @numba.njit
    def use(x):
        return np.sum(doubled(x))

    with pytest.raises(ValueError, match="doubled returned a tangent whose shape"):
        enzpy.autodiff(use, Duplicated(np.ones(3), np.ones(3)), mode=enzpy.Forward)
    # reverse mode transposes the JVP: the same mistake, the same message
    # (numba would broadcast a tangent of shape (1,) against the result)
    with pytest.raises(ValueError, match="doubled returned a tangent whose shape"):
        enzpy.autodiff(use, Duplicated(np.ones(3), np.zeros(3)))

    @numba.njit
    def stretched(x):
        return np.concatenate((x, x))

    enzpy.register_jvp(stretched, lambda x, dx: dx[:1].copy())

    @numba.njit
    def use_stretched(x):
        return np.sum(stretched(x))

    with pytest.raises(ValueError, match="stretched returned a tangent whose shape"):
        enzpy.autodiff(use_stretched, Duplicated(np.ones(3), np.zeros(3)))


@numba.njit
def softmax_energy(z, t):
    s = softmax(z, t)
    return (s * s).sum()


def test_a_jvp_rule_on_float32_arguments():
    z = np.array([0.3, -0.5, 0.9], dtype=np.float32)
    rep = check_derivative(softmax_energy, z, np.float32(0.8), report=True)
    assert rep.ok, rep


@numba.njit
def _doubles_into(x, y):
    for i in range(x.shape[0]):
        y[i] = x[i] * 2.0
    return x[0]


enzpy.register_jvp(_doubles_into, numba.njit(lambda x, dx, y, dy: dx[0]))


@numba.njit
def _calls_a_writing_function(x, y):
    r = _doubles_into(x, y)
    return y.sum() + r


@pytest.mark.parametrize("mode", [enzpy.Reverse, enzpy.Forward])
def test_a_jvp_rule_for_a_function_that_writes_an_argument_is_refused(mode):
    # its JVP says nothing about y, so the derivative would miss y's
    # dependence on x: refused by name instead of a wrong number
    x, y = np.ones(3), np.zeros(3)
    with pytest.raises(enzpy.UnsupportedError, match="writes argument 'y'"):
        enzpy.autodiff(
            _calls_a_writing_function,
            Duplicated(x, np.ones(3)),
            Duplicated(y, np.zeros(3)),
            mode=mode,
        )
    np.testing.assert_array_equal(y, np.zeros(3))
