"""Results that depend on active inputs only through control (docs/design.md §7.4):
solvers (Newton, bisection, while-loop iterations), float-to-integer indices and
argmax-selected values. ``explain`` lists them in its ``piecewise-constant:`` section;
``enzpy.strict()`` turns them into ``PiecewiseConstantError`` naming the condition's
line; outside strict mode the derivative is the program's. Relu-style branches, integer
trip counts and smooth kernels are not reported."""

import inspect
import math

import fd
import numba
import numpy as np
import pytest

import enzpy
from enzpy import Active, Const, Duplicated, Forward, PiecewiseConstantError, Reverse


def line_of(f, marker):
    """The file line of ``f``'s source that contains ``marker``."""
    lines, first = inspect.getsourcelines(f.py_func)
    (k,) = [k for k, text in enumerate(lines) if marker in text]
    return first + k


@numba.njit
def newton_sqrt(a):
    x = 1.0
    fx = x * x - a
    while abs(fx) > 1e-12:  # exit
        x = x - fx / (2.0 * x)
        fx = x * x - a
    return x


@numba.njit
def bisect_sqrt(a):
    lo = 0.0
    hi = 10.0
    mid = 5.0
    while hi - lo > 1e-12:
        mid = 0.5 * (lo + hi)
        if mid * mid > a:  # decides
            hi = mid
        else:
            lo = mid
    return mid


@numba.njit
def fixed_point_cos(a):
    # x = a cos(x), iterated to convergence
    x = 0.0
    step = 1.0
    while step > 1e-13:  # exit
        xn = a * math.cos(x)
        step = abs(xn - x)
        x = xn
    return x


@numba.njit
def table_lookup(t, table):
    k = int(np.floor(t * 4.0))  # index
    return table[k]


@numba.njit
def argmax_weight(x, w):
    k = 0
    for i in range(x.shape[0]):
        if x[i] > x[k]:  # decides
            k = i
    return w[k]


@numba.njit
def relu_sum(x):
    s = 0.0
    for i in range(x.shape[0]):
        if x[i] > 0.0:
            s += x[i] * x[i]
    return s


@numba.njit
def powers_sum(x, n):
    s = 0.0
    for i in range(n):
        s += math.sin(x[i]) * x[i]
    return s


@numba.njit
def smooth(x, a):
    return a * np.sum(np.exp(-x * x))


def d_da(f, a, *rest, mode):
    """The derivative of ``f(a, *rest)`` with respect to the float ``a`` (``rest``
    constant), in reverse or forward mode."""
    if mode is Reverse:
        return enzpy.autodiff(f, Active(a), *rest)[0]
    return enzpy.autodiff(f, Duplicated(a, 1.0), *rest, mode=Forward)


def section(log):
    """The entries of explain's piecewise-constant section, as (kind, text) pairs."""
    body = log.split("piecewise-constant:\n", 1)[1].split("\n")
    entries = []
    for text in body:
        if not text.startswith("  "):
            break
        entries.append((text.split()[0], text))
    return entries


def reported(log):
    return [e for e in section(log) if e[0] != "piecewise"]


X = np.array([0.3, -1.2, 2.0, 0.7, -0.1])
TABLE = np.array([1.0, 5.0, 2.0, 7.0])


# --- explain ---------------------------------------------------------------------


def test_explain_reports_newton_loop_exit_with_its_line():
    log = enzpy.explain(newton_sqrt, Active(2.0))
    (entry,) = reported(log)
    assert entry[0] == "loop-exit"
    assert f"line {line_of(newton_sqrt, '# exit')}" in entry[1]
    assert "not the solution" in entry[1]


def test_explain_reports_bisection_as_control_only_at_its_comparison():
    log = enzpy.explain(bisect_sqrt, Active(2.0))
    kinds = {kind: text for kind, text in reported(log)}
    assert set(kinds) == {"loop-exit", "control-only"}
    assert f"line {line_of(bisect_sqrt, '# decides')}" in kinds["control-only"]
    assert "the return value" in kinds["control-only"]


def test_explain_reports_fixed_point_iteration():
    log = enzpy.explain(fixed_point_cos, Active(0.8))
    assert [kind for kind, _ in reported(log)] == ["loop-exit"]
    assert f"line {line_of(fixed_point_cos, '# exit')}" in reported(log)[0][1]


def test_explain_reports_floor_index_into_const_table():
    log = enzpy.explain(table_lookup, Active(0.3), Const(TABLE))
    (entry,) = reported(log)
    assert entry[0] == "control-only"
    assert f"conversion to an integer at line {line_of(table_lookup, '# index')}" in entry[1]


def test_explain_reports_argmax_selected_const_weight():
    log = enzpy.explain(argmax_weight, Duplicated(X, np.zeros(5)), Const(TABLE.repeat(2)[:5]))
    (entry,) = reported(log)
    assert entry[0] == "control-only"
    assert f"line {line_of(argmax_weight, '# decides')}" in entry[1]


def test_explain_lists_relu_branch_as_piecewise_only():
    log = enzpy.explain(relu_sum, Duplicated(X, np.zeros(5)))
    assert reported(log) == []
    assert [kind for kind, _ in section(log)] == ["piecewise"]


@pytest.mark.parametrize(
    "f, args",
    [
        (powers_sum, lambda: (Duplicated(X.copy(), np.zeros(5)), Const(5))),
        (smooth, lambda: (Duplicated(X.copy(), np.zeros(5)), Active(1.5))),
    ],
    ids=["int-trip-count", "smooth"],
)
def test_explain_reports_nothing_for_integer_loops_and_smooth_kernels(f, args):
    assert section(enzpy.explain(f, *args())) == []


# --- strict mode -----------------------------------------------------------------


@pytest.mark.parametrize("mode", [Reverse, Forward], ids=["reverse", "forward"])
@pytest.mark.parametrize(
    "f, marker",
    [(newton_sqrt, "# exit"), (bisect_sqrt, "# decides"), (fixed_point_cos, "# exit")],
    ids=["newton", "bisection", "fixed-point"],
)
def test_strict_refuses_solvers_naming_the_condition_line(f, marker, mode):
    with enzpy.strict(), pytest.raises(PiecewiseConstantError) as info:
        d_da(f, 0.8, mode=mode)
    assert info.value.line == line_of(f, marker)
    assert info.value.file == inspect.getsourcefile(f.py_func)
    assert isinstance(info.value, enzpy.ActivityError)


def test_strict_refuses_floor_index_and_argmax_in_autodiff_and_derivative():
    with enzpy.strict():
        with pytest.raises(PiecewiseConstantError) as info:
            enzpy.autodiff(table_lookup, Active(0.3), Const(TABLE))
        assert info.value.line == line_of(table_lookup, "# index")
        with pytest.raises(PiecewiseConstantError) as info:
            enzpy.derivative(argmax_weight, Duplicated(X, np.zeros(5)), Const(X.copy()))
        assert info.value.line == line_of(argmax_weight, "# decides")


def test_strict_accepts_floor_index_into_a_differentiated_table():
    # gradient differentiates the table too: the result carries its derivative
    # through data (outputs are judged as a whole, not per input).
    with enzpy.strict():
        dt, dtable = enzpy.gradient(table_lookup, 0.3, TABLE)
    assert dt == 0.0
    np.testing.assert_array_equal(dtable, [0.0, 1.0, 0.0, 0.0])


def test_strict_accepts_relu_integer_loops_and_smooth_kernels_with_right_derivatives():
    with enzpy.strict():
        fd.check_gradient(relu_sum, X.copy())
        fd.check_gradient(
            lambda x: powers_sum(x, 4),
            X.copy(),
            grad=lambda f, x: enzpy.gradient(powers_sum, x, 4)[0],
        )
        fd.check_gradient(smooth, X.copy(), 1.5)
        v = np.linspace(0.5, -0.5, 5)
        tangent = enzpy.autodiff(relu_sum, Duplicated(X.copy(), v), mode=Forward)
    assert tangent == pytest.approx(np.dot(2 * X * (X > 0), v), rel=1e-12)


def test_strict_off_inside_strict_block():
    with enzpy.strict(), enzpy.strict(False):
        (da,) = enzpy.autodiff(bisect_sqrt, Active(2.0))
    assert da == 0.0


def test_explain_in_strict_mode_raises_with_the_log_attached():
    with enzpy.strict(), pytest.raises(PiecewiseConstantError) as info:
        enzpy.explain(newton_sqrt, Active(2.0))
    assert "piecewise-constant:" in info.value.log


# --- non-strict: the program's derivative ----------------------------------------


@pytest.mark.parametrize("mode", [Reverse, Forward], ids=["reverse", "forward"])
def test_newton_from_its_root_gets_the_programs_derivative_zero(mode):
    # a = 1: x = 1 is already the root, the loop runs no iteration and x does not
    # depend on a in the program (the solution's derivative would be 0.5).
    assert d_da(newton_sqrt, 1.0, mode=mode) == 0.0


@pytest.mark.parametrize("mode", [Reverse, Forward], ids=["reverse", "forward"])
def test_newton_away_from_root_differentiates_the_iterations(mode):
    # The iterations converge to sqrt(a); their derivative to 1 / (2 sqrt(a)).
    assert d_da(newton_sqrt, 2.0, mode=mode) == pytest.approx(1 / (2 * math.sqrt(2.0)), rel=1e-8)


@pytest.mark.parametrize("mode", [Reverse, Forward], ids=["reverse", "forward"])
def test_bisection_and_table_lookup_get_the_programs_derivative_zero(mode):
    assert bisect_sqrt(2.0) == pytest.approx(math.sqrt(2.0), abs=1e-10)
    assert d_da(bisect_sqrt, 2.0, mode=mode) == 0.0
    assert d_da(table_lookup, 0.3, Const(TABLE), mode=mode) == 0.0


@pytest.mark.parametrize("mode", [Reverse, Forward], ids=["reverse", "forward"])
def test_fixed_point_iteration_derivative_matches_implicit_derivative(mode):
    # x = a cos x  =>  dx/da = cos x / (1 + a sin x)
    a = 0.8
    x = fixed_point_cos(a)
    assert d_da(fixed_point_cos, a, mode=mode) == pytest.approx(
        math.cos(x) / (1 + a * math.sin(x)), rel=1e-8
    )


def test_strict_and_non_strict_derivatives_are_cached_apart():
    @numba.njit
    def clipped(a):
        return 1.0 if a > 0.0 else -1.0

    (d,) = enzpy.autodiff(clipped, Active(0.5))
    assert d == 0.0
    with enzpy.strict(), pytest.raises(PiecewiseConstantError):
        enzpy.autodiff(clipped, Active(0.5))
    before = enzpy._cache.info()
    (d,) = enzpy.autodiff(clipped, Active(0.5))
    assert d == 0.0
    assert enzpy._cache.info().hits == before.hits + 1


@numba.njit
def _sign(v):
    if v > 0.0:  # decides
        return 1.0
    return -1.0


@numba.njit
def scaled_sign(a, c):
    # the comparison is in a called (inlined) function
    return c * _sign(a) + c


def test_control_only_through_a_called_function_is_reported():
    log = enzpy.explain(scaled_sign, Active(0.4), Const(2.0))
    (entry,) = reported(log)
    assert entry[0] == "control-only"
    assert f"line {line_of(_sign, '# decides')}" in entry[1]
    with enzpy.strict(), pytest.raises(PiecewiseConstantError) as info:
        enzpy.autodiff(scaled_sign, Active(0.4), Const(2.0))
    assert info.value.line == line_of(_sign, "# decides")


@numba.njit
def sorted_weighted(x, w):
    y = np.sort(x)
    x.sort()
    s = 0.0
    for i in range(y.shape[0]):
        s += w[i] * y[i] * x[i]
    return s


def test_sorting_is_piecewise_only_and_strict_accepts_it():
    # numba's sorts branch on the data and return a status from their raise
    # paths; the sum after them runs whatever the data (nothing is reported).
    x = np.array([0.4, -1.3, 2.2, 0.9, -0.2])
    w = np.linspace(1.0, 2.0, 5)
    assert (
        reported(enzpy.explain(sorted_weighted, Duplicated(x.copy(), np.zeros(5)), Const(w))) == []
    )
    with enzpy.strict():
        dx = np.zeros(5)
        enzpy.autodiff(sorted_weighted, Duplicated(x.copy(), dx), Const(w))
    expected = np.zeros(5)
    expected[np.argsort(x)] = 2 * w * np.sort(x)
    np.testing.assert_allclose(dx, expected, rtol=1e-13)


@numba.njit
def argsort_weighted(x, w):
    idx = np.argsort(x)
    s = 0.0
    for i in range(idx.shape[0]):
        s += w[i] * x[idx[i]] ** 2
    return s


@numba.njit
def trimmed_mean(x, k):
    y = np.sort(x)
    n = y.shape[0]
    s = 0.0
    for i in range(k, n - k):
        s += y[i]
    return s / (n - 2 * k)


@numba.njit
def weighted_row_sorts(a, w):
    s = 0.0
    for r in range(a.shape[0]):
        y = np.sort(a[r])
        for j in range(y.shape[0]):
            s += w[j] * y[j]
    return s


@numba.njit
def interp_weighted(x, xp, fp):
    y = np.interp(x, xp, fp)
    s = 0.0
    for i in range(y.shape[0]):
        s += y[i] * x[i]
    return s


SORT_X = np.array([0.4, -1.3, 2.2, 0.9, -0.2, 1.7])
LIBRARY_KERNELS = [
    (argsort_weighted, SORT_X, (np.linspace(1.0, 2.0, 6),)),
    (trimmed_mean, SORT_X, (1,)),
    (weighted_row_sorts, SORT_X.reshape(2, 3), (np.array([1.0, -2.0, 3.0]),)),
    (interp_weighted, SORT_X, (np.linspace(-2.0, 3.0, 7), np.linspace(0.0, 1.0, 7) ** 2)),
]


@pytest.mark.parametrize(
    ("f", "x", "consts"), LIBRARY_KERNELS, ids=[k[0].__name__ for k in LIBRARY_KERNELS]
)
def test_loops_over_library_results_are_not_reported_and_strict_differentiates_them(f, x, consts):
    # The library helpers (sorts, searchsorted) return a status from their raise
    # paths that the caller tests; the loops after them run over sizes that differ
    # only on those raise paths: nothing is reported, and the derivative is right.
    args = [Const(c) for c in consts]
    assert reported(enzpy.explain(f, Duplicated(x.copy(), np.zeros_like(x)), *args)) == []
    with enzpy.strict():
        dx = np.zeros_like(x)
        enzpy.autodiff(f, Duplicated(x.copy(), dx), *args)
        v = np.linspace(0.3, -0.4, x.size).reshape(x.shape)
        tangent = enzpy.autodiff(f, Duplicated(x.copy(), v), *args, mode=Forward)
    _, (expected,) = fd.fd_gradient(lambda t: f(t, *consts), x.copy())
    np.testing.assert_allclose(dx, expected, rtol=1e-6, atol=1e-9)
    assert tangent == pytest.approx(float(np.sum(dx * v)), rel=1e-12)


@numba.njit
def cube_roots_sum(x):
    # sum of y_i with y_i^3 + y_i = x_i, each by Newton to a tolerance
    s = 0.0
    for i in range(x.shape[0]):
        y = 0.0
        r = y * y * y + y - x[i]
        while abs(r) > 1e-13:  # exit
            y -= r / (3.0 * y * y + 1.0)
            r = y * y * y + y - x[i]
        s += y * y
    return s


@numba.njit
def cube_roots(x, out):
    for i in range(x.shape[0]):
        out[i] = x[i] / 3.0
        for _ in range(3):
            out[i] -= (out[i] ** 3 + out[i] - x[i]) / (3.0 * out[i] ** 2 + 1.0)
        if out[i] > 1e3:  # a clamp: relu-like, allowed
            out[i] = 1e3


def test_strict_applies_to_the_drivers():
    x = np.array([0.5, 1.5, -2.0])
    with enzpy.strict():
        with pytest.raises(PiecewiseConstantError) as info:
            enzpy.hvp(cube_roots_sum, x, np.ones(3))
        assert info.value.line == line_of(cube_roots_sum, "# exit")
        with pytest.raises(PiecewiseConstantError):
            enzpy.hessian(cube_roots_sum, x)
        # a fixed number of Newton steps and a clamp are not reported
        jac = enzpy.jacobian(cube_roots, x, out=np.zeros(3))
    assert jac.shape == (3, 3)
    for k in range(3):
        _, (row,) = fd.fd_gradient(lambda t, k=k: cube_roots_at(t)[k], x.copy())
        np.testing.assert_allclose(jac[k], row, rtol=1e-6, atol=1e-9)


def cube_roots_at(x):
    out = np.zeros(3)
    cube_roots(x, out)
    return out
