"""enzpy's own rules given by partial derivatives (``_rules``): libm and
numba helper functions the engine's rule table does not cover, registered
the way a user registers one.

* ``math.lgamma`` (libm ``lgamma``/``lgammaf``): d/dx log|Γ(x)| = ψ(x).
* ``math.gamma`` (numba's ``numba_gamma``/``numba_gammaf``): Γ(x) ψ(x).
* The LAPACK routines behind ``np.linalg`` (``_lapack_rules``), as custom
  rules (``register_rule``).

ψ (digamma) is computed here: the recurrence ψ(x) = ψ(x + 1) - 1/x up to
x >= 10, then the asymptotic series (error below 1e-14 there); the
reflection ψ(x) = ψ(1 - x) - π / tan(π x) for x < 0. At the poles (0, -1,
-2, ...) Γ is infinite and ψ is NaN. Being njit code, the partials are
differentiated again for second derivatives.
"""

from __future__ import annotations

import math

import numba

from . import _lapack_rules
from ._rules import register_partials, register_rule

__all__ = ["digamma"]


@numba.njit(error_model="numpy", cache=False)
def _digamma_positive(x: float) -> float:
    acc = 0.0
    while x < 10.0:
        acc -= 1.0 / x
        x += 1.0
    f = 1.0 / (x * x)
    series = f * (
        1.0 / 12.0 - f * (1.0 / 120.0 - f * (1.0 / 252.0 - f * (1.0 / 240.0 - f * (1.0 / 132.0))))
    )
    return acc + math.log(x) - 0.5 / x - series


@numba.njit(error_model="numpy", cache=False)
def digamma(x: float) -> float:
    """ψ(x) = d/dx log Γ(x) in float64 (NaN at the poles 0, -1, -2, ...)."""
    if x <= 0.0 and math.floor(x) == x:
        return math.nan
    if x < 0.0:
        return _digamma_positive(1.0 - x) - math.pi / math.tan(math.pi * x)
    return _digamma_positive(x)


@numba.njit(error_model="numpy", cache=False)
def _d_lgamma(x: float) -> float:
    return digamma(x)


@numba.njit(error_model="numpy", cache=False)
def _d_gamma(x: float) -> float:
    return math.gamma(x) * digamma(x)


for _name in ("lgamma", "lgammaf"):
    register_partials(_name, _d_lgamma)
for _name in ("numba_gamma", "numba_gammaf"):
    register_partials(_name, _d_gamma)

# The LAPACK calls behind numba's np.linalg (``_lapack_rules``).
for _symbol, (_fwd, _aug, _rev) in _lapack_rules.RULES.items():
    register_rule(_symbol, forward=_fwd, augmented=_aug, reverse=_rev)
