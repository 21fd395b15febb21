"""User derivative rules (enzpy/_rules.py, engine rules/UserRules): rules by
partial derivatives for njit functions and C functions, inactive functions
and stop_gradient.

Each rule is checked where it is used: inside loops, at depth, in reverse,
forward and batch mode and for second derivatives, against finite
differences of the kernel (when the rule is the true derivative) or against
the rule's own formula (when the body is deliberately not differentiable,
which shows that the rule, not the body, gives the derivative).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math

import numba
import numpy as np
import pytest
import scipy.special
from numba.core import types

import enzpy
from enzpy import Active, BatchDuplicated, Const, Duplicated, Forward

from . import fd

RNG = np.random.default_rng(7)


# --- An iterative solver with an implicit-function rule ---------------------
# Kepler's equation E - e sin E = M, solved by Newton iterations; the rule
# differentiates the solution, not the iterations:
#   dE/dM = 1 / (1 - e cos E),  dE/de = sin E / (1 - e cos E).


@numba.njit
def kepler(m, e):
    ecc_anomaly = m
    for _ in range(50):
        step = (ecc_anomaly - e * math.sin(ecc_anomaly) - m) / (1.0 - e * math.cos(ecc_anomaly))
        ecc_anomaly -= step
        if abs(step) < 1e-15:
            break
    return ecc_anomaly


@enzpy.partials(kepler)
def kepler_partials(m, e):
    ecc = kepler(m, e)
    d = 1.0 - e * math.cos(ecc)
    return 1.0 / d, math.sin(ecc) / d


@numba.njit
def orbit_positions(times, out, e, a):
    # x = a (cos E - e) for each time, in place; scratch scalar carried
    total = 0.0
    for i in range(times.shape[0]):
        ecc = kepler(times[i], e)
        out[i] = a * (math.cos(ecc) - e)
        total += out[i] * out[i]
    return total


def test_rule_of_a_solver_gives_the_gradient_of_its_solution_in_reverse():
    times = np.linspace(0.1, 3.0, 7)
    e, a = 0.3, 1.7
    fd.check_vjp(orbit_positions, fd.Dup(times), fd.Dup(np.zeros(7)), fd.Active(e), fd.Active(a))


def test_rule_of_a_solver_matches_forward_and_reverse_products():
    times = np.linspace(0.2, 2.5, 5)
    v = RNG.standard_normal(5)
    w = 0.7  # cotangent of the returned float
    dt = np.zeros(5)
    enzpy.autodiff(
        orbit_positions,
        Duplicated(times.copy(), dt),
        Duplicated(np.zeros(5), np.zeros(5)),
        Const(0.3),
        Const(1.7),
    )
    tangent = enzpy.autodiff(
        orbit_positions,
        Duplicated(times.copy(), v.copy()),
        Duplicated(np.zeros(5), np.zeros(5)),
        Const(0.3),
        Const(1.7),
        mode=Forward,
    )
    assert tangent * w == pytest.approx(float(np.dot(v, dt * w)), rel=1e-12)
    h = 1e-6
    jv = (
        orbit_positions(times + h * v, np.zeros(5), 0.3, 1.7)
        - orbit_positions(times - h * v, np.zeros(5), 0.3, 1.7)
    ) / (2 * h)
    assert tangent == pytest.approx(jv, rel=1e-6)


def test_rule_is_used_when_the_function_is_differentiated_directly():
    m, e = 1.1, 0.4
    dm, de = enzpy.autodiff(kepler, Active(m), Active(e))
    ecc = kepler(m, e)
    assert dm == pytest.approx(1.0 / (1.0 - e * math.cos(ecc)), rel=1e-13)
    assert de == pytest.approx(math.sin(ecc) / (1.0 - e * math.cos(ecc)), rel=1e-13)
    h = 1e-6
    assert dm == pytest.approx((kepler(m + h, e) - kepler(m - h, e)) / (2 * h), rel=1e-7)


# --- The rule replaces the body --------------------------------------------
# A lookup table: piecewise constant, so its own derivative would be 0. The
# rule gives the derivative of the function it tabulates (sin).

_TABLE = np.sin(np.linspace(0.0, 2.0 * np.pi, 4097))


@numba.njit
def table_sin(x, scale):
    k = int(math.floor((x % (2.0 * math.pi)) / (2.0 * math.pi) * 4096.0 + 0.5))
    return scale * _TABLE[k]


@enzpy.partials(table_sin)
def table_sin_partials(x, scale):
    return scale * math.cos(x), math.sin(x)


@numba.njit
def helper_depth(x, s):
    return table_sin(x, s) * x


@numba.njit
def sum_over_table(xs, s):
    acc = 0.0
    for i in range(xs.shape[0]):
        acc += helper_depth(xs[i], s)
    return acc


def _expected_table_gradient(xs, s):
    # d/dx [s sin x * x] with the rule's derivative and the table's value
    table = np.array([table_sin(x, s) for x in xs])
    dx = s * np.cos(xs) * xs + table
    ds = float(np.sum(np.sin(xs) * xs))
    return dx, ds


def test_rule_replaces_the_body_at_depth_in_reverse():
    xs = RNG.uniform(0.1, 6.0, 9)
    dx = np.zeros(9)
    (_, ds) = enzpy.autodiff(sum_over_table, Duplicated(xs, dx), Active(1.3))
    edx, eds = _expected_table_gradient(xs, 1.3)
    np.testing.assert_allclose(dx, edx, rtol=1e-13)
    assert ds == pytest.approx(eds, rel=1e-13)


def test_rule_replaces_the_body_in_forward_and_batch_mode():
    xs = RNG.uniform(0.1, 6.0, 6)
    edx, eds = _expected_table_gradient(xs, 0.8)
    v = RNG.standard_normal(6)
    t = enzpy.autodiff(sum_over_table, Duplicated(xs, v.copy()), Duplicated(0.8, 0.5), mode=Forward)
    assert t == pytest.approx(float(edx @ v) + 0.5 * eds, rel=1e-12)
    lanes = enzpy.autodiff(
        sum_over_table,
        BatchDuplicated(xs, (v.copy(), np.zeros(6))),
        BatchDuplicated(0.8, (0.0, 1.0)),
        mode=Forward,
    )
    assert lanes[0] == pytest.approx(float(edx @ v), rel=1e-12)
    assert lanes[1] == pytest.approx(eds, rel=1e-12)


def test_rule_replaces_the_body_in_reverse_batch_mode():
    xs = RNG.uniform(0.1, 6.0, 5)
    edx, eds = _expected_table_gradient(xs, 1.1)
    dxs = (np.zeros(5), np.zeros(5))
    _, ds = enzpy.autodiff(sum_over_table, BatchDuplicated(xs, dxs), Active(1.1), ret=(1.0, -2.0))
    np.testing.assert_allclose(dxs[0], edx, rtol=1e-13)
    np.testing.assert_allclose(dxs[1], -2.0 * edx, rtol=1e-13)
    assert ds[0] == pytest.approx(eds, rel=1e-13)
    assert ds[1] == pytest.approx(-2.0 * eds, rel=1e-13)


# --- Integer arguments, float32, second derivatives --------------------------


@numba.njit
def scaled_power(x, n, c):
    r = 1.0
    for _ in range(n):
        r *= x
    return c * r


enzpy.register_partials(scaled_power, lambda x, n, c: (c * n * x ** (n - 1), x**n))


@numba.njit
def power_sum(v, n):
    return scaled_power(v[0], n, v[1]) + scaled_power(v[1], n + 1, v[0])


def test_rule_with_an_integer_argument_matches_finite_differences():
    v = np.array([0.9, 1.4])
    fd.check_vjp(power_sum, fd.Dup(v), fd.Const(3))


def test_hessian_through_a_rule_differentiates_its_partials():
    v = np.array([0.9, 1.4])
    hess = enzpy.hessian(power_sum, v, 3)
    x, c = v
    # f = c x^3 + x c^4 (n = 3): the rule's partials are differentiated
    expected = np.array([[6 * c * x, 3 * x * x + 4 * c**3], [3 * x * x + 4 * c**3, 12 * x * c * c]])
    np.testing.assert_allclose(hess, expected, rtol=1e-12)


def test_rule_applies_to_float32_calls():
    @numba.njit
    def f32(x):
        return scaled_power(x, 2, np.float32(1.5))

    (d,) = enzpy.autodiff(f32, Active(np.float32(0.5)))
    assert d == pytest.approx(1.5 * 2 * 0.5, rel=1e-6)


# --- C functions without a body ----------------------------------------------

_j0 = types.ExternalFunction("j0", types.float64(types.float64))
_j1 = types.ExternalFunction("j1", types.float64(types.float64))


@numba.njit
def bessel_energy(xs):
    s = 0.0
    for i in range(xs.shape[0]):
        s += _j0(xs[i]) ** 2
    return s


def test_external_c_function_without_rule_names_the_escape_hatch():
    @numba.njit
    def uses_y0(x):
        return _y0(x)

    with pytest.raises(enzpy.UnsupportedError, match="register_partials"):
        enzpy.autodiff(uses_y0, Active(0.5))


_y0 = types.ExternalFunction("y0", types.float64(types.float64))


def test_rule_for_an_external_c_function_by_symbol():
    enzpy.register_partials(_j0, lambda x: -_j1(x))
    xs = np.linspace(0.3, 4.0, 6)
    fd.check_vjp(bessel_energy, fd.Dup(xs))
    np.testing.assert_allclose(
        enzpy.gradient(bessel_energy, xs),
        -2.0 * scipy.special.j0(xs) * scipy.special.j1(xs),
        rtol=1e-12,
    )


_libm = ctypes.CDLL(ctypes.util.find_library("m"))
_c_atan = _libm.atan
_c_atan.argtypes = (ctypes.c_double,)
_c_atan.restype = ctypes.c_double
_c_expm1 = _libm.expm1
_c_expm1.argtypes = (ctypes.c_double,)
_c_expm1.restype = ctypes.c_double


@numba.njit
def through_ctypes(x, y):
    return _c_atan(x * y) + y


def test_ctypes_function_without_rule_is_refused_naming_the_fix():
    @numba.njit
    def uses_expm1(x):
        return _c_expm1(x)

    with pytest.raises(enzpy.UnsupportedError, match="register_partials"):
        enzpy.autodiff(uses_expm1, Active(0.5))
    # On constants it is let through.
    (d,) = enzpy.autodiff(lambda x: uses_expm1(0.5) * x, Active(2.0))
    assert d == pytest.approx(math.expm1(0.5))


def test_rule_for_a_ctypes_function_by_address_in_both_modes():
    enzpy.register_partials(_c_atan, lambda x: 1.0 / (1.0 + x * x))
    fd.check_vjp(through_ctypes, fd.Active(0.7), fd.Active(-1.2))
    t = enzpy.autodiff(through_ctypes, Duplicated(0.7, 1.0), Duplicated(-1.2, 0.0), mode=Forward)
    assert t == pytest.approx(-1.2 / (1 + (0.7 * 1.2) ** 2), rel=1e-13)


# --- Rule errors --------------------------------------------------------------


def test_partials_of_the_wrong_count_name_the_rule_and_what_was_expected():
    @numba.njit
    def two_args(x, y):
        return x * y

    enzpy.register_partials(two_args, lambda x, y: y)

    @numba.njit
    def f(x):
        return two_args(x, 2.0 * x)

    with pytest.raises(
        enzpy.EnzpyTypeError, match=r"two_args.*return float64; expected a tuple of 2"
    ):
        enzpy.autodiff(f, Active(1.0))


def test_partials_taking_the_wrong_number_of_arguments_are_refused_at_registration():
    @numba.njit
    def scaled_tanh(x, k):
        return k * math.tanh(x / k)

    def one_argument(x):
        return 1.0

    with pytest.raises(
        enzpy.EnzpyTypeError,
        match=r"scaled_tanh's 2 arguments \(x, k\), or those and the result; one_argument "
        r"takes 1 \(x\)",
    ):
        enzpy.register_partials(scaled_tanh, one_argument)


@numba.njit
def _soft_clip(x, k=2.0):
    return k * math.tanh(x / k)


@numba.njit
def _soft_clip_partials(x, k):
    t = math.tanh(x / k)
    return (1.0 - t * t, t - x / k * (1.0 - t * t))


enzpy.register_partials(_soft_clip, _soft_clip_partials)


def test_rule_of_a_function_called_with_a_default_argument_asks_for_it():
    @numba.njit
    def with_default(x):
        return _soft_clip(x) * x

    with pytest.raises(enzpy.UnsupportedError, match="default value of its argument 1"):
        enzpy.autodiff(with_default, Active(0.3))

    @numba.njit
    def passed(x, k):
        return _soft_clip(x, k) * x

    fd.check_vjp(passed, fd.Active(0.3), fd.Active(1.5))


def test_partials_that_do_not_compile_name_the_rule():
    @numba.njit
    def one(x):
        return x + 1.0

    enzpy.register_partials(one, lambda x: undefined_name(x))  # noqa: F821

    @numba.njit
    def f(x):
        return one(x)

    with pytest.raises(enzpy.CompilationError, match="partial derivatives registered for .*one"):
        enzpy.autodiff(f, Active(1.0))


def test_partials_rule_for_a_function_of_arrays_is_refused():
    @numba.njit
    def norm2(a):
        return (a * a).sum()

    enzpy.register_partials(norm2, lambda a: 2.0 * a)

    @numba.njit
    def f(a):
        return norm2(a)

    with pytest.raises(enzpy.UnsupportedError, match="function of scalars"):
        enzpy.autodiff(f, Duplicated(np.ones(3), np.zeros(3)))


def test_registering_a_new_rule_rebuilds_derivatives_built_before():
    @numba.njit
    def lin(x):
        return 2.0 * x

    @numba.njit
    def f(x):
        return lin(x)

    assert enzpy.autodiff(f, Active(1.0)) == (2.0,)
    enzpy.register_partials(lin, lambda x: 5.0)  # a rule that is not the body's
    assert enzpy.autodiff(f, Active(1.0)) == (5.0,)


def test_exceptions_raised_by_a_function_with_a_rule_reach_the_caller():
    @numba.njit
    def checked_sqrt(x):
        if x < 0.0:
            raise ValueError("negative argument")
        return math.sqrt(x)

    enzpy.register_partials(checked_sqrt, lambda x: 0.5 / math.sqrt(x))

    @numba.njit
    def f(x):
        return 3.0 * checked_sqrt(x)

    assert enzpy.autodiff(f, Active(4.0)) == (0.75,)
    with pytest.raises(ValueError, match="negative argument"):
        enzpy.autodiff(f, Active(-4.0))
    with pytest.raises(ValueError, match="negative argument"):
        enzpy.autodiff(f, Duplicated(-4.0, 1.0), mode=Forward)


# --- Inactive functions and stop_gradient -------------------------------------


@enzpy.inactive
@numba.njit
def noisy_scale(x):
    # e.g. a heuristic step size: used as a constant
    return 1.0 + 0.1 * math.sin(x)


@numba.njit
def damped(x, y):
    return noisy_scale(x) * x * y + enzpy.stop_gradient(x * x) * y


def test_inactive_function_and_stop_gradient_carry_no_derivative():
    x, y = 0.8, 1.9
    dx, dy = enzpy.autodiff(damped, Active(x), Active(y))
    assert dx == pytest.approx(noisy_scale(x) * y, rel=1e-14)
    assert dy == pytest.approx(noisy_scale(x) * x + x * x, rel=1e-14)
    t = enzpy.autodiff(damped, Duplicated(x, 1.0), Duplicated(y, 0.0), mode=Forward)
    assert t == pytest.approx(noisy_scale(x) * y, rel=1e-14)


@enzpy.inactive
@numba.njit
def summary(a, counter):
    counter[0] += 1  # counts calls: writes only constant memory
    return a.max()


@numba.njit
def normalized(a, counter):
    m = summary(a, counter)
    s = 0.0
    for i in range(a.shape[0]):
        s += a[i] / m
    return s


def test_inactive_function_may_read_active_arrays_and_write_constant_ones():
    a = np.array([0.5, 2.0, 1.5])
    da = np.zeros(3)
    counter = np.zeros(1, dtype=np.int64)
    enzpy.autodiff(normalized, Duplicated(a, da), Const(counter))
    np.testing.assert_allclose(da, np.full(3, 1.0 / 2.0), rtol=1e-14)
    assert counter[0] >= 1


def test_inactive_function_writing_active_memory_is_refused():
    @enzpy.inactive
    @numba.njit
    def clobber(a):
        a[0] = 0.0

    @numba.njit
    def f(a):
        clobber(a)
        return a.sum()

    for mode in (enzpy.Reverse, Forward):
        with pytest.raises(enzpy.UnsupportedError, match="clobber.*declared inactive"):
            enzpy.autodiff(f, Duplicated(np.ones(3), np.zeros(3)), mode=mode)


def test_an_array_an_inactive_function_returns_then_written_with_derivatives_is_refused():
    # It used to be taken as no memory at all: the derivatives stored into it
    # vanished, a silent zero gradient.
    @enzpy.inactive
    @numba.njit
    def scratch(n):
        return np.zeros(n)

    @numba.njit
    def f(x):
        y = scratch(x.shape[0])
        for i in range(x.shape[0]):
            y[i] = 2.0 * x[i]
        return (y * y).sum()

    for mode in (enzpy.Reverse, Forward):
        with pytest.raises(enzpy.UnsupportedError, match="memory of unknown origin"):
            enzpy.autodiff(f, Duplicated(np.ones(3), np.ones(3)), mode=mode)


def test_inactive_requires_an_njit_function():
    with pytest.raises(enzpy.EnzpyTypeError):
        enzpy.inactive(lambda x: x)


# --- enzpy's own rules go through the same path ------------------------------


@numba.njit
def log_likelihood(alpha, xs):
    # Gamma(alpha, 1) log-density summed: (alpha-1) log x - x - lgamma(alpha)
    s = 0.0
    for i in range(xs.shape[0]):
        s += (alpha - 1.0) * math.log(xs[i]) - xs[i] - math.lgamma(alpha)
    return s


def test_lgamma_rule_in_a_likelihood_matches_digamma():
    xs = RNG.uniform(0.5, 3.0, 10)
    (d, _) = enzpy.autodiff(log_likelihood, Active(2.3), Const(xs))
    expected = float(np.sum(np.log(xs))) - 10 * scipy.special.digamma(2.3)
    assert d == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("x", [-2.5, -0.3, 0.4, 1.0, 7.5, 30.0])
def test_gamma_and_lgamma_rules_across_the_real_line(x):
    @numba.njit
    def both(x):
        return math.gamma(x) + math.lgamma(x)

    (d,) = enzpy.autodiff(both, Active(x))
    psi = scipy.special.digamma(x)
    assert d == pytest.approx(math.gamma(x) * psi + psi, rel=1e-12)


def test_second_derivative_of_lgamma_is_trigamma():
    @numba.njit
    def f(v):
        return math.lgamma(v[0])

    for x in (0.6, 2.5, 12.0):
        hess = enzpy.hessian(f, np.array([x]))
        assert hess[0, 0] == pytest.approx(scipy.special.polygamma(1, x), rel=1e-10)


# --- Rules checked with the public harness ------------------------------------


def test_harness_passes_a_correct_solver_rule_in_every_activity_pattern():
    from enzpy.testing import check_derivative

    check_derivative(
        orbit_positions,
        np.linspace(0.2, 2.0, 4),
        np.zeros(4),
        0.3,
        1.7,
        activities=[None, None, None, Const],
        widths=(1, 2),
    )


def test_harness_catches_a_rule_with_a_wrong_sign():
    from enzpy.testing import DerivativeMismatch, check_derivative

    @numba.njit
    def softplus(x):
        return math.log1p(math.exp(x))

    # d/dx softplus = sigmoid(x); the sign is deliberately wrong.
    enzpy.register_partials(softplus, lambda x: -1.0 / (1.0 + math.exp(-x)))

    @numba.njit
    def loss(x, w):
        return softplus(w * x) * x

    with pytest.raises(DerivativeMismatch, match="loss"):
        check_derivative(loss, 0.4, 1.3, widths=(1,))
