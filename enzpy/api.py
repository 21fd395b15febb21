"""enzpy's public functions: autodiff, gradient, jacobian, hvp, hessian,
make_zero, derivative, explain.

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
from .annotations import (
    Active,
    Annotation,
    BatchDuplicated,
    Const,
    Duplicated,
    Forward,
    Mode,
    Reverse,
    ReverseWithPrimal,
)
from .errors import ActivityError, EnzpyTypeError, EnzpyValueError, InternalError, UnsupportedError

__all__ = [
    "autodiff",
    "derivative",
    "explain",
    "gradient",
    "hessian",
    "hvp",
    "jacobian",
    "make_zero",
]


class _Entry:
    """A built derivative and how to read its results."""

    __slots__ = (
        "wrapper",
        "ret_active",
        "forward",
        "width",
        "batch",
        "restype",
        "unpack",
        "keepalive",
    )

    def __init__(self, linked: _link.Linked, restype: types.Type, keepalive: Any) -> None:
        plan = linked.plan
        self.wrapper = linked.wrapper
        self.ret_active = plan.ret_active
        self.forward = plan.forward
        self.width = plan.width
        self.batch = plan.batch
        #: The primal's numba return type.
        self.restype = restype
        #: raw result tuple -> (one derivative or None per argument, primal or None)
        self.unpack = _make_unpack(plan)
        #: Objects whose ids are part of the cache key.
        self.keepalive = keepalive


def _make_unpack(plan: _abi.Plan) -> Any:
    if plan.forward:
        # raw -> (tangent of the return or None, primal or None)
        tangent = f"raw[{1 if plan.has_primal else 0}]" if plan.ret_active else "None"
        primal = "raw[0]" if plan.has_primal else "None"
        ns0: dict[str, Any] = {}
        exec(f"def unpack(raw):\n    return {tangent}, {primal}\n", ns0)
        return ns0["unpack"]
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
    if isinstance(mode, Mode):
        return mode
    raise EnzpyValueError(
        "mode must be enzpy.Reverse, enzpy.ReverseWithPrimal, enzpy.Forward or "
        f"enzpy.ForwardWithPrimal, got {mode!r}"
    )


def _ret_active(ret: Any) -> bool:
    if ret is Active:
        return True
    if ret is Const:
        return False
    if _is_seed_tuple(ret):
        return True
    raise EnzpyValueError(
        "ret must be enzpy.Active, enzpy.Const or (reverse-mode batch) a tuple of W "
        f"float seeds, got {ret!r}"
    )


def _is_seed_tuple(ret: Any) -> bool:
    return (
        type(ret) is tuple
        and len(ret) > 0
        and all(
            isinstance(s, float | int | np.floating | np.integer)
            and not isinstance(s, bool | np.bool_)
            for s in ret
        )
    )


def _batch_seeds(ret: Any, mode: Mode, prep: Any) -> tuple[float, ...] | None:
    """Reverse-mode batch: the seeds of a float return given as
    ``ret=(s1, ..., sW)`` (which also makes a call without BatchDuplicated
    arguments a batch of W). None when ``ret`` is not a tuple."""
    if not _is_seed_tuple(ret):
        return None
    if mode.is_forward:
        raise EnzpyValueError(
            "ret=(s1, ..., sW) seeds the return of a reverse-mode batch; forward mode "
            "takes ret=enzpy.Active or enzpy.Const"
        )
    if not prep.batch:
        if any(k not in (ACTIVE, CONST) for k in prep.kinds):
            raise EnzpyValueError(
                "ret=(s1, ..., sW) needs the arrays as BatchDuplicated with W shadows, "
                "not Duplicated"
            )
        prep.width, prep.batch = len(ret), True
        prep.signature = prep.signature + (len(ret), True)
    elif prep.width != len(ret):
        raise EnzpyValueError(
            f"ret has {len(ret)} seeds but the BatchDuplicated arguments have "
            f"{prep.width} shadows each"
        )
    if len(ret) > 64:
        raise EnzpyValueError(f"a batch of {len(ret)} seeds is wider than the supported 64")
    return tuple(float(s) for s in ret)


def _name(disp: Any) -> str:
    return getattr(disp.py_func, "__qualname__", repr(disp))


def _run_engine(
    captured: Captured,
    plan: _abi.Plan,
    log: bool,
    module: bytes | None = None,
    **fields: Any,
) -> tuple[bytes, str]:
    """Differentiate as ``plan`` says: ``captured``'s module, or ``module``
    (a derivative to differentiate again); ``fields`` amend the request."""
    try:
        return _native.differentiate(
            captured.bitcode if module is None else module,
            {**plan.request, "log": log, **fields},
        )
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
    width: int = 1,
    batch: bool = False,
) -> tuple[Captured, _abi.Plan]:
    _native.load()  # fail before compiling anything when the engine is missing
    captured = capture(disp, argtypes)
    if ret_active and any(k != CONST for k in kinds):
        problem = _abi.seeding_problem(captured.restype, forward=mode.is_forward)
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
        forward=mode.is_forward,
        width=width,
        batch=batch,
    )
    return captured, plan


def _build(
    disp: Any,
    argtypes: tuple[types.Type, ...],
    kinds: tuple[str, ...],
    mode: Mode,
    ret_active: bool,
    noalias: bool,
    width: int = 1,
    batch: bool = False,
) -> _Entry:
    captured, plan = _plan(disp, argtypes, kinds, mode, ret_active, noalias, width, batch)
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
    if mode is not Reverse:
        _mode(mode)
    prep = prepare(args, forward=mode.is_forward)
    _batch_seeds(ret, mode, prep)
    if not prep.noalias:
        check_arguments(args)  # overlapping arrays: refuse what cannot be right
    disjoint = prep.noalias if noalias is None else noalias
    key = (id(disp), mode, ret_active, prep.signature, disjoint)
    entry = _cache.lookup(key)
    if entry is None:
        entry = _cache.get_or_build(
            key,
            lambda: _build(
                disp,
                prep.argtypes,
                prep.kinds,
                mode,
                ret_active,
                disjoint,
                prep.width,
                prep.batch,
            ),
        )
    return entry, prep


def _call(entry: _Entry, prep: Any, ret: Any = None) -> tuple[tuple[Any, ...], Any]:
    call_args = prep.call_args
    if entry.ret_active and not entry.forward:
        if not entry.batch:
            call_args.append(1.0)
        elif _is_seed_tuple(ret):
            call_args.append(tuple(float(s) for s in ret))
        else:
            call_args.append((1.0,) * entry.width)
    try:
        raw = entry.wrapper(*call_args)
    except NumbaError as e:
        raise InternalError(f"enzpy failed to compile the call of a derivative: {e}") from e
    for st in prep.staged:
        st.copy_back()
    return entry.unpack(raw)


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
    entry, prep = _entry(f, args, mode, ret)
    derivs, primal = _call(entry, prep, ret)
    if mode is Reverse or mode is Forward:
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


#: Default batch width of forward-mode jacobian().
JACOBIAN_CHUNK = 8


def _jacobian_array(what: str, a: Any) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.dtype not in _FLOAT_DTYPES:
        raise EnzpyTypeError(
            f"jacobian: {what} must be a float32 or float64 numpy array, got "
            f"{type(a).__name__}" + (f" of dtype {a.dtype}" if isinstance(a, np.ndarray) else "")
        )
    if a.size == 0:
        raise EnzpyValueError(f"jacobian: {what} is empty")
    return a


def _unit(shape: tuple[int, ...], dtype: Any, j: int) -> np.ndarray:
    e = np.zeros(shape, dtype)
    if j >= 0:
        e[np.unravel_index(j, shape)] = 1
    return e


def jacobian(
    f: Any,
    x: Any,
    *args: Any,
    out: Any = None,
    mode: Mode = Forward,
    chunk: int | None = None,
) -> np.ndarray:
    """Jacobian of ``f`` with respect to the float array ``x``.

    Without ``out``, ``f(x, *args)`` must return a float; the result has
    ``x``'s shape (the gradient). With ``out=y``, ``f(x, y, *args)`` writes
    the float array ``y`` and the result has shape ``y.shape + x.shape``:
    ``J[i..., j...] = d y[i...] (after the call) / d x[j...]``. ``args`` are
    constant. ``f`` runs on copies: ``x`` and ``out`` are left as they are.

    ``mode=Forward`` (the default) propagates ``chunk`` unit directions per
    call in batch mode (default 8, at most 64; the last chunk is padded with
    zero directions so that one compiled derivative serves every chunk), so
    it costs ``ceil(x.size / chunk)`` sweeps. ``mode=Reverse`` propagates
    ``chunk`` unit cotangents of ``out`` per reverse sweep in batch mode (the
    same default and padding), one sweep giving ``chunk`` rows, so it costs
    ``ceil(out.size / chunk)`` sweeps; without ``out`` it is one gradient
    sweep.
    """
    m = _mode(mode)
    x = _jacobian_array("x", x)
    if out is not None:
        out = _jacobian_array("out", out)
    n = x.size
    shape = x.shape if out is None else out.shape + x.shape
    dtype = np.result_type(x.dtype, out.dtype) if out is not None else x.dtype

    def returned(t: Any) -> Any:
        if t is None:
            raise EnzpyTypeError(
                f"jacobian: {_name(_dispatcher(f))} returns no float; pass the array "
                "it writes as out=... (it is then called as f(x, out, *args))"
            )
        return t

    width = JACOBIAN_CHUNK if chunk is None else int(chunk)
    if not 1 <= width <= 64:
        raise EnzpyValueError(f"jacobian: chunk must be from 1 to 64, got {chunk!r}")
    if m.is_forward:
        width = min(width, n)
        J = np.zeros((n,) + (() if out is None else out.shape), dtype)
        for start in range(0, n, width):
            lanes = [j if j < n else -1 for j in range(start, start + width)]
            seeds = tuple(_unit(x.shape, x.dtype, j) for j in lanes)
            xa = BatchDuplicated(x.copy(), seeds)
            if out is None:
                ts = returned(autodiff(f, xa, *args, mode=Forward))
                for k, j in enumerate(lanes):
                    if j >= 0:
                        J[j] = ts[k]
            else:
                douts = tuple(np.zeros_like(out, order="C") for _ in lanes)
                autodiff(f, xa, BatchDuplicated(out.copy(), douts), *args, mode=Forward, ret=Const)
                for k, j in enumerate(lanes):
                    if j >= 0:
                        J[j] = douts[k]
        J = J.reshape((n, -1)).T.reshape(shape) if out is not None else J.reshape(shape)
        return J
    if out is None:
        g = np.zeros(x.shape, x.dtype)
        _, primal = autodiff(f, Duplicated(x.copy(), g), *args, mode=ReverseWithPrimal)
        returned(primal if isinstance(primal, float | np.floating) else None)
        return g
    rows = out.size
    width = min(width, rows)
    J = np.zeros((rows,) + x.shape, dtype)
    for start in range(0, rows, width):
        lanes = [i if i < rows else -1 for i in range(start, start + width)]
        dxs = tuple(np.zeros(x.shape, x.dtype) for _ in lanes)
        douts = tuple(_unit(out.shape, out.dtype, i) for i in lanes)
        autodiff(
            f,
            BatchDuplicated(x.copy(), dxs),
            BatchDuplicated(out.copy(), douts),
            *args,
            ret=Const,
        )
        for k, i in enumerate(lanes):
            if i >= 0:
                J[i] = dxs[k]
    return J.reshape(shape)


def _hvp_entry(f: Any, x: np.ndarray, v: np.ndarray, args: tuple[Any, ...], noalias: bool) -> Any:
    """The compiled Hessian-vector product of ``f`` for arguments like these:
    an njit function ``(x, *args, v, hv, dret) -> (<grad f, v>,)`` that adds
    ``dret * H v`` into ``hv``."""
    disp = _dispatcher(f)
    prep = prepare((Duplicated(x, v), *args), forward=True)
    key = ("hvp", id(disp), prep.signature, noalias)
    entry = _cache.lookup(key)
    if entry is None:
        entry = _cache.get_or_build(key, lambda: _build_hvp(disp, prep, noalias))
    return entry


def _build_hvp(disp: Any, prep: Any, noalias: bool) -> _Entry:
    # Reverse over forward: the forward derivative x, v -> <grad f(x), v>
    # (not optimized, so that the engine reads it as it wrote it) is
    # differentiated in reverse mode with respect to x: H v (H symmetric).
    captured, fplan = _plan(disp, prep.argtypes, prep.kinds, Forward, True, prep.noalias)
    if not fplan.ret_active:
        raise EnzpyTypeError(
            f"hvp needs a function that returns a float scalar; "
            f"{_name(disp)} returns {captured.restype}"
        )
    fwd, _ = _run_engine(captured, fplan, log=False, optimize=False)
    kinds = (_abi.DUP,) + (CONST,) * (len(fplan.argtypes) - 1)
    hplan = _abi.plan(
        _target_context(),
        fplan.name,
        fplan.argtypes,
        captured.restype,
        kinds,
        ret_active=True,
        return_primal=True,
        noalias=noalias,
    )
    bitcode, _ = _run_engine(captured, hplan, log=False, module=fwd)
    n = len(prep.argtypes)
    names = [f"x{i}" for i in range(n)] + ["v", "hv", "dret"]
    roles = [("primal", i) for i in range(n)] + [("data", 0), ("shadow", 0), ("dret", -1)]
    doc = (
        f"Hessian-vector product of {_name(disp)} (enzpy, reverse over forward).\n\n"
        f"enzpy_derivative({', '.join(names)}) -> (<grad f, v>,)\n\n"
        "Adds dret * H v into hv; v and hv have the shape and strides of x0."
    )
    linked = _link.link(
        bitcode,
        hplan,
        captured.libraries,
        f"the Hessian-vector product of {_name(disp)}",
        captured.environments,
        params=(names, roles),
        doc=doc,
    )
    return _Entry(linked, captured.restype, (disp, prep.argtypes))


def _same_array_like(what: str, x: np.ndarray, a: Any) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.dtype != x.dtype or a.shape != x.shape:
        raise EnzpyTypeError(
            f"hvp: {what} must be a {x.dtype} array of x's shape {x.shape}, got "
            + (f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__)
        )
    return a


def hvp(f: Any, x: Any, v: Any, *args: Any) -> np.ndarray:
    """Hessian-vector product ``H v`` of the float-valued ``f(x, *args)`` with
    respect to the float array ``x`` (``args`` are constant).

    enzpy differentiates its own forward-mode derivative ``x -> <grad f(x), v>``
    in reverse mode (reverse over forward), which gives ``H v`` for the
    symmetric Hessian of a twice continuously differentiable ``f`` at the cost
    of a few primal evaluations, with no Hessian formed. ``f`` runs once as
    part of it (an ``f`` that writes ``x`` sees it written).
    """
    x = _jacobian_array("x", x)
    v = _same_array_like("v", x, v)
    from ._validate import arrays_disjoint, same_layout, staged_like, zeros_like_strided

    if not same_layout(x, v):
        v = staged_like(x, v)
    hv = zeros_like_strided(x)
    arrays = [x, v, hv] + [a for a in args if isinstance(a, np.ndarray)]
    noalias = not any(isinstance(a, tuple | list) for a in args) and arrays_disjoint(arrays)
    entry = _hvp_entry(f, x, v, args, noalias)
    try:
        entry.wrapper(x, *args, v, hv, 1.0)
    except NumbaError as e:
        raise InternalError(f"enzpy failed to compile the call of a derivative: {e}") from e
    return hv if hv.flags.c_contiguous or hv.flags.f_contiguous else np.array(hv)


def hessian(f: Any, x: Any, *args: Any) -> np.ndarray:
    """The Hessian of the float-valued ``f(x, *args)`` with respect to the
    float array ``x``, of shape ``x.shape + x.shape``, from one
    Hessian-vector product per element of ``x`` (for small problems)."""
    x = _jacobian_array("x", x)
    H = np.zeros((x.size,) + x.shape, x.dtype)
    for j in range(x.size):
        H[j] = hvp(f, x, _unit(x.shape, x.dtype, j), *args)
    return H.reshape(x.shape + x.shape)


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
    prep = prepare(args, forward=m.is_forward)
    _batch_seeds(ret, m, prep)
    captured, plan = _plan(
        disp, prep.argtypes, prep.kinds, m, ret_active, prep.noalias, prep.width, prep.batch
    )
    _, log = _run_engine(captured, plan, log=True)
    return log
