"""numba freezes the globals a function reads when it compiles it, and keeps
them until it compiles the function again. enzpy compiles its own copy, so
its derivative must be of the same frozen values as the code the user's
dispatcher runs: a capture that would read other values is refused, and a
cached derivative lives exactly as long as numba's compile it matches.

Each test has its own globals and kernels (they are mutated)."""

import numba
import numpy as np
import pytest

import enzpy

W_INPLACE = np.array([1.0, 2.0, 3.0])
W_CACHED = np.array([1.0, 2.0, 3.0])
W_CALLEE = np.array([1.0, 2.0, 3.0])
W_REBOUND = np.array([1.0, 2.0, 3.0])
W_CONST_INDEX = np.array([1.0, 2.0, 3.0])
SCALE = 2.0


def _weighted(weights):
    """An njit kernel sum(weights[i] x[i]^2) reading the module global named
    ``weights`` (one kernel per global, so that each test freezes its own)."""
    src = (
        "def weighted(x):\n"
        "    s = 0.0\n"
        "    for i in range(x.shape[0]):\n"
        f"        s += {weights}[i] * x[i] * x[i]\n"
        "    return s\n"
    )
    scope = {}
    exec(src, globals(), scope)  # the kernel's globals are this module's
    return numba.njit(scope["weighted"])


weighted_inplace = _weighted("W_INPLACE")
weighted_cached = _weighted("W_CACHED")
weighted_rebound = _weighted("W_REBOUND")


@numba.njit
def _weights_callee(i):
    return W_CALLEE[i]


@numba.njit
def weighted_via_callee(x):
    s = 0.0
    for i in range(x.shape[0]):
        s += _weights_callee(i) * x[i] * x[i]
    return s


@numba.njit
def weighted_first_two(x):
    # Constant indices: numba's O3 folds the loads, the frozen array may vanish.
    return W_CONST_INDEX[0] * x[0] * x[0] + W_CONST_INDEX[1] * x[1] * x[1]


@numba.njit
def scaled(x):
    return SCALE * x[0] * x[0]


def fd_gradient(f, x, h=1e-6):
    """Central differences of the dispatcher itself: the function f(x) runs."""
    g = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = h
        g[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


def test_global_array_changed_in_place_after_numba_compiled_is_refused():
    x = np.array([0.5, -1.0, 2.0])
    weighted_inplace(x)  # numba compiles and freezes W_INPLACE
    W_INPLACE[:] = [10.0, 20.0, 30.0]
    dx = np.zeros(3)
    with pytest.raises(enzpy.UnsupportedError, match=r"global array.*recompile\(\)"):
        enzpy.autodiff(weighted_inplace, enzpy.Duplicated(x, dx))
    np.testing.assert_array_equal(dx, 0.0)
    # After numba recompiles, f and its derivative use the current values.
    weighted_inplace.recompile()
    g = enzpy.gradient(weighted_inplace, x)
    np.testing.assert_allclose(g, 2 * W_INPLACE * x, rtol=1e-14)
    np.testing.assert_allclose(g, fd_gradient(weighted_inplace, x), rtol=1e-7)


def test_global_array_changed_in_a_callee_is_refused():
    x = np.array([0.5, -1.0, 2.0])
    weighted_via_callee(x)
    W_CALLEE[:] = [10.0, 20.0, 30.0]
    with pytest.raises(enzpy.UnsupportedError, match="global array"):
        enzpy.gradient(weighted_via_callee, x)


def test_global_rebound_after_numba_compiled_is_refused_naming_it():
    global SCALE, W_REBOUND
    x = np.array([1.5])
    scaled(x)
    SCALE = 5.0
    with pytest.raises(enzpy.UnsupportedError, match="'SCALE'"):
        enzpy.gradient(scaled, x)
    scaled.recompile()
    np.testing.assert_allclose(enzpy.gradient(scaled, x), [2 * 5.0 * 1.5], rtol=1e-14)
    x3 = np.ones(3)
    weighted_rebound(x3)
    W_REBOUND = np.array([1.0, 2.0, 3.0, 4.0])
    with pytest.raises(enzpy.UnsupportedError, match="'W_REBOUND'"):
        enzpy.gradient(weighted_rebound, x3)


def test_unchanged_globals_folded_by_numba_are_not_refused():
    x = np.array([0.5, -1.0])
    weighted_first_two(x)
    g = enzpy.gradient(weighted_first_two, x)
    np.testing.assert_allclose(g, 2 * W_CONST_INDEX[:2] * x, rtol=1e-14)


def test_cached_derivative_keeps_the_values_numba_keeps_until_recompile():
    x = np.array([0.5, -1.0, 2.0])
    old = W_CACHED.copy()
    g0 = enzpy.gradient(weighted_cached, x)
    np.testing.assert_allclose(g0, 2 * old * x, rtol=1e-14)
    W_CACHED[:] = [10.0, 20.0, 30.0]
    # numba still runs the frozen old weights, and so does the cached derivative.
    g1 = enzpy.gradient(weighted_cached, x)
    np.testing.assert_allclose(g1, fd_gradient(weighted_cached, x), rtol=1e-7)
    np.testing.assert_allclose(g1, 2 * old * x, rtol=1e-14)
    # numba recompiles: both move to the new weights.
    weighted_cached.recompile()
    g2 = enzpy.gradient(weighted_cached, x)
    np.testing.assert_allclose(g2, fd_gradient(weighted_cached, x), rtol=1e-7)
    np.testing.assert_allclose(g2, 2 * W_CACHED * x, rtol=1e-14)
