"""SciPy bridge: enzpy derivatives in the shapes ``scipy.optimize`` asks for.

    >>> import enzpy.scipy
    >>> obj = enzpy.scipy.Objective(loss, t, data)      # loss(p, t, data) -> float
    >>> scipy.optimize.minimize(obj.value_and_grad, p0, jac=True, method="L-BFGS-B")
    >>> scipy.optimize.minimize(obj, p0, jac=obj.grad, hessp=obj.hessp, method="trust-ncg")
    >>> res = enzpy.scipy.Residuals(resid, m, t, data)  # resid(p, out, t, data)
    >>> scipy.optimize.least_squares(res, p0, jac=res.jac)

The derivative is compiled at the first call (for the types of ``x`` and
the extra arguments) and reused by every later call: an optimizer's
iterations cost one compiled call each, no recompilation. This module does
not import scipy: the functions take and return numpy arrays and floats.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _build
from ._drivers import hvp, jacobian
from ._modes import Forward, Reverse, ReverseWithPrimal
from .annotations import Active, Duplicated
from .errors import EnzpyTypeError, EnzpyValueError

__all__ = ["Objective", "Residuals"]


def _point(name: str, x: Any, n: int | None) -> np.ndarray:
    """``x`` as a C-contiguous float64 vector (of length ``n`` when set)."""
    a = np.asarray(x)
    if a.dtype.kind not in "fiu":
        raise EnzpyTypeError(f"{name}: x must be a real vector, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, np.float64)
    if a.ndim != 1 or (n is not None and a.shape[0] != n):
        want = "a vector" if n is None else f"a vector of length {n}"
        raise EnzpyValueError(f"{name}: x must be {want}, got shape {a.shape}")
    return a


class Objective:
    """A float-valued njit ``f(x, *args)`` of the float64 vector ``x`` as an
    objective for ``scipy.optimize.minimize``: call it for the value,
    ``value_and_grad`` for ``(value, gradient)`` (``jac=True``), ``grad``
    for the gradient (``jac=obj.grad``), ``hessp`` for Hessian-vector
    products (``hessp=obj.hessp``, reverse over forward). ``args`` are
    constants (no derivative), passed to ``f`` after ``x`` on every call;
    ``f`` must not write them. ``nfev`` counts the calls to ``f``'s
    compiled code."""

    def __init__(self, f: Any, *args: Any) -> None:
        self.disp = _build.dispatcher(f)
        self.name = _build.function_name(self.disp)
        self.args = args
        self.n: int | None = None
        self._vg: Any = None
        self.nfev = 0

    def _x(self, x: Any) -> np.ndarray:
        a = _point(self.name, x, self.n)
        self.n = a.shape[0]
        return a

    def __call__(self, x: Any) -> float:
        self.nfev += 1
        return float(self.disp(self._x(x), *self.args))

    def value_and_grad(self, x: Any) -> tuple[float, np.ndarray]:
        """``(f(x), ∇f(x))`` from one reverse sweep."""
        a = self._x(x)
        g = np.zeros_like(a)
        if self._vg is None:
            b = _build.bind(self.disp, [Duplicated(a, g), *self.args], ReverseWithPrimal, Active)
            entry = _build.entry(b, noalias=False)
            if not entry.signature.seeded:
                raise EnzpyTypeError(
                    f"{self.name} must return a float to be an objective; it returns "
                    f"{entry.restype}"
                )
            self._vg = entry.wrapper
        self.nfev += 1
        (value,) = self._vg(a, g, *self.args, 1.0)
        return float(value), g

    def grad(self, x: Any) -> np.ndarray:
        """``∇f(x)``."""
        return self.value_and_grad(x)[1]

    def hessp(self, x: Any, p: Any) -> np.ndarray:
        """The Hessian of ``f`` at ``x`` times ``p`` (``enzpy.hvp``)."""
        a = self._x(x)
        self.nfev += 1
        return np.asarray(hvp(self.disp, a, _point(self.name, p, a.shape[0]), *self.args))


class Residuals:
    """An njit ``r(x, out, *args)`` writing ``m`` residuals into ``out`` as
    the residual function of ``scipy.optimize.least_squares``: call it for
    the residual vector, ``jac`` for the ``(m, n)`` Jacobian
    (``jac=res.jac``): forward mode in batch chunks when ``n <= m``,
    reverse mode otherwise (``mode`` forces one). ``args`` are constants."""

    def __init__(self, r: Any, m: int, *args: Any, mode: Any = None) -> None:
        if not isinstance(m, int | np.integer) or m <= 0:
            raise EnzpyValueError(f"Residuals: m must be a positive int, got {m!r}")
        self.disp = _build.dispatcher(r)
        self.name = _build.function_name(self.disp)
        self.m = int(m)
        self.args = args
        self.mode = mode
        self.n: int | None = None

    def _x(self, x: Any) -> np.ndarray:
        a = _point(self.name, x, self.n)
        self.n = a.shape[0]
        return a

    def __call__(self, x: Any) -> np.ndarray:
        out = np.zeros(self.m)
        self.disp(self._x(x), out, *self.args)
        return out

    def jac(self, x: Any) -> np.ndarray:
        """``∂r/∂x`` at ``x``, shape ``(m, n)``."""
        a = self._x(x)
        mode = self.mode or (Forward if a.shape[0] <= self.m else Reverse)
        return np.asarray(jacobian(self.disp, a, *self.args, out=np.zeros(self.m), mode=mode))
