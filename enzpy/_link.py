"""Load a derivative module into numba and make it callable.

The engine's bitcode goes into a numba code library (so numba links it into,
and can inline it in, any njit function that calls it). Before the library is
finalized, every symbol the module declares is checked to resolve, because
MCJIT would leave an unresolved one as a null address and the call would
crash the process. A generated ``@intrinsic`` of fixed arity calls the
derivative with numba's native calling convention, and an ``@njit`` wrapper
around it is what Python and other njit code call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import llvmlite.binding as llvm
import numba
from numba.core import cgutils, types
from numba.core.compiler_lock import global_compiler_lock
from numba.core.errors import TypingError
from numba.extending import intrinsic

from ._abi import ACTIVE, CONST, DUP, DUPNONEED, Plan
from .errors import InternalError, UnsupportedError

__all__ = ["Linked", "link"]


class Linked:
    """A loaded derivative: its code library and its njit wrapper."""

    __slots__ = ("library", "plan", "wrapper", "arg_names", "environments", "__weakref__")

    def __init__(
        self,
        library: Any,
        plan: Plan,
        wrapper: Any,
        arg_names: list[str],
        environments: list[Any],
    ) -> None:
        self.library = library
        self.plan = plan
        self.wrapper = wrapper
        self.arg_names = arg_names
        #: numba Environments the code points to (kept alive here).
        self.environments = environments


def _target_context() -> Any:
    from numba.core.registry import cpu_target

    return cpu_target.target_context


def _defined_names(lib: Any) -> set[str]:
    try:
        mod = lib._get_module_for_linking()
    except Exception:  # noqa: BLE001 - e.g. a library without a module
        return set()
    names = {fn.name for fn in mod.functions if not fn.is_declaration}
    names |= {gv.name for gv in mod.global_variables if not gv.is_declaration}
    return names


def _resolve_declarations(
    module: llvm.ModuleRef, codegen: Any, libraries: list[Any], what: str
) -> list[Any]:
    """Check every declared symbol resolves; return the libraries to link."""
    engine = codegen._engine
    needed: list[Any] = []
    lib_names: list[tuple[Any, set[str]]] | None = None
    decls = [fn.name for fn in module.functions if fn.is_declaration]
    decls += [gv.name for gv in module.global_variables if gv.is_declaration]
    for name in decls:
        if name.startswith("llvm.") or llvm.address_of_symbol(name):
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
) -> Any:
    """Put the derivative module into a finalized numba code library.

    The derivative ``name`` (unique in the process) stays external in the
    library -- numba's O3 at finalize would drop an unused ``linkonce_odr``
    definition -- and numba turns it into ``linkonce_odr`` itself in the copy
    it links into each caller. Every other function the module defines
    (copies of the primal and its callees) becomes internal, so that no
    symbol clashes with numba's own. The numba Environment globals named
    in ``environments`` that the module defines are pointed at their
    Environment, as numba does for the functions it compiles."""
    tctx = _target_context()
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
        try:
            module.verify()
        except RuntimeError as e:
            raise InternalError(f"the engine returned an invalid module: {e}") from e
        needed = _resolve_declarations(module, codegen, libraries, what)
        lib = codegen.create_library(name)
        for dep in needed:
            lib.add_linking_library(dep)
        try:
            lib.add_llvm_module(module)
            lib.finalize()
        except Exception as e:  # noqa: BLE001 - numba/llvmlite raise various errors
            raise InternalError(f"numba could not load the derivative of {what}: {e}") from e
        if not codegen._engine.is_symbol_defined(name):
            raise InternalError(f"the derivative {name!r} did not load into the JIT")
        for env_name, env in environments:
            if codegen._engine.is_symbol_defined(env_name):
                codegen.set_env(env_name, env)
    return lib


def _regroup(context: Any, builder: Any, plan: Plan, flat: Any) -> Any:
    """Build the result tuple (``plan.result_type``) from the flat one the
    derivative returns, regrouping each Active tuple's adjoint scalars."""
    pos = 0

    def take(ty: types.Type) -> Any:
        nonlocal pos
        if isinstance(ty, types.BaseTuple):
            return context.make_tuple(builder, ty, [take(t) for t in ty.types])
        val = builder.extract_value(flat, pos)
        pos += 1
        return val

    members = []
    for i, ty in enumerate(plan.result_type.types):
        if i == 0 and plan.has_primal:
            members.append(builder.extract_value(flat, pos))
            pos += 1
        else:
            members.append(take(ty))
    return context.make_tuple(builder, plan.result_type, members)


def _regroup_forward(context: Any, builder: Any, plan: Plan, flat: Any) -> Any:
    """The result tuple of a batch forward derivative: the primal return (if
    any), then the ``width`` tangents of the return value as one tuple."""
    members = []
    pos = 0
    if plan.has_primal:
        members.append(builder.extract_value(flat, 0))
        pos = 1
    if plan.ret_active:
        lanes = [builder.extract_value(flat, pos + k) for k in range(plan.width)]
        members.append(context.make_tuple(builder, plan.result_type.types[-1], lanes))
    return context.make_tuple(builder, plan.result_type, members)


def _regroup_reverse_batch(context: Any, builder: Any, plan: Plan, flat: Any) -> Any:
    """The result tuple of a batch reverse derivative: the primal return (if
    any), then per Active argument a tuple of its ``width`` adjoints. The
    engine writes, per scalar of the argument, that scalar's adjoint in every
    lane (lane 0 .. width-1)."""
    width = plan.width
    members = []
    pos = 0
    if plan.has_primal:
        members.append(builder.extract_value(flat, 0))
        pos = 1
    first = 1 if plan.has_primal else 0
    for lanes_ty in plan.result_type.types[first:]:
        one = lanes_ty.dtype
        nleaves = len(_leaf_types(one))
        lanes = []
        for k in range(width):
            leaves = iter(
                [builder.extract_value(flat, pos + j * width + k) for j in range(nleaves)]
            )
            lanes.append(_build_from_leaves(context, builder, one, leaves))
        pos += nleaves * width
        members.append(context.make_tuple(builder, lanes_ty, lanes))
    return context.make_tuple(builder, plan.result_type, members)


def _leaf_types(ty: types.Type) -> list[types.Type]:
    if isinstance(ty, types.BaseTuple):
        return [leaf for t in ty.types for leaf in _leaf_types(t)]
    return [ty]


def _build_from_leaves(context: Any, builder: Any, ty: types.Type, leaves: Any) -> Any:
    if isinstance(ty, types.BaseTuple):
        return context.make_tuple(
            builder, ty, [_build_from_leaves(context, builder, t, leaves) for t in ty.types]
        )
    return next(leaves)


def _leaf_values(context: Any, builder: Any, ty: types.Type, val: Any) -> list[Any]:
    """The scalar members of a (nested) tuple value, in order."""
    if isinstance(ty, types.BaseTuple):
        out: list[Any] = []
        for k, t in enumerate(ty.types):
            out.extend(_leaf_values(context, builder, t, builder.extract_value(val, k)))
        return out
    return [val]


def _shadow_ok(actual: Any, want: types.Array) -> bool:
    return (
        isinstance(actual, types.Array)
        and actual.dtype == want.dtype
        and actual.ndim == want.ndim
        and actual.mutable
    )


def _make_intrinsic(lib: Any, plan: Plan, arg_names: list[str], roles: list[tuple[str, int]]):
    """A fixed-arity @intrinsic calling the derivative.

    ``roles[k]`` says what wrapper parameter ``k`` is: ``("primal", i)``,
    ``("shadow", i)`` (the shadow array of primal argument ``i``; in batch
    mode a tuple of ``width`` of them), ``("data", i)`` (an array like
    argument ``i`` passed as its data pointer: a ``CPointer`` parameter of
    the derivative, in order among the primal ones), ``("tangent", i)`` (forward mode: the
    tangent of the float scalar or tuple argument ``i``; in batch mode a
    tuple of ``width`` of them) or ``("dret", -1)``."""
    nprimal = len(plan.kinds)
    primal_types = plan.argtypes[:nprimal]
    name = plan.name
    width, batch = plan.width, plan.batch

    def typer(typingctx: Any, *argtys: Any) -> Any:
        expected: list[Any] = []
        for (role, i), actual in zip(roles, argtys, strict=True):
            if role == "primal":
                want = primal_types[i]
                if actual != want and typingctx.can_convert(actual, want) is None:
                    raise TypingError(
                        f"enzpy derivative {name}: argument {i} has type {actual}, "
                        f"the derivative was made for {want}"
                    )
                expected.append(want)
            elif role == "shadow":
                want = primal_types[i]
                if batch:
                    ok = (
                        isinstance(actual, types.BaseTuple)
                        and len(actual) == width
                        and all(_shadow_ok(t, want) for t in actual.types)
                    )
                    what = f"a tuple of {width} writeable {want.ndim}-d {want.dtype} arrays"
                else:
                    ok = _shadow_ok(actual, want)
                    what = f"a writeable {want.ndim}-d {want.dtype} array"
                if not ok:
                    raise TypingError(
                        f"enzpy derivative {name}: the shadow of argument {i} must be "
                        f"{what}, got {actual}"
                    )
                expected.append(actual)
            elif role == "data":
                # An array like argument i, passed as its data pointer.
                want = primal_types[i]
                if not (
                    isinstance(actual, types.Array)
                    and actual.dtype == want.dtype
                    and actual.ndim == want.ndim
                ):
                    raise TypingError(
                        f"enzpy derivative {name}: expected a {want.ndim}-d {want.dtype} "
                        f"array like argument {i}, got {actual}"
                    )
                expected.append(actual)
            elif role == "tangent":
                want = primal_types[i]
                if batch:
                    want = types.UniTuple(want, width)
                if actual != want and typingctx.can_convert(actual, want) is None:
                    raise TypingError(
                        f"enzpy derivative {name}: the tangent of argument {i} must be "
                        f"{want}, got {actual}"
                    )
                expected.append(want)
            else:
                want = plan.argtypes[-1]
                if batch:
                    want = types.UniTuple(want, width)
                if actual != want and typingctx.can_convert(actual, want) is None:
                    raise TypingError(f"enzpy derivative {name}: dret must be {want}, got {actual}")
                expected.append(want)
        sig = plan.result_type(*expected)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            context.add_linking_libs([lib])
            fnty = context.call_conv.get_function_type(plan.restype, plan.argtypes)
            fn = cgutils.get_or_insert_function(builder.module, fnty, name)
            primal_vals: list[Any] = []
            shadow_vals: list[Any] = []
            tangent_vals: list[Any] = []
            dret: list[Any] = []
            for (role, i), ty, val in zip(roles, signature.args, args, strict=True):
                if role == "primal":
                    primal_vals.append(val)
                elif role == "data":
                    primal_vals.append(context.make_array(ty)(context, builder, val).data)
                elif role == "shadow":
                    lanes = (
                        [(t, builder.extract_value(val, k)) for k, t in enumerate(ty.types)]
                        if batch
                        else [(ty, val)]
                    )
                    for t, v in lanes:
                        shadow_vals.append(context.make_array(t)(context, builder, v).data)
                elif role == "tangent":
                    # The engine takes, per scalar of the argument, its
                    # tangent in every lane.
                    one = primal_types[i]
                    lanes = (
                        [builder.extract_value(val, k) for k in range(width)] if batch else [val]
                    )
                    leaves = [_leaf_values(context, builder, one, v) for v in lanes]
                    for j in range(len(leaves[0])):
                        tangent_vals.extend(lane[j] for lane in leaves)
                elif batch:
                    dret.extend(builder.extract_value(val, k) for k in range(width))
                else:
                    dret.append(val)
            status, res = context.call_conv.call_function(
                builder,
                fn,
                plan.restype,
                plan.argtypes,
                primal_vals + shadow_vals + tangent_vals + dret,
            )
            with cgutils.if_unlikely(builder, status.is_error):
                context.call_conv.return_status_propagate(builder, status)
            if plan.result_type == plan.restype:
                return res
            if plan.forward:
                return _regroup_forward(context, builder, plan, res)
            if batch:
                return _regroup_reverse_batch(context, builder, plan, res)
            return _regroup(context, builder, plan, res)

        return sig, codegen

    params = ", ".join(arg_names)
    src = f"def enzpy_derivative_intrinsic(typingctx, {params}):\n"
    src += f"    return _typer(typingctx, {params})\n"
    ns: dict[str, Any] = {"_typer": typer}
    exec(compile(src, f"<enzpy intrinsic {name}>", "exec"), ns)
    return intrinsic(ns["enzpy_derivative_intrinsic"])


def _docstring_forward(plan: Plan, arg_names: list[str], what: str) -> str:
    results = []
    if plan.has_primal:
        results.append("primal return")
    if plan.ret_active:
        results.append("tangent of the return" + (" per direction" if plan.batch else ""))
    lines = [
        f"Forward-mode derivative of {what} (enzpy"
        + (f", batch of {plan.width} directions" if plan.batch else "")
        + ").",
        "",
        f"enzpy_derivative({', '.join(arg_names)}) -> ({', '.join(results)})",
        "",
        "x<i> is argument i of the function; dx<i> its tangent: the shadow array",
        "of a Duplicated array (same shape and strides as x<i>, holding the input",
        "tangent on entry and the output tangent on exit), or the tangent of a",
        "float argument" + ("; in batch mode a tuple, one per direction." if plan.batch else "."),
    ]
    return "\n".join(lines)


def _docstring(plan: Plan, arg_names: list[str], what: str) -> str:
    if plan.forward:
        return _docstring_forward(plan, arg_names, what)
    results = []
    if plan.has_primal:
        results.append("primal return")
    results += [f"d/dx{i}" for i, k in enumerate(plan.kinds) if k == ACTIVE]
    lines = [
        f"Reverse-mode derivative of {what} (enzpy"
        + (f", batch of {plan.width} cotangents" if plan.batch else "")
        + ").",
        "",
        f"enzpy_derivative({', '.join(arg_names)}) -> ({', '.join(results)})",
        "",
        "x<i> is argument i of the function; dx<i> the shadow array of a",
        "Duplicated argument (same shape and strides as x<i>), updated in place;",
    ]
    if plan.ret_active:
        lines.append(
            "dret the cotangent of the return value"
            + (" (a tuple, one per lane);" if plan.batch else ";")
        )
    lines.append(
        "d/dx<i> the derivative for each Active argument"
        + (" (a tuple, one per lane); shadows are tuples of arrays." if plan.batch else ".")
    )
    return "\n".join(lines)


def _make_wrapper(
    intr: Any,
    plan: Plan,
    arg_names: list[str],
    roles: list[tuple[str, int]],
    what: str,
    doc: str | None = None,
):
    """The @njit function Python and njit code call."""
    lines = [f"def enzpy_derivative({', '.join(arg_names)}):"]
    lines.append(f"    {doc or _docstring(plan, arg_names, what)!r}")
    for (role, i), nm in zip(roles, arg_names, strict=True):
        if role not in ("shadow", "data"):
            continue
        lanes = [f"{nm}[{k}]" for k in range(plan.width)] if plan.batch else [nm]
        for sh in lanes:
            x = f"x{i}"
            lines.append(f"    if {sh}.shape != {x}.shape:")
            lines.append(
                f"        raise ValueError('enzpy: the shadow of argument {i} "
                "has another shape than the argument')"
            )
            lines.append(f"    for k in range({x}.ndim):")
            lines.append(f"        if {x}.shape[k] > 1 and {sh}.strides[k] != {x}.strides[k]:")
            lines.append(
                f"            raise ValueError('enzpy: the shadow of argument {i} "
                "has other strides than the argument')"
            )
    lines.append(f"    return _intr({', '.join(arg_names)})")
    ns: dict[str, Any] = {"_intr": intr}
    exec(compile("\n".join(lines) + "\n", f"<enzpy wrapper {plan.name}>", "exec"), ns)
    return numba.njit(ns["enzpy_derivative"])


def wrapper_params(plan: Plan) -> tuple[list[str], list[tuple[str, int]]]:
    """Parameter names and roles of the wrapper: each primal argument ``x<i>``
    in order, followed by its shadow ``dx<i>`` when duplicated (forward mode:
    also the tangent ``dx<i>`` of an active float argument); then ``dret``
    when the return value is seeded (reverse mode)."""
    names: list[str] = []
    roles: list[tuple[str, int]] = []
    for i, kind in enumerate(plan.kinds):
        names.append(f"x{i}")
        roles.append(("primal", i))
        if kind in (DUP, DUPNONEED):
            names.append(f"dx{i}")
            roles.append(("shadow", i))
        elif kind == ACTIVE and plan.forward:
            names.append(f"dx{i}")
            roles.append(("tangent", i))
        elif kind not in (CONST, ACTIVE):
            raise InternalError(f"unknown activity {kind!r}")
    if plan.ret_active and not plan.forward:
        names.append("dret")
        roles.append(("dret", -1))
    return names, roles


def link(
    bitcode: bytes,
    plan: Plan,
    libraries: list[Any],
    what: str,
    environments: Sequence[tuple[str, Any]] = (),
    params: tuple[list[str], list[tuple[str, int]]] | None = None,
    doc: str | None = None,
) -> Linked:
    """Load the derivative and build its intrinsic and njit wrapper (whose
    parameters are ``wrapper_params(plan)`` unless ``params`` gives names and
    roles, and whose docstring is ``doc`` if given)."""
    lib = load_library(bitcode, plan.name, libraries, what, environments)
    names, roles = params if params is not None else wrapper_params(plan)
    intr = _make_intrinsic(lib, plan, names, roles)
    wrapper = _make_wrapper(intr, plan, names, roles, what, doc)
    return Linked(lib, plan, wrapper, names, [env for _, env in environments])
