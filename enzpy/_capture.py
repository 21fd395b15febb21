"""Capture numba's LLVM IR of a function before numba's final O3 run.

A fresh copy of the function is compiled for given numba argument types with
numba's own pipeline into a recording code library, which keeps each module
after numba's per-function simplification pipeline (stage 2 in
NUMBA-LLVM-NOTES.md: clean SSA loops, no inlining, no vectorization). The copy
is compiled with debug info, so instructions carry Python file/line locations,
and without wrappers or machine code generation, since nothing calls it.

njit functions that the function calls are captured the same way and linked
into the module (``linkonce_odr``) under the symbol names the caller uses.
Functions numba compiled for its own library code (e.g. ``np.zeros``,
``x ** n``) are linked from their finalized libraries (O3 code: no pre-O3 copy
of them exists); numba's runtime (``NRT_*``) stays declared. The result is one
module plus the numba code libraries that the declarations resolve to.

Copies are compiled without ``parallel=True`` (``_serial``): the derivative of
a parallel kernel is that of its serial code.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import re
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import llvmlite.binding as llvm
import numba
import numpy as np
from numba.core import codegen as numba_codegen
from numba.core import compiler, types
from numba.core import errors as numba_errors
from numba.core import ir as numba_ir
from numba.core.compiler_lock import global_compiler_lock
from numba.core.cpu_options import ParallelOptions
from numba.core.dispatcher import Dispatcher
from numba.core.registry import CPUDispatcher
from numba.parfors.parfor import Parfor

from . import _custom_rules, _rules
from ._custom_rules import CustomRule
from .errors import CompilationError, EnzpyTypeError, InternalError, UnsupportedError

__all__ = ["Captured", "as_dispatcher", "capture", "compiled_overload"]


class _RecordingLibrary(numba_codegen.JITCodeLibrary):
    """A JIT code library that keeps a copy of every module it is given, after
    numba's per-function optimization and before linking and O3."""

    def __init__(self, codegen: Any, name: str) -> None:
        super().__init__(codegen, name)
        self.recorded: list[llvm.ModuleRef] = []

    def _optimize_functions(self, ll_module: llvm.ModuleRef) -> None:
        super()._optimize_functions(ll_module)
        self.recorded.append(ll_module.clone())


@dataclass
class Captured:
    """numba's IR of one function (and its njit callees) before O3."""

    #: The whole module as bitcode.
    bitcode: bytes
    #: Symbol of the primal function in ``bitcode`` (numba's native calling
    #: convention: ``i32 f(ptr retptr, ptr excinfo, args...)``).
    function: str
    #: numba argument types the primal was compiled for (those asked for, or
    #: for a dispatcher with explicit signatures the one they convert to).
    argtypes: tuple[types.Type, ...]
    #: numba return type of the primal.
    restype: types.Type
    #: Python file and first line of the function.
    file: str | None = None
    line: int | None = None
    #: numba code libraries (finalized) defining symbols the module may
    #: still declare; link them into whatever library runs derived code.
    libraries: list[Any] = field(default_factory=list)
    #: (global name, numba Environment) of each captured copy: numba's code
    #: reads its Environment through that global (e.g. to raise an exception
    #: with runtime arguments); whoever loads derived code must set it.
    environments: list[tuple[str, Any]] = field(default_factory=list)
    #: User rules the module needs (engine request fields "rules" and
    #: "inactive", see ``_rules``).
    rules: list[dict[str, Any]] = field(default_factory=list)
    inactive: list[str] = field(default_factory=list)
    #: Custom rules whose functions are not built yet (their entries in
    #: ``rules`` say "pending"), by callee symbol: ``build_rules`` builds
    #: those the engine finds called with derivatives.
    pending: dict[str, _PendingRule] = field(default_factory=dict)
    #: Where the ``prange`` loops of parallel=True functions are (engine
    #: request field "parallel_loops": their reverse may run on numba's
    #: threads).
    parallel_loops: list[dict[str, Any]] = field(default_factory=list)

    def text(self) -> str:
        """The module as LLVM IR text (for debugging)."""
        return str(llvm.parse_bitcode(self.bitcode))

    def build_rules(self, symbols: list[str]) -> None:
        """Build the functions of the pending rules of ``symbols`` (the
        engine's "rules_needed"), complete their entries in ``rules`` and
        declare the functions in the module."""
        declarations: dict[str, str] = {}
        for symbol in symbols:
            build = self.pending.pop(symbol, None)
            if build is None:
                raise InternalError(
                    f"the engine asked for the functions of a rule for {symbol!r}, which "
                    "has no rule waiting to be built"
                )
            build(functools.partial(_declare_wrapper, declarations))
        if declarations:
            module = llvm.parse_bitcode(self.bitcode)
            module = llvm.parse_assembly("\n".join([str(module), *declarations.values()]))
            self.bitcode = module.as_bitcode()


#: Builds a pending custom rule's functions with the given way to bring
#: each into the module (``_declare_wrapper`` or ``bring_compiled``).
_PendingRule = Callable[[Callable[[_custom_rules.Wrappers, str], str]], None]


def _declare_wrapper(declarations: dict[str, str], built: _custom_rules.Wrappers, what: str) -> str:
    """The symbol of ``built``'s wrapper ``what``, compiled in this process
    and declared (its declaration added to ``declarations``)."""
    symbol = built.symbols[what]
    declarations[symbol] = built.declarations[what]
    # Compiled now, not when a derivative calling it is loaded: numba code
    # compiled after a derivative through an njit function with a custom
    # rule, that calls that function, crashes (docs/design.md §11).
    _custom_rules.publish(symbol)
    return symbol


#: A numba dispatcher as this module uses it: numba's stubs declare none of
#: the internals read here (``_compiler``, ``targetdescr``, ``overloads``'
#: compile results), so to mypy it is Any.
NumbaDispatcher = Any

_njit_wrappers: weakref.WeakKeyDictionary[Any, Dispatcher] = weakref.WeakKeyDictionary()


def as_dispatcher(func: Any) -> Dispatcher:
    """``func`` itself if it is a numba CPU dispatcher (``@njit``), else a
    (memoized) ``numba.njit(func)`` for a plain Python function."""
    if isinstance(func, CPUDispatcher):
        return func
    if isinstance(func, Dispatcher):
        raise UnsupportedError(
            f"{func!r} is not a numba CPU (@njit) function; enzpy differentiates those"
        )
    try:
        return _njit_wrappers[func]
    except (KeyError, TypeError):
        pass
    if not inspect.isfunction(func):
        raise EnzpyTypeError(
            f"enzpy differentiates @numba.njit functions or plain Python "
            f"functions; got {type(func).__name__} {func!r}"
        )
    disp = numba.njit(func)
    _njit_wrappers[func] = disp
    return disp


def _numba_error(e: BaseException, what: str) -> CompilationError:
    loc = getattr(e, "loc", None)
    file = getattr(loc, "filename", None)
    line = getattr(loc, "line", None)
    msg = str(e)
    return CompilationError(
        f"numba failed to compile {what}:\n{msg}",
        file=file,
        line=line,
        numba_error=e,
    )


def _check_arity(disp: NumbaDispatcher, argtypes: tuple[types.Type, ...]) -> None:
    params = list(disp._compiler.pysig.parameters.values())
    star = [p for p in params if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if star:
        stars = "*" if star[0].kind is star[0].VAR_POSITIONAL else "**"
        raise UnsupportedError(
            f"{disp.py_func.__qualname__} takes {stars}{star[0].name}: enzpy differentiates "
            "functions with a fixed list of parameters (numba packs variable arguments "
            "into a tuple, which the derivative's parameters cannot follow); define it "
            "with one parameter per argument"
        )
    if len(argtypes) != len(params):
        raise EnzpyTypeError(
            f"{disp.py_func.__qualname__} takes {len(params)} arguments, got "
            f"{len(argtypes)}; enzpy needs every argument passed explicitly "
            "(default values are not supported yet)"
        )


def _resolve_argtypes(
    disp: NumbaDispatcher, argtypes: tuple[types.Type, ...]
) -> tuple[types.Type, ...]:
    """The argument types to compile for: ``argtypes`` itself, or -- when the
    dispatcher has explicit signatures and compiles nothing new -- the
    compiled signature numba would convert them to."""
    if argtypes in disp.overloads or disp._can_compile:
        return argtypes
    ctx = disp.targetdescr.typing_context
    for sig_args in disp.overloads:
        if len(sig_args) == len(argtypes) and all(
            a == b or ctx.can_convert(a, b) is not None
            for a, b in zip(argtypes, sig_args, strict=True)
        ):
            return tuple(sig_args)
    sigs = ", ".join(f"({', '.join(map(str, k))})" for k in disp.overloads)
    raise EnzpyTypeError(
        f"{disp.py_func.__qualname__} has explicit signatures [{sigs}] and none "
        f"accepts ({', '.join(map(str, argtypes))})"
    )


def compiled_overload(disp: NumbaDispatcher, argtypes: tuple[types.Type, ...]) -> Any:
    """The dispatcher's own compile result for a call with ``argtypes`` (what
    ``f(...)`` runs), compiled first if it does not exist yet. Its identity
    changes when numba compiles ``f`` again (``f.recompile()``), which is
    when numba takes new values of the globals ``f`` reads."""
    argtypes = tuple(argtypes)
    _check_arity(disp, argtypes)
    return _overload(disp, _resolve_argtypes(disp, argtypes))


def _overload(disp: NumbaDispatcher, argtypes: tuple[types.Type, ...]) -> Any:
    """``disp``'s compile result for exactly ``argtypes`` (compiled now if
    missing)."""
    cres = disp.overloads.get(argtypes)
    if cres is None:
        what = f"{disp.py_func.__qualname__}({', '.join(str(t) for t in argtypes)})"
        try:
            disp.compile(argtypes)
        except numba_errors.NumbaError as e:
            raise _numba_error(e, what) from e
        cres = disp.overloads.get(argtypes)
    return cres


def _frozen_globals(cres: Any) -> dict[str, Any] | None:
    """The globals and closure variables a compile result froze (name to
    the object numba read), or None when numba kept no IR (e.g. a compile
    loaded from numba's on-disk cache)."""
    blocks = getattr(getattr(cres, "type_annotation", None), "blocks", None)
    if blocks is None:
        return None
    found: dict[str, Any] = {}
    pending = list(blocks.values())
    while pending:
        block = pending.pop()
        for inst in block.body:
            if isinstance(inst, numba_ir.Assign) and isinstance(
                inst.value, numba_ir.Global | numba_ir.FreeVar
            ):
                found[inst.value.name] = inst.value.value
            elif isinstance(inst, Parfor):
                # parallel=True: a prange loop's body (and what numba hoisted
                # before it) is a statement of its own, whose globals are
                # read by the function all the same.
                pending.append(inst.init_block)
                pending.extend(inst.loop_body.values())
    return found


_SIMPLE = (int, float, complex, bool, str, bytes, type(None), np.number, np.bool_)


def _same_frozen(a: Any, b: Any) -> bool:
    """Whether numba froze the same thing from ``a`` as from ``b``. Arrays
    compare by dtype, shape and strides here; their contents are compared
    in the compiled code (``_frozen_arrays``)."""
    if a is b:
        return True
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.strides == b.strides
    if isinstance(a, tuple) and isinstance(b, tuple):
        return (
            type(a) is type(b)
            and len(a) == len(b)
            and all(_same_frozen(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, _SIMPLE) and type(a) is type(b):
        return bool(a == b) or (a != a and b != b)  # NaN froze as NaN
    return False


def _stale_global(ours: Any, theirs: Any) -> str | None:
    """The name of a global (or closure variable) that our fresh compile
    read differently from the dispatcher's compile, if any."""
    mine, used = _frozen_globals(ours), _frozen_globals(theirs)
    if mine is None or used is None:
        return None
    for name, value in mine.items():
        # Undefined when numba compiled: only a function's reference to itself
        # (an explicit signature compiles at decoration), which froze nothing.
        if name in used and used[name] is not numba_ir.UNDEFINED:
            if not _same_frozen(value, used[name]):
                return name
    return None


#: Contents of the constant arrays numba froze into a module (global arrays
#: the function reads), as LLVM prints them.
_FROZEN_ARRAY = re.compile(
    r'^@"?\.const\.array\.data[^ ]* = [^\n]*?constant (\[\d+ x i8\] (?:c"[^"]*"|zeroinitializer))',
    re.M,
)


def _frozen_arrays(text: str) -> set[str]:
    return set(_FROZEN_ARRAY.findall(text))


def _stale_arrays(bitcode: bytes, module_text: str, theirs: Any, tctx: Any) -> bool:
    """Whether the module we captured froze global array contents that the
    dispatcher's compiled code (``theirs``) does not hold: the array was
    changed in place after numba compiled the function. Our constants are
    compared before O3 first; only when some are missing from numba's
    optimized code (which may have folded constant loads away) are they
    compared again after the same optimization."""
    try:
        used = _frozen_arrays(theirs.library.get_llvm_str())
    except Exception:  # noqa: BLE001 - no LLVM kept (e.g. loaded from numba's cache)
        return False
    if _frozen_arrays(module_text) <= used:
        return False
    optimized = llvm.parse_bitcode(bitcode)
    mpm, pb = tctx.codegen()._module_pass_manager()
    mpm.run(optimized, pb)
    return not _frozen_arrays(str(optimized)) <= used


def _refuse_stale(disp: NumbaDispatcher, argtypes: tuple[types.Type, ...], what: str) -> None:
    name = disp.py_func.__qualname__
    raise UnsupportedError(
        f"{what} has changed since numba compiled {name}"
        f"({', '.join(str(t) for t in argtypes)}): numba froze the old value into "
        f"that compiled code, which {name}(...) still runs, so a derivative compiled "
        "now would be of another function. Call "
        f"{name}.recompile() to make numba (and enzpy) use the current value, or pass "
        "the value as an argument"
    )


def _serial(parallel: ParallelOptions) -> ParallelOptions:
    """The parallel options a captured copy is compiled with: none.

    With ``parallel=True`` numba outlines each ``prange`` loop (and each
    array expression it fuses into a parallel loop) into a separate function
    that its threading layer calls through an array of pointers, which the
    engine cannot differentiate through. Compiled without, the same code
    runs ``prange`` as ``range`` and array expressions as numba's ordinary
    loops, with the same results up to the order of floating-point
    reductions; every other option (fastmath, boundscheck, ...) is kept. The
    derivative is that of the serial code, and runs on one thread."""
    return ParallelOptions(False) if parallel.enabled else parallel


def _refuse_object_mode_blocks(cres: Any, what: str) -> None:
    """``with numba.objmode():`` runs Python code on the arrays: it has no
    derivative, and numba lifts it into a function enzpy cannot compile."""
    from numba.core.dispatcher import ObjModeLiftedWith

    for lifted in getattr(cres, "lifted", ()):
        if isinstance(lifted, ObjModeLiftedWith):
            loc = getattr(lifted.func_ir, "loc", None)
            raise UnsupportedError(
                f"{what} has a `with numba.objmode():` block, which runs Python "
                "code that enzpy cannot differentiate; move it out of the "
                "differentiated kernel, or give the computation a derivative rule",
                file=getattr(loc, "filename", None),
                line=getattr(loc, "line", None),
            )


def _compile_copy(
    disp: NumbaDispatcher, argtypes: tuple[types.Type, ...]
) -> tuple[Any, _RecordingLibrary]:
    """Compile a fresh, debug-info copy of ``disp`` for ``argtypes`` into a
    recording library (no wrappers, no machine code)."""
    what = f"{disp.py_func.__qualname__}({', '.join(str(t) for t in argtypes)})"
    # The dispatcher's own compile must exist first: a recursive call in the
    # copy resolves to it (else numba refuses to re-enter the same signature).
    theirs = _overload(disp, tuple(argtypes))
    _refuse_object_mode_blocks(theirs, what)
    comp = disp._compiler
    flags = compiler.Flags()
    disp.targetdescr.options.parse_as_flags(flags, disp.targetoptions)
    flags = comp._customize_flags(flags)
    # parallel=True: the serial compile (see _serial).
    flags.auto_parallel = _serial(flags.auto_parallel)
    flags.debuginfo = True
    flags.no_cpython_wrapper = True
    flags.no_cfunc_wrapper = True
    flags.no_compile = True
    tctx = disp.targetdescr.target_context
    name = f"enzpy.capture.{disp.py_func.__qualname__}"
    codegen = tctx.codegen()
    lib = _RecordingLibrary(codegen, name)
    # Helpers numba compiles on the way (array expressions, implementations
    # of numpy functions not compiled before) record their IR too: their
    # finalized modules have numba's own callees inlined, and a library
    # function's implementation must still be a call for the engine to give
    # it its rule (np.logaddexp in an array expression).
    codegen._library_class = _RecordingLibrary
    try:
        impl = comp._get_implementation(argtypes, {})
        with warnings.catch_warnings():
            # Helpers numba generates (array expressions) have no source.
            warnings.simplefilter("ignore", numba_errors.NumbaDebugInfoWarning)
            cres = compiler.compile_extra(
                disp.targetdescr.typing_context,
                tctx,
                impl,
                args=argtypes,
                return_type=None,
                flags=flags,
                locals=comp.locals,
                library=lib,
                pipeline_class=comp.pipeline_class,
            )
    except numba_errors.NumbaError as e:
        raise _numba_error(e, what) from e
    finally:
        del codegen._library_class
    if cres.typing_error is not None:
        raise _numba_error(cres.typing_error, what) from cres.typing_error
    if cres.objectmode:
        raise UnsupportedError(
            f"{what} compiles only in numba's object mode; enzpy needs nopython mode",
        )
    if not lib.recorded:
        raise UnsupportedError(f"numba produced no LLVM IR for {what}")
    stale = _stale_global(cres, theirs)
    if stale is not None:
        _refuse_stale(disp, argtypes, f"the global {stale!r} that {what} reads")
    return cres, lib


def _prange_loops(disp: NumbaDispatcher, cres: Any) -> list[dict[str, Any]]:
    """Where the copy ``cres`` of a parallel=True function calls numba.prange:
    the file and line of each prange loop (the serial compile runs it as a
    range loop; its latch branch carries that line)."""
    if not disp.targetoptions.get("parallel"):
        return []
    typemap = cres.fndesc.typemap
    return [
        {"file": os.path.abspath(expr.loc.filename), "line": expr.loc.line}
        for expr in cres.fndesc.calltypes
        if isinstance(expr, numba_ir.Expr)
        and expr.op == "call"
        and getattr(typemap.get(expr.func.name), "typing_key", None) is numba.prange
    ]


def _njit_callees(cres: Any) -> list[tuple[NumbaDispatcher, tuple[types.Type, ...], str]]:
    """The njit functions ``cres`` calls: (dispatcher, argtypes, symbol)."""
    fndesc = cres.fndesc
    typemap, calltypes = fndesc.typemap, fndesc.calltypes
    found = []
    for expr, sig in calltypes.items():
        if not (isinstance(expr, numba_ir.Expr) and expr.op == "call"):
            continue
        fnty = typemap.get(expr.func.name)
        if not isinstance(fnty, types.Dispatcher) or sig is None:
            continue
        callee = fnty.dispatcher
        if not isinstance(callee, Dispatcher):
            continue
        args = tuple(sig.args)
        # Compile results (numba's stubs declare none of their attributes).
        overloads: dict[Any, Any] = callee.overloads
        callee_cres = overloads.get(args)
        if callee_cres is None:
            for c in overloads.values():
                if tuple(c.signature.args) == args:
                    callee_cres = c
                    break
        if callee_cres is None or callee_cres.objectmode:
            continue
        found.append((callee, args, callee_cres.fndesc.mangled_name))
    return found


def _overload_libraries(dispatchers: list[Any], symbols: set[str]) -> list[Any]:
    """The code libraries of the dispatchers' compiles named ``symbols``."""
    found = []
    for d in dispatchers:
        compiled: dict[Any, Any] = d.overloads
        for c in compiled.values():
            if c.fndesc.mangled_name in symbols and c.library is not None:
                found.append(c.library)
    return found


def _named_as(module: llvm.ModuleRef, name: str, symbol: str) -> llvm.ModuleRef:
    """``module`` with its function ``name`` renamed ``symbol``. A recursive
    copy calls ``symbol`` (the dispatcher's own compile), declared in the
    module: those calls become calls of the copy."""
    try:
        declared = module.get_function(symbol)
    except NameError:
        module.get_function(name).name = symbol
        return module
    assert declared.is_declaration, symbol
    ident = r"(?=[^-a-zA-Z$._0-9]|$)"
    text = str(module)
    text = re.sub(r"^declare [^\n]*@\"?" + re.escape(symbol) + r'"?\(.*\n', "", text, flags=re.M)
    text = re.sub(r'@"?' + re.escape(name) + r'"?' + ident, "@" + _quoted(symbol), text)
    return llvm.parse_assembly(text)


def _quoted(name: str) -> str:
    if re.fullmatch(r"[-a-zA-Z$._][-a-zA-Z$._0-9]*", name):
        return name
    return '"' + name.replace("\\", "\\5C").replace('"', "\\22") + '"'


def _link_recorded(lib: _RecordingLibrary) -> llvm.ModuleRef:
    mods = lib.recorded
    main = mods[0].clone()
    for m in mods[1:]:
        main.link_in(m.clone())
    return main


def _module_for_linking(lib: Any) -> llvm.ModuleRef:
    """The IR of a numba library's functions: as recorded before numba's O3
    for a library compiled while capturing, else its finalized module."""
    if isinstance(lib, _RecordingLibrary) and lib.recorded:
        return _link_recorded(lib)
    return lib._get_module_for_linking()


def _declared(module: llvm.ModuleRef) -> set[str]:
    return {
        fn.name for fn in module.functions if fn.is_declaration and not fn.name.startswith("llvm.")
    }


#: numba calls an overload that a recursive function reaches before it is
#: compiled through a global of this prefix, which it fills in at link time.
_UNRESOLVED = ".numba.unresolved$"


def _referenced(module: llvm.ModuleRef) -> set[str]:
    """Functions ``module`` declares or calls through numba's unresolved-symbol
    globals (the engine turns the latter into direct calls)."""
    names = _declared(module)
    names |= {
        gv.name[len(_UNRESOLVED) :]
        for gv in module.global_variables
        if gv.name.startswith(_UNRESOLVED)
    }
    return names - _defined_functions(module)


def _defined_functions(module: llvm.ModuleRef) -> set[str]:
    return {fn.name for fn in module.functions if not fn.is_declaration}


def _is_numba_function(name: str) -> bool:
    """Whether ``name`` is a function numba compiled from Python (Itanium
    mangled ``_ZN...``), as opposed to runtime or helper symbols."""
    return name.startswith("_ZN")


def _declaration(fn: llvm.ValueRef) -> str:
    """``declare`` text for a function, from its type ``ret (params)``."""
    fnty = str(fn.global_value_type)
    depth = 0
    for pos in range(len(fnty) - 1, -1, -1):
        c = fnty[pos]
        if c == ")":
            depth += 1
        elif c == "(":
            depth -= 1
            if depth == 0:
                break
    ret, params = fnty[:pos].strip(), fnty[pos:]
    return f"declare {ret} @{_quoted(fn.name)}{params}"


def _numba_functions_only(module: llvm.ModuleRef) -> llvm.ModuleRef:
    """A copy of ``module`` in which only numba-compiled functions keep their
    bodies; every other definition becomes a declaration."""
    drop = [
        fn for fn in module.functions if not fn.is_declaration and not _is_numba_function(fn.name)
    ]
    if not drop:
        return module.clone()
    text = str(module)
    for fn in drop:
        head = re.search(
            r"^define [^\n]*@(?:" + re.escape(fn.name) + r'|"' + re.escape(fn.name) + r'")\(',
            text,
            re.M,
        )
        if head is None:
            raise InternalError(f"cannot find the definition of {fn.name!r} in numba's module")
        tail = text.index("\n}\n", head.start()) + 3
        text = text[: head.start()] + _declaration(fn) + "\n" + text[tail:]
    return llvm.parse_assembly(text)


def _all_linking_libraries(libs: list[Any]) -> list[Any]:
    out: list[Any] = []
    seen: set[int] = set()
    stack = list(libs)
    while stack:
        lib = stack.pop(0)
        if id(lib) in seen:
            continue
        seen.add(id(lib))
        out.append(lib)
        stack.extend(getattr(lib, "_linking_libraries", []))
    return out


def capture(func: Any, argtypes: tuple[types.Type, ...], rule_bodies: bool = False) -> Captured:
    """Capture numba's pre-O3 IR of ``func`` compiled for ``argtypes``.

    The functions of custom rules (``_custom_rules``) come as declarations,
    compiled in this process (``_custom_rules.publish``), or with
    ``rule_bodies`` as their compiled bodies (for a derivative that is
    differentiated again).

    Raises ``CompilationError`` (numba's message) when numba cannot compile it.
    """
    disp: NumbaDispatcher = as_dispatcher(func)
    argtypes = tuple(argtypes)
    _check_arity(disp, argtypes)
    argtypes = _resolve_argtypes(disp, argtypes)
    with global_compiler_lock:
        cres, lib = _compile_copy(disp, argtypes)
        module = _link_recorded(lib)
        function = cres.fndesc.mangled_name
        linking: list[Any] = list(lib._linking_libraries)
        environments = [(cres.fndesc.env_name, cres.environment)]

        # Bring in the bodies of njit callees, captured the same way, under the
        # names the callers use; and for callees with user rules (``_rules``),
        # their partials functions.
        captured_keys: set[tuple[int, tuple[types.Type, ...]]] = {(id(disp), argtypes)}
        parallel_loops = _prange_loops(disp, cres)
        pending = _njit_callees(cres)
        dispatchers = {id(disp): disp}
        # A derivative differentiated again needs the rules' bodies, which
        # may bring more callees: built now. Otherwise a rule's functions are
        # built only when the engine finds a call of it with derivatives
        # (``Captured.build_rules``): on constants they cost nothing.
        rules = _RulesFound(lazy=not rule_bodies)

        def bring(callee: NumbaDispatcher, args: tuple[types.Type, ...], symbol: str) -> Any:
            sub_cres, sub_lib = _compile_copy(callee, args)
            sub = _link_recorded(sub_lib)
            sub = _named_as(sub, sub_cres.fndesc.mangled_name, symbol)
            sub_fn = sub.get_function(symbol)
            # As in numba's own copies of callees linked into a caller; but the
            # linker brings a linkonce_odr body only where it is referenced, which
            # numba's unresolved-symbol globals (recursion) are not.
            sub_fn.linkage = "linkonce_odr" if symbol in _declared(module) else "external"
            module.link_in(sub)
            linking.extend(sub_lib._linking_libraries)
            environments.append((sub_cres.fndesc.env_name, sub_cres.environment))
            pending.extend(_njit_callees(sub_cres))
            parallel_loops.extend(_prange_loops(callee, sub_cres))
            return sub_cres

        def bring_compiled(df: NumbaDispatcher, args: tuple[types.Type, ...]) -> str:
            """``df`` for ``args`` as numba compiled it (optimized, its
            callees inside): for rule functions the engine calls but never
            differentiates, which need no capture of their own."""
            cres = _overload(df, args)
            symbol: str = cres.fndesc.mangled_name
            if symbol not in _defined_functions(module):
                copy = _numba_functions_only(cres.library._get_module_for_linking())
                copy.get_function(symbol).linkage = "external"
                module.link_in(copy)
            return symbol

        def bring_wrapper(built: _custom_rules.Wrappers, what: str) -> str:
            return bring_compiled(*built.compiled(what))

        def bring_partials(df: NumbaDispatcher, args: tuple[types.Type, ...]) -> str:
            symbol: str = _overload(df, args).fndesc.mangled_name
            if symbol not in _defined_functions(module):
                bring(df, args, symbol)
            return symbol

        def bring_callees() -> None:
            while True:
                while pending:
                    callee, args, symbol = pending.pop(0)
                    dispatchers[id(callee)] = callee
                    key = (id(callee), args)
                    if key in captured_keys or symbol in _defined_functions(module):
                        continue
                    captured_keys.add(key)
                    if symbol not in _referenced(module):
                        continue
                    sub_cres = bring(callee, args, symbol)
                    rules.note_njit(callee, args, symbol, sub_cres, bring_partials, bring_wrapper)
                if not rules.note_c(module, bring_partials, bring_wrapper):
                    break

        # numba's own compiled helpers (np.zeros, np.sum, x**n, ...): link their
        # bodies from the finalized libraries that define still-declared
        # symbols -- numba-compiled functions only; numba's runtime functions
        # (NRT_incref, NRT_decref, ...) stay declarations.
        # A recursive function reaches other overloads of itself through
        # numba's unresolved-symbol globals, not through linking libraries:
        # their libraries are those of the dispatchers' compiles.
        def link_helpers() -> list[Any]:
            libraries = _all_linking_libraries(linking)
            missing = {n for n in _referenced(module) if _is_numba_function(n)}
            linked_ids: set[int] = set()
            while missing:
                linked = False
                for dep in libraries:
                    if not missing:
                        break
                    if id(dep) in linked_ids:
                        continue
                    try:
                        shared = _module_for_linking(dep)
                    except Exception:  # noqa: BLE001 - e.g. a library without a module
                        continue
                    if missing & _defined_functions(shared):
                        linked_ids.add(id(dep))
                        copy = _numba_functions_only(shared)
                        # The linker brings a linkonce_odr body only where it is
                        # referenced, which numba's unresolved-symbol globals are not.
                        for fn in copy.functions:
                            if fn.name in missing and not fn.is_declaration:
                                fn.linkage = "external"
                        module.link_in(copy)
                        missing = {n for n in _referenced(module) if _is_numba_function(n)}
                        linked = True
                overloads = _overload_libraries(list(dispatchers.values()), missing)
                fresh = [lib for lib in _all_linking_libraries(overloads) if lib not in libraries]
                if not fresh and not linked:
                    break
                libraries += fresh
            return libraries

        # The helpers may call C functions with rules (LAPACK), whose rule
        # functions bring more callees and helpers.
        while True:
            bring_callees()
            libraries = link_helpers()
            if not rules.note_c(module, bring_partials, bring_wrapper):
                break

        module.verify()
        bitcode = module.as_bitcode()
        # Global arrays changed in place since numba compiled the function
        # (here or in a callee, whose code numba linked into the function's).
        if _stale_arrays(bitcode, str(module), disp.overloads[argtypes], cres.target_context):
            _refuse_stale(disp, argtypes, "a global array that it reads")

    code = getattr(disp.py_func, "__code__", None)
    return Captured(
        bitcode=bitcode,
        function=function,
        argtypes=argtypes,
        restype=cres.signature.return_type,
        file=getattr(code, "co_filename", None),
        line=getattr(code, "co_firstlineno", None),
        libraries=libraries,
        environments=environments,
        rules=rules.rules,
        inactive=rules.inactive,
        pending=rules.pending,
        parallel_loops=parallel_loops,
    )


class _RulesFound:
    """The user rules (``_rules``) a captured module needs: the engine
    request's ``rules`` and ``inactive`` entries."""

    def __init__(self, lazy: bool) -> None:
        self.rules: list[dict[str, Any]] = []
        self.inactive: list[str] = []
        self.pending: dict[str, _PendingRule] = {}
        self._lazy = lazy
        self._c_done: set[str | int | tuple[str, int]] = set()

    def note_njit(
        self,
        callee: NumbaDispatcher,
        args: tuple[types.Type, ...],
        symbol: str,
        cres: Any,
        bring_partials: Any,
        bring_wrapper: Any,
    ) -> None:
        if _rules.is_inactive(callee):
            self.inactive.append(symbol)
            return
        custom = _rules.custom_for(callee)
        if custom is not None:
            restype = cres.signature.return_type
            self._add_custom(symbol, custom, args, restype, bring_wrapper)
            return
        df = _rules.partials_for(callee)
        if df is None:
            return
        name = f"{callee.py_func.__qualname__}({', '.join(map(str, args))})"
        restype = cres.signature.return_type
        _check_rule_types(name, args, restype)
        self._add(symbol, None, name, df, args, restype, bring_partials)

    def note_c(self, module: llvm.ModuleRef, bring_partials: Any, bring_wrapper: Any) -> bool:
        """Add the C functions with rules that ``module`` calls; whether any
        was new (its partials function may call more)."""
        new = False
        declared = _declared(module)
        for symbol, custom in _rules.custom_c_rules().items():
            if symbol in self._c_done or symbol not in declared:
                continue
            self._c_done.add(symbol)
            fn = module.get_function(symbol)
            args = _c_argtypes(fn, symbol, pointers=True)
            ret = _declaration(fn).split()[1]
            restype = None if ret == "void" else _LLVM_SCALARS.get(ret)
            if ret != "void" and restype is None:
                raise UnsupportedError(
                    f"a function with a custom rule returns nothing, an integer or a "
                    f"float; the C function {symbol} returns {ret}"
                )
            self._add_custom(symbol, custom, args, restype, bring_wrapper)
            new = True
        by_address = _rules.custom_address_rules()
        wanted = _rules.c_rules() or by_address
        addresses = _rules.addresses_called(str(module)) if wanted else set()
        for found in by_address:
            done = ("custom", found.address)
            if done in self._c_done or found.address not in addresses:
                continue
            self._c_done.add(done)
            # The engine gives the calls through the address a function of
            # this name (rules/UserRules.h, addressFunction).
            symbol = f"enzpy.cfunc.{found.address:x}"
            self._add_custom(
                symbol, found.rule, found.argtypes, found.restype, bring_wrapper, found.address
            )
            new = True
        for rule in _rules.c_rules():
            key = rule.symbol if rule.symbol is not None else rule.address
            assert key is not None
            if key in self._c_done:
                continue
            if rule.symbol is not None and rule.symbol in declared:
                fn = module.get_function(rule.symbol)
                args = _c_argtypes(fn, rule.display)
                restype = _LLVM_SCALARS.get(_declaration(fn).split()[1], types.float64)
            elif rule.address is not None and rule.address in addresses:
                assert rule.argtypes is not None
                args, restype = rule.argtypes, rule.restype
            else:
                continue
            self._c_done.add(key)
            self._add(
                rule.symbol,
                rule.address,
                rule.display,
                rule.partials,
                args,
                restype,
                bring_partials,
            )
            new = True
        return new

    def _add_custom(
        self,
        symbol: str,
        custom: CustomRule,
        args: tuple[types.Type, ...],
        restype: types.Type | None,
        bring: Any,
        address: int = 0,
    ) -> None:
        if restype == types.none:
            restype = None
        new_array = isinstance(restype, types.Array) and restype.dtype in (
            types.float64,
            types.float32,
        )
        if restype is not None and not (
            new_array or isinstance(restype, types.Float | types.Integer)
        ):
            raise UnsupportedError(
                f"a function with a custom rule returns nothing, an integer, a float or "
                f"a new array of floats; {custom.display} returns {restype}"
            )
        entry: dict[str, Any] = {
            "callee": symbol,
            "display": custom.display,
            "args": _custom_rules.arg_spec(custom, args),
        }
        if address:
            entry["address"] = address
        if custom.always_active:
            entry["always_active"] = True
        if custom.augmented_shadows:
            entry["augmented_shadows"] = True
        if custom.writes_nothing:
            entry["writes_nothing"] = True
        if new_array:
            assert isinstance(restype, types.Array)
            entry["result"] = "d" if restype.dtype == types.float64 else "f"
        self.rules.append(entry)

        def build(bring: Callable[[_custom_rules.Wrappers, str], str]) -> None:
            built = _custom_rules.wrappers(custom, args, restype)
            entry.pop("pending", None)
            entry["tape_owners"] = built.tape_owners
            entry.update({f"{what}_result": t for what, t in built.results.items()})
            for what, disp, argtypes in (
                ("forward", built.forward, built.forward_args),
                ("augmented", built.augmented, built.augmented_args),
                ("reverse", built.reverse, built.reverse_args),
            ):
                if disp is None or argtypes is None:
                    continue
                with _naming(f"the {what} function of the rule for {custom.display}"):
                    entry[what] = bring(built, what)

        if self._lazy:
            entry["pending"] = True
            self.pending[symbol] = build
        else:
            build(bring)

    def _add(
        self,
        symbol: str | None,
        address: int | None,
        name: str,
        df: NumbaDispatcher,
        args: tuple[types.Type, ...],
        restype: types.Type,
        bring_partials: Any,
    ) -> None:
        # A partials function with one more parameter takes the result too.
        with_result = _rules.arity(df) == len(args) + 1
        p_args = (*args, restype) if with_result else args
        with _naming(f"the partial derivatives registered for {name}"):
            p_symbol = bring_partials(df, p_args)
        n_floats = sum(isinstance(a, types.Float) for a in args)
        found = _overload(df, p_args).signature.return_type
        _check_partials_type(name, df, found, n_floats)
        outputs = [found] if isinstance(found, types.Float) else list(_custom_rules.members(found))
        entry: dict[str, Any] = {
            "partials": p_symbol,
            "display": name,
            "outputs": ["float" if t == types.float32 else "double" for t in outputs],
            "with_result": with_result,
        }
        if symbol is not None:
            entry["callee"] = symbol
        else:
            entry["address"] = address
        self.rules.append(entry)


@contextlib.contextmanager
def _naming(what: str) -> Iterator[None]:
    """A rule function that does not compile: numba's error, naming the rule."""
    try:
        yield
    except CompilationError as e:
        raise CompilationError(
            f"{what} fail to compile for its arguments: {e}", file=e.file, line=e.line
        ) from e


def _check_rule_types(name: str, args: tuple[types.Type, ...], restype: types.Type) -> None:
    omitted = [k for k, a in enumerate(args) if isinstance(a, types.Omitted)]
    if omitted:
        raise UnsupportedError(
            f"{name} is called with the default value of its argument {omitted[0]}: its rule "
            "by partial derivatives needs every argument passed at the call (pass the "
            "default explicitly)"
        )
    if not isinstance(restype, types.Float) or not all(
        isinstance(a, types.Float | types.Integer | types.Boolean) for a in args
    ):
        raise UnsupportedError(
            f"a rule given by partial derivatives is for a function of scalars returning "
            f"one float; {name} returns {restype}"
        )


def _check_partials_type(name: str, df: Any, found: types.Type, n_floats: int) -> None:
    ok = (n_floats == 1 and isinstance(found, types.Float)) or (
        isinstance(found, types.BaseTuple)
        and len(_custom_rules.members(found)) == n_floats
        and all(isinstance(t, types.Float) for t in _custom_rules.members(found))
    )
    if not ok:
        expected = "one float" if n_floats == 1 else f"a tuple of {n_floats} floats"
        raise EnzpyTypeError(
            f"the partial derivatives registered for {name} "
            f"({df.py_func.__qualname__}) return {found}; expected {expected}, the "
            "derivative with respect to each float argument in order"
        )


_LLVM_SCALARS: dict[str, types.Type] = {
    "double": types.float64,
    "float": types.float32,
    "i64": types.int64,
    "i32": types.int32,
    "i16": types.int16,
    "i8": types.int8,
}


def _c_argtypes(fn: llvm.ValueRef, name: str, pointers: bool = False) -> tuple[types.Type, ...]:
    """numba types of a C function's parameters, from its declaration
    (pointers as ``voidptr`` when ``pointers``)."""
    params = _declaration(fn).split("(", 1)[1].rsplit(")", 1)[0]
    found: list[types.Type] = []
    for p in (x.strip() for x in params.split(",") if x.strip()):
        llvm_type = p.split()[0]
        is_pointer = llvm_type == "ptr" or llvm_type.endswith("*")
        t = types.voidptr if pointers and is_pointer else _LLVM_SCALARS.get(llvm_type)
        if t is None:
            raise UnsupportedError(
                f"a rule given by partial derivatives is for a function of scalars; "
                f"the C function {name} takes {p}"
            )
        found.append(t)
    return tuple(found)
