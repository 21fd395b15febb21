"""enzpy.special: scipy.special's C functions called from njit kernels, with
derivative rules on their addresses. Checked against finite differences of
scipy itself, in reverse and forward mode, for second derivatives, and for a
binding the user made to the same C function (numba-scipy's way)."""

from __future__ import annotations

import ctypes

import numba
import numpy as np
import pytest

scipy_special = pytest.importorskip("scipy.special")

import enzpy  # noqa: E402
import enzpy.special as sp  # noqa: E402
from enzpy import Active, Duplicated  # noqa: E402

# name -> (points inside the domain, scipy's function)
ONE_ARG = {
    "gammaln": ([0.3, 1.7, 6.5, 23.0], scipy_special.gammaln),
    "psi": ([0.4, 1.3, 7.9, 40.0, -0.6], scipy_special.psi),
    "gamma": ([0.4, 2.5, -1.5], scipy_special.gamma),
    "rgamma": ([0.4, 2.5, -1.5], scipy_special.rgamma),
    "erf": ([-1.2, 0.0, 0.7], scipy_special.erf),
    "erfc": ([-1.2, 0.3, 2.0], scipy_special.erfc),
    "erfcx": ([-0.8, 0.5, 3.0], scipy_special.erfcx),
    "dawsn": ([-1.5, 0.2, 2.5], scipy_special.dawsn),
    "erfinv": ([-0.9, 0.1, 0.6], scipy_special.erfinv),
    "erfcinv": ([0.2, 1.0, 1.7], scipy_special.erfcinv),
    "ndtr": ([-2.0, 0.1, 1.5], scipy_special.ndtr),
    "log_ndtr": ([-6.0, -1.0, 2.0], scipy_special.log_ndtr),
    "ndtri": ([0.05, 0.5, 0.9], scipy_special.ndtri),
    "expit": ([-3.0, 0.2, 4.0], scipy_special.expit),
    "logit": ([0.1, 0.5, 0.8], scipy_special.logit),
    "log_expit": ([-5.0, 0.3, 6.0], scipy_special.log_expit),
    "i0": ([-1.1, 0.4, 3.0], scipy_special.i0),
    "i1": ([-1.1, 0.4, 3.0], scipy_special.i1),
    "i0e": ([-1.1, 0.4, 3.0], scipy_special.i0e),
    "i1e": ([-1.1, 0.4, 3.0], scipy_special.i1e),
    "k0": ([0.3, 1.0, 4.0], scipy_special.k0),
    "k1": ([0.3, 1.0, 4.0], scipy_special.k1),
    "j0": ([-2.0, 0.7, 9.0], scipy_special.j0),
    "j1": ([-2.0, 0.7, 9.0], scipy_special.j1),
    "y0": ([0.4, 2.0, 9.0], scipy_special.y0),
    "y1": ([0.4, 2.0, 9.0], scipy_special.y1),
    "entr": ([0.2, 1.0, 3.0], scipy_special.entr),
}


def _weighted_sum(fn):
    @numba.njit
    def kernel(x, w):
        s = 0.0
        for i in range(x.shape[0]):
            s += w[i] * fn(x[i])
        return s

    return kernel


def _central(f, x, h=1e-6):
    return (f(x + h) - f(x - h)) / (2.0 * h)


@pytest.mark.parametrize("name", list(ONE_ARG))
def test_one_argument_functions_match_finite_differences_in_both_modes(name):
    points, reference = ONE_ARG[name]
    x = np.array(points)
    w = np.linspace(0.5, 1.5, x.size)
    kernel = _weighted_sum(getattr(sp, name))
    assert kernel(x, w) == pytest.approx(float((w * reference(x)).sum()), rel=1e-13)
    expected = w * _central(reference, x)
    dx = np.zeros_like(x)
    enzpy.autodiff(kernel, Duplicated(x, dx), enzpy.Const(w))
    np.testing.assert_allclose(dx, expected, rtol=2e-6, atol=1e-8)
    v = np.linspace(-1.0, 1.0, x.size)
    t = enzpy.autodiff(kernel, Duplicated(x, v), enzpy.Const(w), mode=enzpy.Forward)
    assert t == pytest.approx(float(expected @ v), rel=2e-6, abs=1e-8)


@numba.njit
def two_argument_mix(a, b):
    return sp.xlogy(a, b) + 0.5 * sp.xlog1py(b, a) + sp.betaln(a, b) + 0.1 * sp.beta(a, b)


def test_two_argument_functions_match_finite_differences():
    a, b = 1.7, 0.6
    ga, gb = enzpy.autodiff(two_argument_mix, Active(a), Active(b))

    def ref(a, b):
        s = scipy_special
        return s.xlogy(a, b) + 0.5 * s.xlog1py(b, a) + s.betaln(a, b) + 0.1 * s.beta(a, b)

    assert two_argument_mix(a, b) == pytest.approx(ref(a, b), rel=1e-13)
    assert ga == pytest.approx(_central(lambda t: ref(t, b), a), rel=1e-6)
    assert gb == pytest.approx(_central(lambda t: ref(a, t), b), rel=1e-6)


def test_trigamma_matches_scipy_polygamma_everywhere_it_is_defined():
    x = np.array([-2.5, -0.3, 0.01, 0.7, 3.0, 5.999, 6.0, 50.0, 1e4])
    got = np.array([sp.trigamma(v) for v in x])
    np.testing.assert_allclose(got, scipy_special.polygamma(1, x), rtol=1e-12)
    assert sp.trigamma(0.0) == np.inf and sp.trigamma(-3.0) == np.inf


@numba.njit
def poisson_nll(lam, k):
    s = 0.0
    for i in range(k.shape[0]):
        s += lam[i] - k[i] * np.log(lam[i]) + sp.gammaln(k[i] + lam[i])
    return s


def test_second_derivatives_go_through_the_rules_of_the_rules():
    lam = np.array([0.8, 2.5, 7.0])
    k = np.array([1.0, 3.0, 5.0])
    H = enzpy.hessian(poisson_nll, lam, k)
    expected = k / lam**2 + scipy_special.polygamma(1, k + lam)
    np.testing.assert_allclose(H, np.diag(expected), rtol=1e-9, atol=1e-12)


# numba-scipy's way: a ctypes function of the same C function, made by the user.
_address = numba.extending.get_cython_function_address(
    "scipy.special.cython_special", "__pyx_fuse_1erf"
)
users_erf = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_double)(_address)


@numba.njit
def through_users_binding(x):
    s = 0.0
    for i in range(x.shape[0]):
        s += users_erf(x[i]) ** 2
    return s


def test_a_binding_the_user_made_to_the_same_c_function_gets_the_rule():
    x = np.array([-0.5, 0.3, 1.1])
    dx = np.zeros(3)
    enzpy.autodiff(through_users_binding, Duplicated(x, dx))
    expected = 2 * scipy_special.erf(x) * 2 / np.sqrt(np.pi) * np.exp(-x * x)
    np.testing.assert_allclose(dx, expected, rtol=1e-12)
