"""Reverse mode of scalar numba functions: every math function numba lowers (LLVM
intrinsics such as llvm.sin/llvm.pow/llvm.fabs, libm calls such as tan/atan2/hypot/
log1p/erf, and numba's own lowerings of **, %, //, min/max, copysign), numpy ufuncs on
scalars, float32 scalars, and functions of several Active floats.

Every derivative is compared with an analytic formula, and the formula itself with
central finite differences of the same compiled function (so a wrong formula shows
up as a test bug, not as an engine bug)."""

import math

import fd
import numba
import numpy as np
import pytest
import scipy.special

import enzpy
from enzpy import Active, Const

# rtol of enzpy vs an analytic formula, both in float64: a handful of roundings apart.
RTOL_ANALYTIC = 1e-10
# formula vs FD: the FD error bound of fd.py (truncation ~1e-12, rounding ~1e-10).
RTOL_FD = 1e-6

SQRT_PI = math.sqrt(math.pi)


def sign(x):
    return math.copysign(1.0, x)


# name, function of x, analytic derivative, points
UNARY = [
    ("math.sin", lambda x: math.sin(x), lambda x: math.cos(x), (0.3, -1.7, 4.0)),
    ("math.cos", lambda x: math.cos(x), lambda x: -math.sin(x), (0.3, -1.7, 4.0)),
    ("math.tan", lambda x: math.tan(x), lambda x: 1 / math.cos(x) ** 2, (0.3, -1.2, 2.0)),
    ("math.exp", lambda x: math.exp(x), lambda x: math.exp(x), (0.3, -2.1, 3.0)),
    ("math.log", lambda x: math.log(x), lambda x: 1 / x, (0.05, 1.3, 40.0)),
    ("math.log10", lambda x: math.log10(x), lambda x: 1 / (x * math.log(10)), (0.05, 7.0)),
    ("math.log2", lambda x: math.log2(x), lambda x: 1 / (x * math.log(2)), (0.05, 7.0)),
    ("math.log1p", lambda x: math.log1p(x), lambda x: 1 / (1 + x), (1e-3, -0.5, 3.0)),
    ("math.expm1", lambda x: math.expm1(x), lambda x: math.exp(x), (1e-3, -0.5, 2.0)),
    ("math.sqrt", lambda x: math.sqrt(x), lambda x: 0.5 / math.sqrt(x), (0.01, 2.0, 90.0)),
    ("math.fabs", lambda x: math.fabs(x), sign, (0.4, -2.5)),
    ("math.tanh", lambda x: math.tanh(x), lambda x: 1 - math.tanh(x) ** 2, (0.3, -1.5, 3.0)),
    ("math.sinh", lambda x: math.sinh(x), lambda x: math.cosh(x), (0.3, -1.5, 3.0)),
    ("math.cosh", lambda x: math.cosh(x), lambda x: math.sinh(x), (0.3, -1.5, 3.0)),
    ("math.atan", lambda x: math.atan(x), lambda x: 1 / (1 + x * x), (0.3, -1.5, 7.0)),
    ("math.asin", lambda x: math.asin(x), lambda x: 1 / math.sqrt(1 - x * x), (0.3, -0.8)),
    ("math.acos", lambda x: math.acos(x), lambda x: -1 / math.sqrt(1 - x * x), (0.3, -0.8)),
    ("math.asinh", lambda x: math.asinh(x), lambda x: 1 / math.sqrt(x * x + 1), (0.3, -2.0)),
    ("math.acosh", lambda x: math.acosh(x), lambda x: 1 / math.sqrt(x * x - 1), (1.3, 5.0)),
    ("math.atanh", lambda x: math.atanh(x), lambda x: 1 / (1 - x * x), (0.3, -0.7)),
    ("math.erf", lambda x: math.erf(x), lambda x: 2 / SQRT_PI * math.exp(-x * x), (0.3, -1.1)),
    ("math.erfc", lambda x: math.erfc(x), lambda x: -2 / SQRT_PI * math.exp(-x * x), (0.3, -1.1)),
    pytest.param(
        "math.lgamma",
        lambda x: math.lgamma(x),
        lambda x: scipy.special.digamma(x),
        (0.7, 3.5),
    ),
    pytest.param(
        "math.gamma",
        lambda x: math.gamma(x),
        lambda x: math.gamma(x) * scipy.special.digamma(x),
        (0.7, 3.5),
    ),
    ("math.degrees", lambda x: math.degrees(x), lambda x: 180 / math.pi, (0.3,)),
    ("math.radians", lambda x: math.radians(x), lambda x: math.pi / 180, (30.0,)),
    # math.floor/ceil/trunc return ints in numba; their derivative is zero, so
    # x*floor(x) has the derivative floor(x)
    ("x*math.floor", lambda x: x * math.floor(x), lambda x: math.floor(x), (2.3, -1.6)),
    ("x*math.ceil", lambda x: x * math.ceil(x), lambda x: math.ceil(x), (2.3, -1.6)),
    ("x*math.trunc", lambda x: x * math.trunc(x), lambda x: math.trunc(x), (2.3, -1.6)),
    # powers: numba lowers a literal int exponent to multiplications, 0.5 to sqrt,
    # others to llvm.pow
    ("x**2", lambda x: x**2, lambda x: 2 * x, (0.3, -1.7)),
    ("x**3", lambda x: x**3, lambda x: 3 * x * x, (0.3, -1.7)),
    ("x**-1", lambda x: x**-1, lambda x: -1 / (x * x), (0.3, -1.7)),
    ("x**-2", lambda x: x**-2, lambda x: -2 / x**3, (0.3, -1.7)),
    ("x**0.5", lambda x: x**0.5, lambda x: 0.5 / math.sqrt(x), (0.3, 5.0)),
    ("x**1.5", lambda x: x**1.5, lambda x: 1.5 * math.sqrt(x), (0.3, 5.0)),
    ("x**-0.7", lambda x: x**-0.7, lambda x: -0.7 * x**-1.7, (0.3, 5.0)),
    ("abs", lambda x: abs(x), sign, (0.4, -2.5)),
    ("neg", lambda x: -x, lambda x: -1.0, (0.4, -2.5)),
    ("reciprocal", lambda x: 1.0 / x, lambda x: -1 / (x * x), (0.4, -2.5)),
    ("affine", lambda x: 3.0 - 2.5 * x, lambda x: -2.5, (0.4,)),
    # numpy ufuncs on scalars
    ("np.sin", lambda x: np.sin(x), lambda x: math.cos(x), (0.3, -1.7)),
    ("np.cos", lambda x: np.cos(x), lambda x: -math.sin(x), (0.3, -1.7)),
    ("np.tan", lambda x: np.tan(x), lambda x: 1 / math.cos(x) ** 2, (0.3, -1.2)),
    ("np.exp", lambda x: np.exp(x), lambda x: math.exp(x), (0.3, -2.1)),
    ("np.exp2", lambda x: np.exp2(x), lambda x: math.log(2) * 2**x, (0.3, -2.1)),
    ("np.log", lambda x: np.log(x), lambda x: 1 / x, (0.05, 3.0)),
    ("np.log2", lambda x: np.log2(x), lambda x: 1 / (x * math.log(2)), (0.05, 3.0)),
    ("np.log10", lambda x: np.log10(x), lambda x: 1 / (x * math.log(10)), (0.05, 3.0)),
    ("np.log1p", lambda x: np.log1p(x), lambda x: 1 / (1 + x), (1e-3, 3.0)),
    ("np.expm1", lambda x: np.expm1(x), lambda x: math.exp(x), (1e-3, -0.5)),
    ("np.sqrt", lambda x: np.sqrt(x), lambda x: 0.5 / math.sqrt(x), (0.01, 2.0)),
    ("np.cbrt", lambda x: np.cbrt(x), lambda x: abs(x) ** (-2 / 3) / 3, (0.2, 8.0, -3.0)),
    ("np.tanh", lambda x: np.tanh(x), lambda x: 1 - math.tanh(x) ** 2, (0.3, -1.5)),
    ("np.sinh", lambda x: np.sinh(x), lambda x: math.cosh(x), (0.3, -1.5)),
    ("np.cosh", lambda x: np.cosh(x), lambda x: math.sinh(x), (0.3, -1.5)),
    ("np.arcsin", lambda x: np.arcsin(x), lambda x: 1 / math.sqrt(1 - x * x), (0.3, -0.8)),
    ("np.arccos", lambda x: np.arccos(x), lambda x: -1 / math.sqrt(1 - x * x), (0.3, -0.8)),
    ("np.arctan", lambda x: np.arctan(x), lambda x: 1 / (1 + x * x), (0.3, -1.5)),
    ("np.arcsinh", lambda x: np.arcsinh(x), lambda x: 1 / math.sqrt(x * x + 1), (0.3, -2.0)),
    ("np.square", lambda x: np.square(x), lambda x: 2 * x, (0.3, -1.7)),
    ("np.reciprocal", lambda x: np.reciprocal(x), lambda x: -1 / (x * x), (0.3, -1.7)),
    ("np.negative", lambda x: np.negative(x), lambda x: -1.0, (0.3,)),
    ("np.abs", lambda x: np.abs(x), sign, (0.4, -2.5)),
    ("np.fabs", lambda x: np.fabs(x), sign, (0.4, -2.5)),
    ("np.deg2rad", lambda x: np.deg2rad(x), lambda x: math.pi / 180, (30.0,)),
    ("np.rad2deg", lambda x: np.rad2deg(x), lambda x: 180 / math.pi, (0.3,)),
    # piecewise-constant ufuncs have zero derivative
    ("x+np.floor", lambda x: x + np.floor(x), lambda x: 1.0, (2.3, -1.6)),
    ("x+np.ceil", lambda x: x + np.ceil(x), lambda x: 1.0, (2.3, -1.6)),
    ("x+np.trunc", lambda x: x + np.trunc(x), lambda x: 1.0, (2.3, -1.6)),
    ("x+np.rint", lambda x: x + np.rint(x), lambda x: 1.0, (2.3, -1.6)),
    ("np.sign*x", lambda x: np.sign(x) * x, sign, (2.3, -1.6)),
]

# a subset also run on float32 scalars
FLOAT32 = {
    "math.sin",
    "math.cos",
    "math.tan",
    "math.exp",
    "math.log",
    "math.log1p",
    "math.sqrt",
    "math.fabs",
    "math.tanh",
    "math.atan",
    "math.asin",
    "math.erf",
    "x**2",
    "x**3",
    "x**0.5",
    "x**1.5",
    "abs",
    "reciprocal",
    "np.exp",
    "np.log",
    "np.sqrt",
    "np.tanh",
    "np.cbrt",
    "x+np.floor",
}


def _fields(case):
    """The plain tuple of a case (unwrapping pytest.param)."""
    return tuple(case.values) if hasattr(case, "marks") else case


_JIT = {c[0]: numba.njit(c[1]) for c in map(_fields, UNARY)}


def _check_formula_by_fd(jitted, args, refs, name):
    """The analytic formula agrees with central FD of the compiled function."""
    _, g_fd = fd.fd_gradient(jitted, *args)
    for k, (g, r) in enumerate(zip(g_fd, refs)):
        fd.assert_close_to_reference(
            g, r, rtol=RTOL_FD, atol=1e-8, what=f"test bug: formula for {name}, argument {k}, vs FD"
        )


@pytest.mark.parametrize("name, fn, dfn, points", UNARY, ids=[_fields(u)[0] for u in UNARY])
def test_unary_float64(name, fn, dfn, points):
    f = _JIT[name]
    for x in points:
        (d,) = enzpy.autodiff(f, Active(x))
        ref = float(dfn(x))
        _check_formula_by_fd(f, (x,), (ref,), f"{name} at {x}")
        fd.assert_close_to_reference(
            d, ref, rtol=RTOL_ANALYTIC, atol=1e-300, what=f"d/dx {name} at x={x}"
        )


@pytest.mark.parametrize(
    "name, fn, dfn, points",
    [u for u in UNARY if _fields(u)[0] in FLOAT32],
    ids=[_fields(u)[0] for u in UNARY if _fields(u)[0] in FLOAT32],
)
def test_unary_float32(name, fn, dfn, points):
    f = _JIT[name]
    for x in points:
        x32 = np.float32(x)
        (d,) = enzpy.autodiff(f, Active(x32))
        assert isinstance(d, (float, np.floating))
        ref = float(dfn(float(x32)))
        # float32 arithmetic: see fd.RTOL_FLOAT32; a zero derivative stays exactly zero
        fd.assert_close_to_reference(
            d, ref, rtol=fd.RTOL_FLOAT32, atol=1e-300, what=f"d/dx {name} at x=float32({x})"
        )


# name, f(x, y), df/dx, df/dy, points
BINARY = [
    (
        "math.atan2",
        lambda x, y: math.atan2(x, y),
        lambda x, y: y / (x * x + y * y),
        lambda x, y: -x / (x * x + y * y),
        ((0.3, 0.8), (-0.5, -1.2), (1.1, -0.4)),
    ),
    (
        "math.hypot",
        lambda x, y: math.hypot(x, y),
        lambda x, y: x / math.hypot(x, y),
        lambda x, y: y / math.hypot(x, y),
        ((0.3, 0.8), (-0.5, -1.2)),
    ),
    (
        "x**y",
        lambda x, y: x**y,
        lambda x, y: y * x ** (y - 1),
        lambda x, y: x**y * math.log(x),
        ((0.3, 0.8), (2.5, -1.3), (1.7, 3.0)),
    ),
    (
        "math.pow",
        lambda x, y: math.pow(x, y),
        lambda x, y: y * x ** (y - 1),
        lambda x, y: x**y * math.log(x),
        ((0.3, 0.8), (2.5, -1.3)),
    ),
    (
        "math.copysign",
        lambda x, y: math.copysign(x, y),
        lambda x, y: sign(x) * sign(y),
        lambda x, y: 0.0,
        ((0.7, -0.3), (-0.7, -0.3), (0.5, 2.0)),
    ),
    (
        "min",
        lambda x, y: min(x, y),
        lambda x, y: 1.0 if x < y else 0.0,
        lambda x, y: 0.0 if x < y else 1.0,
        ((0.3, 0.8), (0.9, -0.2)),
    ),
    (
        "max",
        lambda x, y: max(x, y),
        lambda x, y: 1.0 if x > y else 0.0,
        lambda x, y: 0.0 if x > y else 1.0,
        ((0.3, 0.8), (0.9, -0.2)),
    ),
    (
        "x/y",
        lambda x, y: x / y,
        lambda x, y: 1 / y,
        lambda x, y: -x / (y * y),
        ((0.3, 0.8), (-1.5, 0.4)),
    ),
    ("x*y-x", lambda x, y: x * y - x, lambda x, y: y - 1, lambda x, y: x, ((0.3, 0.8),)),
    (
        "x%y",
        lambda x, y: x % y,
        lambda x, y: 1.0,
        lambda x, y: -math.floor(x / y),
        ((2.7, 0.8), (-2.7, 0.8), (2.7, -0.8)),
    ),
    (
        "x//y+x*y",
        lambda x, y: x // y + x * y,
        lambda x, y: y,
        lambda x, y: x,
        ((2.7, 0.8), (-2.7, 0.8)),
    ),
    (
        "np.fmod",
        lambda x, y: np.fmod(x, y),
        lambda x, y: 1.0,
        lambda x, y: -math.trunc(x / y),
        ((2.7, 0.8), (-2.7, 0.8)),
    ),
    (
        "np.arctan2",
        lambda x, y: np.arctan2(x, y),
        lambda x, y: y / (x * x + y * y),
        lambda x, y: -x / (x * x + y * y),
        ((0.3, 0.8), (-0.5, -1.2)),
    ),
    (
        "np.hypot",
        lambda x, y: np.hypot(x, y),
        lambda x, y: x / math.hypot(x, y),
        lambda x, y: y / math.hypot(x, y),
        ((0.3, 0.8),),
    ),
    (
        "np.power",
        lambda x, y: np.power(x, y),
        lambda x, y: y * x ** (y - 1),
        lambda x, y: x**y * math.log(x),
        ((2.5, -1.3),),
    ),
    (
        "np.maximum",
        lambda x, y: np.maximum(x, y),
        lambda x, y: 1.0 if x > y else 0.0,
        lambda x, y: 0.0 if x > y else 1.0,
        ((0.3, 0.8), (0.9, -0.2)),
    ),
    (
        "np.minimum",
        lambda x, y: np.minimum(x, y),
        lambda x, y: 1.0 if x < y else 0.0,
        lambda x, y: 0.0 if x < y else 1.0,
        ((0.3, 0.8), (0.9, -0.2)),
    ),
    (
        "np.fmax",
        lambda x, y: np.fmax(x, y),
        lambda x, y: 1.0 if x > y else 0.0,
        lambda x, y: 0.0 if x > y else 1.0,
        ((0.3, 0.8), (0.9, -0.2)),
    ),
    (
        "np.copysign",
        lambda x, y: np.copysign(x, y),
        lambda x, y: sign(x) * sign(y),
        lambda x, y: 0.0,
        ((0.7, -0.3), (-0.7, 0.3)),
    ),
    (
        "np.logaddexp",
        lambda x, y: np.logaddexp(x, y),
        lambda x, y: 1 / (1 + math.exp(y - x)),
        lambda x, y: 1 / (1 + math.exp(x - y)),
        ((0.3, 0.8), (-2.0, 1.5)),
    ),
    (
        "np.divide",
        lambda x, y: np.divide(x, y),
        lambda x, y: 1 / y,
        lambda x, y: -x / (y * y),
        ((0.3, 0.8),),
    ),
]

_JIT2 = {name: numba.njit(fn) for name, fn, _, _, _ in BINARY}


@pytest.mark.parametrize("name, fn, dfx, dfy, points", BINARY, ids=[b[0] for b in BINARY])
def test_binary_float64(name, fn, dfx, dfy, points):
    f = _JIT2[name]
    for x, y in points:
        dx, dy = enzpy.autodiff(f, Active(x), Active(y))
        rx, ry = float(dfx(x, y)), float(dfy(x, y))
        _check_formula_by_fd(f, (x, y), (rx, ry), f"{name} at {(x, y)}")
        fd.assert_close_to_reference(
            dx, rx, rtol=RTOL_ANALYTIC, atol=1e-300, what=f"d/dx {name} at {(x, y)}"
        )
        fd.assert_close_to_reference(
            dy, ry, rtol=RTOL_ANALYTIC, atol=1e-300, what=f"d/dy {name} at {(x, y)}"
        )


@pytest.mark.parametrize("name", ["math.atan2", "x**y", "x/y", "max"])
def test_binary_float32(name):
    _, fn, dfx, dfy, points = next(b for b in BINARY if b[0] == name)
    f = _JIT2[name]
    for x, y in points:
        x32, y32 = np.float32(x), np.float32(y)
        dx, dy = enzpy.autodiff(f, Active(x32), Active(y32))
        fd.assert_close_to_reference(
            dx, dfx(float(x32), float(y32)), rtol=fd.RTOL_FLOAT32, atol=1e-300, what=f"d/dx {name}"
        )
        fd.assert_close_to_reference(
            dy, dfy(float(x32), float(y32)), rtol=fd.RTOL_FLOAT32, atol=1e-300, what=f"d/dy {name}"
        )


@numba.njit
def _pow_const_exponent(x, c):
    return x**c


def test_one_active_one_const_argument():
    # the same function with one argument constant: Const and bare values give None
    x, c = 1.7, 2.6
    dx, dc = enzpy.autodiff(_pow_const_exponent, Active(x), Const(c))
    assert dc is None
    fd.assert_close_to_reference(dx, c * x ** (c - 1), rtol=RTOL_ANALYTIC, what="d/dx x**c")
    dx2, dc2 = enzpy.autodiff(_pow_const_exponent, Active(x), c)
    assert dc2 is None and dx2 == dx
    dx3, dc3 = enzpy.autodiff(_pow_const_exponent, Const(x), Active(c))
    assert dx3 is None
    fd.assert_close_to_reference(dc3, x**c * math.log(x), rtol=RTOL_ANALYTIC, what="d/dc x**c")


@numba.njit
def _int_power(x, n):
    return x**n


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, -1, -3])
@pytest.mark.parametrize("x", [1.3, -0.6])
def test_integer_power_with_runtime_exponent(x, n):
    dx, dn = enzpy.autodiff(_int_power, Active(x), Const(n))
    assert dn is None
    ref = n * x ** (n - 1) if n != 0 else 0.0
    fd.assert_close_to_reference(
        dx, ref, rtol=RTOL_ANALYTIC, atol=1e-300, what=f"d/dx x**{n} at {x}"
    )


@numba.njit
def _composite(x, y, z):
    a = math.exp(math.sin(x) * y) / (1.0 + x * x)
    b = math.atan2(y, z) * math.hypot(x, z)
    c = math.sqrt(abs(z) + x * x) - math.log1p(y * y) * math.tanh(z - x)
    return a + b * c - max(x, z) ** 3 / min(2.0, y + 3.0)


def test_composite_of_three_active_floats():
    fd.check_vjp(_composite, fd.Active(0.4), fd.Active(-0.7), fd.Active(1.3), trials=3)


def test_composite_float32_scalars():
    fd.check_vjp(
        _composite,
        fd.Active(np.float32(0.4)),
        fd.Active(np.float32(-0.7)),
        fd.Active(np.float32(1.3)),
    )


@numba.njit
def _with_consts(x, k, s, y):
    # k: an int, s: a float passed as Const; both inactive
    acc = 0.0
    for i in range(k):
        acc += math.sin(x * (i + 1)) * s + y / (i + 1)
    return acc * y


def test_active_floats_with_const_int_and_const_float():
    x, k, s, y = 0.3, 4, 1.7, -0.8
    res = enzpy.autodiff(_with_consts, Active(x), k, Const(s), Active(y))
    assert len(res) == 4 and res[1] is None and res[2] is None
    dx_ref = sum(math.cos(x * (i + 1)) * (i + 1) * s for i in range(k)) * y
    h = sum(1 / (i + 1) for i in range(k))
    dy_ref = sum(math.sin(x * (i + 1)) * s for i in range(k)) + 2 * y * h
    fd.assert_close_to_reference(res[0], dx_ref, rtol=RTOL_ANALYTIC, what="dx")
    fd.assert_close_to_reference(res[3], dy_ref, rtol=RTOL_ANALYTIC, what="dy")
    fd.check_vjp(_with_consts, fd.Active(x), k, fd.Const(s), fd.Active(y))


@numba.njit
def _horner(c, x):
    s = 0.0
    for k in range(c.shape[0] - 1, -1, -1):
        s = s * x + c[k]
    return s


def test_loop_carried_scalar_horner():
    c = np.random.default_rng(0).uniform(-1, 1, 9)
    c_copy = c.copy()
    for x in (0.7, -1.3):
        dc, dx = enzpy.autodiff(_horner, Const(c), Active(x))
        assert dc is None
        ref = np.polynomial.polynomial.polyval(x, np.polynomial.polynomial.polyder(c))
        fd.assert_close_to_reference(dx, ref, rtol=RTOL_ANALYTIC, what="p'(x)")
    np.testing.assert_array_equal(c, c_copy)


@numba.njit
def _rk4_decay(y0, k, n):
    # y' = -k y + sin(t), RK4 with n steps of size 0.05
    h = 0.05
    y = y0
    t = 0.0
    for _ in range(n):
        k1 = -k * y + math.sin(t)
        k2 = -k * (y + 0.5 * h * k1) + math.sin(t + 0.5 * h)
        k3 = -k * (y + 0.5 * h * k2) + math.sin(t + 0.5 * h)
        k4 = -k * (y + h * k3) + math.sin(t + h)
        y = y + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        t += h
    return y


def test_scalar_rk4_loop():
    fd.check_vjp(_rk4_decay, fd.Active(1.5), fd.Active(0.8), 40, trials=2)
    # d y(T) / d y0 = exp(-k T) for the exact flow; RK4 with h=0.05 is within 1e-6
    (dy0, dk, _) = enzpy.autodiff(_rk4_decay, Active(1.5), Active(0.8), 40)
    assert abs(dy0 - math.exp(-0.8 * 40 * 0.05)) < 1e-6


@numba.njit
def _newton_sqrt(a):
    y = a if a > 1.0 else 1.0
    while abs(y * y - a) > 1e-14 * a:
        y = 0.5 * (y + a / y)
    return y


@pytest.mark.parametrize("a", [0.3, 2.0, 1e4])
def test_newton_iteration_with_data_dependent_trip_count(a):
    (d,) = enzpy.autodiff(_newton_sqrt, Active(a))
    fd.assert_close_to_reference(
        d, 0.5 / math.sqrt(a), rtol=1e-9, what=f"d sqrt_newton(a)/da at {a}"
    )


def _plain_python(x, y):
    return math.sin(x) * y**2


def test_plain_function_is_compiled_with_njit():
    ref = enzpy.autodiff(numba.njit(_plain_python), Active(0.5), Active(1.5))
    got = enzpy.autodiff(_plain_python, Active(0.5), Active(1.5))
    np.testing.assert_allclose(got, ref, rtol=1e-15)
    fd.assert_close_to_reference(got[0], math.cos(0.5) * 1.5**2, what="dx")
    fd.assert_close_to_reference(got[1], 2 * math.sin(0.5) * 1.5, what="dy")


def test_reverse_with_primal_scalar():
    derivs, primal = enzpy.autodiff(
        _composite, Active(0.4), Active(-0.7), Active(1.3), mode=enzpy.ReverseWithPrimal
    )
    assert primal == _composite(0.4, -0.7, 1.3)
    np.testing.assert_allclose(
        derivs, enzpy.autodiff(_composite, Active(0.4), Active(-0.7), Active(1.3)), rtol=1e-15
    )


@numba.njit
def _of_tuple(t, y):
    return t[0] * t[1] + math.sin(t[2]) * y


def test_active_tuple_of_floats():
    # docs/design.md §3: Active(x) takes a float scalar or a tuple of floats
    t, y = (0.3, 0.5, 0.7), 2.0
    dt, dy = enzpy.autodiff(_of_tuple, Active(t), Active(y))
    assert isinstance(dt, tuple) and len(dt) == 3
    fd.assert_close_to_reference(dt, (t[1], t[0], math.cos(t[2]) * y), RTOL_ANALYTIC, what="d/dt")
    fd.assert_close_to_reference(dy, math.sin(t[2]), RTOL_ANALYTIC, what="d/dy")
