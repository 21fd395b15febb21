"""Map numba argument types onto the LLVM parameters of numba's native calling
convention, and build the engine request and the derivative's signature.

numba's native functions are ``i32 f(ptr retptr, ptr excinfo, params...)``
where ``params`` are the arguments flattened by numba's data models (an N-d
array becomes ``meminfo, parent, nitems, itemsize, data, shape[N],
strides[N]``; tuples become their members). This module uses numba's own data
models for that flattening, assigns each LLVM parameter its activity, and
derives the numba signature under which the derivative
(``native/enzpy_native.h``) is declared and called.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llvmlite import ir
from numba.core import types

from .errors import EnzpyTypeError, UnsupportedError

__all__ = [
    "CONST",
    "ACTIVE",
    "DUP",
    "DUPNONEED",
    "FLOAT_TYPES",
    "Plan",
    "flat_param_counts",
    "llvm_type_str",
    "plan",
]

CONST, ACTIVE, DUP, DUPNONEED = "const", "active", "dup", "dupnoneed"
KINDS = (CONST, ACTIVE, DUP, DUPNONEED)
FLOAT_TYPES = (types.float32, types.float64)

_counter = itertools.count(1)


def llvm_type_str(t: ir.Type) -> str:
    """LLVM 22 spelling (opaque pointers) of an llvmlite IR type."""
    if isinstance(t, ir.PointerType):
        return "ptr" if t.addrspace == 0 else f"ptr addrspace({t.addrspace})"
    if isinstance(t, ir.IntType):
        return f"i{t.width}"
    if isinstance(t, ir.DoubleType):
        return "double"
    if isinstance(t, ir.FloatType):
        return "float"
    if isinstance(t, ir.HalfType):
        return "half"
    if isinstance(t, ir.VoidType):
        return "void"
    if isinstance(t, ir.ArrayType):
        return f"[{t.count} x {llvm_type_str(t.element)}]"
    if isinstance(t, ir.VectorType):
        return f"<{t.count} x {llvm_type_str(t.element)}>"
    if isinstance(t, ir.LiteralStructType):
        body = ", ".join(llvm_type_str(e) for e in t.elements)
        return f"<{{{body}}}>" if t.packed else f"{{{body}}}"
    if isinstance(t, ir.IdentifiedStructType):
        body = ", ".join(llvm_type_str(e) for e in t.elements)
        return f"<{{{body}}}>" if t.packed else f"{{{body}}}"
    raise UnsupportedError(f"cannot describe the LLVM type {t} to the engine")


def _flatten(arg: Any) -> list[ir.Type]:
    if isinstance(arg, tuple):
        out: list[ir.Type] = []
        for a in arg:
            out.extend(_flatten(a))
        return out
    return [arg]


def flat_llvm_params(context: Any, ty: types.Type) -> list[ir.Type]:
    """The LLVM parameters numba passes for one argument of type ``ty``."""
    return _flatten(context.data_model_manager[ty].get_argument_type())


def flat_param_counts(context: Any, argtypes: Sequence[types.Type]) -> list[int]:
    """Number of LLVM parameters each numba argument flattens to."""
    return [len(flat_llvm_params(context, t)) for t in argtypes]


def array_data_offset(context: Any, ty: types.Array) -> int:
    """Position of the ``data`` pointer among an array's flattened params."""
    dm = context.data_model_manager[ty]
    pos = dm.get_field_position("data")
    offset = 0
    for member in dm._members[:pos]:
        offset += len(flat_llvm_params(context, member))
    return offset


def _elem(t: ir.Type) -> str | None:
    if isinstance(t, ir.DoubleType):
        return "double"
    if isinstance(t, ir.FloatType):
        return "float"
    return None


def _leaves(ty: types.Type) -> list[types.Type]:
    """The scalar types of a (nested) tuple type, in order."""
    if isinstance(ty, types.BaseTuple):
        out: list[types.Type] = []
        for t in ty.types:
            out.extend(_leaves(t))
        return out
    return [ty]


def _contains_float(ty: types.Type) -> bool:
    if ty in FLOAT_TYPES or isinstance(ty, types.Complex):
        return True
    if isinstance(ty, types.Array):
        return _contains_float(ty.dtype)
    if isinstance(ty, types.BaseTuple):
        return any(_contains_float(t) for t in ty.types)
    return False


@dataclass(frozen=True)
class Plan:
    """Everything decided about one derivative before the engine runs."""

    #: The JSON request for ``enzpy_differentiate`` (without "log").
    request: dict[str, Any]
    #: Symbol of the derivative.
    name: str
    #: numba signature of the derivative: result struct and arguments. In
    #: ``restype`` the adjoint of an Active tuple is flattened into its
    #: scalars, one per LLVM parameter, as the engine writes them.
    restype: types.Type
    argtypes: tuple[types.Type, ...]
    #: What callers get back: ``restype`` with each Active tuple's adjoint
    #: regrouped into a tuple of the argument's type.
    result_type: types.Type
    #: Per primal argument: its activity kind.
    kinds: tuple[str, ...]
    #: Whether the return value is seeded (an extra trailing ``dret``).
    ret_active: bool
    #: Whether the result struct starts with the primal return value.
    has_primal: bool
    #: Forward mode (the derivative takes tangents and returns the return
    #: value's tangent) rather than reverse mode.
    forward: bool = False
    #: Tangents (forward) or cotangents (reverse) per differentiable argument
    #: (batch width).
    width: int = 1
    #: Batch mode: shadows come as tuples of ``width``; forward mode: so do
    #: tangents and the return value's tangent; reverse mode: so do the
    #: return's seeds (``dret``) and each Active argument's adjoint.
    batch: bool = False


def plan(
    context: Any,
    function: str,
    argtypes: Sequence[types.Type],
    restype: types.Type,
    kinds: Sequence[str],
    *,
    ret_active: bool,
    return_primal: bool,
    noalias: bool = False,
    name: str | None = None,
    forward: bool = False,
    width: int = 1,
    batch: bool = False,
) -> Plan:
    """Decide the request and the derivative signature.

    ``kinds[i]`` is the activity of primal argument ``i`` (``const``,
    ``active``, ``dup`` or ``dupnoneed``); ``ret_active`` asks to seed the
    return value (forward mode: to return its tangent), which happens only
    when it is a float32/float64 scalar. ``noalias`` says the caller checked
    that no two arguments' memory overlaps, for every call this derivative
    will serve.

    Forward mode (``forward``): ``active`` arguments are float scalars (or
    tuples of floats) that take a tangent; each ``dup`` argument takes
    ``width`` shadows and each active one ``width`` tangents (the engine's
    forward ABI, ``native/enzpy_native.h``).

    Reverse mode with ``width`` W: each ``dup`` argument takes W shadows, a
    seeded return W seeds, and the result holds W adjoints per Active scalar
    (the engine's reverse batch ABI); ``result_type`` regroups them into one
    ``UniTuple(type, W)`` per Active argument when ``batch``.
    """
    argtypes = tuple(argtypes)
    kinds = tuple(kinds)
    if len(kinds) != len(argtypes):
        raise ValueError("one activity per argument is needed")

    params: list[dict[str, str]] = []
    shadow_types: list[types.Type] = []
    adjoint_types: list[types.Type] = []
    flat_adjoint_types: list[types.Type] = []
    tangent_types: list[types.Type] = []
    for i, (ty, kind) in enumerate(zip(argtypes, kinds, strict=True)):
        flat = flat_llvm_params(context, ty)
        if kind == CONST:
            params.extend({"activity": CONST} for _ in flat)
        elif kind == ACTIVE:
            elems = [_elem(t) for t in flat]
            if not flat or None in elems or not _contains_float(ty):
                raise EnzpyTypeError(
                    f"argument {i}: Active needs a float scalar or a tuple of "
                    f"floats, got numba type {ty}"
                )
            params.extend({"activity": ACTIVE, "elem": e} for e in elems)  # type: ignore[misc]
            adjoint_types.append(types.UniTuple(ty, width) if batch else ty)
            for leaf in _leaves(ty):
                flat_adjoint_types.extend([leaf] * width)
                tangent_types.extend([leaf] * width)
        elif kind in (DUP, DUPNONEED):
            if not isinstance(ty, types.Array) or ty.dtype not in FLOAT_TYPES:
                raise EnzpyTypeError(
                    f"argument {i}: Duplicated needs a float32 or float64 array, "
                    f"got numba type {ty}"
                )
            off = array_data_offset(context, ty)
            elem = "double" if ty.dtype == types.float64 else "float"
            for j in range(len(flat)):
                if j == off:
                    params.append({"activity": kind, "elem": elem})
                else:
                    params.append({"activity": CONST})
            shadow_types.extend([types.CPointer(ty.dtype)] * width)
        else:
            raise ValueError(f"unknown activity {kind!r}")

    is_none = restype == types.none
    seeded = bool(ret_active) and restype in FLOAT_TYPES
    has_primal = bool(return_primal) and not is_none
    ret_type = "void" if is_none else llvm_type_str(context.get_return_type(restype))

    primal_member = [restype] if has_primal else []
    if forward:
        d_restype: types.Type = types.Tuple(primal_member + ([restype] * width if seeded else []))
        ret_tangent = types.UniTuple(restype, width) if batch else restype
        result_type: types.Type = types.Tuple(primal_member + ([ret_tangent] if seeded else []))
        d_argtypes = argtypes + tuple(shadow_types) + tuple(tangent_types)
    else:
        d_restype = types.Tuple(primal_member + flat_adjoint_types)
        result_type = types.Tuple(primal_member + adjoint_types)
        d_argtypes = argtypes + tuple(shadow_types) + ((restype,) * width if seeded else ())

    if name is None:
        digest = hashlib.sha1(
            repr((function, ret_type, params, seeded, has_primal, noalias, forward, width)).encode()
        ).hexdigest()[:10]
        name = f"enzpy_{'fwd' if forward else 'rev'}_{next(_counter)}_{digest}"

    request: dict[str, Any] = {
        "function": function,
        "name": name,
        "mode": "forward" if forward else "reverse",
        "ret_type": ret_type,
        "ret_activity": ACTIVE if seeded else CONST,
        "return_primal": has_primal,
        "params": params,
        "noalias": bool(noalias),
    }
    if forward or width != 1:
        request["width"] = width
    return Plan(
        request=request,
        name=name,
        restype=d_restype,
        result_type=result_type,
        argtypes=d_argtypes,
        kinds=kinds,
        ret_active=seeded,
        has_primal=has_primal,
        forward=forward,
        width=width,
        batch=batch,
    )


def seeding_problem(restype: types.Type, forward: bool = False) -> str | None:
    """Why a return value of ``restype`` cannot be seeded (forward mode: have
    its tangent returned) although it carries floats (None when it can, or
    when it carries nothing differentiable)."""
    if restype in FLOAT_TYPES or not _contains_float(restype):
        return None
    if forward:
        return (
            f"the function returns {restype}, whose tangent enzpy cannot return "
            "yet (only float32/float64 scalars); pass ret=enzpy.Const to get only "
            "the tangents of the arrays it writes, or return a float"
        )
    return (
        f"the function returns {restype}, which enzpy cannot seed with a "
        "cotangent yet (only float32/float64 scalars): write the result into an "
        "output argument passed as Duplicated(out, dout) with dout holding its "
        "cotangent, or pass ret=enzpy.Const to differentiate only through the "
        "arguments"
    )
