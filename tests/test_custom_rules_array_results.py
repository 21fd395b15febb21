"""Custom rules for functions that return a new array (``enzpy.register_rule``):
the result gets a shadow of its own, in forward and reverse mode, wherever
the kernel keeps, modifies, passes on or drops it."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from fd import fd_gradient

import enzpy
from enzpy import Active, BatchDuplicated, Const, Duplicated
from enzpy.testing import check_derivative

# --- a rule for y = a x^2 (elementwise), any number of dimensions -----------


@numba.njit
def scaled_square(x, a):
    return a * x * x


def _sq_forward(cfg, x, dx, a, da):
    return a * x * x, 2.0 * a * x * dx + da * x * x


def _sq_augmented(cfg, x, a):
    # The tape keeps x only where it may change before the reverse.
    return a * x * x, x.copy() if cfg.overwritten[0] else x[:0].copy()


def _sq_reverse(cfg, kept, x, dx, a, da, ybar):
    xs = kept if cfg.overwritten[0] else x
    dx += 2.0 * a * xs * ybar
    return np.sum(xs * xs * ybar)


enzpy.register_rule(
    scaled_square, forward=_sq_forward, augmented=_sq_augmented, reverse=_sq_reverse
)


@numba.njit
def uses_result(x, a, out):
    y = scaled_square(x, a)
    s = 0.0
    for i in range(out.shape[0]):
        out[i] = y[i] * y[i] + x[i]
        s += y[i]
    return s


def test_an_array_result_gets_its_derivative_in_reverse_and_forward_mode():
    x = np.array([1.0, -2.0, 0.5])
    a = 1.5
    # s = sum a x^2, out_i = a^2 x_i^4 + x_i; seeds: dret = 1, dout = 1
    dx, dout = np.zeros(3), np.ones(3)
    _, da, _ = enzpy.autodiff(
        uses_result, Duplicated(x, dx), Active(a), Duplicated(np.zeros(3), dout)
    )
    np.testing.assert_allclose(dx, 2 * a * x + 4 * a * a * x**3 + 1, rtol=1e-12)
    assert da == pytest.approx(np.sum(x**2) + np.sum(2 * a * x**4), rel=1e-12)
    tout = np.zeros(3)
    t = enzpy.autodiff(
        uses_result,
        Duplicated(x, np.ones(3)),
        Duplicated(a, 0.5),
        Duplicated(np.zeros(3), tout),
        mode=enzpy.Forward,
    )
    assert t == pytest.approx(np.sum(2 * a * x) + 0.5 * np.sum(x**2), rel=1e-12)
    np.testing.assert_allclose(tout, 4 * a * a * x**3 + 1 + 0.5 * 2 * a * x**4, rtol=1e-12)


def test_an_array_result_passes_the_harness_in_every_activity_pattern():
    rep = check_derivative(uses_result, np.array([0.3, -1.1, 0.7]), 0.9, np.zeros(3), report=True)
    assert rep.ok, rep


@numba.njit
def time_loop(x, a, steps):
    """A new array each step, fed back into the state, which is updated in
    place: every step's result is read in the reverse after it was freed."""
    for k in range(steps):
        y = scaled_square(x, a)
        for i in range(x.shape[0]):
            x[i] = 0.5 * x[i] + 0.1 * np.sin(y[i] + k)
    return (x * x).sum()


def test_a_result_made_every_step_of_a_time_loop_matches_finite_differences():
    x0 = np.array([0.4, -0.3, 0.8, 0.1])
    a = 0.7

    def loss(x, a):
        return time_loop(x.copy(), a, 6)

    dx = np.zeros(4)
    _, da, _ = enzpy.autodiff(time_loop, Duplicated(x0.copy(), dx), Active(a), Const(6))
    _, (gx, ga) = fd_gradient(loss, x0, a)
    np.testing.assert_allclose(dx, gx, rtol=1e-6, atol=1e-9)
    assert da == pytest.approx(ga, rel=1e-6)
    rep = check_derivative(time_loop, x0, a, 6, report=True)
    assert rep.ok, rep


@numba.njit
def carried(x, a, steps):
    """The result becomes the next call's argument: the array a loop carries
    is the previous call's result, freed when replaced."""
    u = x.copy()
    s = 0.0
    for _ in range(steps):
        u = scaled_square(0.5 * u + 0.1, a)
        s += u[0] - u[-1]
    return s + u.sum()


@pytest.mark.parametrize("steps", [1, 3])
def test_a_result_carried_into_the_next_call_by_a_loop(steps):
    x = np.array([0.9, -0.6, 1.2, 0.3])
    rep = check_derivative(carried, x, 0.8, steps, report=True)
    assert rep.ok, rep


@numba.njit
def chained(x, a):
    """A rule's result passed to the rule again, then changed in place."""
    y = scaled_square(x, a)
    z = scaled_square(y, a)
    z[0] = z[0] * y[1]
    return z.sum() + y[2]


def test_a_result_passed_to_another_call_and_changed_in_place():
    x = np.array([0.9, -0.6, 1.2])
    rep = check_derivative(chained, x, 1.3, report=True)
    assert rep.ok, rep


# --- matrices, views and layouts --------------------------------------------


@numba.njit
def affine(A, x, b):
    """y = A x + b, a new vector."""
    return A @ x + b


def _aff_forward(cfg, A, dA, x, dx, b, db):
    return A @ x + b, dA @ x + A @ dx + db


def _aff_augmented(cfg, A, x, b):
    return A @ x + b, (A.copy(), x.copy())


def _aff_reverse(cfg, tape, A, dA, x, dx, b, db, ybar):
    Ak, xk = tape
    dA += np.outer(ybar, xk)
    dx += Ak.T @ ybar
    db += ybar
    return ()


enzpy.register_rule(affine, forward=_aff_forward, augmented=_aff_augmented, reverse=_aff_reverse)


@numba.njit
def two_layers(A, B, x, b):
    h = affine(A, x, b)
    for i in range(h.shape[0]):
        h[i] = np.tanh(h[i])
    out = affine(B, h, b[: B.shape[0]])
    return (out * out).sum()


def test_results_of_matrix_rules_feed_one_another():
    rng = np.random.default_rng(3)
    A, B = rng.normal(size=(4, 3)), rng.normal(size=(2, 4))
    x, b = rng.normal(size=3), rng.normal(size=4)
    rep = check_derivative(two_layers, A, B, x, b, report=True)
    assert rep.ok, rep


@numba.njit
def offset_view(x):
    """A result that lies inside a larger allocation, not at its start."""
    buf = np.empty(x.shape[0] + 3)
    buf[:3] = 0.0
    buf[3:] = np.sin(x)
    return buf[3:]


def _ov_forward(cfg, x, dx):
    return offset_view(x), np.cos(x) * dx


def _ov_augmented(cfg, x):
    return offset_view(x), x.copy()


def _ov_reverse(cfg, xs, x, dx, ybar):
    dx += np.cos(xs) * ybar
    return ()


enzpy.register_rule(offset_view, forward=_ov_forward, augmented=_ov_augmented, reverse=_ov_reverse)


@numba.njit
def transposed(M):
    """An F-ordered result: a transposed view of a new matrix."""
    return (2.0 * M).T


def _tr_forward(cfg, M, dM):
    return transposed(M), (2.0 * dM).T


def _tr_augmented(cfg, M):
    return transposed(M), 0


def _tr_reverse(cfg, tape, M, dM, ybar):
    dM += 2.0 * ybar.T
    return ()


enzpy.register_rule(transposed, forward=_tr_forward, augmented=_tr_augmented, reverse=_tr_reverse)


@numba.njit
def views_and_layouts(x, M, w):
    y = offset_view(x)
    T = transposed(M)
    s = 0.0
    for i in range(T.shape[0]):
        for j in range(T.shape[1]):
            s += w[i, j] * T[i, j] * y[j % y.shape[0]]
    return s


def test_results_that_are_views_or_transposed_get_shadows_laid_out_like_them():
    rng = np.random.default_rng(5)
    x, M, w = rng.normal(size=4), rng.normal(size=(3, 2)), rng.normal(size=(2, 3))
    rep = check_derivative(views_and_layouts, x, M, w, report=True)
    assert rep.ok, rep


def test_reverse_batch_lanes_each_get_a_shadow_of_the_result():
    x = np.array([0.2, 0.5, -0.4])
    a = 1.1
    seeds = (1.0, -2.0)
    douts = (np.ones(3), np.arange(3.0))
    dxs = (np.zeros(3), np.zeros(3))
    res = enzpy.autodiff(
        uses_result,
        BatchDuplicated(x, dxs),
        Active(a),
        BatchDuplicated(np.zeros(3), tuple(d.copy() for d in douts)),
        ret=seeds,
    )
    for k in range(2):
        # s = sum a x^2 seeded by seeds[k]; out = a^2 x^4 + x seeded by douts[k]
        dx = seeds[k] * 2 * a * x + douts[k] * (4 * a * a * x**3 + 1)
        da = seeds[k] * np.sum(x**2) + np.sum(douts[k] * 2 * a * x**4)
        np.testing.assert_allclose(dxs[k], dx, rtol=1e-12)
        assert res[1][k] == pytest.approx(da, rel=1e-12)


@numba.njit
def single_float32(x, a):
    y = scaled_square(x, a)
    return (y * y).sum()


def test_a_float32_result_gets_a_float32_shadow_whatever_the_tangent_s_float_type():
    x = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    dx = np.zeros(3, dtype=np.float32)
    a = np.float32(1.5)
    enzpy.autodiff(single_float32, Duplicated(x, dx), Const(a))
    np.testing.assert_allclose(dx, 4 * a * a * x.astype(np.float64) ** 3, rtol=1e-5)


# --- what a rule may not return ----------------------------------------------


def _kernel_of(f):
    @numba.njit
    def use(x):
        return (f(x) * 2.0).sum()

    return use


@pytest.mark.parametrize("mode", [enzpy.Reverse, enzpy.Forward])
def test_a_rule_returning_its_argument_is_an_error_naming_the_rule(mode):
    @numba.njit
    def passthrough(x):
        return x * 1.0

    def fwd(cfg, x, dx):
        return x, dx

    def aug(cfg, x):
        return x, 0

    def rev(cfg, tape, x, dx, ybar):
        dx += ybar
        return ()

    enzpy.register_rule(passthrough, forward=fwd, augmented=aug, reverse=rev)
    x = np.ones(3)
    with pytest.raises(ValueError, match="passthrough.*shares memory with its argument 0"):
        if mode is enzpy.Forward:
            enzpy.autodiff(_kernel_of(passthrough), Duplicated(x, np.ones(3)), mode=mode)
        else:
            enzpy.autodiff(_kernel_of(passthrough), Duplicated(x, np.zeros(3)))


GLOBAL_TABLE = np.arange(4.0)


def test_a_rule_returning_a_view_of_a_global_is_an_error_naming_the_rule():
    @numba.njit
    def table_scaled(x):
        return GLOBAL_TABLE[: x.shape[0]] * x

    def fwd(cfg, x, dx):
        return GLOBAL_TABLE[: x.shape[0]], dx  # numba's globals are read-only

    enzpy.register_rule(table_scaled, forward=fwd)
    with pytest.raises(enzpy.EnzpyTypeError, match="rule for .*table_scaled returns .*readonly"):
        enzpy.autodiff(
            _kernel_of(table_scaled), Duplicated(np.ones(3), np.ones(3)), mode=enzpy.Forward
        )


def test_a_forward_rule_with_a_tangent_of_another_shape_is_an_error():
    @numba.njit
    def grown(x):
        return np.concatenate((x, x))

    def fwd(cfg, x, dx):
        return np.concatenate((x, x)), dx.copy()

    enzpy.register_rule(grown, forward=fwd)
    with pytest.raises(ValueError, match="grown returned a tangent whose shape"):
        enzpy.autodiff(_kernel_of(grown), Duplicated(np.ones(3), np.ones(3)), mode=enzpy.Forward)


def test_a_forward_rule_returning_the_wrong_types_is_an_error_naming_the_rule():
    @numba.njit
    def halved(x):
        return 0.5 * x

    def fwd(cfg, x, dx):
        return 0.5 * x  # no tangent

    enzpy.register_rule(halved, forward=fwd)
    with pytest.raises(enzpy.EnzpyTypeError, match="forward function of the rule for .*halved"):
        enzpy.autodiff(_kernel_of(halved), Duplicated(np.ones(3), np.ones(3)), mode=enzpy.Forward)


def test_a_function_returning_an_integer_array_cannot_have_a_rule():
    @numba.njit
    def counts(x):
        return (x > 0).astype(np.int64)

    def fwd(cfg, x, dx):
        return counts(x), counts(x)

    enzpy.register_rule(counts, forward=fwd)

    @numba.njit
    def use(x):
        return x.sum() * counts(x).sum()

    with pytest.raises(enzpy.UnsupportedError, match="new array of floats"):
        enzpy.autodiff(use, Duplicated(np.ones(3), np.ones(3)), mode=enzpy.Forward)


@numba.njit(parallel=True)
def result_in_a_prange_kernel(x, a):
    y = scaled_square(x, a)
    s = 0.0
    for i in numba.prange(y.shape[0]):
        s += np.sin(y[i]) * x[i]
    return s


def test_a_rule_result_read_by_a_prange_loop():
    rep = check_derivative(
        result_in_a_prange_kernel, np.array([0.3, -0.5, 0.9, 1.2]), 0.7, report=True
    )
    assert rep.ok, rep
