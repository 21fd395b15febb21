"""enzpy's public functions: autodiff, gradient, make_zero, derivative, explain.

A call classifies and checks its arguments (``_validate``), looks the
derivative up in the cache (``_cache``) and calls its njit wrapper. On a miss
the derivative is built: numba's pre-O3 IR is captured (``_capture``), the
request is planned from numba's types (``_abi``), the engine differentiates
(``_native``) and the result is loaded into numba (``_link``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba.core import types
from numba.core.errors import NumbaError
from numba.core.registry import CPUDispatcher

from . import _abi, _cache, _link, _native
from ._abi import ACTIVE, CONST
from ._aliasing import check_arguments
from ._capture import Captured, as_dispatcher, capture
from ._validate import prepare
from .annotations import Active, Annotation, Const, Duplicated, Mode, Reverse, ReverseWithPrimal
from .errors import ActivityError, EnzpyTypeError, EnzpyValueError, InternalError, UnsupportedError

__all__ = ["autodiff", "derivative", "explain", "gradient", "make_zero"]


class _Entry:
    """A built derivative and how to read its results."""

    __slots__ = ("wrapper", "ret_active", "restype", "unpack", "keepalive")

    def __init__(self, linked: _link.Linked, restype: types.Type, keepalive: Any) -> None:
        plan = linked.plan
        self.wrapper = linked.wrapper
        self.ret_active = plan.ret_active
        #: The primal's numba return type.
        self.restype = restype
        #: raw result tuple -> (one derivative or None per argument, primal or None)
        self.unpack = _make_unpack(plan)
        #: Objects whose ids are part of the cache key.
        self.keepalive = keepalive


def _make_unpack(plan: _abi.Plan) -> Any:
    j = 1 if plan.has_primal else 0
    items = []
    for kind in plan.kinds:
        if kind == ACTIVE:
            items.append(f"raw[{j}]")
            j += 1
        else:
            items.append("None")
    derivs = "(" + "".join(f"{it}, " for it in items) + ")"
    primal = "raw[0]" if plan.has_primal else "None"
    ns: dict[str, Any] = {}
    exec(f"def unpack(raw):\n    return {derivs}, {primal}\n", ns)
    return ns["unpack"]


def _target_context() -> Any:
    from numba.core.registry import cpu_target

    return cpu_target.target_context


def _dispatcher(f: Any) -> Any:
    if type(f) is CPUDispatcher:
        return f
    return as_dispatcher(f)


def _mode(mode: Any) -> Mode:
    if mode is Reverse or mode is ReverseWithPrimal:
        return mode
    raise EnzpyValueError(f"mode must be enzpy.Reverse or enzpy.ReverseWithPrimal, got {mode!r}")


def _ret_active(ret: Any) -> bool:
    if ret is Active:
        return True
    if ret is Const:
        return False
    raise EnzpyValueError(f"ret must be enzpy.Active or enzpy.Const, got {ret!r}")


def _name(disp: Any) -> str:
    return getattr(disp.py_func, "__qualname__", repr(disp))


def _run_engine(captured: Captured, plan: _abi.Plan, log: bool) -> tuple[bytes, str]:
    try:
        return _native.differentiate(captured.bitcode, {**plan.request, "log": log})
    except (UnsupportedError, ActivityError) as e:
        # The engine names no line: at least name the function.
        if e.file is None and e.line is None:
            e.file, e.line = captured.file, captured.line
        raise


def _plan(
    disp: Any,
    argtypes: tuple[types.Type, ...],
    kinds: tuple[str, ...],
    mode: Mode,
    ret_active: bool,
    noalias: bool,
) -> tuple[Captured, _abi.Plan]:
    _native.load()  # fail before compiling anything when the engine is missing
    captured = capture(disp, argtypes)
    if ret_active and any(k != CONST for k in kinds):
        problem = _abi.seeding_problem(captured.restype)
        if problem is not None:
            raise UnsupportedError(
                f"{_name(disp)}: {problem}", file=captured.file, line=captured.line
            )
    plan = _abi.plan(
        _target_context(),
        captured.function,
        captured.argtypes,
        captured.restype,
        kinds,
        ret_active=ret_active,
        return_primal=mode.returns_primal,
        noalias=noalias,
    )
    return captured, plan


def _build(
    disp: Any,
    argtypes: tuple[types.Type, ...],
    kinds: tuple[str, ...],
    mode: Mode,
    ret_active: bool,
    noalias: bool,
) -> _Entry:
    captured, plan = _plan(disp, argtypes, kinds, mode, ret_active, noalias)
    bitcode, _ = _run_engine(captured, plan, log=False)
    linked = _link.link(bitcode, plan, captured.libraries, _name(disp), captured.environments)
    return _Entry(linked, captured.restype, (disp, argtypes))


def _entry(
    f: Any, args: tuple[Any, ...], mode: Any, ret: Any, noalias: bool | None = None
) -> tuple[_Entry, Any]:
    """The compiled derivative for these arguments. ``noalias`` defaults to
    what this call's arrays allow; a derivative kept for other calls
    (``derivative``) must not assume it."""
    disp = f if type(f) is CPUDispatcher else as_dispatcher(f)
    ret_active = _ret_active(ret)
    if mode is not Reverse and mode is not ReverseWithPrimal:
        _mode(mode)
    prep = prepare(args)
    if not prep.noalias:
        check_arguments(args)  # overlapping arrays: refuse what cannot be right
    disjoint = prep.noalias if noalias is None else noalias
    key = (id(disp), mode, ret_active, prep.signature, disjoint)
    entry = _cache.lookup(key)
    if entry is None:
        entry = _cache.get_or_build(
            key, lambda: _build(disp, prep.argtypes, prep.kinds, mode, ret_active, disjoint)
        )
    return entry, prep


def _call(entry: _Entry, prep: Any) -> tuple[tuple[Any, ...], Any]:
    call_args = prep.call_args
    if entry.ret_active:
        call_args.append(1.0)
    try:
        raw = entry.wrapper(*call_args)
    except NumbaError as e:
        raise InternalError(f"enzpy failed to compile the call of a derivative: {e}") from e
    for st in prep.staged:
        st.copy_back()
    return entry.unpack(raw)


def autodiff(f: Any, *args: Any, mode: Mode = Reverse, ret: type = Active) -> Any:
    """Differentiate ``f`` at the given (annotated) arguments in reverse mode.

    ``f`` is a numba ``@njit`` function or a plain Python function (compiled
    with ``numba.njit``). Each argument is ``Const(v)``, ``Active(x)`` (a float
    scalar or tuple of floats), ``Duplicated(x, dx)`` or
    ``DuplicatedNoNeed(x, dx)`` (a float array and its shadow); a bare value
    means ``Const``. A float32/float64 return value is seeded with 1.0
    (``ret=Const`` opts out); shadows follow Enzyme's reverse-mode semantics.

    Returns a tuple with one entry per argument: the derivative for ``Active``
    arguments, ``None`` for the others. With ``mode=ReverseWithPrimal`` it
    returns ``(derivatives, primal_return)``.
    """
    entry, prep = _entry(f, args, mode, ret)
    derivs, primal = _call(entry, prep)
    if mode is Reverse:
        return derivs
    return derivs, primal


_FLOAT_DTYPES = (np.dtype(np.float64), np.dtype(np.float32))


def _is_float_scalar_or_tuple(x: Any) -> bool:
    if isinstance(x, tuple):
        return len(x) > 0 and all(_is_float_scalar_or_tuple(v) for v in x)
    return type(x) in (float, np.float64, np.float32)


def gradient(f: Any, *xs: Any) -> Any:
    """Gradient of the float-valued ``f`` at ``xs``.

    Float arrays get zero shadows (``Duplicated``), float scalars (and tuples
    of floats) are ``Active``; other values are constant and get ``None``.
    Returns one gradient per argument (the shadow for arrays, the derivative
    for scalars), or the single gradient when there is one argument.
    """
    args: list[Any] = []
    for i, x in enumerate(xs):
        if isinstance(x, Annotation) or (isinstance(x, type) and issubclass(x, Annotation)):
            raise EnzpyTypeError(
                f"argument {i}: gradient takes plain values, not annotations; "
                "use enzpy.autodiff for annotated arguments"
            )
        if isinstance(x, np.ndarray) and x.dtype in _FLOAT_DTYPES:
            args.append(Duplicated(x, np.zeros_like(x)))
        elif _is_float_scalar_or_tuple(x):
            args.append(Active(x))
        else:
            args.append(Const(x))
    entry, prep = _entry(f, tuple(args), Reverse, Active)
    if not entry.ret_active:
        raise EnzpyTypeError(
            f"gradient needs a function that returns a float scalar; "
            f"{_name(_dispatcher(f))} returns {entry.restype}"
        )
    derivs, _ = _call(entry, prep)
    out = tuple(
        a.shadow if isinstance(a, Duplicated) else d for a, d in zip(args, derivs, strict=True)
    )
    return out[0] if len(out) == 1 else out


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

    Its parameters are ``f``'s arguments in order, each ``Duplicated`` /
    ``DuplicatedNoNeed`` argument followed by its shadow array (same shape and
    strides), then ``dret`` (the cotangent of the return value) when a float
    return is seeded. It returns a tuple: the primal return value first when
    ``mode=ReverseWithPrimal`` (and ``f`` does not return None), then the
    derivative of each ``Active`` argument in order. Shadows are updated in
    place (Enzyme's reverse-mode semantics). Argument types must match the
    examples' numba types.
    """
    entry, _ = _entry(f, args, mode, ret, noalias=False)
    return entry.wrapper


def explain(f: Any, *args: Any, mode: Mode = Reverse, ret: type = Active) -> str:
    """The engine's log of its decisions (types, activity, caching, ...) for
    differentiating ``f`` at these (annotated) arguments. Nothing is cached or
    called. Raises like ``autodiff`` when differentiation fails; the log so
    far is then the exception's ``log`` attribute."""
    disp = _dispatcher(f)
    m = _mode(mode)
    ret_active = _ret_active(ret)
    prep = prepare(args)
    captured, plan = _plan(disp, prep.argtypes, prep.kinds, m, ret_active, prep.noalias)
    _, log = _run_engine(captured, plan, log=True)
    return log
