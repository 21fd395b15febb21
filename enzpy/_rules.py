"""User derivative rules: the Python side of ``rules/UserRules`` in the engine.

A rule attaches to a function and is used wherever that function is called
inside a differentiated kernel, at any depth, and when it is differentiated
directly:

* ``register_partials(f, df)``: ``f`` is a function of scalars returning one
  float -- an njit function, a C function numba calls by symbol
  (``numba.types.ExternalFunction``, or its name as a string), or a C function
  called through its address (a ctypes function, a numba ``cfunc``) -- and
  ``df`` an njit function of the same arguments returning the partial
  derivatives of ``f`` with respect to its float arguments (a float, or a
  tuple in argument order). The engine derives forward, reverse, batch and
  higher-order derivatives from them; ``df`` is compiled code, inlined.
* ``register_rule(f, forward=..., augmented=..., reverse=...)``: ``f`` is an
  njit function of scalars and arrays, or a C function numba declares by
  name (its pointers are raw addresses), that may write into its arrays and
  returns nothing, an integer or a float; the three njit functions replace
  its calls in forward mode, in the reverse's forward sweep and in the
  reverse sweep (``_custom_rules`` builds what the engine calls around
  them; docs/rules.md has the conventions).
* ``inactive(f)``: calls of the njit function ``f`` carry no derivative.
* ``stop_gradient(x)``: ``x`` as a value without derivative.

Rules live in one registry; its ``generation`` changes with every
registration, so that derivatives built before are not reused (the build
cache's keys include it). enzpy's own rules (``_builtin_rules``: ``lgamma``,
``gamma``) are registered through the same functions.
"""

from __future__ import annotations

import ctypes
import inspect
import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numba
from numba.core import types
from numba.core.dispatcher import Dispatcher

from ._custom_rules import CustomRule
from .errors import EnzpyTypeError

__all__ = [
    "CRule",
    "addresses_called",
    "arity",
    "c_rules",
    "custom_c_rules",
    "custom_for",
    "generation",
    "inactive",
    "is_inactive",
    "partials",
    "partials_for",
    "register_partials",
    "register_rule",
    "registered",
    "stop_gradient",
    "through",
]


@dataclass(frozen=True)
class CRule:
    """A rule for a C function: by symbol, or by address with its types."""

    #: The symbol numba declares, or None for a function called by address.
    symbol: str | None
    address: int | None
    #: numba types of the arguments and result (by address: from ctypes or
    #: the cfunc).
    argtypes: tuple[types.Type, ...] | None
    restype: types.Type
    partials: Dispatcher
    display: str


@dataclass(frozen=True)
class AddressRule:
    """A custom rule for a C function called through its address (a ctypes
    function or a numba cfunc), with that function's types."""

    rule: CustomRule
    address: int
    argtypes: tuple[types.Type, ...]
    restype: types.Type


_partials: dict[int, tuple[Dispatcher, Dispatcher]] = {}
_c_rules: dict[str | int, CRule] = {}
_inactive: dict[int, Dispatcher] = {}
_custom: dict[int, tuple[Dispatcher, CustomRule]] = {}
_custom_c: dict[str, CustomRule] = {}
_custom_addr: dict[int, AddressRule] = {}
_generation = itertools.count(1)
_current = 0


def _bump() -> None:
    global _current
    _current = next(_generation)


def generation() -> int:
    """Changes whenever a rule is registered."""
    return _current


def _njit(df: Any, what: str) -> Dispatcher:
    if isinstance(df, Dispatcher):
        return df
    if callable(df):
        compiled: Dispatcher = numba.njit(df)
        return compiled
    raise EnzpyTypeError(f"{what} must be an njit function (or a plain Python one), got {df!r}")


_CTYPES: dict[Any, types.Type] = {
    ctypes.c_double: types.float64,
    ctypes.c_float: types.float32,
    ctypes.c_int: types.intc,
    ctypes.c_long: types.long_,
    ctypes.c_longlong: types.longlong,
    ctypes.c_int32: types.int32,
    ctypes.c_int64: types.int64,
}


def _ctypes_argtypes(fn: Any, name: str, pointers: bool = False) -> tuple[types.Type, ...]:
    """numba's types of a ctypes function's ``argtypes``; with ``pointers``
    (a custom rule), ``c_void_p`` and ``POINTER(scalar)`` too."""
    out: list[types.Type] = []
    for t in fn.argtypes or ():
        nt = _CTYPES.get(t)
        if nt is None and pointers:
            if t is ctypes.c_void_p:
                nt = types.voidptr
            elif isinstance(t, type) and issubclass(t, ctypes._Pointer):
                target = _CTYPES.get(t._type_)
                nt = types.CPointer(target) if target is not None else None
        if nt is None:
            what = "of scalars and pointers" if pointers else "of scalars"
            raise EnzpyTypeError(
                f"a rule {'' if pointers else 'by partial derivatives '}needs a C function "
                f"{what}; {name} takes a {t.__name__}"
            )
        out.append(nt)
    return tuple(out)


def _address_of(
    f: Any, pointers: bool = True
) -> tuple[int, tuple[types.Type, ...], types.Type, str] | None:
    """(address, argument types, result type, name) of a numba cfunc or a
    ctypes function (pointer arguments allowed with ``pointers``); None for
    anything else."""
    if hasattr(f, "address") and hasattr(f, "ctypes"):  # a numba cfunc
        name = getattr(f, "__qualname__", str(f))
        return int(f.address), tuple(f._sig.args), f._sig.return_type, name
    if isinstance(f, ctypes._CFuncPtr):  # type: ignore[attr-defined]
        name = getattr(f, "__name__", repr(f))
        address = ctypes.cast(f, ctypes.c_void_p).value
        assert address is not None
        restype = types.none if f.restype is None else _CTYPES.get(f.restype, types.float64)
        return address, _ctypes_argtypes(f, name, pointers), restype, name
    return None


def register_partials(f: Any, partials: Any) -> Any:
    """Give ``f`` its derivative by partial derivatives: ``partials`` takes
    ``f``'s arguments and returns ``d f / d x`` for each float argument ``x``
    (one float, or a tuple of floats in argument order); with one more
    parameter, it is also passed ``f``'s result (a solver's solution need not
    be computed again). ``f`` is an njit
    function, a C function (``numba.types.ExternalFunction``, a symbol name,
    a ctypes function or a numba ``cfunc``) of scalars returning one float.
    Returns ``f``. The rule is used at every call of ``f`` inside
    differentiated kernels and when ``f`` is differentiated itself."""
    df = _njit(partials, "the partial derivatives")
    if isinstance(f, Dispatcher):
        _check_partials_arity(f.py_func, df.py_func)
        _partials[id(f)] = (f, df)
    elif isinstance(f, str):
        _c_rules[f] = CRule(f, None, None, types.float64, df, f)
    elif isinstance(f, types.ExternalFunction):
        _c_rules[f.symbol] = CRule(f.symbol, None, None, types.float64, df, f.symbol)
    elif (found := _address_of(f, pointers=False)) is not None:
        address, args, restype, name = found
        if args is not None:
            _check_partials_arity(name, df.py_func, len(args))
        _c_rules[address] = CRule(None, address, args, restype, df, name)
    else:
        raise EnzpyTypeError(
            "register_partials takes an njit function, a C function "
            "(numba.types.ExternalFunction, a symbol name, a ctypes function or a "
            f"numba cfunc); got {f!r}"
        )
    _bump()
    return f


def _positional(fn: Any) -> tuple[list[str], bool]:
    """The names of ``fn``'s positional parameters, and whether it takes
    ``*args`` (any number)."""
    params = inspect.signature(fn).parameters.values()
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return names, any(p.kind == p.VAR_POSITIONAL for p in params)


def _check_partials_arity(f: Any, df: Any, n: int | None = None) -> None:
    """``df`` (partial derivatives) must take the ``n`` arguments of ``f`` (a
    Python function, or a C function's name with ``n`` given), or those and
    ``f``'s result; else an EnzpyTypeError naming both, at registration
    rather than at the first derivative."""
    if n is None:
        names, star = _positional(f)
        if star:
            return
        n, what = len(names), f"{f.__name__}'s {len(names)} arguments ({', '.join(names)})"
    else:
        what = f"the {n} arguments of {f}"
    got, star = _positional(df)
    if star or len(got) in (n, n + 1):
        return
    raise EnzpyTypeError(
        f"register_partials: the partial derivatives must take {what}, or those and the "
        f"result; {df.__name__} takes {len(got)} ({', '.join(got)})"
    )


def partials(f: Any) -> Any:
    """Decorator form of :func:`register_partials`: ``@enzpy.partials(f)``
    over the function giving ``f``'s partial derivatives (returned compiled)."""

    def register(df: Any) -> Dispatcher:
        d = _njit(df, "the partial derivatives")
        register_partials(f, d)
        return d

    return register


def register_rule(
    f: Any,
    *,
    forward: Any = None,
    augmented: Any = None,
    reverse: Any = None,
    always_active: bool = False,
    reads_only: Iterable[int] = (),
    augmented_shadows: bool = False,
) -> Any:
    """Give ``f`` a custom derivative rule, used at every call of ``f``
    inside differentiated kernels (and when ``f`` is differentiated itself).

    ``f`` is an njit function of float and integer scalars and arrays, or a
    C function numba declares by name (a symbol, or a
    ``numba.types.ExternalFunction``), whose pointers the rule receives as
    raw addresses; it may write into its arrays and returns nothing, an
    integer, a float or a new array of floats. With ``cfg`` a ``RuleConfig`` (``cfg.active[i]``:
    argument i carries a derivative at this call; ``cfg.overwritten[i]``:
    its memory may change before the reverse runs) and ``dx`` the shadow of
    each argument ``x`` (an array of the same shape; a zero array where the
    argument is constant; a float's tangent; 0 for other arguments; a
    pointer's shadow address, or 0):

    * ``forward(cfg, x1, dx1, ..., xn, dxn)`` runs ``f`` and writes the
      tangents of what it writes into the ``dx``; returns ``f``'s result, or
      ``(result, tangent)`` for a float or array result;
    * ``augmented(cfg, x1, ..., xn)`` runs ``f``; returns ``(result, tape)``
      (just ``tape`` when ``f`` returns nothing): what the reverse needs, an
      array, a scalar or a tuple of them;
    * ``reverse(cfg, tape, x1, dx1, ..., xn, dxn[, ybar])`` turns the
      cotangents in the shadows of what ``f`` wrote into those of what it
      read (``ybar``: the cotangent of a float or array result); returns the
      cotangents of the float arguments (a float, a tuple, or ``()``).

    ``f`` is an njit function, or a C function: a symbol, a
    ``numba.types.ExternalFunction``, a ctypes function (with ``argtypes``)
    or a numba ``cfunc`` (kernels call a cfunc through its ``.ctypes``: numba
    looks one called directly up at run time, where no rule matches it).

    Either ``forward`` or ``augmented`` with ``reverse`` may be left out
    (the mode that needs them then refuses clearly). Plain Python functions
    are njit-compiled.

    ``always_active=True`` runs the rule at every call inside a
    differentiated kernel, whether or not its inputs carry derivatives, and
    gives what it writes derivatives: for a function that brings values
    from outside the kernel, such as a receive from another MPI process (a
    zero array is then the shadow of an argument without one).
    ``reads_only`` lists the arguments (by position) whose memory ``f`` only
    reads: a C function is otherwise taken to write through every pointer
    it is passed (which a ``Const`` array cannot hold derivatives for).
    ``augmented_shadows=True`` calls ``augmented(cfg, x1, dx1, ..., xn, dxn)``
    with the shadows (in batch mode, those of the first lane; ``cfg.lanes``
    says how many there are): for a function whose reverse needs to know,
    at a later call, where this call's cotangents will be (a non-blocking
    receive, whose cotangent is sent back when its wait is reversed).
    Returns ``f``."""
    fns = [
        _njit(g, f"the {what} function") if g is not None else None
        for g, what in ((forward, "forward"), (augmented, "augmented"), (reverse, "reverse"))
    ]
    if fns[0] is None and fns[1] is None and fns[2] is None:
        raise EnzpyTypeError("register_rule needs forward=, or augmented= and reverse=")
    if (fns[1] is None) != (fns[2] is None):
        raise EnzpyTypeError("register_rule needs both augmented= and reverse=, or neither")

    def rule(name: str) -> CustomRule:
        return CustomRule(
            fns[0],
            fns[1],
            fns[2],
            name,
            always_active=always_active,
            reads_only=only,
            augmented_shadows=augmented_shadows,
        )

    only = frozenset(int(i) for i in reads_only)

    if isinstance(f, Dispatcher):
        _custom[id(f)] = (f, rule(f.py_func.__qualname__))
    elif isinstance(f, str | types.ExternalFunction):
        symbol = f if isinstance(f, str) else f.symbol
        _custom_c[symbol] = rule(symbol)
    elif (found := _address_of(f)) is not None:
        address, args, restype, name = found
        _custom_addr[address] = AddressRule(rule(name), address, args, restype)
    else:
        raise EnzpyTypeError(
            "register_rule takes an njit function or a C function: a symbol, a "
            f"numba.types.ExternalFunction, a ctypes function or a numba cfunc; got {f!r}"
        )
    _bump()
    return f


def register_custom(f: Dispatcher, rule: CustomRule) -> None:
    """Register a custom rule built elsewhere (``_jvp_rules``) for the njit
    function ``f``."""
    _custom[id(f)] = (f, rule)
    _bump()


def custom_for(disp: Any) -> CustomRule | None:
    """The custom rule registered for the njit function ``disp``."""
    found = _custom.get(id(disp))
    return found[1] if found is not None and found[0] is disp else None


def custom_c_rules() -> dict[str, CustomRule]:
    return dict(_custom_c)


def custom_address_rules() -> list[AddressRule]:
    return list(_custom_addr.values())


def inactive(f: Any) -> Any:
    """Declare that calls of the njit function ``f`` carry no derivative
    (logging, counters, random draws taken as constant): its results are
    constants. ``f`` may read memory that carries derivatives, not write it
    (an error says so). Usable as a decorator over ``@njit``; returns ``f``."""
    if not isinstance(f, Dispatcher):
        raise EnzpyTypeError(f"enzpy.inactive takes an njit function, got {f!r}")
    _inactive[id(f)] = f
    _bump()
    return f


def arity(disp: Any) -> int:
    """The number of parameters of an njit function."""
    return len(inspect.signature(disp.py_func).parameters)


def registered() -> list[tuple[str, Any, Any]]:
    """Every registration, enzpy's own included: ("partials", target, df)
    with target an njit function, a C symbol or an address, and
    ("inactive", f, None)."""
    out: list[tuple[str, Any, Any]] = [("partials", f, df) for f, df in _partials.values()]
    for rule in _c_rules.values():
        out.append(("partials", rule.symbol or rule.address, rule.partials))
    out += [("inactive", f, None) for f in _inactive.values()]
    customs: list[tuple[Any, CustomRule]] = [(f, r) for f, r in _custom.values()]
    customs += list(_custom_c.items())
    customs += [(a.address, a.rule) for a in _custom_addr.values()]
    for target, custom in customs:
        for what, fn in (
            ("forward", custom.forward),
            ("augmented", custom.augmented),
            ("reverse", custom.reverse),
        ):
            if fn is not None:
                out.append((f"rule-{what}", target, fn))
    return out


def partials_for(disp: Any) -> Dispatcher | None:
    """The partials function registered for the njit function ``disp``."""
    found = _partials.get(id(disp))
    return found[1] if found is not None and found[0] is disp else None


def is_inactive(disp: Any) -> bool:
    return _inactive.get(id(disp)) is disp


def c_rules() -> list[CRule]:
    return list(_c_rules.values())


_through: dict[int, tuple[Dispatcher, Dispatcher]] = {}


def through(disp: Dispatcher) -> Dispatcher:
    """An njit function of the same parameters that returns ``disp(...)``:
    differentiating it applies ``disp``'s rule (a function is differentiated
    through its body, a call through its rule)."""
    found = _through.get(id(disp))
    if found is not None and found[0] is disp:
        return found[1]
    params = list(inspect.signature(disp.py_func).parameters)
    names = ", ".join(f"a{k}" for k in range(len(params)))
    scope: dict[str, Any] = {"target": disp}
    exec(f"def call({names}):\n    return target({names})\n", scope)  # noqa: S102
    fn = scope["call"]
    fn.__qualname__ = fn.__name__ = getattr(disp.py_func, "__qualname__", "f")
    wrapped: Dispatcher = numba.njit(fn)
    _through[id(disp)] = (disp, wrapped)
    return wrapped


_ADDRESS = re.compile(r"inttoptr \(i64 (\d+) to ptr\)")


def addresses_called(module_text: str) -> set[int]:
    """Addresses the module calls through constant pointers."""
    return {int(m) for m in _ADDRESS.findall(module_text)}


@numba.njit
def stop_gradient(x: Any) -> Any:
    """``x`` as a constant: no derivative flows through it (float scalars)."""
    return x


inactive(stop_gradient)
