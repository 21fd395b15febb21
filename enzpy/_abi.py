"""How numba passes values to native code, in the engine's vocabulary.

numba's native functions are ``i32 f(ptr retptr, ptr excinfo, params...)``
where ``params`` are the arguments flattened by numba's data models (an N-d
array becomes ``meminfo, parent, nitems, itemsize, data, shape[N],
strides[N]``; tuples become their members). This module uses numba's own data
models for that flattening and spells LLVM types and activities the way the
engine's request (``native/enzpy_native.h``) does. The annotations decide
each parameter's activity; the call signature (``_signature``) assembles the
request.
"""

from __future__ import annotations

from typing import Any

from llvmlite import ir
from numba.core import types

from ._config import FLOAT_TYPES
from .errors import UnsupportedError

__all__ = [
    "ACTIVE",
    "CONST",
    "DUP",
    "DUPNONEED",
    "NO_MEMORY_STATUS",
    "TAPE_BUDGET_STATUS",
    "array_data_offset",
    "contains_float",
    "flat_llvm_params",
    "float_elem",
    "leaves",
    "llvm_type_str",
    "tuple_types",
]

#: Activities of LLVM parameters (and of the return value) in the request.
CONST, ACTIVE, DUP, DUPNONEED = "const", "active", "dup", "dupnoneed"

#: Statuses a derivative returns for its own failures, beside numba's
#: (numba/NumbaABI.h): an allocation of its own failed; its tape would have
#: grown past the budget (``_tape_budget``).
NO_MEMORY_STATUS, TAPE_BUDGET_STATUS = -0x100, -0x101


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


def array_data_offset(context: Any, ty: types.Array) -> int:
    """Position of the ``data`` pointer among an array's flattened params."""
    dm = context.data_model_manager[ty]
    pos = dm.get_field_position("data")
    offset = 0
    for member in dm._members[:pos]:
        offset += len(flat_llvm_params(context, member))
    return offset


def extent_params(context: Any, ty: types.Type) -> list[bool]:
    """For each LLVM parameter numba passes for ``ty``: whether it is an
    array's extent (a shape entry or the element count), never negative."""
    n = len(flat_llvm_params(context, ty))
    flags: list[bool] = []
    if isinstance(ty, types.Array):
        dm = context.data_model_manager[ty]
        for name, member in zip(dm._fields, dm._members, strict=True):
            flags += [name in ("shape", "nitems")] * len(flat_llvm_params(context, member))
    elif isinstance(ty, (types.Tuple, types.UniTuple)):
        flags = [f for t in ty.types for f in extent_params(context, t)]
    return flags if len(flags) == n else [False] * n


def float_elem(t: ir.Type) -> str | None:
    """The engine's name of a float LLVM type (None for other types)."""
    if isinstance(t, ir.DoubleType):
        return "double"
    if isinstance(t, ir.FloatType):
        return "float"
    return None


def tuple_types(ty: types.BaseTuple) -> tuple[types.Type, ...]:
    """The member types of a tuple type."""
    # numba's stubs do not declare BaseTuple.types (every tuple type has it).
    members: tuple[types.Type, ...] = ty.types  # type: ignore[attr-defined]
    return members


def leaves(ty: types.Type) -> list[types.Type]:
    """The scalar types of a (nested) tuple type, in order."""
    if isinstance(ty, types.BaseTuple):
        out: list[types.Type] = []
        for t in tuple_types(ty):
            out.extend(leaves(t))
        return out
    return [ty]


def contains_float(ty: types.Type) -> bool:
    """Whether values of ``ty`` hold floats (complex ones too)."""
    if ty in FLOAT_TYPES or isinstance(ty, types.Complex):
        return True
    if isinstance(ty, types.Array):
        return contains_float(ty.dtype)
    if isinstance(ty, types.BaseTuple):
        return any(contains_float(t) for t in tuple_types(ty))
    return False
