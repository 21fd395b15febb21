"""Reverse-mode shadow semantics (docs/design.md §3): on entry dx holds the cotangent of
x's contents after the call, on exit the cotangent of its contents before the call.
So input shadows accumulate, output shadows are consumed, in-place updates get
dx <- Jᵀ dx. Also DuplicatedNoNeed, ReverseWithPrimal, ret=Const, gradient(),
make_zero() and explain()."""

import math

import fd
import numba
import numpy as np
import pytest
from kernels import dot

import enzpy
from enzpy import Active, Const, Duplicated, DuplicatedNoNeed

RTOL = 1e-13


def rng(seed):
    return np.random.default_rng(seed)


@numba.njit
def sin_into(x, out):
    for i in range(x.shape[0]):
        out[i] = math.sin(x[i])


@numba.njit
def scale_in_place(x, a):
    for i in range(x.shape[0]):
        x[i] = a * x[i] * x[i]


@numba.njit
def axpy(a, x, y):
    for i in range(x.shape[0]):
        y[i] += a * x[i]


@numba.njit
def normalize_in_place(x):
    # reads x, then overwrites it: the reverse sweep needs the old values
    s = 0.0
    for i in range(x.shape[0]):
        s += x[i] * x[i]
    n = math.sqrt(s)
    for i in range(x.shape[0]):
        x[i] = x[i] / n
    return n


@numba.njit
def sin_into_and_sum(x, out, a):
    s = 0.0
    for i in range(x.shape[0]):
        out[i] = a * math.sin(x[i])
        s += x[i] * x[i]
    return s


# ------------------------------------------------------------------- accumulation


def test_input_shadow_accumulates_across_two_calls():
    x, y = rng(0).uniform(-1, 1, 8), rng(1).uniform(-1, 1, 8)
    dx0 = rng(2).standard_normal(8)
    dx = dx0.copy()
    enzpy.autodiff(dot, Duplicated(x, dx), Const(y))
    np.testing.assert_allclose(dx, dx0 + y, rtol=RTOL, atol=1e-15)
    enzpy.autodiff(dot, Duplicated(x, dx), Const(y))
    np.testing.assert_allclose(dx, dx0 + 2 * y, rtol=RTOL, atol=1e-15)


def test_staged_shadow_accumulates_too():
    # a shadow with other strides than x is staged through a buffer: the buffer must
    # start from the shadow's contents, not from zero
    x = rng(3).uniform(-1, 1, (6, 5))[:, ::2]  # non-contiguous
    y = rng(4).uniform(-1, 1, 6)

    @numba.njit
    def f(x, y):
        s = 0.0
        for i in range(x.shape[0]):
            for j in range(x.shape[1]):
                s += x[i, j] * y[i]
        return s

    dx = np.ones_like(x)  # C-contiguous
    assert dx.strides != x.strides
    enzpy.autodiff(f, Duplicated(x, dx), Const(y))
    enzpy.autodiff(f, Duplicated(x, dx), Const(y))
    np.testing.assert_allclose(dx, 1 + 2 * np.broadcast_to(y[:, None], x.shape), rtol=RTOL)


# ---------------------------------------------------------------------- consumption


def test_output_shadow_is_zero_after_the_call():
    x = rng(5).uniform(-2, 2, 9)
    out = np.zeros(9)
    w = rng(6).standard_normal(9)
    dx, dout = np.zeros(9), w.copy()
    res = enzpy.autodiff(sin_into, Duplicated(x, dx), Duplicated(out, dout))
    assert res == (None, None)
    np.testing.assert_array_equal(out, np.sin(x))
    assert np.all(dout == 0.0)
    np.testing.assert_allclose(dx, np.cos(x) * w, rtol=RTOL)


def test_output_shadow_consumed_only_once():
    # a second call with the (now zero) output shadow adds nothing
    x = rng(7).uniform(-2, 2, 9)
    dx, dout = np.zeros(9), rng(8).standard_normal(9)
    w = dout.copy()
    enzpy.autodiff(sin_into, Duplicated(x, dx), Duplicated(np.zeros(9), dout))
    enzpy.autodiff(sin_into, Duplicated(x, dx), Duplicated(np.zeros(9), dout))
    np.testing.assert_allclose(dx, np.cos(x) * w, rtol=RTOL)


# ------------------------------------------------------------------------- in place


def test_in_place_update_replaces_shadow_with_jt_dx():
    x0 = rng(9).uniform(-1, 1, 7)
    a = 1.7
    w = rng(10).standard_normal(7)
    x, dx = x0.copy(), w.copy()
    (dxx, da) = enzpy.autodiff(scale_in_place, Duplicated(x, dx), Active(a))
    assert dxx is None
    np.testing.assert_allclose(x, a * x0 * x0, rtol=RTOL)
    np.testing.assert_allclose(dx, 2 * a * x0 * w, rtol=RTOL)  # replaced, not +=
    fd.assert_close_to_reference(
        da, np.sum(x0 * x0 * w), 1e-12, atol=1e-14 * np.sum(np.abs(x0 * x0 * w)), what="da"
    )
    fd.check_vjp(scale_in_place, fd.Dup(x0.copy()), fd.Active(a))


def test_axpy_in_place_accumulation():
    x, y0 = rng(11).uniform(-1, 1, 6), rng(12).uniform(-1, 1, 6)
    a = -0.6
    dx0, w = rng(13).standard_normal(6), rng(14).standard_normal(6)
    y, dx, dy = y0.copy(), dx0.copy(), w.copy()
    (da, _, _) = enzpy.autodiff(axpy, Active(a), Duplicated(x, dx), Duplicated(y, dy))
    np.testing.assert_allclose(y, y0 + a * x, rtol=RTOL)
    np.testing.assert_array_equal(dy, w)  # d y_after / d y_before = I
    np.testing.assert_allclose(dx, dx0 + a * w, rtol=RTOL)
    fd.assert_close_to_reference(
        da, np.sum(x * w), 1e-12, atol=1e-14 * np.sum(np.abs(x * w)), what="da"
    )


def test_in_place_overwrite_needs_old_values():
    x = rng(15).uniform(-1, 1, 8)
    fd.check_vjp(normalize_in_place, fd.Dup(x), trials=3)
    # analytic: n = |x0|, x1 = x0/n; with dret = 1 and shadow w on entry,
    # dx0 = x0/n + (w - x1 (x1.w)) / n
    x0 = rng(15).uniform(-1, 1, 8)
    w = rng(16).standard_normal(8)
    x, dx = x0.copy(), w.copy()
    enzpy.autodiff(normalize_in_place, Duplicated(x, dx))
    n = np.linalg.norm(x0)
    x1 = x0 / n
    np.testing.assert_allclose(dx, x1 + (w - x1 * np.dot(x1, w)) / n, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- DuplicatedNoNeed


def test_duplicated_no_need_gives_the_same_shadows_as_duplicated():
    x = rng(17).uniform(-2, 2, 9)
    w = rng(18).standard_normal(9)
    results = {}
    for ann in (Duplicated, DuplicatedNoNeed):
        dx, dout = np.zeros(9), w.copy()
        res = enzpy.autodiff(
            sin_into_and_sum, Duplicated(x, dx), ann(np.zeros(9), dout), Active(0.8)
        )
        assert res[0] is None and res[1] is None
        assert np.all(dout == 0.0)
        results[ann] = (dx, res[2])
    np.testing.assert_allclose(results[DuplicatedNoNeed][0], results[Duplicated][0], rtol=1e-15)
    assert results[DuplicatedNoNeed][1] == pytest.approx(results[Duplicated][1], rel=1e-15)
    fd.assert_close_to_reference(
        results[Duplicated][0], 0.8 * np.cos(x) * w + 2 * x, 1e-12, atol=1e-15, what="dx"
    )


def test_duplicated_no_need_against_fd():
    x = rng(19).uniform(-2, 2, 9)
    fd.check_vjp(sin_into_and_sum, fd.Dup(x), fd.DupNoNeed(np.zeros(9)), fd.Active(0.8))


# ------------------------------------------------------------- ReverseWithPrimal


def test_reverse_with_primal_returns_the_primal():
    x = rng(20).uniform(-2, 2, 9)
    ref = sin_into_and_sum(x.copy(), np.zeros(9), 0.8)
    dx, out, dout = np.zeros(9), np.zeros(9), np.ones(9)
    derivs, primal = enzpy.autodiff(
        sin_into_and_sum,
        Duplicated(x, dx),
        Duplicated(out, dout),
        Active(0.8),
        mode=enzpy.ReverseWithPrimal,
    )
    assert primal == pytest.approx(ref, rel=1e-15)
    np.testing.assert_array_equal(out, 0.8 * np.sin(x))
    dx2, out2, dout2 = np.zeros(9), np.zeros(9), np.ones(9)
    derivs2 = enzpy.autodiff(
        sin_into_and_sum, Duplicated(x, dx2), Duplicated(out2, dout2), Active(0.8)
    )
    assert derivs[:2] == (None, None) and derivs[2] == pytest.approx(derivs2[2], rel=1e-15)
    np.testing.assert_allclose(dx, dx2, rtol=1e-15)
    fd.check_vjp(sin_into_and_sum, fd.Dup(x), fd.Dup(np.zeros(9)), fd.Active(0.8), with_primal=True)


def test_reverse_with_primal_of_a_none_returning_function():
    x = rng(21).uniform(-2, 2, 5)
    derivs, primal = enzpy.autodiff(
        sin_into,
        Duplicated(x, np.zeros(5)),
        Duplicated(np.zeros(5), np.ones(5)),
        mode=enzpy.ReverseWithPrimal,
    )
    assert derivs == (None, None)
    assert primal is None


# ------------------------------------------------------------------- ret=Const


def test_ret_const_is_not_seeded():
    x, y = rng(22).uniform(-1, 1, 6), rng(122).uniform(-1, 1, 6)
    dx = np.zeros(6)
    (dxx, dy) = enzpy.autodiff(dot, Duplicated(x, dx), Const(y), ret=enzpy.Const)
    assert dxx is None and dy is None
    assert np.all(dx == 0.0)

    # an Active scalar still gets a derivative, which is zero: a number, not None
    @numba.njit
    def g(x, a):
        s = 0.0
        for i in range(x.shape[0]):
            s += a * x[i]
        return s

    dx = np.zeros(6)
    res = enzpy.autodiff(g, Duplicated(x, dx), Active(1.5), ret=enzpy.Const)
    assert res[0] is None
    assert res[1] == 0.0
    assert np.all(dx == 0.0)


def test_ret_const_still_propagates_output_shadows():
    x = rng(23).uniform(-2, 2, 9)
    w = rng(24).standard_normal(9)
    dx, dout = np.zeros(9), w.copy()
    res = enzpy.autodiff(
        sin_into_and_sum,
        Duplicated(x, dx),
        Duplicated(np.zeros(9), dout),
        Active(0.8),
        ret=enzpy.Const,
    )
    # only the path through `out`; the return's 2x term is absent
    np.testing.assert_allclose(dx, 0.8 * np.cos(x) * w, rtol=1e-12, atol=1e-15)
    fd.assert_close_to_reference(
        res[2], np.sum(np.sin(x) * w), 1e-12, atol=1e-14 * np.sum(np.abs(np.sin(x) * w)), what="da"
    )
    fd.check_vjp(sin_into_and_sum, fd.Dup(x), fd.Dup(np.zeros(9)), fd.Active(0.8), ret="const")


# ------------------------------------------------------------------- gradient()


@numba.njit
def loss(x, a):
    s = 0.0
    for i in range(x.shape[0]):
        s += math.exp(a * x[i]) - x[i] * x[i]
    return s / x.shape[0]


@numba.njit
def norm2(x):
    s = 0.0
    for i in range(x.shape[0]):
        s += x[i] * x[i]
    return math.sqrt(s)


def test_gradient_of_array_and_scalar():
    x = rng(25).uniform(-1, 1, 7)
    x0 = x.copy()
    gx, ga = enzpy.gradient(loss, x, 0.7)
    np.testing.assert_array_equal(x, x0)
    n = x.shape[0]
    np.testing.assert_allclose(gx, (0.7 * np.exp(0.7 * x) - 2 * x) / n, rtol=1e-12)
    assert ga == pytest.approx(np.sum(x * np.exp(0.7 * x)) / n, rel=1e-12)
    fd.check_gradient(loss, x, 0.7)


def test_gradient_of_single_argument_returns_the_gradient():
    x = rng(26).uniform(-1, 1, 7)
    g = enzpy.gradient(norm2, x)
    assert isinstance(g, np.ndarray) and g.shape == x.shape and g.dtype == x.dtype
    np.testing.assert_allclose(g, x / np.linalg.norm(x), rtol=1e-12)


def test_gradient_float32():
    x = rng(27).uniform(-1, 1, 7).astype(np.float32)
    g = fd.check_gradient(norm2, x)
    assert g[0].dtype == np.float32


def test_gradient_const_int_argument_gets_none():
    @numba.njit
    def f(x, k):
        return x[k] * x[k] * 3.0

    x = rng(28).uniform(-1, 1, 5)
    gx, gk = enzpy.gradient(f, x, 2)
    assert gk is None
    ref = np.zeros(5)
    ref[2] = 6 * x[2]
    np.testing.assert_allclose(gx, ref, rtol=1e-14)


def test_gradient_of_an_integer_array_alone_is_an_error_not_none():
    with pytest.raises(enzpy.EnzpyTypeError, match="int64 array.*astype"):
        enzpy.gradient(norm2, np.arange(4))


@numba.njit
def _weighted_product(xs, n):
    a, b = xs
    s = 0.0
    for i in range(a.shape[0]):
        s += a[i] * b[i] * b[i]
    return s * n


def test_gradient_of_a_tuple_of_arrays_is_a_tuple_of_gradients():
    a, b = rng(29).uniform(-1, 1, 4), rng(30).uniform(-1, 1, 4)
    (ga, gb), gn = enzpy.gradient(_weighted_product, (a, b), 3)
    assert gn is None
    np.testing.assert_allclose(ga, 3 * b * b, rtol=1e-14)
    np.testing.assert_allclose(gb, 6 * a * b, rtol=1e-14)


# ------------------------------------------------------------------- make_zero()


def test_make_zero():
    x = rng(29).uniform(-1, 1, (4, 6))
    for v in (x, x[:, ::2], x.T, x.astype(np.float32)):
        z = enzpy.make_zero(v)
        assert isinstance(z, np.ndarray) and z.shape == v.shape and z.dtype == v.dtype
        assert np.all(z == 0) and not np.shares_memory(z, v)
    z = enzpy.make_zero(1.5)
    assert z == 0.0 and isinstance(z, float)
    z32 = enzpy.make_zero(np.float32(1.5))
    assert z32 == 0 and isinstance(z32, np.float32)
    zt = enzpy.make_zero((1.0, x))
    assert isinstance(zt, tuple) and zt[0] == 0.0 and np.all(zt[1] == 0)


def test_make_zero_as_shadow():
    x = rng(30).uniform(-1, 1, 8)
    dx = enzpy.make_zero(x)
    enzpy.autodiff(norm2, Duplicated(x, dx))
    np.testing.assert_allclose(dx, x / np.linalg.norm(x), rtol=1e-12)


# --------------------------------------------------------------------- explain()


def test_explain_returns_the_log_and_touches_nothing():
    x = rng(31).uniform(-2, 2, 6)
    out = np.zeros(6)
    dx, dout = np.zeros(6), np.ones(6)
    copies = [a.copy() for a in (x, out, dx, dout)]
    log = enzpy.explain(sin_into_and_sum, Duplicated(x, dx), Duplicated(out, dout), Active(0.8))
    assert isinstance(log, str) and log.strip()
    for a, c in zip((x, out, dx, dout), copies):
        np.testing.assert_array_equal(a, c)


@numba.njit
def _value_and_square(a):
    return (a, a * a)


def test_reverse_with_primal_returns_an_aggregate_primal_when_not_seeded():
    derivs, primal = enzpy.autodiff(
        _value_and_square, Active(3.0), mode=enzpy.ReverseWithPrimal, ret=Const
    )
    assert primal == (3.0, 9.0)
    assert derivs == (0.0,)
