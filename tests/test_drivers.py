"""The drivers built on autodiff (jacobian, hvp, hessian) protect the
caller's arrays the same way: ``f`` runs on private copies of ``x``, ``out``
and every array in ``args`` (``_drivers.replica``), so a function that writes
its inputs neither changes the caller's arrays nor sees its own writes from
an earlier sweep. References are analytic derivatives of the function of the
arguments' contents before the call."""

import collections

import numba
import numpy as np
import pytest

import enzpy
from enzpy._drivers import replica


@numba.njit
def scale_then_square_product(x):
    # Writes its input: g(x) = (3 x0)^2 x1^2 = 9 x0^2 x1^2.
    x[0] = 3.0 * x[0]
    return x[0] * x[0] * x[1] * x[1]


def hessian_of_scale_then_square_product(x):
    x0, x1 = x
    return np.array([[18 * x1**2, 36 * x0 * x1], [36 * x0 * x1, 18 * x0**2]])


def test_hessian_of_a_function_that_writes_its_input():
    x = np.array([0.7, -1.3])
    H = enzpy.hessian(scale_then_square_product, x)
    np.testing.assert_allclose(H, hessian_of_scale_then_square_product([0.7, -1.3]), rtol=1e-12)
    np.testing.assert_array_equal(x, [0.7, -1.3])


def test_hvp_of_a_function_that_writes_its_input_leaves_x_and_v():
    x, v = np.array([0.7, -1.3]), np.array([0.25, 2.0])
    hv = enzpy.hvp(scale_then_square_product, x, v)
    ref = hessian_of_scale_then_square_product([0.7, -1.3]) @ [0.25, 2.0]
    np.testing.assert_allclose(hv, ref, rtol=1e-12)
    np.testing.assert_array_equal(x, [0.7, -1.3])
    np.testing.assert_array_equal(v, [0.25, 2.0])


@numba.njit
def accumulate_then_scale(x, out, scratch):
    # Writes a Const argument it also reads (a counter): out = (scratch0 + 1) x**2.
    scratch[0] += 1.0
    for i in range(x.shape[0]):
        out[i] = scratch[0] * x[i] * x[i]


def jacobian_of_accumulate_then_scale(x, s0):
    return np.diag(2 * (s0 + 1.0) * x)


@pytest.mark.parametrize("mode", [enzpy.Forward, enzpy.Reverse])
def test_jacobian_sweeps_each_run_on_fresh_copies_of_written_args(mode):
    x = np.array([0.5, -1.0, 2.0])
    scratch = np.array([0.25])
    out = np.zeros(3)
    J = enzpy.jacobian(accumulate_then_scale, x, scratch, out=out, mode=mode, chunk=1)
    np.testing.assert_allclose(J, jacobian_of_accumulate_then_scale(x, 0.25), rtol=1e-13)
    np.testing.assert_array_equal(scratch, [0.25])
    np.testing.assert_array_equal(out, 0.0)
    np.testing.assert_array_equal(x, [0.5, -1.0, 2.0])


@numba.njit
def weighted_by_first(x, t):
    s = 0.0
    for i in range(x.shape[0]):
        s += x[i] * x[i] * t[0][i]
    return s


def test_hvp_refuses_a_const_alias_of_x_inside_args():
    x = np.array([1.0, 2.0])
    with pytest.raises(enzpy.EnzpyValueError, match="Const"):
        enzpy.hvp(weighted_by_first, x, np.ones(2), (x,))
    np.testing.assert_array_equal(x, [1.0, 2.0])


def test_replica_copies_every_array_and_keeps_how_they_share_memory():
    Pair = collections.namedtuple("Pair", "a b")
    buf = np.arange(6.0)
    ro = np.ones(2)
    ro.flags.writeable = False
    strided = np.arange(8.0)[::2]
    x, p, s, lst = replica((buf[:4], Pair(buf[2:], (ro, 3.0)), strided, [buf]))
    q, r = p.b
    assert type(p) is Pair and r == 3.0
    for a, b in [(x, buf[:4]), (p.a, buf[2:]), (q, ro), (s, strided), (lst[0], buf)]:
        assert not np.shares_memory(a, b)
        np.testing.assert_array_equal(a, b)
        assert a.strides == b.strides and a.flags.writeable == b.flags.writeable
    # Views of one buffer stay views of one (copied) buffer.
    x[3] = 100.0
    assert p.a[1] == 100.0 and lst[0][3] == 100.0
    assert buf[3] == 3.0


@numba.njit
def square_in_place_then_cube(x):
    x[0] = x[0] * x[0]
    return x[0] ** 3


@numba.njit
def square_a_copy_then_cube(x):
    x = x.copy()
    x[0] = x[0] * x[0]
    return x[0] ** 3


def test_hessian_of_a_nonlinear_write_into_x_is_refused_with_the_fix():
    x = np.array([1.5])
    with pytest.raises(enzpy.ActivityError, match=r"overwrites its first argument.*x.copy\(\)"):
        enzpy.hessian(square_in_place_then_cube, x)
    np.testing.assert_array_equal(x, [1.5])
    # The fix the message gives: d2/dx2 x**6 = 30 x**4.
    np.testing.assert_allclose(enzpy.hessian(square_a_copy_then_cube, x), [[30 * 1.5**4]])


@numba.njit
def squared_solution_into(b, out, A):
    x = np.linalg.solve(A, b)
    out[:] = x * x


@numba.njit
def solution_energy(b, A):
    x = np.linalg.solve(A, b)
    return (x * x * x).sum()


def test_forward_jacobian_through_a_lapack_rule_is_the_same_for_every_chunk():
    # The LAPACK rules run once per direction of a chunk, on a snapshot of
    # the scratch arrays they overwrite; any chunk gives the same Jacobian.
    A = np.array([[3.0, 0.4, -0.2], [0.1, 2.5, 0.3], [-0.6, 0.2, 4.0]])
    b = np.array([0.5, -1.0, 2.0])
    x = np.linalg.solve(A, b)
    Ainv = np.linalg.inv(A)
    J = enzpy.jacobian(squared_solution_into, b, A, out=np.zeros(3))
    np.testing.assert_allclose(J, 2.0 * x[:, None] * Ainv, rtol=1e-12)
    np.testing.assert_allclose(
        J, enzpy.jacobian(squared_solution_into, b, A, out=np.zeros(3), mode=enzpy.Reverse)
    )
    g = enzpy.jacobian(solution_energy, b, A)
    np.testing.assert_allclose(g, Ainv.T @ (3.0 * x * x), rtol=1e-12)
    for chunk in (1, 2, 5):
        np.testing.assert_allclose(
            enzpy.jacobian(squared_solution_into, b, A, out=np.zeros(3), chunk=chunk),
            J,
            rtol=1e-14,
        )


@numba.njit
def _sum_sin(x):
    return np.sum(np.sin(x))


@pytest.mark.parametrize(
    "driver,call",
    [
        ("jacobian", lambda f, x: enzpy.jacobian(f, x)),
        ("hvp", lambda f, x: enzpy.hvp(f, x, np.ones(x.shape))),
        ("hessian", lambda f, x: enzpy.hessian(f, x)),
    ],
)
def test_driver_errors_name_the_driver_called(driver, call):
    with pytest.raises(enzpy.EnzpyTypeError, match=rf"^{driver}: x must be a float32 or float64"):
        call(_sum_sin, np.arange(4))
    with pytest.raises(enzpy.EnzpyValueError, match=rf"^{driver}: x is empty"):
        call(_sum_sin, np.zeros(0))
