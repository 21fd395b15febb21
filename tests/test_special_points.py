"""Derivatives at special points: the conventions of docs/design.md §8.4.

Each case is a scalar function, a point and the partial derivatives enzpy gives
there: the derivative where it exists (also where the textbook formula is 0·∞,
as d/dx x**y at x = 0 for y = 0), the one-sided derivative where only that
exists (+inf for sqrt at 0), and the documented convention at a kink (|x| at
0, ties of max). Every case is checked in forward mode (one unit direction per
argument, the other arguments Const) and reverse mode (every argument Active),
as scalars and element by element over arrays, in float64 and float32.
Infinities and NaN must match exactly; finite values to rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numba
import numpy as np
import pytest

import enzpy
from enzpy import Active, Const, Duplicated, Forward

INF = math.inf
NAN = math.nan
LN2 = math.log(2.0)


class Case(NamedTuple):
    name: str
    fn: Callable[..., Any]  # njit
    point: tuple[float, ...]
    partials: tuple[float, ...]  # or a function of the point (in float64)


# scalar kernels ------------------------------------------------------------------

np_abs = numba.njit(lambda x: np.abs(x))
py_abs = numba.njit(lambda x: abs(x))
math_fabs = numba.njit(lambda x: math.fabs(x))
np_sqrt = numba.njit(lambda x: np.sqrt(x))
math_sqrt = numba.njit(lambda x: math.sqrt(x))
np_cbrt = numba.njit(lambda x: np.cbrt(x))
pow_xy = numba.njit(lambda x, y: x**y)
np_power = numba.njit(lambda x, y: np.power(x, y))
math_pow = numba.njit(lambda x, y: math.pow(x, y))
pow_2 = numba.njit(lambda x: x**2.0)
pow_half = numba.njit(lambda x: x**0.5)
pow_0 = numba.njit(lambda x: x**0.0)
pow_1 = numba.njit(lambda x: x**1.0)


@numba.njit
def poly(x):
    # 1 + 2x + 3x^2 with a float exponent (issue #10 item 6)
    s = 0.0
    for k in range(3):
        s += (k + 1.0) * np.power(x, float(k))
    return s


hypot = numba.njit(lambda x, y: math.hypot(x, y))
np_hypot = numba.njit(lambda x, y: np.hypot(x, y))
atan2 = numba.njit(lambda y, x: math.atan2(y, x))
np_fmod = numba.njit(lambda a, b: np.fmod(a, b))
py_mod = numba.njit(lambda a, b: a % b)
py_max = numba.njit(lambda x, y: max(x, y))
py_min = numba.njit(lambda x, y: min(x, y))
np_maximum = numba.njit(lambda x, y: np.maximum(x, y))
np_minimum = numba.njit(lambda x, y: np.minimum(x, y))
np_fmax = numba.njit(lambda x, y: np.fmax(x, y))
np_log = numba.njit(lambda x: np.log(x))
math_asin = numba.njit(lambda x: math.asin(x))
math_acos = numba.njit(lambda x: math.acos(x))
math_acosh = numba.njit(lambda x: math.acosh(x))
np_floor = numba.njit(lambda x: np.floor(x))
# numba's implementations special-case x == y (and sinc x == 0): the rule
# table's library-function rows give the function's derivative, not the branch's
np_logaddexp = numba.njit(lambda x, y: np.logaddexp(x, y))
np_logaddexp2 = numba.njit(lambda x, y: np.logaddexp2(x, y))
softplus = numba.njit(lambda x: np.logaddexp(0.0, x))
np_sinc = numba.njit(lambda x: np.sinc(x))
np_nextafter = numba.njit(lambda x, y: np.nextafter(x, y))


def _sigmoid(t: float) -> float:
    return 1.0 / (1.0 + math.exp(-t))


def _sinc_dx(x: float) -> float:
    """d/dx sin(pi x) / (pi x) = (cos(pi x) - sinc(x)) / x."""
    return (math.cos(math.pi * x) - math.sin(math.pi * x) / (math.pi * x)) / x


def _fmod_db(a, b):
    """d fmod(a, b) / db = -n for the exact integer quotient n (fmod is exact)."""
    return -float(round((a - math.fmod(a, b)) / b))


def _mod_db(a, b):
    """d (a % b) / db = -floor(a / b) of exact arithmetic."""
    return -float(round((a - (a % b)) / b))


CASES = [
    # |x|: +1 at both zeros (JAX's choice), -1 below
    *(
        Case(n, f, (p,), (d,))
        for n, f in (("np.abs", np_abs), ("abs", py_abs), ("math.fabs", math_fabs))
        for p, d in ((0.0, 1.0), (-0.0, 1.0), (-2.0, -1.0), (3.0, 1.0))
    ),
    # sqrt: +inf at both zeros (the one-sided derivative)
    *(
        Case(n, f, (p,), (d,))
        for n, f in (("np.sqrt", np_sqrt), ("math.sqrt", math_sqrt))
        for p, d in ((0.0, INF), (-0.0, INF), (4.0, 0.25))
    ),
    Case("np.cbrt", np_cbrt, (0.0,), (INF,)),
    Case("np.cbrt", np_cbrt, (-0.0,), (INF,)),
    Case("np.cbrt", np_cbrt, (8.0,), (1.0 / 12.0,)),
    # x ** y with a float exponent, both arguments differentiated
    *(
        Case(n, f, p, d)
        for n, f in (("x**y", pow_xy), ("np.power", np_power), ("math.pow", math_pow))
        for p, d in (
            ((0.0, 0.0), (0.0, 0.0)),  # x^0 == 1: d/dx = 0, not 0*inf; d/dy: 0 at x = 0
            ((0.0, 1.0), (1.0, 0.0)),
            ((0.0, 2.0), (0.0, 0.0)),
            ((0.0, 1.5), (0.0, 0.0)),
            ((0.0, 0.5), (INF, 0.0)),  # one-sided: +inf
            ((-0.0, 0.0), (0.0, 0.0)),
            ((-2.0, 3.0), (12.0, NAN)),  # no derivative in y for x < 0
            ((-2.0, 2.0), (-4.0, NAN)),
            ((-2.0, 0.0), (0.0, NAN)),
            ((2.0, 3.0), (12.0, 8.0 * LN2)),
        )
    ),
    # constant exponents (LLVM may rewrite these before enzpy sees them)
    Case("x**2.0", pow_2, (0.0,), (0.0,)),
    Case("x**2.0", pow_2, (-3.0,), (-6.0,)),
    Case("x**0.5", pow_half, (0.0,), (INF,)),
    Case("x**0.5", pow_half, (-0.0,), (INF,)),
    Case("x**0.0", pow_0, (0.0,), (0.0,)),
    Case("x**1.0", pow_1, (0.0,), (1.0,)),
    Case("poly", poly, (0.0,), (2.0,)),
    Case("poly", poly, (-0.0,), (2.0,)),
    Case("poly", poly, (-1.0,), (-4.0,)),
    # hypot: 0 at the origin (the smallest subgradient), x_i / hypot elsewhere
    *(
        Case(n, f, p, d)
        for n, f in (("math.hypot", hypot), ("np.hypot", np_hypot))
        for p, d in (((0.0, 0.0), (0.0, 0.0)), ((0.0, 2.0), (0.0, 1.0)), ((3.0, -4.0), (0.6, -0.8)))
    ),
    # atan2(y, x): discontinuous at the origin: no derivative, NaN (JAX the same)
    Case("math.atan2", atan2, (0.0, 0.0), (NAN, NAN)),
    Case("math.atan2", atan2, (0.0, 1.0), (1.0, 0.0)),
    Case("math.atan2", atan2, (1.0, 0.0), (0.0, -1.0)),
    Case("math.atan2", atan2, (0.0, -1.0), (-1.0, 0.0)),
    # fmod: the exact integer quotient (1.0 / 0.1 rounds to 10, fmod(1, 0.1) uses 9)
    *(Case("np.fmod", np_fmod, p, (1.0, _fmod_db)) for p in ((1.0, 0.1), (5.5, 2.0), (-5.5, 2.0))),
    *(Case("%", py_mod, p, (1.0, _mod_db)) for p in ((1.0, 0.1), (5.5, 2.0), (-5.5, 2.0))),
    # min/max: ties go to the first argument
    *(
        Case(n, f, (2.0, 2.0), (1.0, 0.0))
        for n, f in (
            ("max", py_max),
            ("min", py_min),
            ("np.maximum", np_maximum),
            ("np.minimum", np_minimum),
            ("np.fmax", np_fmax),
        )
    ),
    Case("np.fmax", np_fmax, (1.0, NAN), (1.0, 0.0)),  # fmax(x, NaN) is x
    Case("np.fmax", np_fmax, (NAN, 1.0), (0.0, 1.0)),
    # one-sided infinite derivatives at the ends of a domain
    Case("np.log", np_log, (0.0,), (INF,)),
    Case("math.asin", math_asin, (1.0,), (INF,)),
    Case("math.asin", math_asin, (-1.0,), (INF,)),
    Case("math.acos", math_acos, (1.0,), (-INF,)),
    Case("math.acos", math_acos, (-1.0,), (-INF,)),
    Case("math.acosh", math_acosh, (1.0,), (INF,)),
    # rounding: 0 at the jumps too
    Case("np.floor", np_floor, (2.0,), (0.0,)),
    # logaddexp(x, y): e^x / (e^x + e^y); 1/2 each at a tie, infinite ties too
    # (numba returns x + log 2 there: the branch's derivative was (1, 0))
    *(
        Case(n, f, p, d)
        for n, f in (("np.logaddexp", np_logaddexp), ("np.logaddexp2", np_logaddexp2))
        for p, d in (
            ((0.0, 0.0), (0.5, 0.5)),
            ((2.0, 2.0), (0.5, 0.5)),
            ((-INF, -INF), (0.5, 0.5)),
            ((0.0, -INF), (1.0, 0.0)),
        )
    ),
    Case("np.logaddexp", np_logaddexp, (1.0, 3.0), (_sigmoid(-2.0), _sigmoid(2.0))),
    Case("np.logaddexp2", np_logaddexp2, (1.0, 2.0), (1.0 / 3.0, 2.0 / 3.0)),
    Case("softplus", softplus, (0.0,), (0.5,)),
    Case("softplus", softplus, (-0.0,), (0.5,)),
    Case("softplus", softplus, (1.5,), (_sigmoid(1.5),)),
    # sinc: 0 at 0 (numba's x == 0 shortcut keeps the limit), analytic elsewhere
    Case("np.sinc", np_sinc, (0.0,), (0.0,)),
    Case("np.sinc", np_sinc, (0.5,), (_sinc_dx,)),
    Case("np.sinc", np_sinc, (-1.25,), (_sinc_dx,)),
    # nextafter(x, y) is x moved by one ulp: (1, 0)
    Case("np.nextafter", np_nextafter, (1.0, 2.0), (1.0, 0.0)),
    Case("np.nextafter", np_nextafter, (0.0, 0.0), (1.0, 0.0)),
]


def _id(c: Case) -> str:
    return f"{c.name}{c.point}".replace(" ", "")


# helpers -------------------------------------------------------------------------


def _expected(c: Case, dtype) -> list[float]:
    point = [float(dtype(p)) for p in c.point]
    return [float(d(*point)) if callable(d) else d for d in c.partials]


def _check(got, want: float, dtype, what: str) -> None:
    got = float(got)
    if math.isnan(want) or math.isinf(want):
        ok = math.isnan(got) if math.isnan(want) else got == want
    else:
        rtol = 1e-6 if dtype == np.float32 else 1e-14
        ok = abs(got - want) <= rtol * abs(want) + 1e-300
    assert ok, f"{what}: enzpy gives {got!r}, the convention is {want!r}"


_ARRAY_KERNELS: dict[Any, Any] = {}


def _array_kernel(fn, nargs: int):
    """out[i] = fn(x[i]) or fn(x[i], y[i]), compiled once per function."""
    key = (fn, nargs)
    if key not in _ARRAY_KERNELS:
        if nargs == 1:

            @numba.njit
            def k1(x, out):
                for i in range(x.shape[0]):
                    out[i] = fn(x[i])

            _ARRAY_KERNELS[key] = k1
        else:

            @numba.njit
            def k2(x, y, out):
                for i in range(x.shape[0]):
                    out[i] = fn(x[i], y[i])

            _ARRAY_KERNELS[key] = k2
    return _ARRAY_KERNELS[key]


DTYPES = [pytest.param(np.float64, id="f64"), pytest.param(np.float32, id="f32")]


# tests ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_scalar_forward(case, dtype):
    xs = [dtype(p) for p in case.point]
    want = _expected(case, dtype)
    for i in range(len(xs)):
        ann = [Duplicated(x, dtype(1.0)) if j == i else Const(x) for j, x in enumerate(xs)]
        t = enzpy.autodiff(case.fn, *ann, mode=Forward)
        _check(t, want[i], dtype, f"forward d/dx{i} of {case.name} at {case.point}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_scalar_reverse(case, dtype):
    xs = [dtype(p) for p in case.point]
    want = _expected(case, dtype)
    got = enzpy.autodiff(case.fn, *(Active(x) for x in xs))
    for i in range(len(xs)):
        _check(got[i], want[i], dtype, f"reverse d/dx{i} of {case.name} at {case.point}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_arrays_forward_and_reverse(case, dtype):
    n, k = 3, len(case.point)
    f = _array_kernel(case.fn, k)
    want = _expected(case, dtype)
    xs = [np.full(n, p, dtype) for p in case.point]
    for i in range(k):  # forward: a unit tangent on argument i
        out, dout = np.zeros(n, dtype), np.zeros(n, dtype)
        ann = [Duplicated(x, np.ones(n, dtype)) if j == i else Const(x) for j, x in enumerate(xs)]
        enzpy.autodiff(f, *ann, Duplicated(out, dout), mode=Forward)
        for v in dout:
            _check(v, want[i], dtype, f"forward array d/dx{i} of {case.name} at {case.point}")
    # reverse: every argument differentiated, cotangent 1 on out
    dxs = [np.zeros(n, dtype) for _ in xs]
    out, dout = np.zeros(n, dtype), np.ones(n, dtype)
    enzpy.autodiff(f, *(Duplicated(x, dx) for x, dx in zip(xs, dxs)), Duplicated(out, dout))
    for i, dx in enumerate(dxs):
        for v in dx:
            _check(v, want[i], dtype, f"reverse array d/dx{i} of {case.name} at {case.point}")


# a zero seed wins (§8.4, rule 5) -------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [c for c in CASES if len(c.point) == 2], ids=_id)
def test_scalar_forward_zero_tangents(case, dtype):
    """A zero tangent is the same as Const: d/dx of x**y at x = 0, y = 0.5 is
    +inf, and must not turn the tangent along y into inf * 0 = NaN."""
    xs = [dtype(p) for p in case.point]
    want = _expected(case, dtype)
    for i in range(len(xs)):
        ann = [Duplicated(x, dtype(1.0 if j == i else 0.0)) for j, x in enumerate(xs)]
        t = enzpy.autodiff(case.fn, *ann, mode=Forward)
        _check(
            t, want[i], dtype, f"forward d/dx{i} of {case.name} at {case.point}, other tangent 0"
        )


@numba.njit
def where_sqrt(x, out):
    for i in range(x.shape[0]):
        s = math.sqrt(x[i])  # computed everywhere, used where x > 0
        out[i] = s if x[i] > 0 else 0.0


@numba.njit
def where_log(x, out):
    for i in range(x.shape[0]):
        s = math.log(x[i])
        out[i] = s if x[i] > 0 else 0.0


@numba.njit(error_model="numpy")  # x / 0 is inf, not ZeroDivisionError
def safe_div(x, y, out):
    for i in range(x.shape[0]):
        q = x[i] / y[i]
        out[i] = q if y[i] != 0 else 0.0


def _dup_forward(f, xs, dirs, n, dtype):
    out, dout = np.zeros(n, dtype), np.zeros(n, dtype)
    enzpy.autodiff(
        f, *(Duplicated(x, d) for x, d in zip(xs, dirs)), Duplicated(out, dout), mode=Forward
    )
    return dout


def _dup_reverse(f, xs, n, dtype):
    dxs = [np.zeros(n, dtype) for _ in xs]
    out = np.zeros(n, dtype)
    enzpy.autodiff(
        f, *(Duplicated(x, d) for x, d in zip(xs, dxs)), Duplicated(out, np.ones(n, dtype))
    )
    return dxs


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "f, x, want",
    [
        # the dropped branch is sqrt at 0 (+inf) and at -1 (NaN)
        (where_sqrt, [0.0, -1.0, 4.0], [0.0, 0.0, 0.25]),
        (where_log, [0.0, -1.0, 2.0], [0.0, 0.0, 0.5]),
    ],
    ids=["sqrt", "log"],
)
def test_branch_dropped_by_where(f, x, want, dtype):
    """Both branches computed, one dropped (as np.where does): the derivative
    of the dropped one is multiplied by a zero seed and must stay 0 (JAX gives
    NaN for jnp.where(x > 0, jnp.sqrt(x), 0) at 0)."""
    n = len(x)
    xs = [np.array(x, dtype)]
    for got in (
        _dup_forward(f, xs, [np.ones(n, dtype)], n, dtype),
        _dup_reverse(f, xs, n, dtype)[0],
    ):
        for g, w in zip(got, want):
            _check(g, w, dtype, f"{f.__name__} at {x}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_safe_division(dtype):
    x, y = np.array([1.0, 1.0], dtype), np.array([0.0, 2.0], dtype)
    want_x, want_y = [0.0, 0.5], [0.0, -0.25]
    ones, zeros = np.ones(2, dtype), np.zeros(2, dtype)
    got_x = _dup_forward(safe_div, [x, y], [ones, zeros], 2, dtype)
    got_y = _dup_forward(safe_div, [x, y], [zeros, ones], 2, dtype)
    rev_x, rev_y = _dup_reverse(safe_div, [x, y], 2, dtype)
    for got, want in ((got_x, want_x), (got_y, want_y), (rev_x, want_x), (rev_y, want_y)):
        for g, w in zip(got, want):
            _check(g, w, dtype, "x / y if y != 0 else 0")


@numba.njit
def sqrt_and_linear(x, out):
    out[0] = np.sqrt(x[0]) + x[1]
    out[1] = 2.0 * x[1]


@pytest.mark.parametrize("mode", [enzpy.Forward, enzpy.Reverse], ids=["forward", "reverse"])
def test_jacobian_with_an_infinite_entry(mode):
    """J = [[+inf, 1], [0, 2]] at x0 = 0: the infinite entry stays in its
    place; the others (a column of zero directions, a row of zero cotangents)
    are not NaN."""
    j = enzpy.jacobian(sqrt_and_linear, np.array([0.0, 3.0]), out=np.zeros(2), mode=mode)
    assert j.tolist() == [[INF, 1.0], [0.0, 2.0]]


@numba.njit
def cbrt_of_cube(x):
    return np.cbrt(x**3)


@pytest.mark.xfail(
    strict=True, reason="§8.4: 0 * inf with a zero that is a derivative, not a dropped path"
)
def test_zero_derivative_times_infinite_partial():
    """cbrt(x**3) = x, derivative 1; the chain is cbrt'(0) * 3*0**2 = inf * 0,
    which the zero-seed rule takes as 0 (known gap, design.md §8.4 and §11)."""
    for t in (
        enzpy.autodiff(cbrt_of_cube, Duplicated(0.0, 1.0), mode=Forward),
        enzpy.autodiff(cbrt_of_cube, Active(0.0))[0],
    ):
        assert t == 1.0
