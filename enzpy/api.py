"""enzpy's public functions: autodiff, gradient, derivative, explain,
make_zero and strict (jacobian, hvp and hessian are in ``_drivers``).

A call is checked and bound (``_build.bind``: each annotation checks its
argument), its derivative is looked up in the cache or built
(``_build.entry``) and its njit wrapper is called; the call signature
unpacks the result.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from . import _build
from ._config import FLOAT_DTYPES, STRICT
from ._drivers import hessian, hvp, jacobian
from ._modes import Mode, Reverse
from ._values import is_float_tuple
from .annotations import Active, Annotation, Const, Duplicated
from .errors import EnzpyTypeError

__all__ = [
    "autodiff",
    "derivative",
    "explain",
    "gradient",
    "hessian",
    "hvp",
    "jacobian",
    "make_zero",
    "strict",
]


def autodiff(f: Any, *args: Any, mode: Mode = Reverse, ret: type = Active) -> Any:
    """Differentiate ``f`` at the given (annotated) arguments.

    ``f`` is a numba ``@njit`` function or a plain Python function (compiled
    with ``numba.njit``). A bare argument value means ``Const``.

    Reverse mode (``mode=Reverse``, the default): each argument is
    ``Const(v)``, ``Active(x)`` (a float scalar or tuple of floats),
    ``Duplicated(x, dx)`` or ``DuplicatedNoNeed(x, dx)`` (a float array and its
    shadow). A float32/float64 return value is seeded with 1.0 (``ret=Const``
    opts out); shadows follow Enzyme's reverse-mode semantics. Returns a tuple
    with one entry per argument: the derivative for ``Active`` arguments,
    ``None`` for the others. With ``mode=ReverseWithPrimal`` it returns
    ``(derivatives, primal_return)``.

    Forward mode (``mode=Forward``): ``Duplicated(x, dx)`` gives the tangent
    ``dx`` of ``x`` -- for an array, a shadow array holding the input tangent,
    which on exit holds the tangent of the array's contents after the call (so
    shadows of arrays the function writes receive the output tangents); for a
    float scalar (or tuple of floats), its tangent as a float (or tuple).
    ``Active`` is refused in forward mode. Returns the tangent of a float
    return value (``None`` when ``f`` returns None or ``ret=Const``); with
    ``mode=ForwardWithPrimal``, ``(tangent, primal_return)``.
    ``BatchDuplicated(x, (dx1, ..., dxW))`` propagates ``W`` directions in one
    sweep; the tangent of the return is then a tuple of ``W`` floats.

    Reverse-mode batch: ``BatchDuplicated(x, (dx1, ..., dxW))`` on float
    arrays propagates ``W`` cotangents (lane k's in ``dxk``) in one reverse
    sweep -- one primal evaluation and one tape for all lanes. Float scalars
    stay ``Active(a)``; their derivative is then a tuple of ``W`` adjoints.
    A float return is seeded with 1.0 in every lane, or lane by lane with
    ``ret=(s1, ..., sW)``. Every array argument that carries derivatives must
    then be ``BatchDuplicated`` with the same ``W``.
    """
    return _build.autodiff(f, args, mode, ret)


def gradient(f: Any, *xs: Any) -> Any:
    """Gradient of the float-valued ``f`` at ``xs``.

    Float arrays (and tuples of them) get zero shadows (``Duplicated``), float
    scalars (and tuples of floats) are ``Active``; other values are constant
    and get ``None``, and a call with no differentiable argument at all is an
    ``EnzpyTypeError`` (an integer array has no gradient: convert it with
    ``astype(float)``). Returns one gradient per argument (the shadow for
    arrays, the derivative for scalars), or the single gradient when there is
    one argument.
    """
    args: list[Any] = []
    for i, x in enumerate(xs):
        if isinstance(x, Annotation) or (isinstance(x, type) and issubclass(x, Annotation)):
            raise EnzpyTypeError(
                f"argument {i}: gradient takes plain values, not annotations; "
                "use enzpy.autodiff for annotated arguments"
            )
        if _float_arrays(x):
            args.append(Duplicated(x, make_zero(x)))
        elif is_float_tuple(x):
            args.append(Active(x))
        else:
            args.append(Const(x))
    if xs and all(isinstance(a, Const) for a in args):
        kinds = ", ".join(_kind(x) for x in xs)
        raise EnzpyTypeError(
            f"gradient: no argument carries a derivative (got {kinds}); it differentiates "
            "float arrays, float scalars and tuples of them: convert integer arrays with "
            "astype(float)"
        )
    b = _build.bind(f, args, Reverse, Active)
    entry = _build.entry(b)
    if not entry.signature.seeded:
        raise EnzpyTypeError(
            f"gradient needs a function that returns a float scalar; "
            f"{_build.function_name(b.disp)} returns {entry.restype}"
        )
    derivs = entry.signature.derivatives(_build.call(entry, b.prepared))
    out = tuple(
        a.shadow if isinstance(a, Duplicated) else d for a, d in zip(args, derivs, strict=True)
    )
    return out[0] if len(out) == 1 else out


def _float_arrays(x: Any) -> bool:
    """Whether ``x`` is a float array or a (nested) tuple of them."""
    if isinstance(x, tuple):
        return len(x) > 0 and all(_float_arrays(v) for v in x)
    return isinstance(x, np.ndarray) and x.dtype in FLOAT_DTYPES


def _kind(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return f"an {x.dtype} array"
    return type(x).__name__


def make_zero(x: Any) -> Any:
    """A zero of ``x``'s kind: ``zeros_like`` for arrays, 0.0 (of the same
    type) for floats, recursively for tuples and lists."""
    if isinstance(x, np.ndarray):
        return np.zeros_like(x)
    if isinstance(x, tuple):
        return tuple(make_zero(v) for v in x)
    if isinstance(x, list):
        return [make_zero(v) for v in x]
    if isinstance(x, bool | np.bool_):
        raise EnzpyTypeError(f"make_zero: a boolean has no derivative ({x!r})")
    if isinstance(x, float | int | complex | np.number):
        return type(x)(0)
    raise EnzpyTypeError(f"make_zero: cannot make a zero for {type(x).__name__}")


def derivative(f: Any, *args: Any, mode: Mode = Reverse, ret: type = Active) -> Any:
    """The compiled derivative of ``f`` for arguments like the (annotated)
    examples ``args``, as an ``@njit`` function callable from Python and from
    other njit code.

    Reverse mode: its parameters are ``f``'s arguments in order, each
    ``Duplicated`` / ``DuplicatedNoNeed`` argument followed by its shadow
    array (same shape and strides), then ``dret`` (the cotangent of the return
    value) when a float return is seeded. It returns a tuple: the primal
    return value first when ``mode=ReverseWithPrimal`` (and ``f`` does not
    return None), then the derivative of each ``Active`` argument in order.
    Shadows are updated in place (Enzyme's reverse-mode semantics).

    Forward mode (``mode=Forward`` / ``ForwardWithPrimal``): each
    ``Duplicated`` argument is followed by its tangent (the shadow array, or
    the float tangent of a scalar; with ``BatchDuplicated`` a tuple of them,
    one per direction). It returns a tuple: the primal return value first
    with ``ForwardWithPrimal`` (when ``f`` does not return None), then the
    tangent of a float return value (a tuple of them in batch mode) unless
    ``ret=Const``. Shadows receive the output tangents in place.

    Argument types must match the examples' numba types.
    """
    return _build.entry(_build.bind(f, args, mode, ret), noalias=False).wrapper


@contextmanager
def strict(enabled: bool = True) -> Iterator[None]:
    """Within this block, derivatives of results that depend on active inputs
    only through control are refused with ``PiecewiseConstantError`` naming the
    condition's line, instead of being computed: a loop whose exit condition
    depends on them and that carries a float out (a Newton loop, a bisection,
    ``while abs(f(x)) > tol``: enzpy differentiates the iterations run, not the
    solution), and an output that depends on them only through comparisons or
    float-to-integer conversions (its derivative is 0). Branches whose result
    also carries a derivative through data (``relu``, ``max``) are allowed.
    ``strict(False)`` turns it off inside a strict block. Applies to every
    function that builds a derivative (``autodiff``, ``gradient``,
    ``derivative``, ``jacobian``, ``hvp``, ``hessian``, ``explain``).

        >>> with enzpy.strict():
        ...     enzpy.autodiff(newton_sqrt, Active(2.0))  # raises
    """
    token = STRICT.set(enabled)
    try:
        yield
    finally:
        STRICT.reset(token)


def explain(f: Any, *args: Any, mode: Mode = Reverse, ret: type = Active) -> str:
    """The engine's log of its decisions (types, activity, caching, ...) for
    differentiating ``f`` at these (annotated) arguments. Its section
    ``piecewise-constant:`` lists results that depend on active inputs
    through control with no derivative (``loop-exit``, ``control-only``: what
    ``enzpy.strict()`` refuses) and the other comparisons and float-to-integer
    conversions of active values (``piecewise``). Nothing is cached or
    called. Raises like ``autodiff`` when differentiation fails; the log so
    far is then the exception's ``log`` attribute."""
    return _build.explain(_build.bind(f, args, mode, ret))
