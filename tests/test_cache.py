"""Caching of compiled derivatives: a second call with the same numba types compiles
nothing; dtypes, layouts, activities, modes and ret each get their own (correct)
derivative; values of Const arguments are not baked in; distinct functions do not
share entries; derivative() gives an @njit function callable from other njit code
with the same numbers as autodiff."""

import contextlib
import math

import fd
import llvmlite.binding as llvm
import numba
import numba.core.codegen
import numba.core.compiler
import numpy as np
import pytest

import enzpy
from enzpy import Active, Const, Duplicated, _cache


def rng(seed):
    return np.random.default_rng(seed)


@contextlib.contextmanager
def count_compilations():
    """Counts every way code gets compiled in this process while active: numba's
    compiler entry points, LLVM modules parsed by llvmlite (numba's and enzpy's own
    derivative modules), and code libraries finalized (JIT)."""
    counts = {}
    patches = [
        (numba.core.compiler, "compile_extra"),
        (numba.core.compiler, "compile_ir"),
        (llvm, "parse_assembly"),
        (llvm, "parse_bitcode"),
        (numba.core.codegen.CPUCodeLibrary, "finalize"),
    ]
    saved = []
    for owner, name in patches:
        orig = getattr(owner, name)
        saved.append((owner, name, orig))

        def counting(*a, __orig=orig, __name=name, **k):
            counts[__name] = counts.get(__name, 0) + 1
            return __orig(*a, **k)

        setattr(owner, name, counting)
    try:
        yield counts
    finally:
        for owner, name, orig in saved:
            setattr(owner, name, orig)


def test_compile_counter_sees_compilations():
    # guards the "compiles nothing" tests below against a counter that cannot count
    with count_compilations() as counts:
        numba.njit(lambda v: v + 1.0)(1.0)
    assert counts.get("compile_extra", 0) >= 1
    assert counts.get("parse_assembly", 0) >= 1
    assert counts.get("finalize", 0) >= 1


@numba.njit
def weighted(x, a, c):
    s = 0.0
    for i in range(x.shape[0]):
        s += a * x[i] * x[i] * math.sin(x[i]) + c * x[i]
    return s


def grad_x(x, a, c):
    return a * (2 * x * np.sin(x) + x * x * np.cos(x)) + c


def grad_a(x):
    return float(np.sum(x * x * np.sin(x)))


def test_second_call_with_same_types_compiles_nothing():
    x = rng(0).uniform(-1, 1, 8)
    dx1 = np.zeros(8)
    r1 = enzpy.autodiff(weighted, Duplicated(x, dx1), Active(0.5), 0.25)
    before = _cache.info()
    x2 = rng(1).uniform(-1, 1, 11)  # other values and length, same types
    dx2 = np.zeros(11)
    with count_compilations() as counts:
        r2 = enzpy.autodiff(weighted, Duplicated(x2, dx2), Active(1.5), 0.75)
    after = _cache.info()
    assert counts == {}, f"the cached call compiled: {counts}"
    assert after.builds == before.builds and after.misses == before.misses
    assert after.hits == before.hits + 1
    # and both are right
    np.testing.assert_allclose(dx1, grad_x(x, 0.5, 0.25), rtol=1e-12)
    np.testing.assert_allclose(dx2, grad_x(x2, 1.5, 0.75), rtol=1e-12)
    assert r1[1] == pytest.approx(grad_a(x), rel=1e-12)
    assert r2[1] == pytest.approx(grad_a(x2), rel=1e-12)


def test_numba_compiles_no_new_signature_on_a_cached_call():
    x = rng(2).uniform(-1, 1, 6)
    enzpy.autodiff(weighted, Duplicated(x, np.zeros(6)), Active(0.5), 0.25)
    sigs = list(weighted.signatures)
    enzpy.autodiff(weighted, Duplicated(x, np.zeros(6)), Active(0.5), 0.25)
    assert list(weighted.signatures) == sigs


def test_const_values_are_not_baked_in():
    x = rng(3).uniform(-1, 1, 7)
    for c in (0.25, -3.0, 10.0):
        dx = np.zeros(7)
        (_, da, dc) = enzpy.autodiff(weighted, Duplicated(x, dx), Active(0.5), Const(c))
        assert dc is None
        np.testing.assert_allclose(dx, grad_x(x, 0.5, c), rtol=1e-12, atol=1e-14)


def test_dtypes_layouts_activities_modes_get_their_own_derivatives():
    x = rng(4).uniform(-1, 1, 8)
    a, c = 0.5, 0.25

    def run_all():
        # float64, Duplicated + Active
        dx = np.zeros(8)
        (_, da, _) = enzpy.autodiff(weighted, Duplicated(x, dx), Active(a), c)
        np.testing.assert_allclose(dx, grad_x(x, a, c), rtol=1e-12)
        assert da == pytest.approx(grad_a(x), rel=1e-12)
        # float32 arrays and scalars
        x32, dx32 = x.astype(np.float32), np.zeros(8, np.float32)
        (_, da32, _) = enzpy.autodiff(
            weighted, Duplicated(x32, dx32), Active(np.float32(a)), np.float32(c)
        )
        xd = x32.astype(np.float64)
        np.testing.assert_allclose(dx32, grad_x(xd, a, c), rtol=fd.RTOL_FLOAT32, atol=1e-6)
        assert float(da32) == pytest.approx(grad_a(xd), rel=fd.RTOL_FLOAT32)
        # x constant: only a
        res = enzpy.autodiff(weighted, Const(x), Active(a), c)
        assert res[0] is None and res[1] == pytest.approx(grad_a(x), rel=1e-12)
        # a constant: only x
        dx = np.zeros(8)
        res = enzpy.autodiff(weighted, Duplicated(x, dx), Const(a), c)
        assert res == (None, None, None)
        np.testing.assert_allclose(dx, grad_x(x, a, c), rtol=1e-12)
        # non-contiguous x (another numba layout)
        big = np.zeros(16)
        big[::2] = x
        xs, dxs = big[::2], np.zeros(8)
        (_, da_s, _) = enzpy.autodiff(weighted, Duplicated(xs, dxs), Active(a), c)
        np.testing.assert_allclose(dxs, grad_x(x, a, c), rtol=1e-12)
        # ret=Const: nothing seeded
        dx = np.zeros(8)
        res = enzpy.autodiff(weighted, Duplicated(x, dx), Active(a), c, ret=enzpy.Const)
        assert res[1] == 0.0 and np.all(dx == 0)
        # ReverseWithPrimal
        dx = np.zeros(8)
        (res, primal) = enzpy.autodiff(
            weighted, Duplicated(x, dx), Active(a), c, mode=enzpy.ReverseWithPrimal
        )
        assert primal == pytest.approx(weighted(x, a, c), rel=1e-15)
        np.testing.assert_allclose(dx, grad_x(x, a, c), rtol=1e-12)

    run_all()
    before = _cache.info()
    with count_compilations() as counts:
        run_all()  # every combination again, now from the cache
    assert counts == {}, f"a cached combination compiled: {counts}"
    assert _cache.info().builds == before.builds


def _make_scaled(k):
    @numba.njit
    def scaled(x):  # same name and qualname for every k
        s = 0.0
        for i in range(x.shape[0]):
            s += k * x[i] * x[i]
        return s

    return scaled


def test_distinct_functions_with_the_same_name_do_not_share_derivatives():
    x = rng(5).uniform(-1, 1, 5)
    fs = [_make_scaled(k) for k in (1.0, 2.0, 3.0)]
    for _ in range(2):
        for k, f in zip((1.0, 2.0, 3.0), fs):
            dx = np.zeros(5)
            enzpy.autodiff(f, Duplicated(x, dx))
            np.testing.assert_allclose(dx, 2 * k * x, rtol=1e-14)


def test_autodiff_before_and_after_the_primal_is_compiled():
    @numba.njit
    def fresh(x, a):
        s = 0.0
        for i in range(x.shape[0]):
            s += math.exp(a * x[i])
        return s

    x = rng(6).uniform(-1, 1, 6)
    assert fresh.signatures == []
    dx = np.zeros(6)
    (_, da) = enzpy.autodiff(fresh, Duplicated(x, dx), Active(0.3))
    np.testing.assert_allclose(dx, 0.3 * np.exp(0.3 * x), rtol=1e-12)
    assert da == pytest.approx(float(np.sum(x * np.exp(0.3 * x))), rel=1e-12)
    # the primal still works as before
    assert fresh(x, 0.3) == pytest.approx(float(np.sum(np.exp(0.3 * x))), rel=1e-14)
    dx2 = np.zeros(6)
    (_, da2) = enzpy.autodiff(fresh, Duplicated(x, dx2), Active(0.3))
    np.testing.assert_array_equal(dx2, dx)
    assert da2 == da


# ------------------------------------------------------------------ derivative()


@numba.njit
def loss(x, a):
    s = 0.0
    for i in range(x.shape[0]):
        d = x[i] - a
        s += d * d + 0.1 * math.sin(x[i] * a)
    return s


def test_derivative_callable_from_python_matches_autodiff():
    x = rng(7).uniform(-1, 1, 6)
    dx_ref = np.zeros(6)
    (_, da_ref) = enzpy.autodiff(loss, Duplicated(x, dx_ref), Active(0.4))
    d = enzpy.derivative(loss, Duplicated(x, np.zeros(6)), Active(0.4))
    dx = np.zeros(6)
    out = d(x, dx, 0.4, 1.0)  # f's args, each shadow after its array, dret
    assert isinstance(out, tuple) and len(out) == 1
    # Another compile of the same derivative (no overlap check here): its
    # adjoint sums may be vectorized differently, so equal to rounding.
    assert out[0] == pytest.approx(da_ref, rel=1e-14)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-14)
    # dret scales everything
    dx3 = np.zeros(6)
    (da3,) = d(x, dx3, 0.4, 3.0)
    np.testing.assert_allclose(dx3, 3 * dx_ref, rtol=1e-14)
    assert da3 == pytest.approx(3 * da_ref, rel=1e-14)


def test_derivative_with_primal():
    x = rng(8).uniform(-1, 1, 6)
    d = enzpy.derivative(
        loss, Duplicated(x, np.zeros(6)), Active(0.4), mode=enzpy.ReverseWithPrimal
    )
    dx = np.zeros(6)
    primal, da = d(x, dx, 0.4, 1.0)
    assert primal == pytest.approx(loss(x, 0.4), rel=1e-15)
    dx_ref = np.zeros(6)
    (_, da_ref) = enzpy.autodiff(loss, Duplicated(x, dx_ref), Active(0.4))
    assert da == pytest.approx(da_ref, rel=1e-14)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-14)


def test_derivative_called_from_njit_matches_autodiff_in_python():
    x0 = rng(9).uniform(-1, 1, 6)
    d = enzpy.derivative(loss, Duplicated(x0, np.zeros(6)), Active(0.4))

    @numba.njit
    def descend(x, a, steps, lr):
        dx = np.zeros_like(x)
        for _ in range(steps):
            dx[:] = 0.0
            (da,) = d(x, dx, a, 1.0)
            for i in range(x.shape[0]):
                x[i] -= lr * dx[i]
            a -= lr * da
        return a

    x_jit = x0.copy()
    a_jit = descend(x_jit, 0.4, 25, 0.05)

    x_py, a_py = x0.copy(), 0.4
    for _ in range(25):
        dx = np.zeros(6)
        (_, da) = enzpy.autodiff(loss, Duplicated(x_py, dx), Active(a_py))
        x_py -= 0.05 * dx
        a_py -= 0.05 * da
    np.testing.assert_allclose(x_jit, x_py, rtol=1e-13, atol=1e-15)
    assert a_jit == pytest.approx(a_py, rel=1e-13)
    # it did descend
    assert loss(x_jit, a_jit) < loss(x0, 0.4)


def test_njit_caller_calls_the_compiled_derivative_instead_of_recompiling_it():
    # A caller reaches the derivative through its JIT symbol: its own module
    # only declares it, so compiling a caller never re-optimizes (or
    # re-compiles) the whole derivative.
    x0 = rng(10).uniform(-1, 1, 5)
    d = enzpy.derivative(loss, Duplicated(x0, np.zeros(5)), Active(0.4))

    @numba.njit
    def caller(x, dx, a):
        return d(x, dx, a, 1.0)[0]

    dx = np.zeros(5)
    da = caller(x0, dx, 0.4)
    dx_ref = np.zeros(5)
    (_, da_ref) = enzpy.autodiff(loss, Duplicated(x0, dx_ref), Active(0.4))
    assert da == pytest.approx(da_ref, rel=1e-14)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-14)
    ir = next(iter(caller.inspect_llvm().values()))
    # the derivative's own symbol (its wrapper, which checks the arguments
    # and calls it, may be compiled into the caller: it is small)
    symbol = "@" + d.py_func.__qualname__.split(".")[-1] + "("
    defined = [ln for ln in ir.splitlines() if ln.startswith("define") and symbol in ln]
    declared = [ln for ln in ir.splitlines() if ln.startswith("declare") and symbol in ln]
    assert defined == [], defined
    assert declared, "the caller should declare the derivative it calls"
