"""scipy.special functions in njit kernels, with their derivatives.

numba has no ``scipy.special``. numba users call its C functions (the module
``scipy.special.cython_special``) through their addresses, as numba-scipy
does: a ctypes function of the C function's address, callable from njit code.
This module makes such bindings for the real-valued functions below and
registers their partial derivatives on those addresses, so a kernel that calls
``enzpy.special.gammaln(x)`` -- or any other binding to the same C function --
differentiates in every mode, batch width and order::

    import enzpy.special as sp

    @numba.njit
    def nll(x, k):
        return -(k * np.log(x) - x - sp.gammaln(k + 1.0)).sum()

Each binding takes and returns float64 scalars, like the numba-scipy binding of
the same name. Importing this module needs scipy.

========================  =============================================
function                  derivative
========================  =============================================
gammaln(x)                psi(x)
psi(x), digamma(x)        trigamma(x) (``enzpy.special.trigamma``)
gamma(x), rgamma(x)       gamma(x) psi(x), -rgamma(x) psi(x)
erf, erfc, erfcx, dawsn   from exp(-x²), the function's own value
erfinv(x), erfcinv(x)     ±√π/2 exp(y²), y the result
ndtr, log_ndtr, ndtri     the normal density over the result
expit, logit, log_expit   y (1 - y), 1 / (x (1 - x)), expit(-x)
i0, i1, i0e, i1e, k0, k1  Bessel recurrences (i1'(0) = ½)
j0, j1, y0, y1            -j1, j0 - j1/x (j1'(0) = ½), -y1, y0 - y1/x
entr(x)                   -log(x) - 1
xlogy(x, y)               (log y, x / y)
xlog1py(x, y)             (log1p y, x / (1 + y))
beta(a, b), betaln(a, b)  psi(a) - psi(a + b), psi(b) - psi(a + b) (× beta)
========================  =============================================
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

import numba
from numba.extending import get_cython_function_address

from ._rules import register_partials

__all__ = [
    "beta",
    "betaln",
    "dawsn",
    "digamma",
    "entr",
    "erf",
    "erfc",
    "erfcinv",
    "erfcx",
    "erfinv",
    "expit",
    "gamma",
    "gammaln",
    "i0",
    "i0e",
    "i1",
    "i1e",
    "j0",
    "j1",
    "k0",
    "k1",
    "log_expit",
    "log_ndtr",
    "logit",
    "ndtr",
    "ndtri",
    "psi",
    "rgamma",
    "trigamma",
    "xlog1py",
    "xlogy",
    "y0",
    "y1",
]

_D1 = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_double)
_D2 = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_double, ctypes.c_double)


def _bind(capsule: str, nargs: int) -> Any:
    """A ctypes function of the double-precision C function behind
    ``scipy.special.cython_special`` (``capsule`` names the fused variant),
    without the trailing ``skip_dispatch`` flag numba-scipy leaves out too."""
    address = get_cython_function_address("scipy.special.cython_special", capsule)
    return (_D1 if nargs == 1 else _D2)(address)


gammaln = _bind("gammaln", 1)
psi = _bind("__pyx_fuse_1psi", 1)
digamma = psi
gamma = _bind("__pyx_fuse_1gamma", 1)
rgamma = _bind("__pyx_fuse_1rgamma", 1)
erf = _bind("__pyx_fuse_1erf", 1)
erfc = _bind("__pyx_fuse_1erfc", 1)
erfcx = _bind("__pyx_fuse_1erfcx", 1)
dawsn = _bind("__pyx_fuse_1dawsn", 1)
erfinv = _bind("__pyx_fuse_0erfinv", 1)
erfcinv = _bind("erfcinv", 1)
ndtr = _bind("__pyx_fuse_1ndtr", 1)
log_ndtr = _bind("__pyx_fuse_1log_ndtr", 1)
ndtri = _bind("ndtri", 1)
expit = _bind("__pyx_fuse_0expit", 1)
logit = _bind("__pyx_fuse_0logit", 1)
log_expit = _bind("__pyx_fuse_0log_expit", 1)
i0 = _bind("i0", 1)
i1 = _bind("i1", 1)
i0e = _bind("i0e", 1)
i1e = _bind("i1e", 1)
k0 = _bind("k0", 1)
k1 = _bind("k1", 1)
j0 = _bind("j0", 1)
j1 = _bind("j1", 1)
y0 = _bind("y0", 1)
y1 = _bind("y1", 1)
entr = _bind("entr", 1)
xlogy = _bind("__pyx_fuse_1xlogy", 2)
xlog1py = _bind("__pyx_fuse_1xlog1py", 2)
beta = _bind("beta", 2)
betaln = _bind("betaln", 2)

_SQRT_PI = math.sqrt(math.pi)
_SQRT_2PI = math.sqrt(2.0 * math.pi)


@numba.njit(cache=True)
def trigamma(x: float) -> float:
    """ψ'(x) = Σₖ 1/(x + k)²: recurrence up to x ≥ 10, then the asymptotic
    series; reflection for negative x; inf at the poles 0, -1, -2, …"""
    if x <= 0.0 and x == math.floor(x):
        return math.inf
    if x < 0.0:
        s = math.pi / math.sin(math.pi * x)
        return -trigamma(1.0 - x) + s * s
    acc = 0.0
    while x < 10.0:
        acc += 1.0 / (x * x)
        x += 1.0
    t = 1.0 / (x * x)
    series = 1.0 / 6.0 + t * (-1.0 / 30.0 + t * (1.0 / 42.0 + t * (-1.0 / 30.0 + t * 5.0 / 66.0)))
    return acc + 1.0 / x + t / 2.0 + t * series / x


@numba.njit(cache=True)
def _bessel_ratio(first: float, second: float, x: float) -> float:
    """first - second / x, with its limit ½ at x = 0 (the derivative of i1
    and j1, whose second term is i1 or j1 itself)."""
    if x == 0.0:
        return 0.5
    return first - second / x


def _rules() -> None:
    """The partial derivatives; a partials function with one parameter more
    than the function is also passed the result ``y``."""
    register_partials(gammaln, lambda x: psi(x))
    register_partials(psi, lambda x: trigamma(x))
    register_partials(gamma, lambda x, y: y * psi(x))
    register_partials(rgamma, lambda x, y: -y * psi(x))
    register_partials(erf, lambda x: 2.0 / _SQRT_PI * math.exp(-x * x))
    register_partials(erfc, lambda x: -2.0 / _SQRT_PI * math.exp(-x * x))
    register_partials(erfcx, lambda x, y: 2.0 * x * y - 2.0 / _SQRT_PI)
    register_partials(dawsn, lambda x, y: 1.0 - 2.0 * x * y)
    register_partials(erfinv, lambda x, y: _SQRT_PI / 2.0 * math.exp(y * y))
    register_partials(erfcinv, lambda x, y: -_SQRT_PI / 2.0 * math.exp(y * y))
    register_partials(ndtr, lambda x: math.exp(-0.5 * x * x) / _SQRT_2PI)
    register_partials(log_ndtr, lambda x, y: math.exp(-0.5 * x * x - y) / _SQRT_2PI)
    register_partials(ndtri, lambda x, y: _SQRT_2PI * math.exp(0.5 * y * y))
    register_partials(expit, lambda x, y: y * (1.0 - y))
    register_partials(logit, lambda x: 1.0 / (x * (1.0 - x)))
    register_partials(log_expit, lambda x: expit(-x))
    register_partials(i0, lambda x: i1(x))
    register_partials(i1, lambda x, y: _bessel_ratio(i0(x), y, x))
    # i0e = e^{-|x|} i0: (i1 - sign(x) i0) e^{-|x|}
    register_partials(i0e, lambda x, y: i1e(x) - math.copysign(1.0, x) * y)
    register_partials(i1e, lambda x, y: _bessel_ratio(i0e(x), y, x) - math.copysign(1.0, x) * y)
    register_partials(k0, lambda x: -k1(x))
    register_partials(k1, lambda x, y: -k0(x) - y / x)
    register_partials(j0, lambda x: -j1(x))
    register_partials(j1, lambda x, y: _bessel_ratio(j0(x), y, x))
    register_partials(y0, lambda x: -y1(x))
    register_partials(y1, lambda x, y: y0(x) - y / x)
    register_partials(entr, lambda x: -math.log(x) - 1.0)
    register_partials(xlogy, lambda x, y: (math.log(y), x / y))
    register_partials(xlog1py, lambda x, y: (math.log1p(y), x / (1.0 + y)))
    register_partials(betaln, lambda a, b: (psi(a) - psi(a + b), psi(b) - psi(a + b)))
    register_partials(beta, lambda a, b, r: (r * (psi(a) - psi(a + b)), r * (psi(b) - psi(a + b))))


_rules()
