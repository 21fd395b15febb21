"""Load a derivative module into numba and make it callable.

The engine's bitcode goes into a numba code library of its own, compiled to
machine code once. The engine has run O3 on it for numba's JIT target
already (``_config.jit_target``), so numba's function and module passes are
skipped: a second O3 over a large derivative cost more than its code
generation. Callers (the njit wrapper, and any njit function that calls the
wrapper) reach it through its JIT symbol instead of linking its IR in:
linking would re-optimize and re-compile the whole derivative for every
caller, which for a large kernel costs as much as the derivative's own
compile. numba never unloads JIT code, so the symbol stays valid for the
life of the process. Before the library is finalized, every symbol the
module declares is checked to resolve, because MCJIT would leave an
unresolved one as a null address and the call would crash the process. An
``@intrinsic`` calls the derivative with numba's native calling convention,
as the call signature (``_signature``) types and lowers it, and an ``@njit``
wrapper around it is what Python and other njit code call.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import llvmlite.binding as llvm
from numba.core import codegen as numba_codegen
from numba.core import types
from numba.core.compiler_lock import global_compiler_lock
from numba.core.errors import TypingError
from numba.core.registry import CPUDispatcher
from numba.extending import intrinsic

from . import _custom_rules, _parallel, _tape_budget
from ._abi import tuple_types
from ._config import target_context
from ._signature import CallSignature
from .errors import EnzpyTypeError, InternalError, UnsupportedError

__all__ = ["Linked", "Portable", "add_compiled", "link", "load_library", "load_object", "wrap"]


class Linked:
    """A loaded derivative: its code library and its njit wrapper."""

    __slots__ = ("library", "signature", "wrapper", "environments", "__weakref__")

    def __init__(
        self, library: Any, signature: CallSignature, wrapper: Any, environments: list[Any]
    ) -> None:
        self.library = library
        self.signature = signature
        self.wrapper = wrapper
        #: numba Environments the code points to (kept alive here).
        self.environments = environments


class Portable(NamedTuple):
    """A loaded derivative's object code, which another process can load
    (``load_object``): what it needs and what it defines besides the
    derivative."""

    object_code: bytes
    #: Symbols the object code leaves undefined; each resolves to an
    #: address every process has (numba's runtime, the C library).
    undefined: list[str]
    #: The numba Environment globals it defines (named after the
    #: derivative)...
    env_names: list[str]
    #: ... and the position of each one's Environment among those given.
    env_index: list[int]


class _OptimizedLibrary(numba_codegen.JITCodeLibrary):
    """A code library for a module the engine optimized already: finalizing
    it links it and generates machine code, without numba's O3. Only the
    symbols in ``exported`` stay visible outside it: the code of the
    libraries linked in becomes internal. Exported, numba's functions
    copied into a derivative would take over their names in the JIT, where
    code compiled later that calls them would reach the derivative's copy
    (under another calling convention where the engine changed it), and
    another process may give those names to other functions. A
    ``portable`` library keeps its object code."""

    def __init__(self, codegen: Any, name: str, exported: set[str], portable: bool = False) -> None:
        super().__init__(codegen, name)
        self._exported = exported
        if portable:
            self.enable_object_caching()

    def _optimize_functions(self, ll_module: llvm.ModuleRef) -> None:
        pass

    def _optimize_final_module(self) -> None:
        # Private, not internal: the JIT's dynamic linker enters internal
        # symbols into its table by name too, where they would win over
        # numba's definitions; private ones get no symbol at all.
        module = self._final_module
        for gv in [*module.functions, *module.global_variables]:
            if not gv.is_declaration and gv.name not in self._exported:
                gv.linkage = "private"


def _defined_names(lib: Any) -> set[str]:
    try:
        mod = lib._get_module_for_linking()
    except Exception:  # noqa: BLE001 - e.g. a library without a module
        return set()
    names = {fn.name for fn in mod.functions if not fn.is_declaration}
    names |= {gv.name for gv in mod.global_variables if not gv.is_declaration}
    return names


def _threads_for(symbols: Iterable[str]) -> None:
    """Start numba's threading layer when code calls into it (prange loops
    of a derivative run on its threads): that defines its symbols; and
    define the floor of a launch's worth (``_parallel``) and the tape's
    budget (``_tape_budget``) when the code reads them."""
    names = set(symbols)
    if _THREADING_SYMBOLS & names:
        from numba.np.ufunc.parallel import _launch_threads

        _launch_threads()
    for words in (_parallel.WORDS, _tape_budget.WORDS):
        if words.name in names:
            words.publish()


_THREADING_SYMBOLS = frozenset({"numba_parallel_for", "get_num_threads"})


def _resolve_declarations(
    module: llvm.ModuleRef, codegen: Any, libraries: list[Any], what: str
) -> list[Any]:
    """Check every declared symbol resolves; return the libraries to link."""
    engine = codegen._engine
    needed: list[Any] = []
    lib_names: list[tuple[Any, set[str]]] | None = None
    decls = [fn.name for fn in module.functions if fn.is_declaration]
    decls += [gv.name for gv in module.global_variables if gv.is_declaration]
    _threads_for(decls)
    for name in decls:
        # A custom rule's function: compiled by the capture, defined by publish.
        if name.startswith("llvm.") or _custom_rules.publish(name) or llvm.address_of_symbol(name):
            continue
        # Prefer linking the defining library in (numba's way: the code can be
        # inlined and no cross-module lookup is needed) over the JIT's table.
        if lib_names is None:
            lib_names = [(lib, _defined_names(lib)) for lib in libraries]
        for lib, names in lib_names:
            if name in names:
                if lib not in needed:
                    needed.append(lib)
                break
        else:
            if engine.is_symbol_defined(name):
                continue
            raise UnsupportedError(
                f"the derivative of {what} uses the symbol {name!r}, which "
                "is defined nowhere in this process (an external function "
                "with no body and no derivative rule?)"
            )
    return needed


def load_library(
    bitcode: bytes,
    name: str,
    libraries: list[Any],
    what: str,
    environments: Sequence[tuple[str, Any]] = (),
    portable: bool = False,
) -> tuple[Any, Portable | None]:
    """Put the derivative module into a finalized numba code library.

    The derivative ``name`` (unique in the process) stays external in the
    library and is published as a JIT symbol, which is how callers reach it.
    Every other function the module defines
    (copies of the primal and its callees) becomes internal, so that no
    symbol clashes with numba's own. The numba Environment globals named
    in ``environments`` that the module defines are pointed at their
    Environment, as numba does for the functions it compiles.

    ``portable``: also return the library's object code for another process
    (None if it needs a symbol only this process's JIT defines); the
    Environment globals are then renamed after the derivative, whose name
    the caller makes unique to what it computes."""
    tctx = target_context()
    codegen = tctx.codegen()
    with global_compiler_lock:
        try:
            module = llvm.parse_bitcode(bitcode)
        except Exception as e:  # noqa: BLE001 - llvmlite raises RuntimeError
            raise InternalError(f"the engine returned an unreadable module: {e}") from e
        found = False
        for fn in module.functions:
            if fn.is_declaration:
                continue
            if fn.name == name:
                fn.linkage = "external"
                found = True
            elif fn.linkage not in (llvm.Linkage.internal, llvm.Linkage.private):
                fn.linkage = "internal"
        if not found:
            raise InternalError(f"the engine's module does not define {name!r}")
        envs = list(environments)
        if portable:
            index = _rename_environments(module, name, envs)
            envs = [envs[k] for k in index]
        try:
            module.verify()
        except RuntimeError as e:
            raise InternalError(f"the engine returned an invalid module: {e}") from e
        needed = _resolve_declarations(module, codegen, libraries, what)
        lib = _OptimizedLibrary(codegen, name, {name, *(n for n, _ in envs)}, portable)
        for dep in needed:
            lib.add_linking_library(dep)
        try:
            lib.add_llvm_module(module)
            lib.finalize()
        except Exception as e:  # noqa: BLE001 - numba/llvmlite raise various errors
            raise InternalError(f"numba could not load the derivative of {what}: {e}") from e
        _publish(codegen, lib, name, envs)
        out = _portable(lib, [n for n, _ in envs], index) if portable else None
    return lib, out


def _rename_environments(
    module: llvm.ModuleRef, name: str, environments: list[tuple[str, Any]]
) -> list[int]:
    """Rename the Environment globals ``module`` defines ``<name>.env<k>``
    (numba's names are unique in one process only), in place in
    ``environments``; the positions of those it defines."""
    defined = []
    for k, (env_name, env) in enumerate(environments):
        try:
            gv = module.get_global_variable(env_name)
        except NameError:
            continue
        if gv.is_declaration:
            continue
        gv.name = f"{name}.env{k}"
        environments[k] = (gv.name, env)
        defined.append(k)
    return defined


def _portable(lib: Any, env_names: list[str], env_index: list[int]) -> Portable | None:
    undefined = [
        gv.name
        for gv in [*lib._final_module.functions, *lib._final_module.global_variables]
        if gv.is_declaration and not gv.name.startswith("llvm.")
    ]
    if any(_custom_rules.is_wrapper(n) for n in undefined) or not all(
        llvm.address_of_symbol(n) for n in undefined
    ):
        return None  # it calls code another process would not have
    return Portable(bytes(lib._get_compiled_object()), undefined, env_names, env_index)


def _publish(codegen: Any, lib: Any, name: str, environments: Sequence[tuple[str, Any]]) -> None:
    """Publish the derivative's address and point its Environment globals
    at their Environments."""
    address = lib.get_pointer_to_function(name)
    if not address:
        raise InternalError(f"the derivative {name!r} did not load into the JIT")
    # Callers declare the derivative and the JIT resolves it by name.
    llvm.add_symbol(name, address)
    for env_name, env in environments:
        if codegen._engine.is_symbol_defined(env_name):
            codegen.set_env(env_name, env)


def load_object(code: Portable, name: str, environments: Sequence[Any]) -> Any | None:
    """Load object code that ``load_library`` returned (in this process or
    another) for the derivative ``name``; its library, or None when a symbol
    it needs is missing here."""
    _threads_for(code.undefined)
    if not all(llvm.address_of_symbol(n) for n in code.undefined):
        return None  # MCJIT would abort the process on it
    codegen = target_context().codegen()
    with global_compiler_lock:
        lib = _OptimizedLibrary(codegen, name, {name, *code.env_names}, portable=True)
        lib._set_compiled_object(code.object_code)
        # As numba loads its cached code: the JIT asks the library's object
        # cache hook for the (empty) final module's code and gets this.
        lib._finalize_final_module()
        address = codegen._engine.get_function_address(name)
        if not address:
            return None
        llvm.add_symbol(name, address)
        for env_name, env in zip(code.env_names, environments, strict=True):
            codegen.set_env(env_name, env)
    return lib


def _make_intrinsic(sig: CallSignature) -> Any:
    """An @intrinsic that calls the derivative with the wrapper's arguments,
    given as one tuple: ``sig`` checks their types and lowers the call
    (argument checks, the native call, the regrouped result)."""

    def enzpy_derivative_intrinsic(typingctx: Any, args: types.BaseTuple) -> Any:
        actual = list(tuple_types(args))
        expected = sig.type_call(typingctx, actual)

        def codegen(context: Any, builder: Any, signature: Any, llargs: Any) -> Any:
            # The call goes to the derivative's JIT symbol (module docstring).
            values = [
                context.cast(builder, builder.extract_value(llargs[0], k), a, w)
                for k, (a, w) in enumerate(zip(actual, expected, strict=True))
            ]
            return sig.lower_call(context, builder, expected, values)

        return sig.result_type(args), codegen

    return intrinsic(enzpy_derivative_intrinsic)


def _make_wrapper(intr: Any, doc: str, name: str) -> Any:
    """The @njit function Python and njit code call. It hands its arguments
    as one tuple to the intrinsic, which checks them against the signature:
    a closure (numba sees the intrinsic as a constant), no generated code.
    Its qualified name holds the derivative's ``name``, so that numba's
    symbols for it are as unique as that (``add_compiled``)."""

    def enzpy_derivative(*args: Any) -> Any:
        return intr(args)

    enzpy_derivative.__doc__ = doc
    enzpy_derivative.__qualname__ = f"enzpy_derivative.{name}"
    return _DerivativeDispatcher(enzpy_derivative, locals={}, targetoptions={"nopython": True})


#: The wrapper's own complaint inside numba's report of a failed typing.
_OWN_TYPING_ERROR = re.compile(r"TypingError: (enzpy derivative [^\n]*)")


class _DerivativeDispatcher(CPUDispatcher):
    """numba's dispatcher for the wrapper, except that a Python call with
    arguments the derivative was not made for raises ``EnzpyTypeError`` with
    the wrapper's message (which numba buries in a report about the
    intrinsic); njit callers get numba's TypingError, as for any function."""

    def _compile_for_args(self, *args: Any, **kws: Any) -> Any:
        try:
            return super()._compile_for_args(*args, **kws)  # type: ignore[misc]  # numba's stubs lack it
        except TypingError as err:
            found = _OWN_TYPING_ERROR.search(str(err))
            if found is None:
                raise
            raise EnzpyTypeError(found.group(1)) from None


def add_compiled(wrapper: Any, reduced: tuple[Any, ...], undefined: list[str]) -> bool:
    """Give the njit ``wrapper`` a compile result stored by numba's
    ``CompileResult._reduce`` (in another process, for the same derivative);
    False when a symbol its code needs is missing here."""
    from numba.core.compiler import CompileResult

    _threads_for(undefined)
    if not all(llvm.address_of_symbol(n) for n in undefined):
        return False  # MCJIT would abort the process on it
    with global_compiler_lock:
        cres = CompileResult._rebuild(target_context(), *reduced)
        wrapper.add_overload(cres)
    return True


def link(
    bitcode: bytes,
    sig: CallSignature,
    libraries: list[Any],
    what: str,
    environments: Sequence[tuple[str, Any]] = (),
    doc: str | None = None,
) -> Linked:
    """Load the derivative and build its intrinsic and njit wrapper (whose
    docstring is ``doc`` if given, else the signature's)."""
    lib, _ = load_library(bitcode, sig.name, libraries, what, environments)
    return wrap(lib, sig, what, [env for _, env in environments], doc)


def wrap(
    lib: Any, sig: CallSignature, what: str, environments: list[Any], doc: str | None = None
) -> Linked:
    """The intrinsic and njit wrapper of the loaded derivative ``sig``."""
    intr = _make_intrinsic(sig)
    wrapper = _make_wrapper(intr, doc or sig.docstring(what), sig.name)
    return Linked(lib, sig, wrapper, environments)
