"""Rules from a JVP alone (``enzpy.register_jvp``).

The author of a rule for a function ``f`` that writes nothing and returns a
float or a new array of floats gives only its Jacobian-vector product
``jvp(x1, dx1, ..., xn, dxn) -> dy``, linear in the ``dx``. enzpy builds the
rest of a custom rule (``_custom_rules``) from it:

* forward: ``y = f(x...)``, ``dy = jvp(x..., dx...)``;
* augmented: ``y = f(x...)`` with copies of the array arguments as the tape
  (the rule is safe whatever the kernel overwrites later);
* reverse: the vector-Jacobian product is the transpose of the JVP, which
  enzpy gets by differentiating the JVP itself: the cotangents of the inputs
  are the reverse-mode derivative of ``<jvp(x, t), ybar>`` with respect to
  the tangents ``t`` (the pairing is linear in ``t``, so its gradient is
  ``Jᵀ ybar`` at any ``t``). That derivative is compiled once per argument
  types a kernel calls ``f`` with, when a derivative first needs it.

Reverse batch lanes, activity patterns and overwritten arguments follow from
the custom-rule machinery; forward batch mode through any custom rule is not
supported yet.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba.core import types
from numba.core.dispatcher import Dispatcher
from numba.extending import overload

from ._custom_rules import CustomRule
from ._modes import Reverse
from .annotations import Active, Const, Duplicated
from .errors import EnzpyTypeError

__all__ = ["register_jvp"]


def _keep(v: Any) -> Any:  # pragma: no cover - replaced by the overload in njit code
    return v


@overload(_keep)
def _ol_keep(v: Any) -> Any:
    """What the tape keeps of an argument: a copy of an array (the kernel
    may overwrite it before the reverse), a scalar as it is."""

    def copy(v: Any) -> Any:
        return v.copy()

    def same(v: Any) -> Any:
        return v

    return copy if isinstance(v, types.Array) else same


def _compile(source: str, name: str, scope: dict[str, Any], qualname: str) -> Dispatcher:
    exec(compile(source, f"<enzpy.register_jvp {qualname}>", "exec"), scope)  # noqa: S102
    fn = scope[name]
    fn.__qualname__ = qualname
    compiled: Dispatcher = numba.njit(fn)
    return compiled


def _example(t: types.Type) -> Any:
    """A value of numba type ``t`` for ``enzpy.derivative``'s examples."""
    if isinstance(t, types.Array):
        return np.zeros((1,) * t.ndim, dtype=np.dtype(str(t.dtype)))
    if isinstance(t, types.Float | types.Integer | types.Boolean):
        return np.dtype(str(t)).type(0)
    raise EnzpyTypeError(f"a rule by a JVP takes float and integer scalars and arrays, not {t}")


def _pairing_derivative(
    jvp: Dispatcher, argtypes: tuple[types.Type, ...], restype: types.Type | None, name: str
) -> Any:
    """enzpy's reverse-mode derivative of ``<jvp(x, t), ybar>`` with respect to
    the tangents ``t`` of the float arguments, for ``argtypes``."""
    from .api import derivative  # enzpy's own front end builds the VJP

    n = len(argtypes)
    pairs = ", ".join(f"x{k}, t{k}" for k in range(n))
    lines = [f"def pairing({pairs}, ybar):", f"    dy = jvp({pairs})"]
    if isinstance(restype, types.Array):
        # numba would broadcast a tangent of another shape (or fail deep
        # inside the reverse): say which rule is wrong
        lines += ["    if dy.shape != ybar.shape:", "        raise ValueError(SHAPE)"]
        lines.append("    return np.sum(dy * ybar)")
    else:
        lines.append("    return dy * ybar")
    shape = f"the JVP given for {name} returned a tangent whose shape is not the result's"
    scope = {"np": np, "jvp": jvp, "SHAPE": shape}
    pairing = _compile("\n".join(lines) + "\n", "pairing", scope, f"{name}.pairing")
    annotations: list[Any] = []
    for t in argtypes:
        x = _example(t)
        annotations.append(Const(x))
        if isinstance(t, types.Array) and isinstance(t.dtype, types.Float):
            annotations.append(Duplicated(np.zeros_like(x), np.zeros_like(x)))
        elif isinstance(t, types.Float):
            annotations.append(Active(x))
        else:
            annotations.append(Const(x))
    if restype is None or not isinstance(restype, types.Array | types.Float):
        raise EnzpyTypeError(
            f"the rule by a JVP for {name}: the function must return a float or a new "
            f"array of floats, not {restype}"
        )
    annotations.append(Const(_example(restype)))
    return derivative(pairing, *annotations, mode=Reverse)


def _reverse_source(argtypes: tuple[types.Type, ...], restype: types.Type | None) -> str:
    """The reverse function: the tape's copies of the arrays, zero tangents,
    the VJP into fresh buffers added to the shadows, the float arguments'
    cotangents returned."""
    n = len(argtypes)
    pairs = ", ".join(f"x{k}, d{k}" for k in range(n))
    lines = [f"def reverse(cfg, tape, {pairs}, ybar):"]
    call: list[str] = []
    floats: list[str] = []
    for k, t in enumerate(argtypes):
        if isinstance(t, types.Array) and isinstance(t.dtype, types.Float):
            lines.append(f"    k{k} = tape[{k}]")
            lines.append(f"    g{k} = np.zeros_like(k{k})")
            call += [f"k{k}", f"np.zeros_like(k{k})", f"g{k}"]
        elif isinstance(t, types.Array):
            call += [f"tape[{k}]", f"tape[{k}]"]
        elif isinstance(t, types.Float):
            call += [f"x{k}", f"x{k} * 0.0"]
            floats.append(f"r[{len(floats)}]")
        else:
            call += [f"x{k}", f"x{k}"]
    ybar = "np.ascontiguousarray(ybar)" if isinstance(restype, types.Array) else "ybar"
    lines.append(f"    r = vjp({', '.join(call)}, {ybar}, 1.0)")
    for k, t in enumerate(argtypes):
        if isinstance(t, types.Array) and isinstance(t.dtype, types.Float):
            lines.append(f"    d{k} += g{k}")
    if not floats:
        lines.append("    return ()")
    elif len(floats) == 1:
        lines.append(f"    return {floats[0]}")
    else:
        lines.append(f"    return ({', '.join(floats)},)")
    return "\n".join(lines) + "\n"


def register_jvp(f: Any, jvp: Any) -> Any:
    """Give ``f`` its derivative from its Jacobian-vector product alone.

    ``f`` is an njit function of float and integer scalars and arrays that
    writes none of its arguments and returns a float or a new array of
    floats; ``jvp(x1, dx1, ..., xn, dxn)`` returns the tangent of ``f``'s
    result (a float, or an array of its shape) for the tangents ``dx`` of
    its arguments (0 for integers), linearly. enzpy derives the forward and
    reverse rules (the reverse is enzpy's own reverse-mode derivative of the
    JVP's pairing with the result's cotangent), every activity pattern and
    reverse batch lanes. Usable as ``enzpy.register_jvp(f, jvp)``; returns
    ``f``."""
    from ._rules import _njit, arity, register_custom

    if not isinstance(f, Dispatcher):
        raise EnzpyTypeError(f"register_jvp takes an njit function, got {f!r}")
    jvp_ = _njit(jvp, "the jvp function")
    n = arity(f)
    if arity(jvp_) != 2 * n:
        raise EnzpyTypeError(
            f"the jvp function for {f.py_func.__qualname__} must take {2 * n} arguments "
            f"(each of the function's {n} followed by its tangent), not {arity(jvp_)}"
        )
    name = str(f.py_func.__qualname__)
    xs = ", ".join(f"x{k}" for k in range(n))
    pairs = ", ".join(f"x{k}, d{k}" for k in range(n))
    kept = ", ".join(f"_keep(x{k})" for k in range(n))
    scope = {"f": f, "jvp": jvp_, "_keep": _keep, "np": np}
    forward = _compile(
        f"def forward(cfg, {pairs}):\n    return f({xs}), jvp({pairs})\n",
        "forward",
        dict(scope),
        f"{name}.forward",
    )
    augmented = _compile(
        f"def augmented(cfg, {xs}):\n    return f({xs}), ({kept},)\n",
        "augmented",
        dict(scope),
        f"{name}.augmented",
    )
    built: dict[tuple[Any, ...], Dispatcher] = {}

    def reverse_for(argtypes: tuple[types.Type, ...], restype: types.Type | None) -> Dispatcher:
        key = (argtypes, restype)
        if key not in built:
            vjp = _pairing_derivative(jvp_, argtypes, restype, name)
            built[key] = _compile(
                _reverse_source(argtypes, restype),
                "reverse",
                {"vjp": vjp, "np": np},
                f"{name}.reverse",
            )
        return built[key]

    for g in (forward, augmented):
        g.enzpy_description = lambda describe, what=g.py_func.__name__: (  # type: ignore[attr-defined]
            "enzpy.register_jvp",
            what,
            describe(f),
            describe(jvp_),
        )
    register_custom(f, CustomRule(forward, augmented, None, name, reverse_for, writes_nothing=True))
    return f
