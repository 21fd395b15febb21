"""The build pipeline: from a call to the compiled derivative that serves it.

A call is bound first (:func:`bind`: the dispatcher, the mode, ``ret`` and
the annotated arguments, checked). Its derivative is looked up in the cache
(``_cache``); on a miss numba's pre-O3 IR is captured (``_capture``), the
call signature is built from numba's types (``_signature``), the engine
differentiates (``_native``) and the result is loaded into numba
(``_link``). ``explain`` runs the same steps up to the engine, with its log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numba.core import types
from numba.core.dispatcher import Dispatcher
from numba.core.errors import NumbaError
from numba.core.registry import CPUDispatcher

from . import _cache, _diskcache, _link, _native, _rules, _tape_budget
from ._aliasing import check_arguments
from ._capture import Captured, as_dispatcher, capture, compiled_overload
from ._config import STRICT, jit_target, target_context
from ._modes import Forward, Mode, ReverseWithPrimal, check_mode
from ._params import CallShape, DataOf
from ._signature import CallSignature, Prepared, prepare
from .annotations import Active, Const, Duplicated
from .errors import (
    ActivityError,
    EnzpyTypeError,
    EnzpyValueError,
    InternalError,
    TapeBudgetError,
    UnsupportedError,
)

__all__ = [
    "Bound",
    "Entry",
    "autodiff",
    "bind",
    "call",
    "dispatcher",
    "entry",
    "explain",
    "function_name",
    "hvp_entry",
    "invoke",
]


class Entry:
    """A built derivative: its njit wrapper and its signature."""

    __slots__ = ("wrapper", "signature", "restype", "keepalive", "disk", "stored")

    def __init__(
        self,
        linked: _link.Linked,
        restype: types.Type,
        keepalive: Any,
        disk: str | None = None,
    ) -> None:
        self.wrapper = linked.wrapper
        self.signature = linked.signature
        #: The primal's numba return type.
        self.restype = restype
        #: Objects whose ids are part of the cache key.
        self.keepalive = keepalive
        #: The disk cache's entry (None when not disk-cached).
        self.disk = disk
        #: How many of the wrapper's compiles are on disk.
        self.stored = 0


def dispatcher(f: Any) -> Dispatcher:
    """The numba dispatcher of ``f`` (compiled with njit if plain Python);
    for a function with a user rule, a function that calls it, so that the
    rule gives its derivative (``_rules``)."""
    disp = f if type(f) is CPUDispatcher else as_dispatcher(f)
    if (
        _rules.partials_for(disp) is not None
        or _rules.is_inactive(disp)
        or _rules.custom_for(disp) is not None
    ):
        return _rules.through(disp)
    return disp


def function_name(disp: Any) -> str:
    return str(getattr(disp.py_func, "__qualname__", repr(disp)))


def _seed_tuple(ret: Any) -> tuple[float, ...] | None:
    """The seeds of ``ret=(s1, ..., sW)`` (None when ``ret`` is not that)."""
    if (
        type(ret) is tuple
        and len(ret) > 0
        and all(
            isinstance(s, float | int | np.floating | np.integer)
            and not isinstance(s, bool | np.bool_)
            for s in ret
        )
    ):
        return tuple(float(s) for s in ret)
    return None


def _ret_active(ret: Any) -> bool:
    if ret is Active:
        return True
    if ret is Const:
        return False
    if _seed_tuple(ret) is not None:
        return True
    raise EnzpyValueError(
        "ret must be enzpy.Active, enzpy.Const or (reverse-mode batch) a tuple of W "
        f"float seeds, got {ret!r}"
    )


@dataclass(slots=True)
class Bound:
    """One call, checked: what its derivative is built from."""

    disp: Dispatcher
    #: The annotated arguments as given.
    args: Sequence[Any]
    mode: Mode
    ret_active: bool
    prepared: Prepared
    #: Strict mode (``enzpy.strict()``) when the call was bound.
    strict: bool = False


def bind(f: Any, args: Sequence[Any], mode: Any, ret: Any) -> Bound:
    """Check a call of ``f`` with the annotated ``args`` in ``mode``."""
    disp = dispatcher(f)
    ret_active = _ret_active(ret)
    m = check_mode(mode)
    prepared = prepare(args, m)
    seeds = _seed_tuple(ret)
    if seeds is not None:
        m.apply_return_seeds(seeds, prepared)
    return Bound(disp, args, m, ret_active, prepared, STRICT.get())


def _run_engine(
    captured: Captured,
    sig: CallSignature,
    log: bool,
    module: bytes | None = None,
    **fields: Any,
) -> tuple[bytes, str]:
    """Differentiate as ``sig`` says: ``captured``'s module, or ``module``
    (a derivative to differentiate again); ``fields`` amend the request
    (``strict_control``: strict mode, see ``enzpy.strict``). The functions of
    custom rules the engine finds called with derivatives are built then
    (``Captured.build_rules``), and it is asked again."""
    try:
        while True:
            try:
                return _native.differentiate(
                    captured.bitcode if module is None else module,
                    {
                        **sig.request,
                        "log": log,
                        **jit_target(),
                        "rules": captured.rules,
                        "inactive": captured.inactive,
                        "parallel_loops": captured.parallel_loops,
                        **fields,
                    },
                )
            except _native.RulesNeeded as e:
                if module is not None:
                    raise InternalError(f"a derivative differentiated again: {e}") from e
                captured.build_rules(e.symbols)
    except (UnsupportedError, ActivityError) as e:
        # The engine names no line: at least name the function.
        if e.file is None and e.line is None:
            e.file, e.line = captured.file, captured.line
        raise


def _signature(
    b: Bound, noalias: bool, rule_bodies: bool = False
) -> tuple[Captured, CallSignature]:
    """Capture the function and build the signature of ``b``'s derivative
    (``rule_bodies``: see ``capture``)."""
    _native.load()  # fail before compiling anything when the engine is missing
    p = b.prepared
    captured = capture(b.disp, tuple(p.argtypes), rule_bodies)
    if isinstance(captured.restype, types.Optional):
        raise UnsupportedError(
            f"{function_name(b.disp)} returns {captured.restype}: a value on some paths "
            "and None on others (a bare `return`, or the end of the function reached "
            "without a return), which enzpy cannot differentiate; return a "
            f"{captured.restype.type} on every path (e.g. `return 0.0`)",
            file=captured.file,
            line=captured.line,
        )
    if b.ret_active and any(a is not Const for a in p.annotations):
        problem = b.mode.seeding_problem(captured.restype)
        if problem is not None:
            raise UnsupportedError(
                f"{function_name(b.disp)}: {problem}", file=captured.file, line=captured.line
            )
    sig = CallSignature.for_call(
        captured.function,
        p.annotations,
        captured.argtypes,
        captured.restype,
        CallShape(target_context(), b.mode, p.width, p.batch),
        ret_active=b.ret_active,
        noalias=noalias,
    )
    return captured, sig


def _build(b: Bound, noalias: bool, overload: Any) -> Entry:
    disk = _disk_key(b, noalias, overload)
    if disk is not None:
        found = _load_stored(b, noalias, overload, disk)
        if found is not None:
            return found
    captured, sig = _signature(b, noalias)
    what = function_name(b.disp)
    if disk is not None:
        sig.rename(_disk_name(b.mode, disk))
    bitcode, _ = _run_engine(captured, sig, log=False, strict_control=b.strict)
    envs = captured.environments
    if disk is None:
        linked = _link.link(bitcode, sig, captured.libraries, what, envs)
    else:
        lib, code = _link.load_library(
            bitcode, sig.name, captured.libraries, what, envs, portable=True
        )
        loaded = [env for _, env in envs]
        linked = _link.wrap(lib, sig, what, loaded)
        _loaded[disk] = (lib, loaded, captured.function)
        if code is not None:
            kept = [_env_state(loaded[k]) for k in code.env_index]
            _diskcache.write(disk, _diskcache.Stored(code, captured.function, kept))
    return Entry(linked, captured.restype, (b.disp, b.prepared.argtypes, overload), disk)


#: Derivatives loaded under a disk-cache name in this process (the JIT keeps
#: them): the library, its Environments and the primal's symbol.
_loaded: dict[str, tuple[Any, list[Any], str]] = {}


def _disk_key(b: Bound, noalias: bool, overload: Any) -> str | None:
    p = b.prepared
    call = (
        b.mode.name,
        b.ret_active,
        [a.__qualname__ for a in p.annotations],
        [str(t) for t in overload.signature.args],
        noalias,
        p.width,
        p.batch,
        b.strict,
        sorted(jit_target().items()),  # the vector library among them
    )
    return _diskcache.key_for(b.disp, overload, call)


def _disk_name(mode: Mode, key: str) -> str:
    """The derivative's symbol when disk-cached: the same in every process
    for the same code, and unlike any other."""
    return f"enzpy_{mode.symbol_tag}_d{key[:32]}"


def _load_stored(b: Bound, noalias: bool, overload: Any, key: str) -> Entry | None:
    """The derivative from the disk cache (or loaded under its disk name in
    this process already), or None."""
    name = _disk_name(b.mode, key)
    what = function_name(b.disp)
    restype = overload.signature.return_type
    known = _loaded.get(key)
    if known is None:
        stored = _diskcache.read(key)
        if stored is None:
            return None
        try:
            envs = [_environment(mod, consts) for mod, consts in stored.environments]
        except ImportError:
            return None
        lib = _link.load_object(stored.code, name, envs)
        if lib is None:
            return None
        known = _loaded[key] = (lib, envs, stored.function)
    lib, envs, function = known
    p = b.prepared
    sig = CallSignature.for_call(
        function,
        p.annotations,
        tuple(overload.signature.args),
        restype,
        CallShape(target_context(), b.mode, p.width, p.batch),
        ret_active=b.ret_active,
        noalias=noalias,
    )
    sig.rename(name)
    linked = _link.wrap(lib, sig, what, envs)
    e = Entry(linked, restype, (b.disp, p.argtypes, overload), key)
    for reduced, undefined in _diskcache.read_wrappers(key):
        _link.add_compiled(e.wrapper, reduced, undefined)
    e.stored = len(e.wrapper.overloads)
    return e


def _env_state(env: Any) -> tuple[str, list[Any]]:
    return str(env.globals.get("__name__")), list(env.consts)


def _environment(module: str, consts: list[Any]) -> Any:
    """A numba Environment for code of ``module`` holding ``consts``."""
    import importlib

    from numba.core.environment import Environment

    env = Environment(importlib.import_module(module).__dict__)
    env.consts[:] = consts
    return env


def entry(b: Bound, noalias: bool | None = None) -> Entry:
    """The compiled derivative for the call ``b``. ``noalias`` defaults to
    what this call's arrays allow; a derivative kept for other calls
    (``derivative``) must not assume it."""
    if not b.prepared.separate:
        check_arguments(b.args)  # overlapping arrays: refuse what cannot be right
    disjoint = b.prepared.noalias if noalias is None else noalias
    # Keyed by numba's compile of f too: a derivative is of the values numba
    # froze into the code f(...) runs, and is rebuilt when numba recompiles.
    overload = compiled_overload(b.disp, tuple(b.prepared.argtypes))
    # Strict mode refuses what non-strict mode builds: keyed apart.
    # Derivatives built before a rule was registered are not reused.
    key = (
        id(b.disp),
        id(overload),
        b.mode,
        b.ret_active,
        b.prepared.key,
        disjoint,
        b.strict,
        _rules.generation(),
    )
    found = _cache.lookup(key)
    if found is None:
        found = _cache.get_or_build(key, lambda: _build(b, disjoint, overload))
    assert isinstance(found, Entry)
    return found


def explain(b: Bound) -> str:
    """The engine's log for the derivative of the call ``b`` (nothing is
    cached or linked, and overlapping arrays are not refused)."""
    captured, sig = _signature(b, b.prepared.noalias)
    _, log = _run_engine(captured, sig, log=True, strict_control=b.strict)
    return log


def invoke(e: Entry, args: Sequence[Any]) -> tuple[Any, ...]:
    """Call the wrapper of ``e`` with ``args``; its result tuple."""
    try:
        raw: tuple[Any, ...] = e.wrapper(*args)
    except NumbaError as err:
        raise InternalError(f"enzpy failed to compile the call of a derivative: {err}") from err
    except TapeBudgetError as err:
        raise TapeBudgetError(_over_budget(e.keepalive[0])) from err
    if e.disk is not None and e.stored != len(e.wrapper.overloads):
        _store_wrappers(e)
    return raw


def _size(nbytes: int) -> str:
    """``nbytes`` in binary units, three digits."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if nbytes >= 1 << shift:
            return f"{nbytes / (1 << shift):.3g} {unit}"
    return f"{nbytes} bytes"


def _over_budget(disp: Any) -> str:
    """The message of a TapeBudgetError, with the sizes."""
    return (
        f"the reverse sweep of {function_name(disp)} needs a tape of at least "
        f"{_size(_tape_budget.refused_request())}, more than enzpy's tape budget of "
        f"{_size(_tape_budget.tape_budget())}. Raise the budget (enzpy.set_tape_budget, or "
        "ENZPY_TAPE_BUDGET, e.g. 16G) if the machine has the memory, or differentiate "
        "fewer time steps per call (enzpy does not checkpoint long loops yet). The call "
        "stopped before taking the memory, as when the function raises: shadows are not "
        "updated, and arrays the function writes may be partly written."
    )


def _store_wrappers(e: Entry) -> None:
    """Put the wrapper's new compiles beside its disk cache entry."""
    assert e.disk is not None
    compiled: dict[Any, Any] = e.wrapper.overloads
    for cres in list(compiled.values())[e.stored :]:
        _diskcache.write_wrapper(e.disk, cres)
    e.stored = len(compiled)


def call(e: Entry, prepared: Prepared, ret: Any = None) -> tuple[Any, ...]:
    """Call the derivative ``e`` for the bound arguments; its raw result."""
    raw = invoke(e, e.signature.call_args(prepared, ret))
    for st in prepared.staged:
        st.copy_back()
    return raw


def autodiff(f: Any, args: Sequence[Any], mode: Any, ret: Any) -> Any:
    """What ``enzpy.autodiff(f, *args, mode=mode, ret=ret)`` returns."""
    b = bind(f, args, mode, ret)
    e = entry(b)
    return e.signature.autodiff_result(call(e, b.prepared, ret))


def hvp_entry(f: Any, x: np.ndarray, v: np.ndarray, args: tuple[Any, ...], noalias: bool) -> Entry:
    """The compiled Hessian-vector product of ``f`` for arguments like these:
    an njit function ``(x, hv, *args, v, dret) -> (<grad f, v>,)`` that adds
    ``dret * H v`` into ``hv``."""
    disp = dispatcher(f)
    prepared = prepare((Duplicated(x, v), *args), Forward)
    overload = compiled_overload(disp, tuple(prepared.argtypes))
    strict = STRICT.get()
    key = ("hvp", id(disp), id(overload), prepared.key, noalias, strict, _rules.generation())
    found = _cache.lookup(key)
    if found is None:
        found = _cache.get_or_build(
            key, lambda: _build_hvp(disp, prepared, noalias, overload, strict)
        )
    assert isinstance(found, Entry)
    return found


def _build_hvp(
    disp: Dispatcher, prepared: Prepared, noalias: bool, overload: Any, strict: bool
) -> Entry:
    # Reverse over forward: the forward derivative x, v -> <grad f(x), v>
    # (not optimized, so that the engine reads it as it wrote it) is
    # differentiated in reverse mode with respect to x: H v (H symmetric).
    name = function_name(disp)
    fwd_call = Bound(disp, (), Forward, True, prepared, strict)
    # The forward derivative is differentiated again, its rule functions'
    # bodies with it (their LAPACK calls go through the rules again).
    captured, fsig = _signature(fwd_call, prepared.noalias, rule_bodies=True)
    if not fsig.seeded:
        raise EnzpyTypeError(
            f"hvp needs a function that returns a float scalar; {name} returns {captured.restype}"
        )
    # Its prange loops stay serial loops: a loop outlined onto numba's threads
    # is a call into numba's runtime, which the reverse pass cannot follow.
    fwd, _ = _run_engine(
        captured, fsig, log=False, optimize=False, strict_control=strict, parallel_loops=[]
    )
    # The forward derivative's parameters: f's arguments, then the data
    # pointer of x's tangent v (passed as an array like x).
    x_type = fsig.layouts[0].ty
    assert isinstance(x_type, types.Array)
    n = len(fsig.layouts)
    shape = CallShape(target_context(), ReverseWithPrimal, 1, False)
    layouts = [Duplicated.layout(0, x_type, shape)]
    layouts += [Const.layout(lay.index, lay.ty, shape) for lay in fsig.layouts[1:]]
    v_pointer = Const.layout(n, fsig.argtypes[n], shape)
    layouts.append(replace(v_pointer, wrapper=(DataOf(n, 0, x_type),)))
    hsig = CallSignature(
        fsig.name, layouts, captured.restype, shape, ret_active=True, noalias=noalias
    )
    bitcode, _ = _run_engine(captured, hsig, log=False, module=fwd)
    doc = (
        f"Hessian-vector product of {name} (enzpy, reverse over forward).\n\n"
        f"enzpy_derivative({', '.join(hsig.names)}) -> (<grad f, v>,)\n\n"
        f"x{n} is the direction v; adds dret * H v into dx0. x{n} and dx0 have the "
        "shape and strides of x0."
    )
    linked = _link.link(
        bitcode,
        hsig,
        captured.libraries,
        f"the Hessian-vector product of {name}",
        captured.environments,
        doc=doc,
    )
    return Entry(linked, captured.restype, (disp, prepared.argtypes, overload))
