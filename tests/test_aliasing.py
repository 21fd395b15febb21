"""Arguments that share memory: derivatives stay right when two arguments
are the same array or overlapping views, and the engine re-reads arrays
instead of taping them only when this call's arrays are disjoint."""

import collections

import numba
import numpy as np
import pytest
from kernels import dot
from numpy.lib.stride_tricks import as_strided, sliding_window_view

import enzpy
from enzpy import Active, BatchDuplicated, Const, Duplicated, _overlap
from enzpy._values import overlaps_itself


@numba.njit
def square_into(x, y):
    for i in range(x.shape[0]):
        y[i] = x[i] * x[i]


@numba.njit
def shift_add(x, y):
    # y[i] = x[i] + x[i+1]; with y a view of x shifted by one this reads
    # values that earlier iterations overwrote.
    for i in range(y.shape[0]):
        y[i] = x[i] + 2.0 * x[i + 1]


def test_same_array_as_input_and_output_is_an_in_place_update():
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, 8)
    x = x0.copy()
    w = rng.standard_normal(8)
    dx = w.copy()
    enzpy.autodiff(square_into, Duplicated(x, dx), Duplicated(x, dx))
    np.testing.assert_allclose(x, x0 * x0)
    np.testing.assert_allclose(dx, 2 * x0 * w, rtol=1e-14)


def test_overlapping_views_read_overwritten_values_correctly():
    rng = np.random.default_rng(1)
    n = 9
    buf0 = rng.uniform(-1, 1, n + 1)
    w = rng.standard_normal(n)

    def run(buf):
        shift_add(buf[: n + 1], buf[:n])

    # Reference: finite differences of the whole buffer's map buf -> buf.
    def f(b):
        b = b.copy()
        run(b)
        return b

    J = np.zeros((n + 1, n + 1))
    h = 1e-6
    for j in range(n + 1):
        e = np.zeros(n + 1)
        e[j] = h
        J[:, j] = (f(buf0 + e) - f(buf0 - e)) / (2 * h)
    wbuf = np.concatenate([w, [0.5]])  # cotangent of the buffer after the call
    buf = buf0.copy()
    dbuf = wbuf.copy()
    enzpy.autodiff(
        shift_add, Duplicated(buf[: n + 1], dbuf[: n + 1]), Duplicated(buf[:n], dbuf[:n])
    )
    np.testing.assert_allclose(buf, f(buf0))
    np.testing.assert_allclose(dbuf, J.T @ wbuf, rtol=1e-7, atol=1e-9)


def test_disjoint_arrays_are_reread_and_aliased_ones_taped():
    x, y = np.ones(4), np.zeros(4)
    disjoint = enzpy.explain(square_into, Duplicated(x, np.zeros(4)), Duplicated(y, np.zeros(4)))
    assert "reread" in disjoint
    aliased = enzpy.explain(square_into, Duplicated(x, np.zeros(4)), Duplicated(x, np.zeros(4)))
    assert "reread" not in aliased
    assert "tape" in aliased


@numba.njit
def _axpy_into(x, y, a):
    for i in range(x.shape[0]):
        y[i] = y[i] + a * x[i] * x[i]


def test_one_buffer_with_two_different_shadows_is_refused():
    x = np.array([0.5, -0.3])
    d1, d2 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    with pytest.raises(enzpy.EnzpyValueError, match="shadows"):
        enzpy.autodiff(_axpy_into, Duplicated(x, d1), Duplicated(x, d2), enzpy.Active(0.7))
    np.testing.assert_array_equal(d1, [1.0, 0.0])
    np.testing.assert_array_equal(x, [0.5, -0.3])


def test_const_alias_of_a_duplicated_array_is_refused():
    x = np.array([0.5, -0.3])
    with pytest.raises(enzpy.EnzpyValueError, match="Const"):
        enzpy.autodiff(_axpy_into, x, Duplicated(x, np.ones(2)), enzpy.Active(0.7))


def test_batch_lanes_are_checked_for_aliasing_too():
    x = np.array([0.5, -0.3])
    lanes1 = (np.zeros(2), np.zeros(2))
    lanes2 = (np.zeros(2), np.ones(2))
    with pytest.raises(enzpy.EnzpyValueError, match="shadows"):
        enzpy.autodiff(
            _axpy_into,
            enzpy.BatchDuplicated(x, lanes1),
            enzpy.BatchDuplicated(x, lanes2),
            enzpy.BatchDuplicated(0.7, (0.0, 0.0)),
            mode=enzpy.Forward,
        )


# -- aliasing hidden in containers (issue #10) ---------------------------------


@numba.njit
def _dot_first(x, t):
    s = 0.0
    for i in range(x.shape[0]):
        s += x[i] * t[0][i]
    return s


@numba.njit
def _dot_nested(x, t):
    s = 0.0
    for i in range(x.shape[0]):
        s += x[i] * t[1][0][i]
    return s


_Pair = collections.namedtuple("_Pair", "a scale")


@numba.njit
def _dot_named(x, p):
    s = 0.0
    for i in range(x.shape[0]):
        s += x[i] * p.a[i] * p.scale
    return s


def test_const_tuple_holding_a_duplicated_array_is_refused_untouched():
    x = np.array([1.0, 2.0, 3.0])
    dx = np.zeros(3)
    with pytest.raises(enzpy.EnzpyValueError, match="inside argument 1 .*argument 0"):
        enzpy.autodiff(_dot_first, Duplicated(x, dx), Const((x,)))
    np.testing.assert_array_equal(dx, 0.0)
    np.testing.assert_array_equal(x, [1.0, 2.0, 3.0])


@pytest.mark.parametrize("mode", [enzpy.Reverse, enzpy.Forward])
def test_const_alias_at_any_depth_and_in_named_tuples_is_refused(mode):
    x = np.array([1.0, 2.0, 3.0])
    with pytest.raises(enzpy.EnzpyValueError, match="Const"):
        enzpy.autodiff(_dot_nested, Duplicated(x, np.zeros(3)), Const((1.0, (x[::-1],))), mode=mode)
    with pytest.raises(enzpy.EnzpyValueError, match="Const"):
        enzpy.autodiff(_dot_named, Duplicated(x, np.zeros(3)), _Pair(x, 2.0), mode=mode)


def test_const_tuple_of_separate_arrays_gives_the_partial_derivative():
    rng = np.random.default_rng(5)
    x, t = rng.standard_normal(4), rng.standard_normal(4)
    dx = np.zeros(4)
    enzpy.autodiff(_dot_first, Duplicated(x, dx), Const((t,)))
    np.testing.assert_allclose(dx, t, rtol=1e-14)  # d/dx sum x*t = t
    dx = np.zeros(4)
    enzpy.autodiff(_dot_named, Duplicated(x, dx), _Pair(x.copy(), 3.0))
    np.testing.assert_allclose(dx, 3.0 * x, rtol=1e-14)


# -- shadows that alias what they should not -------------------------------------


def test_shadow_that_is_another_arguments_primal_is_refused_naming_both():
    x, y = np.array([1.0, 2.0]), np.array([3.0, 4.0])
    with pytest.raises(enzpy.EnzpyValueError, match="shadow of argument 0 .*argument 1"):
        enzpy.autodiff(dot, Duplicated(x, y), Duplicated(y, np.zeros(2)))
    np.testing.assert_array_equal(y, [3.0, 4.0])
    with pytest.raises(enzpy.EnzpyValueError, match="shadow of argument 0 .*argument 1"):
        enzpy.autodiff(dot, Duplicated(x, y), Const(y))
    with pytest.raises(enzpy.EnzpyValueError, match="shadow of argument 0 .*argument 1"):
        enzpy.autodiff(_dot_first, Duplicated(x, y), Const((y,)))


def test_shadow_overlapping_its_own_primal_is_refused():
    buf = np.zeros(4)
    x, dx = buf[:2], buf[1:3]
    with pytest.raises(enzpy.EnzpyValueError, match="argument 0"):
        enzpy.autodiff(dot, Duplicated(x, dx), np.ones(2))
    np.testing.assert_array_equal(buf, 0.0)


@pytest.mark.parametrize("mode", [enzpy.Reverse, enzpy.Forward])
def test_one_shadow_buffer_for_two_different_primals_is_refused(mode):
    x, y = np.array([1.0, 2.0]), np.array([3.0, 4.0])
    d = np.zeros(2)
    with pytest.raises(enzpy.EnzpyValueError, match="arguments 0 and 1 are different"):
        enzpy.autodiff(dot, Duplicated(x, d), Duplicated(y, d), mode=mode)
    big = np.zeros(3)
    with pytest.raises(enzpy.EnzpyValueError, match="arguments 0 and 1 are different"):
        enzpy.autodiff(dot, Duplicated(x, big[:2]), Duplicated(y, big[1:]), mode=mode)
    np.testing.assert_array_equal(big, 0.0)


def test_shadows_shared_across_batch_lanes_are_refused():
    x, y = np.array([1.0, 2.0]), np.array([3.0, 4.0])
    a, b, c = np.zeros(2), np.zeros(2), np.zeros(2)
    with pytest.raises(enzpy.EnzpyValueError, match="lane"):
        enzpy.autodiff(
            dot, enzpy.BatchDuplicated(x, (a, b)), enzpy.BatchDuplicated(y, (b, c)), ret=(1.0, 1.0)
        )


def test_mirrored_shadows_of_one_buffer_still_differentiate():
    # The accepted form of sharing: the shadows overlap exactly as the primals.
    x0 = np.array([0.5, -1.5, 2.0])
    x, dx = x0.copy(), np.zeros(3)
    enzpy.autodiff(dot, Duplicated(x, dx), Duplicated(x, dx))
    np.testing.assert_allclose(dx, 2 * x0, rtol=1e-14)  # d/dx sum x*x


@numba.njit
def _doubled_then_read(x, c):
    x[1] = x[0] * 2.0
    return x[1] * c[1]


def test_a_compiled_derivative_refuses_arrays_that_share_memory_the_wrong_way():
    # autodiff checks each call in Python; a compiled derivative (callable
    # from njit) checks them in its wrapper, before anything runs
    x = np.array([1.0, 2.0, 3.0])
    d = enzpy.derivative(_doubled_then_read, Duplicated(x.copy(), np.zeros(3)), Const(x.copy()))
    xx, dx = x.copy(), np.zeros(3)
    with pytest.raises(ValueError, match="one Const and one differentiated"):
        d(xx, dx, xx, 1.0)  # the Const argument is the differentiated one
    with pytest.raises(ValueError, match="a shadow may not share memory"):
        d(xx, xx, x.copy(), 1.0)  # the shadow is the array itself
    np.testing.assert_array_equal(xx, x)

    @numba.njit
    def from_njit(a, da, c):
        return d(a, da, c, 1.0)

    with pytest.raises(ValueError, match="one Const and one differentiated"):
        from_njit(xx, dx, xx)
    # apart, the call runs: the function is 2 x0 c1, so d/dx0 = 2 c1
    dx = np.zeros(3)
    d(xx, dx, x.copy(), 1.0)
    np.testing.assert_allclose(dx, [2.0 * x[1], 0.0, 0.0])


@numba.njit
def _square_into_second(xs, y):
    a, b = xs
    s = 0.0
    for i in range(a.shape[0]):
        b[i] = a[i] * a[i]
        s += b[i] * y[i]
    return s


def test_a_compiled_derivative_checks_the_arrays_inside_tuples():
    a, b, y = np.array([0.5, -1.0, 2.0]), np.zeros(3), np.array([1.0, 2.0, 3.0])
    d = enzpy.derivative(
        _square_into_second, Duplicated((a, b), (np.zeros(3), np.zeros(3))), Const(y)
    )
    da, db = np.zeros(3), np.ones(3)
    with pytest.raises(ValueError, match=r"arguments x0\[1\] and x1 .*one Const"):
        d((a, b), (da, db), b, 1.0)  # the Const array is the tuple's second array
    with pytest.raises(ValueError, match=r"arguments x0\[0\] and dx0\[1\] .*a shadow may not"):
        d((a, b), (da, a), y, 1.0)  # a shadow inside the shadow tuple is an array of the call
    with pytest.raises(ValueError, match=r"arguments dx0\[0\] and dx0\[1\] are shadows"):
        d((a, b), (da, da), y, 1.0)  # one buffer for the shadows of two distinct arrays

    @numba.njit
    def from_njit(xs, dxs, c):
        return d(xs, dxs, c, 1.0)

    with pytest.raises(ValueError, match=r"x0\[1\] and x1"):
        from_njit((a, b), (da, db), b)
    np.testing.assert_array_equal(a, [0.5, -1.0, 2.0])
    np.testing.assert_array_equal(da, 0.0)
    # apart, the call runs: s = sum a^2 y with b's cotangent 1 on entry
    from_njit((a, b), (da, db), y)
    np.testing.assert_allclose(da, 2 * a * y + 2 * a, rtol=1e-14)
    np.testing.assert_array_equal(db, 0.0)


@numba.njit
def _sines_into(x, out):
    for i in range(x.shape[0]):
        out[i] = np.sin(x[i])


def test_a_compiled_batch_derivative_checks_every_lane():
    x, out = np.array([0.1, 0.7, -0.4]), np.zeros(3)
    lanes = (np.ones(3), np.arange(3.0))
    d = enzpy.derivative(
        _sines_into,
        enzpy.BatchDuplicated(x, lanes),
        enzpy.BatchDuplicated(out, (np.zeros(3), np.zeros(3))),
        mode=enzpy.Forward,
        ret=Const,
    )
    with pytest.raises(ValueError, match=r"arguments x0 and dx0\[1\] .*a shadow may not"):
        d(x, (np.ones(3), x), out, (np.zeros(3), np.zeros(3)))  # a lane is the array itself
    shared = np.zeros(3)
    with pytest.raises(ValueError, match=r"arguments dx1\[0\] and dx1\[1\] are one array"):
        d(x, (np.ones(3), np.ones(3)), out, (shared, shared))  # two lanes, one buffer
    np.testing.assert_array_equal(x, [0.1, 0.7, -0.4])
    t0, t1 = np.zeros(3), np.zeros(3)
    d(x, (np.ones(3), np.arange(3.0)), out, (t0, t1))
    np.testing.assert_allclose(t0, np.cos(x), rtol=1e-14)
    np.testing.assert_allclose(t1, np.cos(x) * np.arange(3.0), rtol=1e-14)


def test_a_compiled_batch_reverse_derivative_checks_every_lane():
    x, y = np.array([1.0, 2.0]), np.array([3.0, 4.0])
    d = enzpy.derivative(
        dot,
        enzpy.BatchDuplicated(x, (np.zeros(2), np.zeros(2))),
        enzpy.BatchDuplicated(y, (np.zeros(2), np.zeros(2))),
    )
    a, b, c = np.zeros(2), np.zeros(2), np.zeros(2)
    with pytest.raises(ValueError, match=r"arguments dx0\[1\] and dx1\[0\] are shadows"):
        d(x, (a, b), y, (b, c), (1.0, 1.0))  # lane 1 of x and lane 0 of y share a buffer
    with pytest.raises(ValueError, match=r"arguments dx0\[0\] and x1 .*a shadow may not"):
        d(x, (y, b), y, (a, c), (1.0, 1.0))
    d(x, (a, b), y, (c, np.zeros(2)), (1.0, 2.0))
    np.testing.assert_allclose(a, y, rtol=1e-14)
    np.testing.assert_allclose(b, 2 * y, rtol=1e-14)
    np.testing.assert_allclose(c, x, rtol=1e-14)


# --- arrays whose own elements share memory ---------------------------------------


@numba.njit
def weighted_sines(W, c):
    s = 0.0
    for i in range(W.shape[0]):
        for j in range(W.shape[1]):
            s += np.sin(c * W[i, j]) * (j + 1)
    return s


def _windows():
    return sliding_window_view(np.linspace(0.1, 0.9, 7), 3)  # (5, 3), rows overlap


def _broadcast():
    return np.broadcast_to(np.array([0.3, 0.5, 0.7]), (5, 3))  # stride 0 along rows


@pytest.mark.parametrize("make", [_windows, _broadcast], ids=["windows", "broadcast"])
@pytest.mark.parametrize("mode", [enzpy.Reverse, enzpy.Forward], ids=["reverse", "forward"])
def test_differentiated_array_whose_elements_share_memory_is_refused(make, mode):
    # No shadow can hold one derivative per element: the per-element
    # gradients were summed into shared slots (reverse) or overwritten
    # (forward). A Const one is fine.
    W = make()
    dW = np.full((5, 3), 7.0)
    second = Active(0.5) if mode is enzpy.Reverse else Const(0.5)
    with pytest.raises(enzpy.EnzpyValueError, match=r"argument 0: .*share memory.*copy"):
        enzpy.autodiff(weighted_sines, Duplicated(W, dW), second, mode=mode)
    assert np.all(dW == 7.0)
    _, dc = enzpy.autodiff(weighted_sines, Const(W), Active(0.5))
    dense = np.array(W)
    assert dc == pytest.approx(np.sum(np.cos(0.5 * dense) * dense * np.arange(1, 4)), rel=1e-13)


def test_shadows_whose_elements_share_memory_are_refused():
    W = np.array(_windows())
    for dW in (
        as_strided(np.zeros(7), (5, 3), (8, 8)),
        as_strided(np.zeros(3), (5, 3), (0, 8)),
    ):
        with pytest.raises(enzpy.EnzpyValueError, match="elements of the shadow share memory"):
            enzpy.autodiff(weighted_sines, Duplicated(W, dW), Active(0.5))
    lanes = [np.zeros((5, 3)), as_strided(np.zeros(3), (5, 3), (0, 8))]
    with pytest.raises(enzpy.EnzpyValueError, match="direction 1"):
        enzpy.autodiff(weighted_sines, BatchDuplicated(W, lanes), Active(0.5))


@numba.njit
def pair_of_windows(arrs, c):
    a, b = arrs
    return weighted_sines(a, c) + weighted_sines(b, c)


def test_tuple_member_whose_elements_share_memory_is_refused():
    W = np.array(_windows())
    with pytest.raises(enzpy.EnzpyValueError, match="member 1 of the tuple"):
        enzpy.autodiff(
            pair_of_windows,
            Duplicated((W, _windows()), (np.zeros((5, 3)), np.zeros((5, 3)))),
            Active(0.5),
        )


def test_compiled_derivatives_and_split_refuse_them_at_the_call():
    strided = np.random.default_rng(3).random((5, 6))[:, ::2]  # layout A: any strides
    dstrided = np.zeros((5, 6))[:, ::2]
    d = enzpy.derivative(weighted_sines, Duplicated(strided, dstrided), Active(0.5))
    windows = as_strided(np.linspace(0.1, 0.9, 7), (5, 3), (8, 8))  # writeable

    @numba.njit
    def caller(W, dW):
        return d(W, dW, 0.5, 1.0)

    for call in (lambda W, dW: d(W, dW, 0.5, 1.0), caller):
        with pytest.raises(enzpy.EnzpyValueError, match="argument x0 has elements that share"):
            call(windows, dstrided)
        with pytest.raises(enzpy.EnzpyValueError, match="argument dx0 has elements that share"):
            call(strided, as_strided(np.zeros(7), (5, 3), (8, 8)))
    dW = np.zeros((5, 6))[:, ::2]
    (dc,) = d(strided, dW, 0.5, 1.0)
    np.testing.assert_allclose(dW, 0.5 * np.cos(0.5 * strided) * np.arange(1, 4), rtol=1e-13)
    fwd, rev = enzpy.split(weighted_sines, Duplicated(strided, dstrided), Active(0.5))
    with pytest.raises(enzpy.EnzpyValueError, match="argument a0 has elements that share"):
        fwd(windows, 0.5)
    _, tape = fwd(strided, 0.5)
    with pytest.raises(enzpy.EnzpyValueError, match="argument d0 has elements that share"):
        rev(tape, as_strided(np.zeros(3), (5, 3), (0, 8)), 1.0)


def _shares_by_brute_force(a):
    offsets = [
        sum(i * s for i, s in zip(idx, a.strides, strict=True)) for idx in np.ndindex(a.shape)
    ]
    offsets.sort()
    return any(q - p < a.itemsize for p, q in zip(offsets, offsets[1:], strict=False))


def test_overlaps_itself_agrees_with_comparing_every_element():
    # random layouts over one buffer, interleaved ones among them (strides
    # that do not nest, yet no two elements meet)
    rng = np.random.default_rng(4)
    buf = np.zeros(400)
    seen = {True: 0, False: 0}
    for _ in range(400):
        ndim = int(rng.integers(1, 4))
        shape = tuple(int(n) for n in rng.integers(1, 5, ndim))
        strides = tuple(8 * int(s) for s in rng.integers(-6, 7, ndim))
        reach = sum(abs(s) * (n - 1) for s, n in zip(strides, shape, strict=True))
        start = 8 * 200 - sum(min(s, 0) * (n - 1) for s, n in zip(strides, shape, strict=True))
        if reach + start >= buf.nbytes:
            continue
        a = as_strided(buf[start // 8 :], shape, strides)
        expected = _shares_by_brute_force(a)
        assert overlaps_itself(a) == expected, (shape, strides)
        # the compiled wrappers' quicker test never refuses a layout that is apart
        assert not _overlap._overlaps_itself(a) or expected, (shape, strides)
        seen[expected] += 1
    assert seen[True] > 50 and seen[False] > 50, seen
    assert not overlaps_itself(as_strided(buf, (2, 2), (8, 16)))  # interleaved, apart
    assert overlaps_itself(as_strided(buf, (3, 3), (8, 16)))
