"""Reverse mode of numba kernels over arrays: reductions, a stencil that reads one
array and writes another, in-place time loops (values overwritten -> tapes),
value-dependent branches, while loops with data-dependent trip counts, 2-D arrays as
transposed / sliced / Fortran-order views, 3-D arrays, float32, arrays allocated
inside the kernel, and shadows whose strides differ from the primal's.

Each kernel is checked against central finite differences with fd.check_vjp (the
dot-product test <w, J v> == <Jᵀw, v>, one argument at a time), and against an
analytic formula where one is short."""

import math

import fd
import numba
import numpy as np
import pytest
from kernels import dot

import enzpy
from enzpy import Active, Const, Duplicated

RTOL = 1e-12  # enzpy vs an analytic formula, both float64


def rng(seed):
    return np.random.default_rng(seed)


def away_from_zero(r, n, lo=0.1, hi=1.0):
    """Values with |x| in [lo, hi] and random signs: branches on x > 0 stay put
    under finite-difference perturbations."""
    return r.uniform(lo, hi, n) * r.choice([-1.0, 1.0], n)


# ---------------------------------------------------------------------------------
# reductions
# ---------------------------------------------------------------------------------


@numba.njit
def norm2(x):
    s = 0.0
    for i in range(x.shape[0]):
        s += x[i] * x[i]
    return math.sqrt(s)


@numba.njit
def sum_x2_sinx(x):
    s = 0.0
    for i in range(x.shape[0]):
        s += x[i] * x[i] * math.sin(x[i])
    return s


def test_dot_product():
    x, y = rng(0).uniform(-1, 1, 12), rng(1).uniform(-1, 1, 12)
    fd.check_vjp(dot, fd.Dup(x), fd.Dup(y))
    dx, dy = np.zeros(12), np.zeros(12)
    res = enzpy.autodiff(dot, Duplicated(x, dx), Duplicated(y, dy))
    assert res == (None, None)
    fd.assert_close_to_reference(dx, y, RTOL, what="d dot / dx")
    fd.assert_close_to_reference(dy, x, RTOL, what="d dot / dy")


def test_dot_product_with_one_constant_argument():
    x, y = rng(2).uniform(-1, 1, 12), rng(3).uniform(-1, 1, 12)
    dx = np.zeros(12)
    res = enzpy.autodiff(dot, Duplicated(x, dx), Const(y))
    assert res == (None, None)
    fd.assert_close_to_reference(dx, y, RTOL, what="d dot / dx")
    fd.check_vjp(dot, fd.Dup(x), fd.Const(y))


def test_two_norm():
    x = rng(4).uniform(-1, 1, 10)
    fd.check_vjp(norm2, fd.Dup(x))
    dx = np.zeros(10)
    enzpy.autodiff(norm2, Duplicated(x, dx))
    fd.assert_close_to_reference(dx, x / np.linalg.norm(x), RTOL, what="d |x| / dx")


def test_sum_x2_sinx():
    x = rng(5).uniform(-2, 2, 16)
    fd.check_vjp(sum_x2_sinx, fd.Dup(x))
    dx = np.zeros(16)
    enzpy.autodiff(sum_x2_sinx, Duplicated(x, dx))
    fd.assert_close_to_reference(
        dx, 2 * x * np.sin(x) + x * x * np.cos(x), RTOL, what="d sum x^2 sin x / dx"
    )


def test_sum_x2_sinx_float32():
    x = rng(6).uniform(-2, 2, 64).astype(np.float32)
    fd.check_vjp(sum_x2_sinx, fd.Dup(x))
    dx = np.zeros_like(x)
    enzpy.autodiff(sum_x2_sinx, Duplicated(x, dx))
    assert dx.dtype == np.float32
    xd = x.astype(np.float64)
    fd.assert_close_to_reference(
        dx,
        2 * xd * np.sin(xd) + xd * xd * np.cos(xd),
        fd.RTOL_FLOAT32,
        atol=1e-6,
        what="float32 gradient",
    )


# ---------------------------------------------------------------------------------
# stencils
# ---------------------------------------------------------------------------------


@numba.njit
def stencil(u, out, a):
    for i in range(1, u.shape[0] - 1):
        out[i] = u[i] + a * (u[i - 1] - 2 * u[i] + u[i + 1])


def test_stencil_fd():
    n = 11
    u = rng(7).uniform(-1, 1, n)
    fd.check_vjp(stencil, fd.Dup(u), fd.Dup(np.zeros(n)), fd.Active(0.2), trials=3)


def test_stencil_shadows_analytic():
    n = 11
    r = rng(8)
    u, out, a = r.uniform(-1, 1, n), r.uniform(-1, 1, n), 0.2
    du0, w = r.standard_normal(n), r.standard_normal(n)
    du, dout = du0.copy(), w.copy()
    out_before = out.copy()
    res = enzpy.autodiff(stencil, Duplicated(u, du), Duplicated(out, dout), Active(a))
    assert len(res) == 3 and res[0] is None and res[1] is None
    # primal ran: interior written, boundary untouched
    ref_out = out_before.copy()
    ref_out[1:-1] = u[1:-1] + a * (u[:-2] - 2 * u[1:-1] + u[2:])
    np.testing.assert_array_equal(out, ref_out)
    # output shadow consumed where the function wrote, kept where it did not
    assert np.all(dout[1:-1] == 0.0)
    assert dout[0] == w[0] and dout[-1] == w[-1]
    # input shadow accumulates J^T w
    ref_du = du0.copy()
    wi = w[1:-1]
    ref_du[:-2] += a * wi
    ref_du[1:-1] += (1 - 2 * a) * wi
    ref_du[2:] += a * wi
    fd.assert_close_to_reference(du, ref_du, RTOL, atol=1e-15, what="du")
    da_ref = float(np.sum(wi * (u[:-2] - 2 * u[1:-1] + u[2:])))
    terms = wi * (u[:-2] - 2 * u[1:-1] + u[2:])
    fd.assert_close_to_reference(
        res[2], da_ref, RTOL, atol=1e-14 * np.sum(np.abs(terms)), what="da"
    )


def test_stencil_float32():
    n = 33
    u = rng(9).uniform(-1, 1, n).astype(np.float32)
    fd.check_vjp(stencil, fd.Dup(u), fd.Dup(np.zeros(n, np.float32)), fd.Active(np.float32(0.2)))


@numba.njit
def heat_in_place(u, tmp, a, nsteps):
    # explicit heat equation, u updated in place every step (values overwritten)
    n = u.shape[0]
    for _ in range(nsteps):
        for i in range(1, n - 1):
            tmp[i] = u[i] + a * (u[i - 1] - 2 * u[i] + u[i + 1])
        for i in range(1, n - 1):
            u[i] = tmp[i]


def test_heat_in_place_time_loop():
    n = 12
    u = np.sin(np.linspace(0, np.pi, n)) + 0.1 * rng(10).standard_normal(n)
    fd.check_vjp(heat_in_place, fd.Dup(u), fd.Dup(np.zeros(n)), fd.Active(0.25), 20)


@numba.njit
def heat_counting(u, counts, a, nsteps):
    # in-place Gauss-Seidel-like sweep; the Const array receives inactive data only
    n = u.shape[0]
    for _ in range(nsteps):
        prev = u[0]
        for i in range(1, n - 1):
            cur = u[i]
            u[i] = cur + a * (prev - 2 * cur + u[i + 1])
            prev = cur
            counts[i] += 1.0


def test_const_array_written_with_inactive_data_is_fine():
    n = 12
    u = rng(11).uniform(-1, 1, n)
    counts = np.zeros(n)
    fd.check_vjp(heat_counting, fd.Dup(u), fd.Const(counts), fd.Active(0.25), 5)
    # the primal's writes to the Const array happened (check_vjp compared them too)
    assert counts[1] == 5.0 and counts[0] == 0.0


@numba.njit
def heat_allocating(u, a, nsteps):
    # scratch array allocated inside the kernel (np.empty_like -> NRT allocation)
    n = u.shape[0]
    tmp = np.empty_like(u)
    for _ in range(nsteps):
        for i in range(1, n - 1):
            tmp[i] = u[i] + a * (u[i - 1] - 2 * u[i] + u[i + 1])
        for i in range(1, n - 1):
            u[i] = tmp[i]
    return u[n // 2]


def test_array_allocated_inside_kernel():
    n = 10
    u = rng(12).uniform(-1, 1, n)
    fd.check_vjp(heat_allocating, fd.Dup(u), fd.Active(0.2), 8)


@numba.njit
def sum_sq_sin_vectorized(x):
    # numpy array expressions allocate temporaries inside the kernel
    return np.sum(x**2 * np.sin(x))


def test_array_expression_with_temporaries():
    x = rng(13).uniform(-2, 2, 9)
    fd.check_vjp(sum_sq_sin_vectorized, fd.Dup(x))
    dx = np.zeros(9)
    enzpy.autodiff(sum_sq_sin_vectorized, Duplicated(x, dx))
    fd.assert_close_to_reference(dx, 2 * x * np.sin(x) + x * x * np.cos(x), RTOL, what="gradient")


@numba.njit
def sum_sq_dev(x, a):
    # numba lowers ``expr ** 2`` (int literal exponent, non-trivial base) inside a loop
    # to a call to its own int_power_impl helper, not to a multiplication
    s = 0.0
    for i in range(x.shape[0]):
        s += (x[i] - a) ** 2 + (x[i] * a) ** 3
    return s


def test_integer_power_of_an_expression_in_a_loop():
    x = rng(34).uniform(-1, 1, 7)
    fd.check_vjp(sum_sq_dev, fd.Dup(x), fd.Active(0.3))
    dx = np.zeros(7)
    (_, da) = enzpy.autodiff(sum_sq_dev, Duplicated(x, dx), Active(0.3))
    a = 0.3
    fd.assert_close_to_reference(
        dx, 2 * (x - a) + 3 * a * (x * a) ** 2, RTOL, atol=1e-15, what="dx"
    )
    terms = np.abs(2 * (x - a)) + np.abs(3 * x * (x * a) ** 2)
    fd.assert_close_to_reference(
        da, np.sum(-2 * (x - a) + 3 * x * (x * a) ** 2), RTOL, atol=1e-14 * np.sum(terms), what="da"
    )


# ---------------------------------------------------------------------------------
# control flow that depends on the data
# ---------------------------------------------------------------------------------


@numba.njit
def branchy_sum(x, a):
    s = 0.0
    for i in range(x.shape[0]):
        if x[i] > 0:
            s += a * x[i] * x[i]
        else:
            s += math.sin(a * x[i])
    return s


@numba.njit
def branchy_map(x, out):
    for i in range(x.shape[0]):
        if x[i] > 0.0:
            out[i] = math.exp(x[i])
        elif x[i] > -0.5:
            out[i] = x[i] * x[i] * x[i]
        else:
            out[i] = -x[i]


def test_value_dependent_branches_reduction():
    x = away_from_zero(rng(14), 15)
    assert (x > 0).any() and (x < 0).any()
    fd.check_vjp(branchy_sum, fd.Dup(x), fd.Active(1.3))
    dx = np.zeros(15)
    (_, da) = enzpy.autodiff(branchy_sum, Duplicated(x, dx), Active(1.3))
    a = 1.3
    ref_dx = np.where(x > 0, 2 * a * x, a * np.cos(a * x))
    ref_da = float(np.sum(np.where(x > 0, x * x, x * np.cos(a * x))))
    fd.assert_close_to_reference(dx, ref_dx, RTOL, what="dx")
    fd.assert_close_to_reference(da, ref_da, RTOL, atol=1e-14 * np.sum(np.abs(x)), what="da")


def test_value_dependent_branches_elementwise_output():
    r = rng(15)
    x = np.concatenate([r.uniform(0.1, 1, 5), r.uniform(-0.4, -0.1, 5), r.uniform(-2, -0.6, 5)])
    r.shuffle(x)
    fd.check_vjp(branchy_map, fd.Dup(x), fd.Dup(np.zeros(15)))


@numba.njit
def solve_cubic(x, out):
    # out[i] = y with y^3 + y = x[i], by Newton: trip count depends on x[i]
    for i in range(x.shape[0]):
        y = x[i] / (1.0 + abs(x[i]))
        it = 0
        while it < 100:
            r = y * y * y + y - x[i]
            if abs(r) <= 1e-14 * (1.0 + abs(x[i])):
                break
            y -= r / (3.0 * y * y + 1.0)
            it += 1
        out[i] = y


def test_while_loop_newton_solve():
    x = rng(16).uniform(-30, 30, 9)
    fd.check_vjp(solve_cubic, fd.Dup(x), fd.Dup(np.zeros(9)))
    out, dx, dout = np.zeros(9), np.zeros(9), np.ones(9)
    enzpy.autodiff(solve_cubic, Duplicated(x, dx), Duplicated(out, dout))
    np.testing.assert_allclose(out**3 + out, x, rtol=1e-13)
    # implicit function theorem: dy/dx = 1 / (3y^2 + 1)
    fd.assert_close_to_reference(dx, 1 / (3 * out**2 + 1), rtol=1e-10, what="dy/dx")
    assert np.all(dout == 0)


@numba.njit
def halve_until_small(x, thresh):
    s = 0.0
    for i in range(x.shape[0]):
        y = x[i]
        while y > thresh:
            y *= 0.5
        s += y * y
    return s


def test_while_loop_halving():
    x = rng(17).uniform(0.5, 40, 10)
    thresh = 1.0
    k = np.maximum(np.ceil(np.log2(x / thresh)), 0)
    # guard: no element sits next to a threshold (FD would cross it)
    assert np.all(np.abs(np.log2(x / thresh) - np.round(np.log2(x / thresh))) > 1e-3)
    fd.check_vjp(halve_until_small, fd.Dup(x), thresh)
    dx = np.zeros(10)
    res = enzpy.autodiff(halve_until_small, Duplicated(x, dx), Const(thresh))
    assert res == (None, None)
    y = x / 2.0**k
    fd.assert_close_to_reference(dx, 2 * y / 2.0**k, RTOL, what="dx")


# ---------------------------------------------------------------------------------
# 2-D and 3-D arrays, layouts, views
# ---------------------------------------------------------------------------------


@numba.njit
def matvec_tanh(A, v, out):
    for i in range(A.shape[0]):
        acc = 0.0
        for j in range(A.shape[1]):
            acc += A[i, j] * v[j] + 0.1 * A[i, j] * A[i, j]
        out[i] = math.tanh(acc)


def _layouts(seed, dtype=np.float64):
    B = rng(seed).uniform(-1, 1, (7, 9)).astype(dtype)
    return {
        "C": B,
        "transposed": B.T,  # F-contiguous view, numba layout F
        "sliced": B[::2, 1:],  # non-contiguous view, layout A
        "fortran": np.asfortranarray(B),
        "transposed-sliced": B.T[1::2, ::-1],  # negative strides
    }


SHADOWS = {
    "zeros_like": np.zeros_like,  # numpy's choice
    "c-contiguous": lambda x: np.zeros(x.shape, x.dtype),
    "strided-view": lambda x: np.zeros((x.shape[0] * 2, x.shape[1] + 3), x.dtype)[::2, 3:],
}


@pytest.mark.parametrize("shadow", sorted(SHADOWS))
@pytest.mark.parametrize("layout", ["C", "transposed", "sliced", "fortran", "transposed-sliced"])
def test_nested_loops_2d_layouts(layout, shadow):
    A = _layouts(18)[layout]
    assert layout == "C" or not A.flags.c_contiguous
    m, n = A.shape
    v = rng(19).uniform(-1, 1, n)
    fd.check_vjp(matvec_tanh, fd.Dup(A, shadow=SHADOWS[shadow]), fd.Dup(v), fd.Dup(np.zeros(m)))


def test_nested_loops_2d_analytic_on_sliced_view():
    B = rng(20).uniform(-1, 1, (7, 9))
    A = B[::2, 1:]
    B_before = B.copy()
    m, n = A.shape
    v = rng(21).uniform(-1, 1, n)
    dA = np.zeros_like(A)  # C-contiguous: other strides than A
    assert dA.strides != A.strides
    dv, out, w = np.zeros(n), np.zeros(m), rng(22).standard_normal(m)
    dout = w.copy()
    enzpy.autodiff(matvec_tanh, Duplicated(A, dA), Duplicated(v, dv), Duplicated(out, dout))
    np.testing.assert_array_equal(B, B_before)  # the view's base is not written
    acc = A @ v + 0.1 * np.sum(A * A, axis=1)
    g = w * (1 - np.tanh(acc) ** 2)
    fd.assert_close_to_reference(
        dA, g[:, None] * (v[None, :] + 0.2 * A), RTOL, atol=1e-15, what="dA"
    )
    fd.assert_close_to_reference(dv, A.T @ g, RTOL, atol=1e-15, what="dv")
    assert np.all(dout == 0)


@pytest.mark.parametrize("layout", ["C", "transposed", "sliced"])
def test_nested_loops_2d_float32(layout):
    A = _layouts(23, np.float32)[layout]
    m, n = A.shape
    v = rng(24).uniform(-1, 1, n).astype(np.float32)
    fd.check_vjp(matvec_tanh, fd.Dup(A), fd.Dup(v), fd.Dup(np.zeros(m, np.float32)))


@numba.njit
def trilinear(T, x, out):
    s = 0.0
    for i in range(T.shape[0]):
        for j in range(T.shape[1]):
            for k in range(T.shape[2]):
                out[i, j, k] = T[i, j, k] * x[k] + math.sin(T[i, j, k])
                s += T[i, j, k] * x[i] * x[j] * x[k]
    return s


@pytest.mark.parametrize("view", ["C", "transposed", "sliced"])
def test_3d_arrays(view):
    base = rng(25).uniform(-1, 1, (4, 5, 6))
    T = {
        "C": np.ascontiguousarray(base[:4, :4, :4]),
        "transposed": base[:4, :4, :4].transpose(2, 0, 1),
        "sliced": base[:3, ::2, 1:4],
    }[view]
    assert view == "C" or not T.flags.c_contiguous
    n = T.shape[0]
    assert T.shape == (n, n, n)
    x = rng(26).uniform(-1, 1, n)
    fd.check_vjp(trilinear, fd.Dup(T), fd.Dup(x), fd.Dup(np.zeros(T.shape)))


def test_3d_float32():
    T = rng(27).uniform(-1, 1, (3, 3, 3)).astype(np.float32)
    x = rng(28).uniform(-1, 1, 3).astype(np.float32)
    fd.check_vjp(trilinear, fd.Dup(T), fd.Dup(x), fd.Dup(np.zeros((3, 3, 3), np.float32)))


# ---------------------------------------------------------------------------------
# shadows with other strides than the primal
# ---------------------------------------------------------------------------------


def test_strided_primal_contiguous_shadow():
    big = rng(29).uniform(-2, 2, 30)
    x = big[::3]
    big_before = big.copy()
    dx = np.zeros_like(x)
    assert dx.strides != x.strides
    enzpy.autodiff(sum_x2_sinx, Duplicated(x, dx))
    fd.assert_close_to_reference(dx, 2 * x * np.sin(x) + x * x * np.cos(x), RTOL, what="gradient")
    np.testing.assert_array_equal(big, big_before)
    fd.check_vjp(sum_x2_sinx, fd.Dup(x))


def test_contiguous_primal_strided_shadow_writes_only_the_view():
    x = rng(30).uniform(-2, 2, 10)
    buf = rng(31).standard_normal(30)
    buf_before = buf.copy()
    dx = buf[1::3]  # a view: strides 24 vs 8
    dx0 = dx.copy()
    enzpy.autodiff(sum_x2_sinx, Duplicated(x, dx))
    fd.assert_close_to_reference(
        dx,
        dx0 + 2 * x * np.sin(x) + x * x * np.cos(x),
        RTOL,
        atol=1e-15,
        what="accumulated gradient",
    )
    mask = np.ones(30, bool)
    mask[1::3] = False
    np.testing.assert_array_equal(buf[mask], buf_before[mask])


def test_strided_output_and_strided_shadow_in_place():
    # stencil output into a strided view, with a shadow of yet other strides
    n = 9
    u = rng(32).uniform(-1, 1, n)
    outbuf = np.zeros(3 * n)
    fd.check_vjp(
        stencil,
        fd.Dup(u, shadow=lambda x: np.zeros(2 * n)[::2]),
        fd.Dup(outbuf[::3], shadow=lambda x: np.zeros(n)),
        fd.Active(0.3),
    )


@numba.njit
def _scaled_sum_with_checked_input(x, a):
    s = 0.0
    for i in range(x.shape[0]):
        if x[i] < -100.0:
            raise ValueError("value out of range", x[i], a)
        s += x[i] * a
    return s


def test_code_on_the_way_to_raising_is_not_differentiated():
    # Building the exception's arguments calls numba's allocator: that path
    # never returns normally, so it needs (and gets) no derivative.
    fd.check_vjp(_scaled_sum_with_checked_input, fd.Dup(np.linspace(0.0, 1.0, 7)), fd.Active(2.0))


def test_exception_with_runtime_arguments_propagates_and_leaves_shadows():
    x = np.linspace(0.0, 1.0, 7)
    x[3] = -200.0
    dx = np.full(7, 0.25)
    with pytest.raises(ValueError, match="value out of range"):
        enzpy.autodiff(_scaled_sum_with_checked_input, Duplicated(x, dx), Active(2.0))
    np.testing.assert_array_equal(dx, np.full(7, 0.25))
