"""Tuples of arrays as differentiated arguments: ``Duplicated((x, y), (dx, dy))``.

Parameters often travel as one tuple (``(W1, b1, W2, b2)``, ``(state, scratch)``)
that kernels unpack, index with a run-time index or iterate over. Each kernel
here is checked in reverse mode against central finite differences of
L = w_ret * f + sum_k <w_k, x_k after the call> (mutated members are outputs),
in forward mode against finite differences along a random direction, and
forward against reverse (<J v, w> == <v, J^T w>)."""

from __future__ import annotations

import collections

import numba
import numpy as np
import pytest

import enzpy
from enzpy import Active, BatchDuplicated, Duplicated

Params = collections.namedtuple("Params", ["w", "b"])


@numba.njit
def unpack_and_index(arrs, a):
    x, y = arrs
    return a * (x * y).sum() + arrs[1][0] * x[2]


@numba.njit
def two_loops_over_members(arrs, a):
    s = 0.0
    for x in arrs:
        for i in range(x.shape[0]):
            s += a * x[i] * x[i]
    for x in arrs:
        s += np.sin(x).sum()
    return s


@numba.njit
def in_place_by_runtime_index(arrs, a):
    s = 0.0
    for k in range(len(arrs)):
        x = arrs[k]
        for i in range(x.shape[0]):
            x[i] = np.tanh(x[i] * a + k)
    for k in range(len(arrs)):
        s += (arrs[k] * arrs[k]).sum()
    return s


@numba.njit
def layer(params, x, out):
    # a heterogeneous tuple: a matrix and a vector
    w, b = params
    s = 0.0
    for i in range(w.shape[0]):
        acc = b[i]
        for j in range(w.shape[1]):
            acc += w[i, j] * x[j]
        out[i] = np.tanh(acc)
        s += out[i] * out[i]
    return s


@numba.njit
def two_layers(net, x):
    # nested tuples ((w1, b1), (w2, b2)) and a scratch vector reused per sample
    (w1, b1), (w2, b2) = net
    h = np.empty(w1.shape[0])
    total = 0.0
    for r in range(x.shape[0]):
        for i in range(w1.shape[0]):
            acc = b1[i]
            for j in range(w1.shape[1]):
                acc += w1[i, j] * x[r, j]
            h[i] = np.tanh(acc)
        for i in range(w2.shape[0]):
            acc = b2[i]
            for j in range(w2.shape[1]):
                acc += w2[i, j] * h[j]
            total += acc * acc
    return total


@numba.njit
def named_params(p, x):
    s = 0.0
    for i in range(x.shape[0]):
        s += np.exp(p.w[i] * x[i]) + p.b[i] * x[i]
    return s


@numba.njit
def _member_energy(u):
    e = 0.0
    for i in range(u.shape[0] - 1):
        d = u[i + 1] - u[i]
        e += d * d
    return e


@numba.njit
def calls_helper_per_member(fields, a):
    # members handed to another njit function, and a carried scalar sweep
    s = 0.0
    for u in fields:
        s += a * _member_energy(u)
        prev = u[0]
        for i in range(1, u.shape[0]):
            cur = u[i]
            u[i] = cur + 0.5 * prev
            prev = cur
    return s


def _members(tup):
    out = []
    for t in tup:
        out.extend(_members(t) if isinstance(t, tuple) else [t])
    return out


def _rebuild(like, flat):
    it = iter(flat)

    def go(t):
        items = [go(m) if isinstance(m, tuple) else next(it) for m in t]
        make = getattr(type(t), "_make", None)
        return make(items) if make is not None else tuple(items)

    return go(like)


def _copy(tup):
    return _rebuild(tup, [m.copy() for m in _members(tup)])


def _loss(f, tup, extra, w_ret, ws):
    """w_ret * f(tup, *extra) + sum <w_k, member_k after the call>."""
    t = _copy(tup)
    r = f(t, *[e.copy() if isinstance(e, np.ndarray) else e for e in extra])
    return w_ret * r + sum(float(np.sum(w * m)) for w, m in zip(ws, _members(t)))


def _fd_member_grads(f, tup, extra, w_ret, ws, h=1e-6):
    grads = []
    flat = _members(tup)
    for k, m in enumerate(flat):
        g = np.zeros(m.shape)
        for j in np.ndindex(m.shape):
            step = h * max(abs(float(m[j])), 1.0)
            plus, minus = [x.copy() for x in flat], [x.copy() for x in flat]
            plus[k][j] += step
            minus[k][j] -= step
            lp = _loss(f, _rebuild(tup, plus), extra, w_ret, ws)
            lm = _loss(f, _rebuild(tup, minus), extra, w_ret, ws)
            g[j] = (lp - lm) / (2 * step)
        grads.append(g)
    return grads


def _rng_tuple(rng, like):
    return _rebuild(like, [rng.uniform(-1, 1, m.shape) for m in _members(like)])


CASES = {
    "unpack_and_index": (
        unpack_and_index,
        lambda r: (r.uniform(-1, 1, 3), r.uniform(-1, 1, 3)),
        (0.7,),
    ),
    "two_loops_over_members": (
        two_loops_over_members,
        lambda r: (r.uniform(-1, 1, 4), r.uniform(-1, 1, 4), r.uniform(-1, 1, 4)),
        (0.3,),
    ),
    "in_place_by_runtime_index": (
        in_place_by_runtime_index,
        lambda r: (r.uniform(-1, 1, 3), r.uniform(-1, 1, 3)),
        (0.8,),
    ),
    "calls_helper_per_member": (
        calls_helper_per_member,
        lambda r: (r.uniform(-1, 1, 5), r.uniform(-1, 1, 5)),
        (1.3,),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_reverse_gradient_of_a_tuple_matches_finite_differences(name):
    f, make, extra = CASES[name]
    rng = np.random.default_rng(1)
    tup = make(rng)
    ws = [rng.uniform(-1, 1, m.shape) for m in _members(tup)]
    w_ret = 1.0
    x = _copy(tup)
    dx = _rebuild(tup, [w.copy() for w in ws])
    (_, da) = enzpy.autodiff(f, Duplicated(x, dx), Active(extra[0]))
    fd = _fd_member_grads(f, tup, extra, w_ret, ws)
    for k, (got, want) in enumerate(zip(_members(dx), fd)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8, err_msg=f"member {k}")
    # the scalar's adjoint
    h = 1e-6
    lp = _loss(f, tup, (extra[0] + h,), w_ret, ws)
    lm = _loss(f, tup, (extra[0] - h,), w_ret, ws)
    assert da == pytest.approx((lp - lm) / (2 * h), rel=1e-6, abs=1e-8)
    # the members hold the primal's results
    ref = _copy(tup)
    f(ref, *extra)
    for got, want in zip(_members(x), _members(ref)):
        np.testing.assert_allclose(got, want, rtol=1e-15)


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_tangent_of_a_tuple_agrees_with_reverse(name):
    f, make, extra = CASES[name]
    rng = np.random.default_rng(2)
    tup = make(rng)
    v = _rng_tuple(rng, tup)
    ws = [rng.uniform(-1, 1, m.shape) for m in _members(tup)]
    # forward: J v (the return's tangent and the members' tangents after)
    x = _copy(tup)
    dx = _copy(v)
    t_ret = enzpy.autodiff(f, Duplicated(x, dx), Duplicated(extra[0], 0.0), mode=enzpy.Forward)
    jv = t_ret + sum(float(np.sum(w * m)) for w, m in zip(ws, _members(dx)))
    # reverse: J^T w
    xr = _copy(tup)
    bar = _rebuild(tup, [w.copy() for w in ws])
    enzpy.autodiff(f, Duplicated(xr, bar), extra[0])
    jtw = sum(float(np.sum(a * b)) for a, b in zip(_members(v), _members(bar)))
    assert jv == pytest.approx(jtw, rel=1e-10, abs=1e-12)
    # and J v against a central difference along v
    h = 1e-6
    plus = _rebuild(tup, [m + h * d for m, d in zip(_members(tup), _members(v))])
    minus = _rebuild(tup, [m - h * d for m, d in zip(_members(tup), _members(v))])
    fd = (_loss(f, plus, extra, 1.0, ws) - _loss(f, minus, extra, 1.0, ws)) / (2 * h)
    assert jv == pytest.approx(fd, rel=1e-6, abs=1e-8)


def test_heterogeneous_tuple_of_matrix_and_vector():
    rng = np.random.default_rng(3)
    w, b, x = rng.uniform(-1, 1, (4, 3)), rng.uniform(-1, 1, 4), rng.uniform(-1, 1, 3)
    dw, db, dx = np.zeros((4, 3)), np.zeros(4), np.zeros(3)
    out = np.zeros(4)
    enzpy.autodiff(layer, Duplicated((w, b), (dw, db)), Duplicated(x, dx), Duplicated(out, out * 0))

    def loss(w, b, x):
        return layer((w, b), x, np.zeros(4))

    from fd import fd_gradient

    _, (gw, gb, gx) = fd_gradient(loss, w, b, x)
    np.testing.assert_allclose(dw, gw, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(db, gb, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(dx, gx, rtol=1e-6, atol=1e-9)


def test_nested_tuple_of_layers_with_a_reused_scratch_vector():
    rng = np.random.default_rng(4)
    w1, b1 = rng.uniform(-1, 1, (5, 3)), rng.uniform(-1, 1, 5)
    w2, b2 = rng.uniform(-1, 1, (2, 5)), rng.uniform(-1, 1, 2)
    x = rng.uniform(-1, 1, (6, 3))
    net = ((w1, b1), (w2, b2))
    dnet = ((np.zeros_like(w1), np.zeros_like(b1)), (np.zeros_like(w2), np.zeros_like(b2)))
    enzpy.autodiff(two_layers, Duplicated(net, dnet), x)

    def loss(w1, b1, w2, b2):
        return two_layers(((w1, b1), (w2, b2)), x)

    from fd import fd_gradient

    _, fd = fd_gradient(loss, w1, b1, w2, b2)
    for got, want in zip(_members(dnet), fd):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


def test_named_tuple_of_arrays_in_both_modes():
    rng = np.random.default_rng(5)
    p = Params(rng.uniform(-1, 1, 4), rng.uniform(-1, 1, 4))
    x = rng.uniform(-1, 1, 4)
    dp = Params(np.zeros(4), np.zeros(4))
    enzpy.autodiff(named_params, Duplicated(p, dp), x)
    np.testing.assert_allclose(dp.w, x * np.exp(p.w * x), rtol=1e-14)
    np.testing.assert_allclose(dp.b, x, rtol=1e-14)
    v = Params(rng.uniform(-1, 1, 4), rng.uniform(-1, 1, 4))
    t = enzpy.autodiff(named_params, Duplicated(p, v), x, mode=enzpy.Forward)
    assert t == pytest.approx(float(np.sum(dp.w * v.w + dp.b * v.b)), rel=1e-13)


def test_float32_tuple():
    rng = np.random.default_rng(6)
    xs = (rng.uniform(-1, 1, 5).astype(np.float32), rng.uniform(-1, 1, 5).astype(np.float32))
    ds = (np.zeros(5, np.float32), np.zeros(5, np.float32))
    enzpy.autodiff(two_loops_over_members, Duplicated(xs, ds), 0.5)
    for x, d in zip(xs, ds):
        ref = 2 * 0.5 * x.astype(np.float64) + np.cos(x.astype(np.float64))
        np.testing.assert_allclose(d, ref, rtol=1e-5)


def test_batch_forward_and_batch_reverse_over_a_tuple():
    rng = np.random.default_rng(7)
    xs = (rng.uniform(-1, 1, 3), rng.uniform(-1, 1, 3))
    lanes = [_rng_tuple(rng, xs) for _ in range(3)]
    tangents = enzpy.autodiff(
        unpack_and_index,
        BatchDuplicated(xs, tuple(lanes)),
        BatchDuplicated(0.7, (0.0,) * 3),
        mode=enzpy.Forward,
    )
    grad = (np.zeros(3), np.zeros(3))
    enzpy.autodiff(unpack_and_index, Duplicated(xs, grad), 0.7)
    for k, lane in enumerate(lanes):
        want = sum(float(np.sum(g * v)) for g, v in zip(grad, lane))
        assert tangents[k] == pytest.approx(want, rel=1e-13)
    seeds = (1.0, -2.0)
    bars = tuple((np.zeros(3), np.zeros(3)) for _ in seeds)
    enzpy.autodiff(unpack_and_index, BatchDuplicated(xs, bars), 0.7, ret=seeds)
    for s, bar in zip(seeds, bars):
        for got, g in zip(bar, grad):
            np.testing.assert_allclose(got, s * g, rtol=1e-14)


def test_tuple_derivative_is_callable_from_njit():
    rng = np.random.default_rng(8)
    xs = (rng.uniform(-1, 1, 3), rng.uniform(-1, 1, 3))
    d = enzpy.derivative(unpack_and_index, Duplicated(xs, (np.zeros(3), np.zeros(3))), Active(0.7))

    @numba.njit
    def step(xs, a):
        g = (np.zeros(3), np.zeros(3))
        d(xs, g, a, 1.0)
        return g

    g = step(xs, 0.7)
    ref = (np.zeros(3), np.zeros(3))
    enzpy.autodiff(unpack_and_index, Duplicated(xs, ref), Active(0.7))
    for a, b in zip(g, ref):
        np.testing.assert_allclose(a, b, rtol=1e-15)


def test_bad_tuple_shadows_are_refused_before_anything_runs():
    xs = (np.ones(3), np.ones(3))
    with pytest.raises(enzpy.EnzpyTypeError, match="tuple of 2 arrays"):
        enzpy.autodiff(unpack_and_index, Duplicated(xs, np.zeros(3)), Active(0.7))
    with pytest.raises(enzpy.EnzpyTypeError, match="tuple of 2 arrays"):
        enzpy.autodiff(unpack_and_index, Duplicated(xs, (np.zeros(3),)), Active(0.7))
    with pytest.raises(enzpy.EnzpyValueError, match="shape .*member 1"):
        enzpy.autodiff(unpack_and_index, Duplicated(xs, (np.zeros(3), np.zeros(4))), 0.7)
    with pytest.raises(enzpy.EnzpyTypeError, match="dtype .*member 0"):
        enzpy.autodiff(
            unpack_and_index, Duplicated(xs, (np.zeros(3, np.float32), np.zeros(3))), 0.7
        )
    shared = np.zeros(3)
    with pytest.raises(enzpy.EnzpyValueError, match="shares memory"):
        enzpy.autodiff(unpack_and_index, Duplicated(xs, (shared, shared)), Active(0.7))
    with pytest.raises(enzpy.EnzpyValueError):
        # a shadow that is the other member's primal
        enzpy.autodiff(unpack_and_index, Duplicated(xs, (np.zeros(3), xs[0])), Active(0.7))


def test_tuple_with_a_non_float_member_is_refused_with_its_type():
    @numba.njit
    def f(t):
        x, n = t
        return x.sum() * n[0]

    with pytest.raises(enzpy.EnzpyTypeError, match="float32 or float64 array.*member 1"):
        enzpy.autodiff(
            f, Duplicated((np.ones(3), np.ones(2, np.int64)), (np.zeros(3), np.zeros(2)))
        )


@numba.njit
def leapfrog_on_a_state_tuple(state, c, steps):
    u, v = state
    n = u.shape[0]
    for _ in range(steps):
        for i in range(1, n - 1):
            v[i] += c * (u[i - 1] - 2.0 * u[i] + u[i + 1])
        for i in range(n):
            u[i] += 0.1 * v[i]
    return (u * u).sum()


@numba.njit
def leapfrog_on_two_arrays(u, v, c, steps):
    return leapfrog_on_a_state_tuple((u, v), c, steps)


def _cache_decisions(log):
    return sorted(
        line.split()[0] for line in log.splitlines() if line.split()[:1] in (["tape"], ["reread"])
    )


def test_members_apart_are_cached_like_separate_arguments():
    # A call's tuple members that share no memory are as disjoint as separate
    # arguments: the engine re-reads what it re-reads for those (the final
    # energy loop reads u after the sweeps, and nothing writes it any more).
    rng = np.random.default_rng(40)
    u, v = rng.uniform(-1, 1, 12), rng.uniform(-1, 1, 12)
    zeros = (np.zeros(12), np.zeros(12))
    tup = enzpy.explain(leapfrog_on_a_state_tuple, Duplicated((u, v), zeros), Active(0.2), 3)
    flat = enzpy.explain(
        leapfrog_on_two_arrays, Duplicated(u, zeros[0]), Duplicated(v, zeros[1]), Active(0.2), 3
    )
    assert _cache_decisions(tup) == _cache_decisions(flat)
    assert "reread" in _cache_decisions(tup)
    ws = [rng.uniform(-1, 1, 12), rng.uniform(-1, 1, 12)]
    x, dx = (u.copy(), v.copy()), (ws[0].copy(), ws[1].copy())
    enzpy.autodiff(leapfrog_on_a_state_tuple, Duplicated(x, dx), 0.2, 3)
    fd = _fd_member_grads(leapfrog_on_a_state_tuple, (u, v), (0.2, 3), 1.0, ws)
    for got, want in zip(dx, fd, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)
