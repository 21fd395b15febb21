"""Forward mode (docs/design.md §3): ``Duplicated(x, dx)`` carries the input tangent,
the tangent of the return value is returned, and shadows of the arrays the function
writes receive the output tangents.

For one call ``f(*args)`` we view, as in fd.py,

    inputs   u = (every float scalar with a tangent, initial contents of every array)
    outputs  y = (the float return value, final contents of every Duplicated array)

Forward mode computes ``J v``. Each kernel of the reverse-mode suite is checked

  * against central finite differences of ``F`` along the same random ``v``
    (``check_jvp``: every output element, and ``<w, J v>`` for a random ``w``), and
  * against reverse mode on random vectors (``check_forward_reverse``):
    ``<J v, w> == <v, Jᵀ w>``, which catches errors that one-sided checks miss.

Tolerances follow fd.py (``RTOL_FLOAT64``, ``RTOL_FLOAT32``, the rounding-noise term).
"""

from __future__ import annotations

import math

import fd
import numba
import numpy as np
import pytest
from kernels import dot
from test_autodiff_arrays import (
    _layouts,
    _scaled_sum_with_checked_input,
    away_from_zero,
    branchy_map,
    branchy_sum,
    halve_until_small,
    heat_counting,
    heat_in_place,
    matvec_tanh,
    norm2,
    solve_cubic,
    stencil,
    sum_sq_dev,
    sum_x2_sinx,
    trilinear,
)
from test_autodiff_scalar import (
    _JIT,
    _JIT2,
    BINARY,
    FLOAT32,
    UNARY,
    _composite,
    _fields,
    _horner,
    _newton_sqrt,
    _of_tuple,
    _rk4_decay,
    _with_consts,
)

import enzpy
from enzpy import BatchDuplicated, Const, Duplicated, Forward, ForwardWithPrimal

RTOL_ANALYTIC = 1e-10
_EPS64 = float(np.finfo(np.float64).eps)


def rng(seed):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------------
# harness
# ---------------------------------------------------------------------------------


def _is_diff(s):
    return isinstance(s, (fd.Active, fd.Dup))


def _value(s):
    return s.value if isinstance(s, (fd.Const, fd.Active, fd.Dup)) else s


def _direction(r, specs, values):
    """A random tangent per differentiable argument, scaled like fd.check_vjp's."""
    v = {}
    for i, s in enumerate(specs):
        if not _is_diff(s):
            continue
        x = np.asarray(values[i], dtype=np.float64)
        d = r.standard_normal(x.shape) * np.maximum(np.abs(x), 1.0)
        v[i] = d if isinstance(s, fd.Dup) else float(d)
    return v


def _forward_call(f, specs, values, v, ret_active, with_primal=True):
    """``enzpy.autodiff`` in forward mode on copies of the arrays; returns
    (tangent of the return, {i: final shadow}, primal return, final arrays)."""
    ann = []
    shadows = {}
    arrays = {}
    for i, s in enumerate(specs):
        x = values[i]
        if isinstance(x, np.ndarray):
            x = x.copy() if x.flags.owndata or isinstance(s, fd.Const) else x
            arrays[i] = x
        if isinstance(s, fd.Dup):
            make = s.shadow or np.zeros_like
            dx = make(x)
            dx[...] = v[i].astype(x.dtype)
            shadows[i] = dx
            cls = enzpy.DuplicatedNoNeed if isinstance(s, fd.DupNoNeed) else Duplicated
            ann.append(cls(x, dx))
        elif isinstance(s, fd.Active):
            ann.append(Duplicated(x, type(x)(v[i])))
        else:
            ann.append(Const(x))
    kw = {} if ret_active else {"ret": enzpy.Const}
    if with_primal:
        tangent, primal = enzpy.autodiff(f, *ann, mode=ForwardWithPrimal, **kw)
    else:
        tangent, primal = enzpy.autodiff(f, *ann, mode=Forward, **kw), None
    return tangent, shadows, primal, arrays


def _restore(values, arrays0):
    for i, a0 in enumerate(arrays0):
        if a0 is not None:
            values[i][...] = a0


def check_jvp(f, *args, ret="active", trials=2, seed=0, rtol=None, h=1e-6, elementwise=None):
    """Forward mode of ``f(*args)`` against central finite differences along random
    directions (all differentiable inputs moved at once). Checks every output element
    (float64 kernels, unless ``elementwise=False``) and the contraction ``<w, J v>``
    with a random ``w`` (always), plus the primal results. Returns the last
    (tangent, shadows)."""
    specs = list(args)
    values = [_value(s) for s in specs]
    arrays0 = [np.array(x, copy=True) if isinstance(x, np.ndarray) else None for x in values]
    diff = [i for i, s in enumerate(specs) if _is_diff(s)]
    dtypes = {np.asarray(values[i]).dtype for i in diff}
    is32 = np.dtype(np.float32) in dtypes
    if rtol is None:
        rtol = fd.RTOL_FLOAT32 if is32 else fd.RTOL_FLOAT64
    if elementwise is None:
        elementwise = not is32
    r = rng(seed)
    r0 = f(*[a0.copy() if a0 is not None else x for a0, x in zip(arrays0, values)])
    ret_out = ret == "active" and isinstance(r0, (float, np.floating))
    dups = [i for i in diff if isinstance(specs[i], fd.Dup)]
    out = None
    for trial in range(trials):
        _restore(values, arrays0)
        v = _direction(r, specs, values)
        tangent, shadows, primal, arrays = _forward_call(f, specs, values, v, ret == "active")
        # the primal ran as the plain function does
        ref_r, ref_args = fd._evaluate(
            f, [a0 if a0 is not None else x for a0, x in zip(arrays0, values)], None
        )
        if ref_r is not None:
            tol = fd.PRIMAL_RTOL.get(np.asarray(ref_r).dtype, 1e-13)
            np.testing.assert_allclose(float(primal), float(ref_r), rtol=tol)
        else:
            assert primal is None
        for i, a in arrays.items():
            if not isinstance(specs[i], fd.DupNoNeed):
                tol = fd.PRIMAL_RTOL.get(a.dtype, 0.0)
                np.testing.assert_allclose(
                    a,
                    ref_args[i],
                    rtol=tol,
                    atol=tol * float(np.max(np.abs(ref_args[i]), initial=0)),
                )
        if ret_out:
            assert isinstance(tangent, (float, np.floating)), f"tangent {tangent!r}"
        else:
            assert tangent is None, f"no float return: the tangent must be None, got {tangent!r}"

        # finite differences along v
        def outputs(t, v=v):
            vals = [
                fd._promote(a0 if a0 is not None else x, np.float64)
                for a0, x in zip(arrays0, values)
            ]
            for i in diff:
                moved = np.asarray(vals[i], dtype=np.float64) + t * v[i]
                vals[i] = moved if isinstance(vals[i], np.ndarray) else float(moved)
            res = f(*vals)
            outs = [np.asarray(float(res))] if ret_out else []
            return outs + [np.asarray(vals[i], dtype=np.float64) for i in dups]

        plus, minus = outputs(h), outputs(-h)
        ad = ([np.asarray(float(tangent))] if ret_out else []) + [
            np.asarray(shadows[i], dtype=np.float64) for i in dups
        ]
        names = (["return"] if ret_out else []) + [f"argument {i}" for i in dups]
        lhs = rhs = scale = noise_w = 0.0
        for name, yp, ym, t in zip(names, plus, minus, ad):
            dy = (yp - ym) / (2 * h)
            noise = fd.NOISE_ULPS * _EPS64 * np.maximum(np.abs(yp), np.abs(ym)) / h
            w = r.standard_normal(dy.shape)
            lhs += float(np.sum(w * dy))
            rhs += float(np.sum(w * t))
            scale += float(np.sum(np.abs(w) * np.maximum(np.abs(dy), np.abs(t))))
            noise_w += float(np.sum(np.abs(w) * noise))
            if elementwise:
                tol = rtol * np.maximum(np.abs(dy), np.abs(t)) + noise
                tol += 1e-2 * rtol * float(np.max(np.abs(dy), initial=0.0))
                bad = ~(np.abs(t - dy) <= tol)
                assert not np.any(bad), (
                    f"trial {trial}: tangent of the {name} disagrees with finite differences "
                    f"at {np.argwhere(bad).tolist()}:\n  enzpy: {t!r}\n  FD:    {dy!r}"
                )
        err = abs(lhs - rhs)
        assert err <= rtol * scale + noise_w, (
            f"trial {trial}: <w, J v> by FD = {lhs!r}, from forward mode = {rhs!r}, "
            f"|diff| = {err:.3e} > tol {rtol * scale + noise_w:.3e}"
        )
        out = (tangent, shadows)
    return out


def check_forward_reverse(f, *args, ret="active", seed=0, rtol=None):
    """<J v, w> (forward mode) == <v, Jᵀ w> (reverse mode) on random v, w."""
    specs = list(args)
    values = [_value(s) for s in specs]
    arrays0 = [np.array(x, copy=True) if isinstance(x, np.ndarray) else None for x in values]
    diff = [i for i, s in enumerate(specs) if _is_diff(s)]
    is32 = any(np.asarray(values[i]).dtype == np.float32 for i in diff)
    if rtol is None:
        rtol = 1e-5 if is32 else 1e-11
    r = rng(seed)
    v = _direction(r, specs, values)
    tangent, fshadows, _, _ = _forward_call(f, specs, values, v, ret == "active")
    _restore(values, arrays0)
    # reverse: cotangent 1 on a float return, random w on the arrays' final contents
    w = {i: r.standard_normal(np.shape(values[i])) for i in diff if isinstance(specs[i], fd.Dup)}
    ann = []
    rshadows = {}
    for i, s in enumerate(specs):
        x = values[i]
        if isinstance(s, fd.Dup):
            dx = (s.shadow or np.zeros_like)(x)
            dx[...] = w[i].astype(x.dtype)
            rshadows[i] = dx
            cls = enzpy.DuplicatedNoNeed if isinstance(s, fd.DupNoNeed) else Duplicated
            ann.append(cls(x, dx))
        elif isinstance(s, fd.Active):
            ann.append(enzpy.Active(x))
        else:
            ann.append(Const(x))
    kw = {} if ret == "active" else {"ret": enzpy.Const}
    derivs = enzpy.autodiff(f, *ann, **kw)
    _restore(values, arrays0)
    lhs = float(tangent) if tangent is not None else 0.0
    scale = abs(lhs)
    rhs = 0.0
    for i in diff:
        if isinstance(specs[i], fd.Dup):
            jv = np.asarray(fshadows[i], np.float64)
            lhs += float(np.sum(jv * w[i]))
            scale += float(np.sum(np.abs(jv * w[i])))
            g = np.asarray(rshadows[i], np.float64)
            rhs += float(np.sum(g * v[i]))
            scale += float(np.sum(np.abs(g * v[i])))
        else:
            rhs += float(derivs[i]) * v[i]
            scale += abs(float(derivs[i]) * v[i])
    assert abs(lhs - rhs) <= rtol * scale + 1e-300, (
        f"<J v, w> (forward) = {lhs!r} but <v, Jᵀ w> (reverse) = {rhs!r} "
        f"(|diff| {abs(lhs - rhs):.3e}, scale {scale:.3e})"
    )
    return lhs, rhs


def check_both(f, *args, **kw):
    check_jvp(f, *args, **kw)
    kw.pop("trials", None)
    kw.pop("elementwise", None)
    kw.pop("rtol", None)
    check_forward_reverse(f, *args, **kw)


# ---------------------------------------------------------------------------------
# scalar functions
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name, fn, dfn, points", UNARY, ids=[_fields(u)[0] for u in UNARY])
def test_unary_float64(name, fn, dfn, points):
    f = _JIT[name]
    for x in points:
        t = enzpy.autodiff(f, Duplicated(x, 1.0), mode=Forward)
        fd.assert_close_to_reference(
            t, float(dfn(x)), rtol=RTOL_ANALYTIC, atol=1e-300, what=f"tangent of {name} at {x}"
        )
        t2 = enzpy.autodiff(f, Duplicated(x, -2.5), mode=Forward)
        fd.assert_close_to_reference(t2, -2.5 * t, rtol=1e-15, atol=1e-300, what="linearity")
        check_jvp(f, fd.Active(x), trials=1)


@pytest.mark.parametrize(
    "name, fn, dfn, points",
    [u for u in UNARY if _fields(u)[0] in FLOAT32],
    ids=[_fields(u)[0] for u in UNARY if _fields(u)[0] in FLOAT32],
)
def test_unary_float32(name, fn, dfn, points):
    f = _JIT[name]
    for x in points:
        x32 = np.float32(x)
        t = enzpy.autodiff(f, Duplicated(x32, 1.0), mode=Forward)
        assert isinstance(t, (float, np.floating))
        fd.assert_close_to_reference(
            t, dfn(float(x32)), rtol=fd.RTOL_FLOAT32, atol=1e-300, what=f"{name} float32"
        )


@pytest.mark.parametrize("name, fn, dfx, dfy, points", BINARY, ids=[b[0] for b in BINARY])
def test_binary_float64(name, fn, dfx, dfy, points):
    f = _JIT2[name]
    for x, y in points:
        tx = enzpy.autodiff(f, Duplicated(x, 1.0), Duplicated(y, 0.0), mode=Forward)
        ty = enzpy.autodiff(f, Duplicated(x, 0.0), Duplicated(y, 1.0), mode=Forward)
        fd.assert_close_to_reference(tx, dfx(x, y), RTOL_ANALYTIC, atol=1e-300, what=f"d/dx {name}")
        fd.assert_close_to_reference(ty, dfy(x, y), RTOL_ANALYTIC, atol=1e-300, what=f"d/dy {name}")
        # one Const argument: the same tangent as a zero one
        tc = enzpy.autodiff(f, Duplicated(x, 1.0), Const(y), mode=Forward)
        assert tc == tx
        check_forward_reverse(f, fd.Active(x), fd.Active(y))


def test_composite_scalars():
    check_both(_composite, fd.Active(0.4), fd.Active(-0.7), fd.Active(1.3), trials=3)
    check_both(
        _composite,
        fd.Active(np.float32(0.4)),
        fd.Active(np.float32(-0.7)),
        fd.Active(np.float32(1.3)),
    )


def test_active_floats_with_const_int_and_const_float():
    check_both(_with_consts, fd.Active(0.3), 4, fd.Const(1.7), fd.Active(-0.8))


def test_loop_carried_scalar_horner():
    c = rng(0).uniform(-1, 1, 9)
    for x in (0.7, -1.3):
        t = enzpy.autodiff(_horner, Const(c), Duplicated(x, 1.0), mode=Forward)
        ref = np.polynomial.polynomial.polyval(x, np.polynomial.polynomial.polyder(c))
        fd.assert_close_to_reference(t, ref, rtol=RTOL_ANALYTIC, what="p'(x)")
    check_both(_horner, fd.Dup(c), fd.Active(0.7))


def test_scalar_rk4_loop():
    check_both(_rk4_decay, fd.Active(1.5), fd.Active(0.8), 40)
    t = enzpy.autodiff(_rk4_decay, Duplicated(1.5, 1.0), Duplicated(0.8, 0.0), 40, mode=Forward)
    assert abs(t - math.exp(-0.8 * 40 * 0.05)) < 1e-6


@pytest.mark.parametrize("a", [0.3, 2.0, 1e4])
def test_newton_iteration(a):
    t = enzpy.autodiff(_newton_sqrt, Duplicated(a, 1.0), mode=Forward)
    fd.assert_close_to_reference(t, 0.5 / math.sqrt(a), rtol=1e-9, what="d sqrt_newton")


def test_tuple_of_floats_with_tuple_tangent():
    t, y = (0.3, 0.5, 0.7), 2.0
    dt = (1.0, -2.0, 0.5)
    tan = enzpy.autodiff(_of_tuple, Duplicated(t, dt), Duplicated(y, 0.25), mode=Forward)
    ref = t[1] * dt[0] + t[0] * dt[1] + math.cos(t[2]) * y * dt[2] + math.sin(t[2]) * 0.25
    fd.assert_close_to_reference(tan, ref, RTOL_ANALYTIC, what="tuple tangent")


# ---------------------------------------------------------------------------------
# arrays: reductions, stencils, in-place updates, branches, while loops, views
# ---------------------------------------------------------------------------------


def test_dot_product():
    x, y = rng(0).uniform(-1, 1, 12), rng(1).uniform(-1, 1, 12)
    dx, dy = rng(2).standard_normal(12), rng(3).standard_normal(12)
    t = enzpy.autodiff(dot, Duplicated(x, dx), Duplicated(y, dy), mode=Forward)
    fd.assert_close_to_reference(t, dx @ y + x @ dy, 1e-13, what="tangent of x.y")
    check_both(dot, fd.Dup(x), fd.Dup(y))
    check_both(dot, fd.Dup(x), fd.Const(y))


def test_norm_and_sum_x2_sinx():
    x = rng(4).uniform(-2, 2, 16)
    check_both(norm2, fd.Dup(x))
    check_both(sum_x2_sinx, fd.Dup(x))
    dx = rng(5).standard_normal(16)
    t = enzpy.autodiff(sum_x2_sinx, Duplicated(x, dx.copy()), mode=Forward)
    ref = float(np.sum((2 * x * np.sin(x) + x * x * np.cos(x)) * dx))
    fd.assert_close_to_reference(t, ref, 1e-12, what="tangent")


def test_float32_reduction():
    x = rng(6).uniform(-2, 2, 64).astype(np.float32)
    check_both(sum_x2_sinx, fd.Dup(x))
    dx = np.ones_like(x)
    t = enzpy.autodiff(sum_x2_sinx, Duplicated(x, dx), mode=Forward)
    xd = x.astype(np.float64)
    ref = float(np.sum(2 * xd * np.sin(xd) + xd * xd * np.cos(xd)))
    fd.assert_close_to_reference(t, ref, fd.RTOL_FLOAT32, what="float32 tangent")


def test_stencil_writes_output_tangents():
    n = 11
    r = rng(7)
    u, out, a = r.uniform(-1, 1, n), r.uniform(-1, 1, n), 0.2
    du, dout0, da = r.standard_normal(n), r.standard_normal(n), 0.7
    dout = dout0.copy()
    du_before = du.copy()
    t = enzpy.autodiff(
        stencil, Duplicated(u, du), Duplicated(out, dout), Duplicated(a, da), mode=Forward
    )
    assert t is None  # returns None
    ref = dout0.copy()  # elements the function does not write keep their tangent
    lap = u[:-2] - 2 * u[1:-1] + u[2:]
    ref[1:-1] = du[1:-1] + a * (du[:-2] - 2 * du[1:-1] + du[2:]) + da * lap
    fd.assert_close_to_reference(dout, ref, 1e-13, atol=1e-15, what="tangent of out")
    np.testing.assert_array_equal(du, du_before)  # read-only input: tangent unchanged
    check_both(stencil, fd.Dup(u), fd.Dup(np.zeros(n)), fd.Active(0.2), trials=3)


def test_stencil_float32():
    n = 33
    u = rng(9).uniform(-1, 1, n).astype(np.float32)
    check_both(stencil, fd.Dup(u), fd.Dup(np.zeros(n, np.float32)), fd.Active(np.float32(0.2)))


def test_heat_in_place_time_loop():
    n = 12
    u = np.sin(np.linspace(0, np.pi, n)) + 0.1 * rng(10).standard_normal(n)
    check_both(heat_in_place, fd.Dup(u), fd.Dup(np.zeros(n)), fd.Active(0.25), 20)


def test_const_array_written_with_inactive_data():
    u = rng(11).uniform(-1, 1, 12)
    check_both(heat_counting, fd.Dup(u), fd.Const(np.zeros(12)), fd.Active(0.25), 5)


def test_integer_power_of_an_expression_in_a_loop():
    check_both(sum_sq_dev, fd.Dup(rng(34).uniform(-1, 1, 7)), fd.Active(0.3))


def test_value_dependent_branches():
    x = away_from_zero(rng(14), 15)
    check_both(branchy_sum, fd.Dup(x), fd.Active(1.3))
    r = rng(15)
    x = np.concatenate([r.uniform(0.1, 1, 5), r.uniform(-0.4, -0.1, 5), r.uniform(-2, -0.6, 5)])
    check_both(branchy_map, fd.Dup(x), fd.Dup(np.zeros(15)))


def test_while_loops():
    x = rng(16).uniform(-30, 30, 9)
    check_both(solve_cubic, fd.Dup(x), fd.Dup(np.zeros(9)))
    out, dout = np.zeros(9), np.zeros(9)
    enzpy.autodiff(solve_cubic, Duplicated(x, np.ones(9)), Duplicated(out, dout), mode=Forward)
    fd.assert_close_to_reference(dout, 1 / (3 * out**2 + 1), rtol=1e-10, what="dy/dx")
    x = rng(17).uniform(0.5, 40, 10)
    assert np.all(np.abs(np.log2(x) - np.round(np.log2(x))) > 1e-3)
    check_both(halve_until_small, fd.Dup(x), 1.0)


@pytest.mark.parametrize("layout", ["C", "transposed", "sliced", "fortran", "transposed-sliced"])
def test_2d_views(layout):
    A = _layouts(18)[layout]
    m, n = A.shape
    v = rng(19).uniform(-1, 1, n)
    check_both(matvec_tanh, fd.Dup(A), fd.Dup(v), fd.Dup(np.zeros(m)))


def test_2d_shadow_with_other_strides_is_staged():
    A = _layouts(18)["sliced"]
    m, n = A.shape
    v = rng(19).uniform(-1, 1, n)
    check_both(
        matvec_tanh,
        fd.Dup(A, shadow=lambda x: np.zeros(x.shape, x.dtype)),
        fd.Dup(v),
        fd.Dup(np.zeros(m), shadow=lambda x: np.zeros(2 * x.shape[0])[::2]),
    )


@pytest.mark.parametrize("layout", ["C", "transposed"])
def test_2d_float32(layout):
    A = _layouts(23, np.float32)[layout]
    m, n = A.shape
    v = rng(24).uniform(-1, 1, n).astype(np.float32)
    check_both(matvec_tanh, fd.Dup(A), fd.Dup(v), fd.Dup(np.zeros(m, np.float32)))


def test_3d_arrays():
    base = rng(25).uniform(-1, 1, (4, 5, 6))
    T = base[:3, ::2, 1:4]
    x = rng(26).uniform(-1, 1, 3)
    check_both(trilinear, fd.Dup(T), fd.Dup(x), fd.Dup(np.zeros(T.shape)))


def test_code_on_the_way_to_raising():
    check_both(_scaled_sum_with_checked_input, fd.Dup(np.linspace(0.0, 1.0, 7)), fd.Active(2.0))
    x = np.linspace(0.0, 1.0, 7)
    x[3] = -200.0
    with pytest.raises(ValueError, match="value out of range"):
        enzpy.autodiff(
            _scaled_sum_with_checked_input,
            Duplicated(x, np.ones(7)),
            Duplicated(2.0, 1.0),
            mode=Forward,
        )


# ---------------------------------------------------------------------------------
# API: return values, modes, njit callers, errors
# ---------------------------------------------------------------------------------


def test_forward_with_primal_and_ret_const():
    x = rng(40).uniform(-1, 1, 6)
    t, p = enzpy.autodiff(sum_x2_sinx, Duplicated(x, np.ones(6)), mode=ForwardWithPrimal)
    assert p == sum_x2_sinx(x)
    assert t == enzpy.autodiff(sum_x2_sinx, Duplicated(x, np.ones(6)), mode=Forward)
    assert enzpy.autodiff(sum_x2_sinx, Duplicated(x, np.ones(6)), mode=Forward, ret=Const) is None
    t, p = enzpy.autodiff(
        stencil,
        Duplicated(x, np.ones(6)),
        Duplicated(np.zeros(6), np.zeros(6)),
        0.1,
        mode=ForwardWithPrimal,
    )
    assert t is None and p is None


@numba.njit
def _int_result(x):
    return int(x.shape[0])


def test_non_float_return_has_no_tangent():
    x = np.ones(3)
    assert enzpy.autodiff(_int_result, Duplicated(x, np.ones(3)), mode=Forward) is None
    t, p = enzpy.autodiff(_int_result, Duplicated(x, np.ones(3)), mode=ForwardWithPrimal)
    assert t is None and p == 3


def test_derivative_is_callable_from_njit():
    x = rng(41).uniform(-1, 1, 8)
    d = enzpy.derivative(sum_x2_sinx, Duplicated(x, np.zeros(8)), mode=Forward)

    @numba.njit
    def directional(x, v):
        (t,) = d(x, v)
        return t

    v = rng(42).standard_normal(8)
    ref = enzpy.autodiff(sum_x2_sinx, Duplicated(x, v.copy()), mode=Forward)
    assert directional(x, v) == ref
    ds = enzpy.derivative(_composite, *(Duplicated(0.1, 1.0) for _ in range(3)), mode=Forward)

    @numba.njit
    def partial_x(x, y, z):
        return ds(x, 1.0, y, 0.0, z, 0.0)[0]

    ref = enzpy.autodiff(
        _composite, Duplicated(0.4, 1.0), Duplicated(-0.7, 0.0), Duplicated(1.3, 0.0), mode=Forward
    )
    assert partial_x(0.4, -0.7, 1.3) == ref


def test_cache_key_includes_the_mode():
    @numba.njit
    def cube_sum(x):
        s = 0.0
        for i in range(x.shape[0]):
            s += x[i] ** 3
        return s

    x = rng(43).uniform(-1, 1, 5)
    start = enzpy._cache.info()
    t1 = enzpy.autodiff(cube_sum, Duplicated(x, np.ones(5)), mode=Forward)
    before = enzpy._cache.info()
    assert before.builds == start.builds + 1
    t2 = enzpy.autodiff(cube_sum, Duplicated(x, np.ones(5)), mode=Forward)
    mid = enzpy._cache.info()
    assert t1 == t2
    assert mid.builds == before.builds and mid.hits == before.hits + 1
    g = np.zeros(5)
    enzpy.autodiff(cube_sum, Duplicated(x, g))  # reverse: another derivative
    enzpy.autodiff(cube_sum, Duplicated(x, np.ones(5)), mode=ForwardWithPrimal)  # and another
    enzpy.autodiff(cube_sum, BatchDuplicated(x, (np.ones(5),)), mode=Forward)  # and another
    assert enzpy._cache.info().builds == mid.builds + 3
    fd.assert_close_to_reference(t1, np.sum(g), 1e-14, what="forward vs reverse")


def test_active_is_refused_in_forward_mode():
    with pytest.raises(enzpy.EnzpyTypeError, match="Active is for reverse mode"):
        enzpy.autodiff(_newton_sqrt, enzpy.Active(2.0), mode=Forward)


def test_forward_argument_errors():
    x = np.ones(4)
    with pytest.raises(enzpy.EnzpyTypeError, match="tangent of a float scalar"):
        enzpy.autodiff(_newton_sqrt, Duplicated(2.0, "a"), mode=Forward)
    with pytest.raises(enzpy.EnzpyTypeError, match="float array or a float scalar"):
        enzpy.autodiff(_newton_sqrt, Duplicated(2, 1.0), mode=Forward)
    with pytest.raises(enzpy.EnzpyValueError, match="shape"):
        enzpy.autodiff(sum_x2_sinx, Duplicated(x, np.ones(3)), mode=Forward)
    with pytest.raises(enzpy.EnzpyValueError, match="mode must be"):
        enzpy.autodiff(sum_x2_sinx, Duplicated(x, np.ones(4)), mode="forward")


@numba.njit
def _returns_pair(x):
    return x[0], x[1]


def test_tuple_return_tangent_is_a_clear_error():
    with pytest.raises(enzpy.UnsupportedError, match="tangent"):
        enzpy.autodiff(_returns_pair, Duplicated(np.ones(2), np.ones(2)), mode=Forward)
    assert (
        enzpy.autodiff(_returns_pair, Duplicated(np.ones(2), np.ones(2)), mode=Forward, ret=Const)
        is None
    )


def test_explain_logs_the_tangents():
    x = np.ones(4)
    log = enzpy.explain(sum_x2_sinx, Duplicated(x, np.ones(4)), mode=Forward)
    assert "forward:" in log and "tangent" in log and "tape" not in log


# ---------------------------------------------------------------------------------
# batch mode
# ---------------------------------------------------------------------------------


def test_batch_equals_separate_calls_reduction_and_scalar():
    width = 4
    x = rng(50).uniform(-1, 1, 9)
    dxs = [rng(51 + k).standard_normal(9) for k in range(width)]
    das = (0.0, 1.0, -0.5, 2.0)
    tb = enzpy.autodiff(
        sum_sq_dev,
        BatchDuplicated(x, tuple(d.copy() for d in dxs)),
        BatchDuplicated(0.3, das),
        mode=Forward,
    )
    assert isinstance(tb, tuple) and len(tb) == width
    for k in range(width):
        t = enzpy.autodiff(
            sum_sq_dev, Duplicated(x, dxs[k].copy()), Duplicated(0.3, das[k]), mode=Forward
        )
        assert tb[k] == t


@pytest.mark.parametrize("width", [1, 2, 8])
def test_batch_equals_separate_calls_in_place(width):
    n = 12
    u0 = np.sin(np.linspace(0, np.pi, n)) + 0.1 * rng(52).standard_normal(n)
    dus = [rng(60 + k).standard_normal(n) for k in range(width)]
    das = tuple(float(k) - 1.0 for k in range(width))
    u, tmp = u0.copy(), np.zeros(n)
    bdu = tuple(d.copy() for d in dus)
    btmp = tuple(np.zeros(n) for _ in range(width))
    tb, pb = enzpy.autodiff(
        heat_in_place,
        BatchDuplicated(u, bdu),
        BatchDuplicated(tmp, btmp),
        BatchDuplicated(0.25, das),
        7,
        mode=ForwardWithPrimal,
    )
    assert tb is None and pb is None
    for k in range(width):
        u1, du1, tmp1, dtmp1 = u0.copy(), dus[k].copy(), np.zeros(n), np.zeros(n)
        enzpy.autodiff(
            heat_in_place,
            Duplicated(u1, du1),
            Duplicated(tmp1, dtmp1),
            Duplicated(0.25, das[k]),
            7,
            mode=Forward,
        )
        np.testing.assert_array_equal(bdu[k], du1)
        np.testing.assert_array_equal(btmp[k], dtmp1)
        np.testing.assert_array_equal(u, u1)


def test_batch_2d_views_with_staged_shadows():
    A = _layouts(18)["sliced"]
    m, n = A.shape
    v = rng(19).uniform(-1, 1, n)
    width = 3
    dAs = [rng(70 + k).standard_normal(A.shape) for k in range(width)]  # C order: staged
    dvs = [rng(80 + k).standard_normal(n) for k in range(width)]
    outs = tuple(np.zeros(m) for _ in range(width))
    enzpy.autodiff(
        matvec_tanh,
        BatchDuplicated(A, tuple(d.copy() for d in dAs)),
        BatchDuplicated(v, tuple(d.copy() for d in dvs)),
        BatchDuplicated(np.zeros(m), outs),
        mode=Forward,
    )
    for k in range(width):
        dout = np.zeros(m)
        enzpy.autodiff(
            matvec_tanh,
            Duplicated(A, dAs[k].copy()),
            Duplicated(v, dvs[k].copy()),
            Duplicated(np.zeros(m), dout),
            mode=Forward,
        )
        np.testing.assert_array_equal(outs[k], dout)


def test_batch_derivative_from_njit():
    x = rng(90).uniform(-1, 1, 6)
    d = enzpy.derivative(
        sum_x2_sinx, BatchDuplicated(x, (np.zeros(6), np.zeros(6))), mode=ForwardWithPrimal
    )

    @numba.njit
    def two_directions(x, v, w):
        return d(x, (v, w))

    v, w = rng(91).standard_normal(6), rng(92).standard_normal(6)
    p, (tv, tw) = two_directions(x, v, w)
    assert p == sum_x2_sinx(x)
    assert tv == enzpy.autodiff(sum_x2_sinx, Duplicated(x, v.copy()), mode=Forward)
    assert tw == enzpy.autodiff(sum_x2_sinx, Duplicated(x, w.copy()), mode=Forward)


def test_batch_errors():
    x = np.ones(4)
    with pytest.raises(enzpy.EnzpyValueError, match="same number of shadows"):
        enzpy.autodiff(
            dot,
            BatchDuplicated(x, (np.ones(4),)),
            BatchDuplicated(x.copy(), (np.ones(4), np.ones(4))),
            mode=Forward,
        )
    with pytest.raises(enzpy.EnzpyValueError, match="mixing it with Duplicated"):
        enzpy.autodiff(
            dot, BatchDuplicated(x, (np.ones(4),)), Duplicated(x.copy(), np.ones(4)), mode=Forward
        )
    # Reverse mode takes a batch of arrays, but not of scalars.
    with pytest.raises(enzpy.EnzpyTypeError, match="Active"):
        enzpy.autodiff(dot, BatchDuplicated(1.0, (1.0,)), x.copy())
    with pytest.raises(enzpy.EnzpyTypeError, match="non-empty tuple"):
        enzpy.autodiff(dot, BatchDuplicated(x, ()), x.copy(), mode=Forward)
    sh = np.ones(4)
    with pytest.raises(enzpy.EnzpyValueError, match="shares memory"):
        enzpy.autodiff(dot, BatchDuplicated(x, (sh, sh)), x.copy(), mode=Forward)


# ---------------------------------------------------------------------------------
# jacobian
# ---------------------------------------------------------------------------------


def _fd_jacobian(f, x, *args, out=None, h=1e-6):
    """Central differences, one column per element of x (float64)."""
    cols = []
    for j in range(x.size):
        e = np.zeros(x.size)
        e[j] = h * max(abs(float(x.flat[j])), 1.0)
        e = e.reshape(x.shape)
        res = []
        for sgn in (1.0, -1.0):
            xs = x.astype(np.float64) + sgn * e
            if out is None:
                res.append(np.asarray(f(xs, *args), dtype=np.float64))
            else:
                o = out.astype(np.float64).copy()
                f(xs, o, *args)
                res.append(o)
        cols.append((res[0] - res[1]) / (2 * e.flat[j]))
    J = np.stack(cols, axis=-1)
    return J.reshape(np.shape(cols[0]) + x.shape)


@numba.njit
def _softmax_into(x, out, temp):
    m = x[0]
    for i in range(x.shape[0]):
        m = max(m, x[i])
    s = 0.0
    for i in range(x.shape[0]):
        out[i] = math.exp((x[i] - m) / temp)
        s += out[i]
    for i in range(x.shape[0]):
        out[i] /= s


@numba.njit
def _rowsum_sq(X, out):
    for i in range(X.shape[0]):
        acc = 0.0
        for j in range(X.shape[1]):
            acc += X[i, j] * X[i, j] * (j + 1)
        out[i] = acc


@pytest.mark.parametrize("chunk", [1, 3, 8, 64])
def test_jacobian_of_a_map_writing_an_output(chunk):
    x = rng(100).uniform(-1, 1, 7)
    out = np.zeros(7)
    J = enzpy.jacobian(_softmax_into, x, 0.7, out=out, chunk=chunk)
    assert J.shape == (7, 7)
    np.testing.assert_array_equal(out, 0.0)  # f ran on copies
    p = np.exp((x - x.max()) / 0.7)
    p /= p.sum()
    ref = (np.diag(p) - np.outer(p, p)) / 0.7
    fd.assert_close_to_reference(J, ref, 1e-12, atol=1e-15, what="softmax jacobian")
    Jr = enzpy.jacobian(_softmax_into, x, 0.7, out=out, mode=enzpy.Reverse)
    fd.assert_close_to_reference(Jr, J, 1e-12, atol=1e-15, what="reverse vs forward")


def test_jacobian_of_a_scalar_function_is_the_gradient():
    x = rng(101).uniform(-2, 2, 10)
    J = enzpy.jacobian(sum_x2_sinx, x, chunk=4)
    g = enzpy.gradient(sum_x2_sinx, x)
    fd.assert_close_to_reference(J, g, 1e-12, what="forward jacobian vs gradient")
    Jr = enzpy.jacobian(sum_x2_sinx, x, mode=enzpy.Reverse)
    # Another compile (a batch of reverse lanes): sin and cos may come from
    # the vector math library in one and scalar libm in the other.
    fd.assert_close_to_reference(Jr, g, 1e-13, what="reverse jacobian vs gradient")
    fd.assert_close_to_reference(J, _fd_jacobian(sum_x2_sinx, x), 1e-6, atol=1e-9, what="FD")


def test_jacobian_of_2d_input_and_stencil():
    X = rng(102).uniform(-1, 1, (4, 3))
    J = enzpy.jacobian(_rowsum_sq, X, out=np.zeros(4), chunk=5)
    assert J.shape == (4, 4, 3)
    fd.assert_close_to_reference(
        J, _fd_jacobian(_rowsum_sq, X, out=np.zeros(4)), 1e-6, atol=1e-9, what="FD"
    )
    u = rng(103).uniform(-1, 1, 9)
    J = enzpy.jacobian(stencil, u, 0.2, out=np.zeros(9))
    fd.assert_close_to_reference(
        J, _fd_jacobian(stencil, u, 0.2, out=np.zeros(9)), 1e-6, atol=1e-9, what="stencil"
    )
    Jr = enzpy.jacobian(stencil, u, 0.2, out=np.zeros(9), mode=enzpy.Reverse)
    fd.assert_close_to_reference(Jr, J, 1e-13, atol=1e-15, what="reverse vs forward")


def test_jacobian_float32():
    x = rng(104).uniform(-1, 1, 6).astype(np.float32)
    J = enzpy.jacobian(_softmax_into, x, np.float32(0.7), out=np.zeros(6, np.float32))
    assert J.dtype == np.float32
    ref = _fd_jacobian(_softmax_into, x, 0.7, out=np.zeros(6))
    fd.assert_close_to_reference(J, ref, fd.RTOL_FLOAT32, atol=1e-6, what="float32")


@numba.njit
def _scale_in_place(x, a):
    for i in range(x.shape[0]):
        x[i] *= a


def test_jacobian_errors():
    with pytest.raises(enzpy.EnzpyTypeError, match="returns no float"):
        enzpy.jacobian(_scale_in_place, np.ones(5), 0.2)
    with pytest.raises(enzpy.EnzpyTypeError, match="returns no float"):
        enzpy.jacobian(_scale_in_place, np.ones(5), 0.2, mode=enzpy.Reverse)
    with pytest.raises(enzpy.EnzpyTypeError, match="float32 or float64"):
        enzpy.jacobian(sum_x2_sinx, [1.0, 2.0])
    with pytest.raises(enzpy.EnzpyValueError, match="chunk"):
        enzpy.jacobian(sum_x2_sinx, np.ones(3), chunk=0)


# ---------------------------------------------------------------------------------
# arrays allocated inside the kernel
# ---------------------------------------------------------------------------------

from test_allocation import (  # noqa: E402
    allocation_in_loop,
    expression_temporaries,
    helper_returning_array,
    slices_and_reshape,
    via_empty,
    via_ones_and_empty_like,
    via_zeros_accumulated,
)


def test_allocations_inside_the_kernel():
    check_both(via_empty, fd.Dup(rng(110).uniform(-1, 1, 7)), fd.Active(0.7))
    check_both(via_zeros_accumulated, fd.Dup(rng(111).uniform(-1, 1, 10)))
    check_both(via_ones_and_empty_like, fd.Dup(rng(112).uniform(-1, 1, 6)))
    check_both(expression_temporaries, fd.Dup(rng(113).uniform(-1, 1, 8)), fd.Active(0.3))
    check_both(helper_returning_array, fd.Dup(rng(114).uniform(-1, 1, 9)))
    check_both(allocation_in_loop, fd.Dup(rng(115).uniform(-1, 1, 5)), 4)
    check_both(slices_and_reshape, fd.Dup(rng(116).uniform(-1, 1, 12)))


def test_allocations_in_batch_mode():
    x = rng(117).uniform(-1, 1, 6)
    dxs = [rng(118 + k).standard_normal(6) for k in range(3)]
    tb = enzpy.autodiff(
        allocation_in_loop, BatchDuplicated(x, tuple(d.copy() for d in dxs)), 3, mode=Forward
    )
    for k in range(3):
        t = enzpy.autodiff(allocation_in_loop, Duplicated(x, dxs[k].copy()), 3, mode=Forward)
        assert tb[k] == t


def test_allocation_shadows_are_freed():
    from test_allocation import _rss_bytes

    x = rng(8).uniform(-1, 1, 10_000)
    dx = np.ones_like(x)
    enzpy.autodiff(allocation_in_loop, Duplicated(x, dx), 20, mode=Forward)
    before = _rss_bytes()
    for _ in range(300):
        enzpy.autodiff(allocation_in_loop, Duplicated(x, dx), 20, mode=Forward)
    grown = _rss_bytes() - before
    assert grown < 50e6, f"memory grew by {grown / 1e6:.1f} MB over 300 calls"


# ---------------------------------------------------------------------------------
# Hessian-vector products (reverse over forward)
# ---------------------------------------------------------------------------------


@numba.njit
def rosenbrock(x):
    s = 0.0
    for i in range(x.shape[0] - 1):
        s += 100.0 * (x[i + 1] - x[i] * x[i]) ** 2 + (1.0 - x[i]) ** 2
    return s


def rosenbrock_hessian(x):
    n = x.size
    H = np.zeros((n, n))
    for i in range(n - 1):
        H[i, i] += 1200 * x[i] ** 2 - 400 * x[i + 1] + 2
        H[i, i + 1] -= 400 * x[i]
        H[i + 1, i] -= 400 * x[i]
        H[i + 1, i + 1] += 200
    return H


@numba.njit
def logsumexp(x):
    m = x[0]
    for i in range(x.shape[0]):
        m = max(m, x[i])
    s = 0.0
    for i in range(x.shape[0]):
        s += math.exp(x[i] - m)
    return m + math.log(s)


@numba.njit
def quadratic_form(x, A):
    s = 0.0
    for i in range(x.shape[0]):
        for j in range(x.shape[0]):
            s += x[i] * A[i, j] * x[j]
    return 0.5 * s


@numba.njit
def energy_with_temporaries(X, k):
    # 2-D input, an array allocated inside, a branch
    n = X.shape[0]
    d = np.empty(n - 1)
    for i in range(n - 1):
        dx = X[i + 1, 0] - X[i, 0]
        dy = X[i + 1, 1] - X[i, 1]
        d[i] = math.sqrt(dx * dx + dy * dy)
    e = 0.0
    for i in range(n - 1):
        r = d[i] - 1.0
        e += k * r * r if r > 0 else 0.5 * k * r * r
    return e


def _fd_hvp(f, x, v, *args, h=1e-5):
    g = enzpy.gradient  # the reverse-mode gradient, itself checked against FD elsewhere

    def grad(y):
        if args:
            return g(f, y, *args)[0]
        return g(f, y)

    return (grad(x + h * v) - grad(x - h * v)) / (2 * h)


def test_hvp_rosenbrock_analytic():
    x = rng(120).uniform(-1.5, 1.5, 7)
    v = rng(121).standard_normal(7)
    x_before = x.copy()
    hv = enzpy.hvp(rosenbrock, x, v)
    np.testing.assert_array_equal(x, x_before)
    fd.assert_close_to_reference(hv, rosenbrock_hessian(x) @ v, 1e-12, atol=1e-11, what="H v")
    H = enzpy.hessian(rosenbrock, x)
    fd.assert_close_to_reference(H, rosenbrock_hessian(x), 1e-12, atol=1e-11, what="H")
    fd.assert_close_to_reference(hv, _fd_hvp(rosenbrock, x, v), 1e-6, atol=1e-6, what="FD")


def test_hvp_logsumexp_analytic():
    x = rng(122).uniform(-2, 2, 9)
    v = rng(123).standard_normal(9)
    p = np.exp(x - x.max())
    p /= p.sum()
    ref = p * v - p * (p @ v)  # (diag p - p p^T) v
    hv = enzpy.hvp(logsumexp, x, v)
    fd.assert_close_to_reference(hv, ref, 1e-12, atol=1e-15, what="H v of logsumexp")
    fd.assert_close_to_reference(hv, _fd_hvp(logsumexp, x, v), 1e-6, atol=1e-9, what="FD")


def test_hvp_quadratic_form_with_const_matrix():
    n = 6
    A = rng(124).standard_normal((n, n))
    x, v = rng(125).standard_normal(n), rng(126).standard_normal(n)
    hv = enzpy.hvp(quadratic_form, x, v, A)
    fd.assert_close_to_reference(hv, 0.5 * (A + A.T) @ v, 1e-13, atol=1e-14, what="H v")
    H = enzpy.hessian(quadratic_form, x, A)
    fd.assert_close_to_reference(H, 0.5 * (A + A.T), 1e-13, atol=1e-14, what="H")


def test_hvp_2d_with_allocation_and_branches():
    X = np.cumsum(rng(127).uniform(0.3, 1.7, (6, 2)), axis=0)
    V = rng(128).standard_normal((6, 2))
    hv = enzpy.hvp(energy_with_temporaries, X, V, 3.0)
    assert hv.shape == X.shape
    fd.assert_close_to_reference(
        hv, _fd_hvp(energy_with_temporaries, X, V, 3.0), 1e-6, atol=1e-7, what="FD"
    )
    # a transposed (non-contiguous) x gives the same product
    XT = np.asfortranarray(X)
    fd.assert_close_to_reference(
        enzpy.hvp(energy_with_temporaries, XT, V, 3.0), hv, 1e-14, atol=1e-14, what="layout"
    )


def test_hvp_float32():
    x = rng(129).uniform(-1, 1, 5).astype(np.float32)
    v = rng(130).standard_normal(5).astype(np.float32)
    hv = enzpy.hvp(rosenbrock, x, v)
    assert hv.dtype == np.float32
    xd = x.astype(np.float64)
    ref = rosenbrock_hessian(xd) @ v.astype(np.float64)
    # float32 Rosenbrock Hessian entries reach ~1e3 (1200 x^2 terms), so an
    # absolute 1e-3 is ~1e-6 relative to them: rounding, not a missing term
    # (those are O(1) or larger here).
    fd.assert_close_to_reference(hv, ref, fd.RTOL_FLOAT32, atol=1e-3, what="float32 H v")


def test_hvp_errors():
    with pytest.raises(enzpy.EnzpyTypeError, match="returns a float"):
        enzpy.hvp(_scale_in_place, np.ones(3), np.ones(3), 2.0)
    with pytest.raises(enzpy.EnzpyTypeError, match="x's shape"):
        enzpy.hvp(rosenbrock, np.ones(3), np.ones(4))


# ---------------------------------------------------------------------------------
# np.dot / @ (numba's BLAS calls): the same product on the shadows
# ---------------------------------------------------------------------------------

from test_blas import (  # noqa: E402
    dot_mm,
    dot_mtv,
    dot_mv,
    dot_vm,
    dot_vv,
    product_then_overwrite,
    scaled_quadratic_form,
)


@pytest.mark.parametrize("order", ["C", "F"])
def test_blas_products(order):
    A = np.asarray(rng(140).random((4, 3)), order=order)
    B = np.asarray(rng(141).random((3, 2)), order=order)
    check_both(dot_vv, fd.Dup(rng(142).random(6)), fd.Dup(rng(143).random(6)))
    check_both(dot_mv, fd.Dup(A), fd.Dup(rng(144).random(3)))
    check_both(dot_mtv, fd.Dup(A), fd.Dup(rng(145).random(4)))
    check_both(dot_vm, fd.Dup(rng(146).random(4)), fd.Dup(A))
    check_both(dot_mm, fd.Dup(A), fd.Dup(B))
    check_both(product_then_overwrite, fd.Dup(rng(147).random((3, 3))), fd.Dup(B))


def test_blas_with_one_constant_operand_and_batch():
    A = rng(148).random((3, 3))
    x = rng(149).random(3)
    check_both(scaled_quadratic_form, fd.Const(A), fd.Dup(x), fd.Active(1.5))
    check_both(scaled_quadratic_form, fd.Dup(A), fd.Const(x), fd.Active(1.5))
    check_both(scaled_quadratic_form, fd.Dup(A), fd.Dup(x), fd.Const(1.5))
    dxs = (np.eye(3)[0], np.eye(3)[1], np.eye(3)[2])
    tb = enzpy.autodiff(
        scaled_quadratic_form,
        A,
        BatchDuplicated(x, dxs),
        BatchDuplicated(1.5, (0.0,) * 3),
        mode=Forward,
    )
    fd.assert_close_to_reference(tb, 1.5 * (A + A.T) @ x, 1e-13, what="batch gradient")


def test_blas_float32():
    A = rng(150).random((4, 3)).astype(np.float32)
    x = rng(151).random(3).astype(np.float32)
    check_both(dot_mv, fd.Dup(A), fd.Dup(x))
