"""Reverse-mode batch: ``BatchDuplicated(x, (dx1, ..., dxW))`` propagates W
cotangents in one reverse sweep (one primal evaluation, one tape). Float
scalars stay ``Active`` and get a tuple of W adjoints; a float return is
seeded per lane by ``ret=(s1, ..., sW)`` (1.0 in every lane by default).

Checked: a batch call equals W separate reverse calls for every kernel family
(scalar math, loops, branches, while loops, an in-place stencil, allocations,
np.dot); ``jacobian(mode=Reverse)`` in chunks against finite differences; and
forward batch against reverse batch, ``<J V, W> == <V, Jᵀ W>``."""

import numba
import numpy as np
import pytest

import enzpy
from enzpy import Active, BatchDuplicated, Const, Duplicated, Forward, Reverse


@numba.njit
def scalar_math(x, a):
    s = 0.0
    for i in range(x.shape[0]):
        s += np.sin(a * x[i]) * np.exp(-x[i] * x[i]) + np.log1p(x[i] * x[i]) / (1.0 + a * a)
    return s


@numba.njit
def loops(x, y, a):
    n = x.shape[0]
    for i in range(n):
        acc = 0.0
        for j in range(n):
            acc += x[j] * np.cos(a * (i - j))
        y[i] = acc * x[i]
    return y[0] * a


@numba.njit
def branches(x, y, a):
    s = 0.0
    for i in range(x.shape[0]):
        if x[i] > 0.0:
            y[i] = a * x[i] * x[i]
        else:
            y[i] = np.cos(x[i]) - a
        s += y[i] / (1.0 + i)
    return s


@numba.njit
def while_loop(x, a):
    s = 0.0
    for i in range(x.shape[0]):
        v = np.abs(x[i]) + 0.1
        while v < 10.0:
            v = v * a + 0.5
        s += v * x[i]
    return s


@numba.njit
def heat_in_place(u, a, steps):
    n = u.shape[0]
    for _ in range(steps):
        prev = u[0]
        for i in range(1, n - 1):
            cur = u[i]
            u[i] = cur + a * (prev - 2.0 * cur + u[i + 1])
            prev = cur


@numba.njit
def allocation(x, y):
    t = np.empty_like(x)
    for i in range(x.shape[0]):
        t[i] = np.sin(x[i])
    z = t * t + x
    for i in range(y.shape[0]):
        y[i] = z[i] * x[i]
    return np.sum(t)


@numba.njit
def blas(A, x, y):
    z = np.dot(A, x)
    for i in range(y.shape[0]):
        y[i] = np.tanh(z[i])
    return np.dot(z, z)


def _rng(seed=0):
    return np.random.default_rng(seed)


def _batch_vs_separate(f, spec, width, seeds, rng):
    """``spec``: per argument ("dup", array), ("active", float) or ("const",
    value). One batch call with random cotangents per lane and return seeds
    ``seeds`` (None: ret=Const) against ``width`` width-one derivatives
    called with the same cotangent and seed."""
    cots = [
        [rng.standard_normal(v.shape) for _ in range(width)] if kind == "dup" else None
        for kind, v in spec
    ]
    bargs, shadows = [], []
    for (kind, v), c in zip(spec, cots, strict=True):
        if kind == "dup":
            lanes = tuple(ck.copy() for ck in c)
            shadows.append(lanes)
            bargs.append(BatchDuplicated(v.copy(), lanes))
        elif kind == "active":
            bargs.append(Active(v))
        else:
            bargs.append(Const(v))
    ret = Const if seeds is None else tuple(seeds)
    res = enzpy.autodiff(f, *bargs, ret=ret)
    assert len(res) == len(spec)

    ex = [
        Duplicated(v.copy(), np.zeros_like(v))
        if kind == "dup"
        else Active(v)
        if kind == "active"
        else Const(v)
        for kind, v in spec
    ]
    d1 = enzpy.derivative(f, *ex, ret=Const if seeds is None else Active)
    for k in range(width):
        call, dups = [], []
        for (kind, v), c in zip(spec, cots, strict=True):
            call.append(v.copy() if kind == "dup" else v)
            if kind == "dup":
                dups.append(c[k].copy())
                call.append(dups[-1])
        if seeds is not None:
            call.append(seeds[k])
        one = d1(*call)
        actives = iter(one)
        j = 0
        for i, (kind, _) in enumerate(spec):
            if kind == "dup":
                np.testing.assert_allclose(shadows[j][k], dups[j], rtol=1e-13, atol=1e-13)
                j += 1
            elif kind == "active":
                assert isinstance(res[i], tuple) and len(res[i]) == width
                np.testing.assert_allclose(res[i][k], next(actives), rtol=1e-13, atol=1e-13)
            else:
                assert res[i] is None
    return res


W = 4


def test_scalar_math():
    rng = _rng(1)
    spec = [("dup", rng.standard_normal(7)), ("active", 0.8)]
    _batch_vs_separate(scalar_math, spec, W, [1.0, -0.5, 2.0, 0.0], rng)


def test_default_seed_is_one_in_every_lane():
    x = _rng(2).standard_normal(5)
    dxs = tuple(np.zeros(5) for _ in range(3))
    _, da = enzpy.autodiff(scalar_math, BatchDuplicated(x, dxs), Active(0.3))
    g = np.zeros(5)
    _, da1 = enzpy.autodiff(scalar_math, Duplicated(x, g), Active(0.3))
    # Adjoint sums may be reassociated (vectorized) differently per width:
    # equal to rounding, not bit for bit.
    assert da == pytest.approx((da1,) * 3, rel=1e-14)
    for d in dxs:
        np.testing.assert_allclose(d, g, rtol=1e-14)


def test_loops():
    rng = _rng(3)
    spec = [("dup", rng.standard_normal(6)), ("dup", np.zeros(6)), ("active", 0.4)]
    _batch_vs_separate(loops, spec, W, [0.3, 1.0, -1.0, 2.0], rng)


def test_branches():
    rng = _rng(4)
    spec = [("dup", rng.standard_normal(9)), ("dup", np.zeros(9)), ("active", 1.3)]
    _batch_vs_separate(branches, spec, W, [1.0, 1.0, -2.0, 0.5], rng)


def test_while_loop():
    rng = _rng(5)
    spec = [("dup", rng.standard_normal(6)), ("active", 1.7)]
    _batch_vs_separate(while_loop, spec, 3, [1.0, 0.25, -3.0], rng)


def test_in_place_stencil():
    rng = _rng(6)
    spec = [("dup", rng.standard_normal(12)), ("active", 0.2), ("const", 5)]
    res = _batch_vs_separate(heat_in_place, spec, W, None, rng)
    assert res[2] is None


def test_allocation():
    rng = _rng(7)
    spec = [("dup", rng.standard_normal(8)), ("dup", np.zeros(8))]
    _batch_vs_separate(allocation, spec, W, [1.0, -1.0, 0.0, 3.0], rng)


def test_blas_dot():
    rng = _rng(8)
    spec = [
        ("dup", rng.standard_normal((5, 4))),
        ("dup", rng.standard_normal(4)),
        ("dup", np.zeros(5)),
    ]
    _batch_vs_separate(blas, spec, W, [1.0, 0.5, -2.0, 0.0], rng)


def test_width_one_batch_and_wide_batch():
    rng = _rng(9)
    spec = [("dup", rng.standard_normal(7)), ("active", 0.8)]
    _batch_vs_separate(scalar_math, spec, 1, [2.0], rng)
    _batch_vs_separate(scalar_math, spec, 16, list(rng.standard_normal(16)), rng)


def test_active_tuple_argument():
    @numba.njit
    def f(x, ab):
        return ab[0] * np.sum(x) + ab[1] * ab[0]

    x = np.arange(3.0)
    dxs = tuple(np.zeros(3) for _ in range(2))
    _, dab = enzpy.autodiff(f, BatchDuplicated(x, dxs), Active((2.0, 5.0)), ret=(1.0, 3.0))
    assert dab == ((3.0 + 5.0, 2.0), (3 * (3.0 + 5.0), 3 * 2.0))
    np.testing.assert_array_equal(dxs[1], 3 * 2.0 * np.ones(3))


def test_scalar_only_batch_through_ret_seeds():
    @numba.njit
    def f(a, b):
        return a * a * b

    assert enzpy.autodiff(f, Active(2.0), Active(3.0), ret=(1.0, 0.5)) == (
        (12.0, 6.0),
        (4.0, 2.0),
    )


def test_derivative_is_callable_from_njit():
    x = _rng(10).standard_normal(6)
    dxs = (np.zeros(6), np.zeros(6))
    d = enzpy.derivative(scalar_math, BatchDuplicated(x, dxs), Active(0.5))

    @numba.njit
    def use(x, a):
        g0, g1 = np.zeros_like(x), np.zeros_like(x)
        (da,) = d(x, (g0, g1), a, (1.0, -1.0))
        return g0, g1, da

    g0, g1, da = use(x, 0.5)
    g = np.zeros(6)
    _, da1 = enzpy.autodiff(scalar_math, Duplicated(x, g), Active(0.5))
    np.testing.assert_allclose(g0, g, rtol=1e-14)
    np.testing.assert_allclose(g1, -g, rtol=1e-14)
    assert da == pytest.approx((da1, -da1), rel=1e-14)


def test_errors():
    x = np.ones(3)
    with pytest.raises(enzpy.EnzpyTypeError, match="Active"):
        enzpy.autodiff(
            scalar_math, BatchDuplicated(x, (np.zeros(3),)), BatchDuplicated(0.5, (0.0,))
        )
    with pytest.raises(enzpy.EnzpyValueError, match="same number"):
        enzpy.autodiff(
            loops,
            BatchDuplicated(x, (np.zeros(3),)),
            BatchDuplicated(np.zeros(3), (np.zeros(3), np.zeros(3))),
            Active(0.1),
        )
    with pytest.raises(enzpy.EnzpyValueError, match="mixing"):
        enzpy.autodiff(
            loops,
            BatchDuplicated(x, (np.zeros(3),)),
            Duplicated(np.zeros(3), np.zeros(3)),
            Active(0.1),
        )
    with pytest.raises(enzpy.EnzpyValueError, match="seeds"):
        enzpy.autodiff(
            scalar_math, BatchDuplicated(x, (np.zeros(3), np.zeros(3))), Active(0.1), ret=(1.0,)
        )
    with pytest.raises(enzpy.EnzpyValueError, match="reverse-mode batch"):
        enzpy.autodiff(
            scalar_math, BatchDuplicated(x, (np.zeros(3),)), 0.1, mode=Forward, ret=(1.0,)
        )


def _fd_jacobian(f, x, out, args, h=1e-6):
    J = np.zeros((out.size, x.size))
    for j in range(x.size):
        cols = []
        for sgn in (1, -1):
            xp = x.copy()
            xp.flat[j] += sgn * h
            o = out.copy()
            f(xp, o, *args)
            cols.append(o.ravel())
        J[:, j] = (cols[0] - cols[1]) / (2 * h)
    return J


@pytest.mark.parametrize("chunk", [None, 3, 64])
def test_jacobian_reverse_in_chunks(chunk):
    rng = _rng(11)
    x = rng.standard_normal(6)
    out = np.zeros(6)
    J = enzpy.jacobian(branches, x, 0.7, out=out, mode=Reverse, chunk=chunk)
    np.testing.assert_allclose(J, _fd_jacobian(branches, x, out, (0.7,)), rtol=1e-6, atol=1e-8)
    Jf = enzpy.jacobian(branches, x, 0.7, out=out, mode=Forward)
    np.testing.assert_allclose(J, Jf, rtol=1e-13, atol=1e-14)


def test_jacobian_reverse_of_blas_kernel():
    rng = _rng(12)
    A = rng.standard_normal((5, 3))
    x = rng.standard_normal(3)
    out = np.zeros(5)

    @numba.njit
    def g(x, y, A):
        blas(A, x, y)

    J = enzpy.jacobian(g, x, A, out=out, mode=Reverse, chunk=2)
    np.testing.assert_allclose(J, _fd_jacobian(g, x, out, (A,)), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "f, n, m, args",
    [
        (loops, 6, 6, (0.4,)),
        (branches, 7, 7, (1.1,)),
        (allocation, 5, 5, ()),
    ],
)
def test_forward_batch_against_reverse_batch(f, n, m, args):
    """<J V, W> == <V, Jᵀ W> for random V (n x k) and W (m x k), with one
    forward batch call and one reverse batch call."""
    rng = _rng(13)
    k = 5
    x = rng.standard_normal(n)
    V = [rng.standard_normal(n) for _ in range(k)]
    Wt = [rng.standard_normal(m) for _ in range(k)]
    JV = tuple(np.zeros(m) for _ in range(k))
    enzpy.autodiff(
        f,
        BatchDuplicated(x.copy(), tuple(v.copy() for v in V)),
        BatchDuplicated(np.zeros(m), JV),
        *args,
        mode=Forward,
        ret=Const,
    )
    JtW = tuple(np.zeros(n) for _ in range(k))
    enzpy.autodiff(
        f,
        BatchDuplicated(x.copy(), JtW),
        BatchDuplicated(np.zeros(m), tuple(w.copy() for w in Wt)),
        *args,
        ret=Const,
    )
    lhs = np.array([[JV[a] @ Wt[b] for b in range(k)] for a in range(k)])
    rhs = np.array([[V[a] @ JtW[b] for b in range(k)] for a in range(k)])
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12, atol=1e-12)


def test_forward_batch_against_reverse_batch_in_place():
    rng = _rng(14)
    k, n = 4, 10
    u = rng.standard_normal(n)
    V = [rng.standard_normal(n) for _ in range(k)]
    Wt = [rng.standard_normal(n) for _ in range(k)]
    JV = tuple(v.copy() for v in V)
    enzpy.autodiff(
        heat_in_place,
        BatchDuplicated(u.copy(), JV),
        BatchDuplicated(0.3, (0.0,) * k),
        4,
        mode=Forward,
    )
    JtW = tuple(w.copy() for w in Wt)
    _, da, _ = enzpy.autodiff(heat_in_place, BatchDuplicated(u.copy(), JtW), Active(0.3), 4)
    lhs = np.array([[JV[a] @ Wt[b] for b in range(k)] for a in range(k)])
    rhs = np.array([[V[a] @ JtW[b] for b in range(k)] for a in range(k)])
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12, atol=1e-12)
    assert len(da) == k
