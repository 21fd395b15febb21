"""NumPy reductions, BLAS and LAPACK calls inside njit kernels (issue 3).

numba lowers np.sum / np.cumsum / ufuncs to loops, but np.dot, @ and np.linalg
to calls into BLAS/LAPACK (through numba's helper library). Each function here
must either give a derivative that matches finite differences, or raise
UnsupportedError whose message names the function (or the library routine
numba calls for it) and whose ``.line`` is the user's line of the call.

Every kernel passes the function's result through a nonlinear, data-weighted
use, so a silently zero derivative, a dropped term or a transposed one fails
fd.check_vjp. The ones that are unsupported today are marked
``xfail(strict=True, raises=UnsupportedError)``: such a test xfails only when
the error is the clear one described above (a wrong error turns into an
AssertionError, which is a failure), and it fails as XPASS once the function is
supported -- then remove the mark.
"""

import inspect
import os
import zlib

import fd
import numba
import numpy as np
import pytest

import enzpy


def rng(seed):
    return np.random.default_rng(seed)


def distinct(r, n):
    return r.permutation(np.linspace(-1.0, 1.0, n)) + r.uniform(-0.02, 0.02, n)


def spd(r, n):
    b = r.uniform(-1, 1, (n, n))
    return b @ b.T + n * np.eye(n)


def well_conditioned(r, n):
    return r.uniform(-1, 1, (n, n)) + 3.0 * np.eye(n)


# ---------------------------------------------------------------------------------
# kernels: the line under test carries the marker "# <- under test"
# ---------------------------------------------------------------------------------


@numba.njit
def k_sum(x):
    s = np.sum(x)  # <- under test
    return s * s + np.sin(s)


@numba.njit
def k_sum_method(x):
    s = x.sum()  # <- under test
    return s * s + np.sin(s)


@numba.njit
def k_mean(x):
    m = np.mean(x)  # <- under test
    return m * m * m


@numba.njit
def k_prod(x):
    p = np.prod(x)  # <- under test
    return p + p * p


@numba.njit
def k_max(x):
    m = np.max(x)  # <- under test
    return m * m + 2.0 * m


@numba.njit
def k_min(x):
    m = np.min(x)  # <- under test
    return m * m + 2.0 * m


@numba.njit
def k_cumsum(x, w):
    c = np.cumsum(x)  # <- under test
    s = 0.0
    for i in range(c.shape[0]):
        s += w[i] * c[i] * c[i]
    return s


@numba.njit
def k_exp(x, w):
    y = np.exp(x)  # <- under test
    s = 0.0
    for i in range(y.shape[0]):
        s += w[i] * y[i] * y[i]
    return s


@numba.njit
def k_ufunc_expression(x, w):
    y = np.sin(x) * np.exp(-x * x) + np.sqrt(x * x + 1.0)  # <- under test
    s = 0.0
    for i in range(y.shape[0]):
        s += w[i] * y[i] * y[i]
    return s


@numba.njit
def k_sum_axis0(A, w):
    c = A.sum(axis=0)  # <- under test
    s = 0.0
    for j in range(c.shape[0]):
        s += w[j] * c[j] * c[j]
    return s


@numba.njit
def k_sum_axis1(A, w):
    c = np.sum(A, axis=1)  # <- under test
    s = 0.0
    for i in range(c.shape[0]):
        s += w[i] * c[i] * c[i]
    return s


@numba.njit
def k_dot_vv(x, y):
    d = np.dot(x, y)  # <- under test
    return d * d + d


@numba.njit
def k_matmul_vv(x, y):
    d = x @ y  # <- under test
    return d * d + d


@numba.njit
def k_dot_mv(A, x, w):
    y = np.dot(A, x)  # <- under test
    s = 0.0
    for i in range(y.shape[0]):
        s += w[i] * y[i] * y[i]
    return s


@numba.njit
def k_matmul_mv(A, x, w):
    y = A @ x  # <- under test
    s = 0.0
    for i in range(y.shape[0]):
        s += w[i] * y[i] * y[i]
    return s


@numba.njit
def k_matmul_transposed_mv(A, x, w):
    y = A.T @ x  # <- under test
    s = 0.0
    for i in range(y.shape[0]):
        s += w[i] * y[i] * y[i]
    return s


@numba.njit
def k_dot_mm(A, B, W):
    C = np.dot(A, B)  # <- under test
    s = 0.0
    for i in range(C.shape[0]):
        for j in range(C.shape[1]):
            s += W[i, j] * C[i, j] * C[i, j]
    return s


@numba.njit
def k_matmul_mm(A, B, W):
    C = A @ B  # <- under test
    s = 0.0
    for i in range(C.shape[0]):
        for j in range(C.shape[1]):
            s += W[i, j] * C[i, j] * C[i, j]
    return s


@numba.njit
def k_solve(A, b, w):
    x = np.linalg.solve(A, b)  # <- under test
    s = 0.0
    for i in range(x.shape[0]):
        s += w[i] * x[i] * x[i]
    return s


@numba.njit
def k_inv(A, W):
    Ai = np.linalg.inv(A)  # <- under test
    s = 0.0
    for i in range(Ai.shape[0]):
        for j in range(Ai.shape[1]):
            s += W[i, j] * Ai[i, j] * Ai[i, j]
    return s


@numba.njit
def k_det(A):
    d = np.linalg.det(A)  # <- under test
    return d * d + d


@numba.njit
def k_cholesky(S, W):
    L = np.linalg.cholesky(S)  # <- under test
    s = 0.0
    for i in range(L.shape[0]):
        for j in range(L.shape[1]):
            s += W[i, j] * L[i, j] * L[i, j]
    return s


@numba.njit
def k_eigh(S, w):
    vals, vecs = np.linalg.eigh(S)  # <- under test
    s = 0.0
    for i in range(vals.shape[0]):
        s += w[i] * vals[i] + vecs[i, -1] * vecs[i, -1] * w[i]
    return s


# ---------------------------------------------------------------------------------
# cases: (kernel, argument factory, names the error may use for the callee)
# ---------------------------------------------------------------------------------


def unsupported(reason):
    return pytest.mark.xfail(strict=True, raises=enzpy.UnsupportedError, reason=reason)


def _n(r):
    return r.uniform(-1, 1, 5)


CASES = {
    "np.sum": (k_sum, lambda r: [fd.Dup(_n(r))], ("sum",)),
    "x.sum()": (k_sum_method, lambda r: [fd.Dup(_n(r))], ("sum",)),
    "np.mean": (k_mean, lambda r: [fd.Dup(_n(r))], ("mean", "sum")),
    "np.prod": (k_prod, lambda r: [fd.Dup(r.uniform(0.5, 1.5, 5))], ("prod",)),
    "np.max": (k_max, lambda r: [fd.Dup(distinct(r, 6))], ("max", "amax")),
    "np.min": (k_min, lambda r: [fd.Dup(distinct(r, 6))], ("min", "amin")),
    "np.cumsum": (k_cumsum, lambda r: [fd.Dup(_n(r)), fd.Dup(_n(r))], ("cumsum",)),
    "np.exp (array ufunc)": (k_exp, lambda r: [fd.Dup(_n(r)), fd.Dup(_n(r))], ("exp",)),
    "ufunc expression": (
        k_ufunc_expression,
        lambda r: [fd.Dup(_n(r)), fd.Dup(_n(r))],
        ("sin", "exp", "sqrt"),
    ),
    "A.sum(axis=0)": (
        k_sum_axis0,
        lambda r: [fd.Dup(r.uniform(-1, 1, (3, 4))), fd.Dup(_n(r)[:4])],
        ("sum",),
    ),
    "np.sum(A, axis=1)": (
        k_sum_axis1,
        lambda r: [fd.Dup(r.uniform(-1, 1, (3, 4))), fd.Dup(_n(r)[:3])],
        ("sum",),
    ),
    "np.dot(v, v)": (k_dot_vv, lambda r: [fd.Dup(_n(r)), fd.Dup(_n(r))], ("dot", "xxdot")),
    "v @ v": (k_matmul_vv, lambda r: [fd.Dup(_n(r)), fd.Dup(_n(r))], ("dot", "matmul", "xxdot")),
    "np.dot(M, v)": (
        k_dot_mv,
        lambda r: [fd.Dup(r.uniform(-1, 1, (4, 5))), fd.Dup(_n(r)), fd.Dup(_n(r)[:4])],
        ("dot", "gemv"),
    ),
    "M @ v": (
        k_matmul_mv,
        lambda r: [fd.Dup(r.uniform(-1, 1, (4, 5))), fd.Dup(_n(r)), fd.Dup(_n(r)[:4])],
        ("dot", "matmul", "gemv"),
    ),
    "M.T @ v (Fortran order)": (
        k_matmul_transposed_mv,
        lambda r: [fd.Dup(r.uniform(-1, 1, (5, 4))), fd.Dup(_n(r)), fd.Dup(_n(r)[:4])],
        ("dot", "matmul", "gemv"),
    ),
    "np.dot(M, M)": (
        k_dot_mm,
        lambda r: [
            fd.Dup(r.uniform(-1, 1, (3, 4))),
            fd.Dup(r.uniform(-1, 1, (4, 2))),
            fd.Dup(r.uniform(-1, 1, (3, 2))),
        ],
        ("dot", "gemm"),
    ),
    "M @ M": (
        k_matmul_mm,
        lambda r: [
            fd.Dup(r.uniform(-1, 1, (3, 4))),
            fd.Dup(r.uniform(-1, 1, (4, 2))),
            fd.Dup(r.uniform(-1, 1, (3, 2))),
        ],
        ("dot", "matmul", "gemm"),
    ),
    "np.linalg.solve": (
        k_solve,
        lambda r: [fd.Dup(well_conditioned(r, 4)), fd.Dup(_n(r)[:4]), fd.Dup(_n(r)[:4])],
        ("solve", "gesv", "getrf"),
    ),
    "np.linalg.inv": (
        k_inv,
        lambda r: [fd.Dup(well_conditioned(r, 3)), fd.Dup(r.uniform(-1, 1, (3, 3)))],
        ("inv", "getri", "getrf"),
    ),
    "np.linalg.det": (k_det, lambda r: [fd.Dup(well_conditioned(r, 4))], ("det", "getrf")),
    "np.linalg.cholesky": (
        k_cholesky,
        lambda r: [fd.Dup(spd(r, 4)), fd.Dup(r.uniform(-1, 1, (4, 4)))],
        ("cholesky", "potrf"),
    ),
    "np.linalg.eigh": (
        k_eigh,
        lambda r: [fd.Dup(spd(r, 4)), fd.Dup(r.uniform(-1, 1, 4))],
        ("eigh", "syevd"),
    ),
}

# Unsupported today (strict: an XPASS means the mark must go), with what is missing.
# The LAPACK calls behind solve, inv, det, slogdet, cholesky and eigh have rules
# (enzpy/_lapack_rules.py); lstsq has none (tests/test_lapack_rules.py).
UNSUPPORTED: dict[str, str] = {}


def line_of(func, marker="# <- under test"):
    lines, first = inspect.getsourcelines(func.py_func)
    hits = [first + i for i, text in enumerate(lines) if marker in text]
    assert len(hits) == 1, hits
    return hits[0]


def params():
    out = []
    for name, case in CASES.items():
        marks = [unsupported(UNSUPPORTED[name])] if name in UNSUPPORTED else []
        out.append(pytest.param(name, case, id=name, marks=marks))
    return out


@pytest.mark.parametrize("name, case", params())
def test_numpy_function(name, case):
    kernel, make_args, callee_names = case
    args = make_args(rng(zlib.crc32(name.encode())))
    before = [np.array(a.value, copy=True) for a in args]
    try:
        fd.check_vjp(kernel, *args)
    except enzpy.UnsupportedError as e:
        # the clear error of the error contract, or a failure
        assert e.line == line_of(kernel), f"{name}: error at line {e.line}, not the call's: {e}"
        assert e.file is not None and os.path.samefile(e.file, __file__), e
        assert any(n in e.message for n in callee_names), (
            f"{name}: the message names none of {callee_names}: {e}"
        )
        for a, b in zip(args, before):
            np.testing.assert_array_equal(a.value, b, err_msg="failed call changed an argument")
        raise


# --- np.outer with a constant operand -------------------------------------------
# numba's np.outer arrives optimized, with one stack slot reused for the array
# struct of each operand: a pointer loaded from it may point into x (with a
# shadow) or into w (without one). Reading the shadow of w's phase dereferenced
# null (forward mode returned NaN and a wrong primal); it is refused, and the
# workaround the message gives works.


@numba.njit
def outer_energy(x, w):
    M = np.outer(x, w)
    return (M * M).sum() + (M[0] * x).sum()


def _outer_energy_gradient(x, w):
    # d/dx_k of sum_ij x_i^2 w_j^2 + sum_j x_0 w_j x_j (x and w of one size)
    g = 2.0 * x * (w @ w) + x[0] * w
    g[0] += w @ x
    return g


@pytest.mark.parametrize("mode", [enzpy.Reverse, enzpy.Forward], ids=["reverse", "forward"])
def test_np_outer_with_a_constant_operand_is_refused_naming_the_workaround(mode):
    x, w = np.linspace(-1.0, 1.0, 4), np.array([0.5, -2.0, 1.5, 0.25])
    dx = np.ones(4) if mode is enzpy.Forward else np.zeros(4)
    with pytest.raises(enzpy.UnsupportedError, match="constant memory.*Duplicated") as e:
        enzpy.autodiff(outer_energy, enzpy.Duplicated(x, dx), enzpy.Const(w), mode=mode)
    assert "outer" in str(e.value) and e.value.line is not None


def test_np_outer_with_the_constant_operand_duplicated_matches_the_formula():
    x, w = np.linspace(-1.0, 1.0, 4), np.array([0.5, -2.0, 1.5, 0.25])
    expected = _outer_energy_gradient(x, w)
    dx = np.zeros(4)
    enzpy.autodiff(outer_energy, enzpy.Duplicated(x, dx), enzpy.Duplicated(w, np.zeros(4)))
    np.testing.assert_allclose(dx, expected, rtol=1e-12)
    v = rng(5).standard_normal(4)
    t = enzpy.autodiff(
        outer_energy,
        enzpy.Duplicated(x, v.copy()),
        enzpy.Duplicated(w, np.zeros(4)),
        mode=enzpy.Forward,
    )
    assert t == pytest.approx(float(expected @ v), rel=1e-12)
