"""Custom rules in forward batch mode: the rule's forward function runs once
per direction; the directions after the first see the memory the call may
write as it was before the call (a copy), so the primal runs its side
effects once. Memory enzpy cannot copy is refused, and the drivers then run
one direction at a time."""

from __future__ import annotations

import ctypes

import llvmlite.binding as llvm
import numba
import numpy as np
import pytest
from numba import types

import enzpy
from enzpy import BatchDuplicated, Const, Duplicated
from enzpy.testing import check_derivative

RNG = np.random.default_rng(20261201)


@numba.njit
def square_rows_in_place(M, a):
    """M[i, j] = a M[i, j]^2 + M[i, 0] (reads a column it then writes)."""
    for i in range(M.shape[0]):
        m0 = M[i, 0]
        for j in range(M.shape[1]):
            M[i, j] = a * M[i, j] * M[i, j] + m0


def _fwd(cfg, M, dM, a, da):
    for i in range(M.shape[0]):
        m0, d0 = M[i, 0], dM[i, 0]
        for j in range(M.shape[1]):
            dM[i, j] = da * M[i, j] * M[i, j] + 2.0 * a * M[i, j] * dM[i, j] + d0
            M[i, j] = a * M[i, j] * M[i, j] + m0


enzpy.register_rule(square_rows_in_place, forward=_fwd)


@numba.njit
def twice_through_the_rule(M, a, out):
    square_rows_in_place(M, a)
    square_rows_in_place(M, 0.5 * a)
    for i in range(out.shape[0]):
        out[i] = np.sin(M[i, :]).sum()
    return (M * M).sum()


def _layouts():
    base = RNG.uniform(-0.8, 0.8, (4, 6))
    return {
        "C": np.ascontiguousarray(base[:, :3]),
        "F": np.asfortranarray(base[:, :3]),
        "strided": base[:, ::2],
    }


@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_a_rule_writing_an_argument_runs_each_direction_on_the_original_values(layout):
    M0 = _layouts()[layout]
    vs = [RNG.standard_normal(M0.shape) for _ in range(3)]
    das = (0.0, 1.0, -0.5)
    if layout == "strided":
        holder = np.zeros((M0.shape[0], 2 * M0.shape[1]))
        M = holder[:, ::2]
        M[:, :] = M0
    else:
        M = M0.copy(order="K")
    outs = [np.zeros(4) for _ in range(3)]
    tangents = enzpy.autodiff(
        twice_through_the_rule,
        BatchDuplicated(M, [v.copy() for v in vs]),
        BatchDuplicated(0.9, das),
        BatchDuplicated(np.zeros(4), outs),
        mode=enzpy.Forward,
    )
    # The primal ran once: M holds what a plain call leaves.
    expected = M0.copy()
    twice_through_the_rule.py_func(expected, 0.9, np.zeros(4))
    np.testing.assert_allclose(M, expected, rtol=1e-15)
    for v, da, got, dout in zip(vs, das, tangents, outs, strict=True):
        dM1 = v.copy()
        dout1 = np.zeros(4)
        one = enzpy.autodiff(
            twice_through_the_rule,
            Duplicated(M0.copy(), dM1),
            Duplicated(0.9, da),
            Duplicated(np.zeros(4), dout1),
            mode=enzpy.Forward,
        )
        assert got == pytest.approx(one, rel=1e-13)
        np.testing.assert_allclose(dout, dout1, rtol=1e-13, atol=1e-15)
        # And against central differences of the plain function.
        h = 1e-6

        def f(s, v=v, da=da):
            Mh = M0 + s * v
            out = np.zeros(4)
            r = twice_through_the_rule.py_func(Mh, 0.9 + s * da, out)
            return np.concatenate([[r], out])

        fd = (f(h) - f(-h)) / (2 * h)
        np.testing.assert_allclose(np.concatenate([[got], dout]), fd, rtol=1e-6, atol=1e-7)


# --- a C function that squares memory it is given as a raw pointer ----------


@numba.cfunc(types.int32(types.CPointer(types.float64), types.int64))
def _c_square(p, n):  # pragma: no cover - runs as C
    a = numba.carray(p, (n,))
    for i in range(n):
        a[i] = a[i] * a[i]
    return 0


llvm.add_symbol("enzpy_test_batch_square", _c_square.address)
c_square = types.ExternalFunction(
    "enzpy_test_batch_square", types.int32(types.voidptr, types.int64)
)


def _c_fwd(cfg, p, dp, n, dn):
    a = numba.carray(p, (n,), np.float64)
    d = numba.carray(dp, (n,), np.float64)
    for i in range(n):
        d[i] = 2.0 * a[i] * d[i]
        a[i] = a[i] * a[i]
    return np.int32(0)


enzpy.register_rule("enzpy_test_batch_square", forward=_c_fwd)


@numba.njit
def cubed_after_c_square(x):
    c_square(x.ctypes, x.size)
    return (x * x * x).sum()


@numba.njit
def cubed_after_c_square_of_a_copy(x):
    y = x.copy()
    c_square(y.ctypes, y.size)
    return (y * y * y).sum()


def test_a_raw_pointer_into_an_argument_is_refused_in_batch_mode_and_drivers_fall_back():
    x = np.array([1.0, -2.0, 0.5])
    with pytest.raises(enzpy.UnsupportedError, match="enzpy_test_batch_square.*raw pointer"):
        enzpy.autodiff(
            cubed_after_c_square,
            BatchDuplicated(x.copy(), (np.ones(3), np.zeros(3))),
            mode=enzpy.Forward,
        )
    # f = sum x^6: the Jacobian's chunks fall back to one direction each.
    np.testing.assert_allclose(enzpy.jacobian(cubed_after_c_square, x.copy()), 6 * x**5)


def test_a_raw_pointer_into_an_array_the_kernel_allocated_is_copied_per_direction():
    x = np.array([1.0, -2.0, 0.5])
    vs = (np.ones(3), np.array([0.0, 1.0, 0.0]), np.array([0.5, 0.0, -1.0]))
    got = enzpy.autodiff(
        cubed_after_c_square_of_a_copy,
        BatchDuplicated(x.copy(), [v.copy() for v in vs]),
        mode=enzpy.Forward,
    )
    for v, g in zip(vs, got, strict=True):
        assert g == pytest.approx(float((6 * x**5) @ v), rel=1e-14)
    np.testing.assert_array_equal(x, [1.0, -2.0, 0.5])


def test_a_const_array_the_rule_writes_with_derivatives_is_refused_naming_it():
    # M's new contents depend on a: as Const it could not carry that.
    M = RNG.uniform(-0.5, 0.5, (3, 3))
    calls = (
        (
            enzpy.Forward,
            BatchDuplicated(0.9, (1.0, 2.0)),
            BatchDuplicated(np.zeros(3), [np.zeros(3), np.zeros(3)]),
        ),
        (enzpy.Forward, Duplicated(0.9, 1.0), Duplicated(np.zeros(3), np.zeros(3))),
    )
    for mode, a, out in calls:
        with pytest.raises(enzpy.ActivityError, match="argument 'M', which is Const"):
            enzpy.autodiff(twice_through_the_rule, Const(M.copy()), a, out, mode=mode)


def test_a_rule_writing_a_const_array_from_const_inputs_needs_no_derivative():
    M = RNG.uniform(-0.5, 0.5, (3, 3))
    expected = M.copy()
    twice_through_the_rule.py_func(expected, 0.9, np.zeros(3))
    out = [np.ones(3), np.ones(3)]
    t = enzpy.autodiff(
        twice_through_the_rule,
        Const(M),
        Const(0.9),
        BatchDuplicated(np.zeros(3), out),
        mode=enzpy.Forward,
    )
    assert t == (0.0, 0.0)
    np.testing.assert_allclose(M, expected, rtol=1e-15)
    for o in out:
        np.testing.assert_array_equal(o, 0.0)  # out is overwritten by constants


# --- rules for C functions called through their address ---------------------


@numba.cfunc(types.void(types.CPointer(types.float64), types.int64, types.float64))
def _c_scale_squares(p, n, a):  # pragma: no cover - runs as C
    x = numba.carray(p, (n,))
    for i in range(n):
        x[i] = a * x[i] * x[i]


def _scale_fwd(cfg, p, dp, n, dn, a, da):
    x = numba.carray(p, (n,), np.float64)
    dx = numba.carray(dp, (n,), np.float64)
    for i in range(n):
        dx[i] = 2.0 * a * x[i] * dx[i] + da * x[i] * x[i]
        x[i] = a * x[i] * x[i]


def _scale_aug(cfg, p, n, a):
    x = numba.carray(p, (n,), np.float64)
    kept = x.copy()  # the call overwrites it
    for i in range(n):
        x[i] = a * x[i] * x[i]
    return kept


def _scale_rev(cfg, kept, p, dp, n, dn, a, da):
    dx = numba.carray(dp, (n,), np.float64)
    abar = 0.0
    for i in range(n):
        abar += dx[i] * kept[i] * kept[i]
        dx[i] = 2.0 * a * kept[i] * dx[i]
    return abar


enzpy.register_rule(_c_scale_squares, forward=_scale_fwd, augmented=_scale_aug, reverse=_scale_rev)

# numba looks a cfunc called directly up at run time: kernels call it
# through its ctypes function (a constant address), or through any other
# ctypes function of the same address.
_c_scale = _c_scale_squares.ctypes
_as_ctypes = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_double)(
    _c_scale_squares.address
)


@numba.njit
def sine_of_scaled_squares(x, a):
    y = x.copy()
    _c_scale(y.ctypes, y.size, a)
    return np.sin(y).sum()


@numba.njit
def through_ctypes(x, a):
    y = x.copy()
    for _ in range(2):
        _as_ctypes(y.ctypes, y.size, a)
    return np.sin(y).sum()


def test_a_rule_for_a_cfunc_called_by_address_in_every_mode():
    x = np.array([0.3, -0.8, 0.5])
    rep = check_derivative(sine_of_scaled_squares, x, 0.7, report=True)
    assert rep.ok, rep


def test_a_rule_for_a_ctypes_function_of_the_same_address_serves_it_too():
    rep = check_derivative(through_ctypes, np.array([0.3, -0.8, 0.5]), 0.9, report=True)
    assert rep.ok, rep


@numba.njit
def add_square_of(out, x):
    for i in range(out.shape[0]):
        out[i] += x[i] * x[i]


def _add_square_fwd(cfg, out, dout, x, dx):
    for i in range(out.shape[0]):
        dout[i] += 2.0 * x[i] * dx[i]
        out[i] += x[i] * x[i]


enzpy.register_rule(add_square_of, forward=_add_square_fwd)


@numba.njit
def squares_into_itself(x):
    add_square_of(x, x)
    return (x * x).sum()


def test_a_written_argument_sharing_memory_with_another_is_refused_in_batch_mode():
    # Lanes 2.. run on a copy of the written argument, which would no longer
    # be the other argument: an error, never a lane computed on other data.
    x = np.array([0.5, -1.0, 2.0])
    one = enzpy.autodiff(squares_into_itself, Duplicated(x.copy(), np.ones(3)), mode=enzpy.Forward)
    y = x + x * x
    assert one == pytest.approx(float((2 * y * (1 + 2 * x)).sum()))
    with pytest.raises(ValueError, match="add_square_of.*shares memory"):
        enzpy.autodiff(
            squares_into_itself,
            BatchDuplicated(x.copy(), (np.ones(3), np.zeros(3))),
            mode=enzpy.Forward,
        )
