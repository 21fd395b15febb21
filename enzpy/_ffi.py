"""XLA FFI handlers for the JAX bridge: the kernel and its compiled
derivatives called by XLA through the typed FFI C API, with no Python in
between (``enzpy.jax.kernel(..., via="ffi")``).

A handler is a numba ``cfunc`` ``XLA_FFI_Error* handler(XLA_FFI_CallFrame*)``
generated for one kernel, one kind of call (primal, forward, reverse, as in
``enzpy._bridge.Kernel.run``) and the dtypes and ranks of its buffers; sizes
are read from the buffers at each call, so one handler serves every shape.
It answers XLA's metadata query (the FFI API version it speaks) and, at
execution, views the argument and result buffers as arrays (``carray``),
zero-fills outputs and shadows, copies what the kernel or derivative may
write (in-place arguments, tangents, cotangents) and calls the compiled code,
which numba links into the handler.

The C structures are read as arrays of 64-bit words, at the offsets of
xla/ffi/api/c_api.h (API 0.3, the version jaxlib 0.10 ships): the call frame
(``extension_start`` word 1, ``args`` at word 5 with its ``args`` array at
word 9, ``rets`` at word 10 with its array at word 14) and each buffer
(``data`` word 3, ``rank`` word 4, ``dims`` word 5).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, cast

import numba
import numpy as np
from numba import carray, types
from numba.extending import intrinsic

from ._bridge import IN, INOUT, Kernel
from ._config import FLOAT_DTYPES
from .errors import EnzpyTypeError

__all__ = ["FFI_API_VERSION", "handler", "register"]

#: The FFI API version the handlers declare (xla/ffi/api/c_api.h).
FFI_API_VERSION = (0, 3)

_handlers: dict[Any, Any] = {}
_ids = itertools.count()


@intrinsic
def _ptr_intrinsic(typingctx: Any, addr: Any) -> Any:
    """The address ``addr`` (an int64) as a ``void*``."""
    sig = types.voidptr(types.int64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.inttoptr(args[0], context.get_value_type(types.voidptr))

    return sig, codegen


@intrinsic
def _readonly_intrinsic(typingctx: Any, arr: Any) -> Any:
    """The array ``arr`` typed read-only (the same data): inputs reach the
    compiled code with the types the host-callback path gives them, so both
    paths share compiled derivatives, and a write to an input does not
    compile."""
    sig = arr.copy(readonly=True)(arr)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return args[0]

    return sig, codegen


# Called with one argument from njit code (numba passes the typing context).
_ptr: Any = _ptr_intrinsic
_readonly: Any = _readonly_intrinsic


@numba.njit(cache=False)
def _metadata(ext: int) -> bool:
    """Answer XLA's metadata query when the call frame's extension is one
    (``XLA_FFI_Metadata_Extension``: type 1); True if it was."""
    if ext == 0:
        return False
    e = carray(_ptr(ext), (4,), np.int64)
    if (e[1] & 0xFFFFFFFF) != 1:
        return False
    md = e[3]
    m = carray(_ptr(md), (4,), np.int64)
    m[1] = 24  # XLA_FFI_Api_Version_STRUCT_SIZE
    m[2] = 0  # its extension_start
    m32 = carray(_ptr(md), (10,), np.int32)
    m32[6] = 0  # major
    m32[7] = 3  # minor
    m32[8] = 0  # traits
    return True


def _example(dt: np.dtype[Any], ndim: int, readonly: bool = False) -> Any:
    if ndim:
        a = np.zeros((2,) * ndim, dt)
        a.flags.writeable = not readonly
        return a
    return dt.type(0) if dt.kind == "f" else 0


def handler(K: Kernel, kind: str, ins: Sequence[tuple[np.dtype[Any], int]]) -> str:
    """The name of the FFI target (registered with JAX) for ``kind`` ('primal', 'fwd',
    'rev') of ``K`` with inputs of these (dtype, rank). Its XLA arguments
    are the inputs then (fwd) the tangents of the float inputs or (rev) the
    cotangents of the results; its results are the results (primal), their
    tangents (fwd) or the cotangents of the float inputs (rev)."""
    key = (K, kind, tuple((d.str, n) for d, n in ins))
    got = _handlers.get(key)
    if got is not None:
        return str(got[0])
    specs = K.result_specs([_Aval(d, n) for d, n in ins])
    res = [(dt, len(shape)) for shape, dt in specs]
    if any(nd == 0 for _, nd in res):
        raise EnzpyTypeError(
            f"{K.name}: via='ffi' takes outputs of rank 1 or more (an output is 0-d); "
            "use via='callback'"
        )
    n = len(ins)
    floats = [k for k, (d, _) in enumerate(ins) if d in FLOAT_DTYPES]
    lines: list[str] = []
    emit = lines.append
    emit("w = carray(frame, (15,), np.int64)")
    emit("if _metadata(w[1]):\n        return _ptr(0)")
    emit("args = carray(_ptr(w[9]), (w[7],), np.int64)")
    emit("rets = carray(_ptr(w[14]), (w[12],), np.int64)")

    def view(
        src: str, j: int, dt: np.dtype[Any], ndim: int, name: str, readonly: bool = False
    ) -> None:
        emit(f"b_{name} = carray(_ptr({src}[{j}]), (6,), np.int64)")
        if ndim == 0 and src == "rets":  # a 1-element array to write into
            emit(f"{name} = carray(_ptr(b_{name}[3]), (1,), np.{dt.name})")
            return
        if ndim == 0:
            emit(f"{name} = carray(_ptr(b_{name}[3]), (1,), np.{dt.name})[0]")
            if dt.kind != "f":
                emit(f"{name} = np.int64({name})")
            return
        emit(f"d_{name} = carray(_ptr(b_{name}[5]), ({ndim},), np.int64)")
        dims = ", ".join(f"d_{name}[{m}]" for m in range(ndim))
        arr = f"carray(_ptr(b_{name}[3]), ({dims},), np.{dt.name})"
        emit(f"{name} = _readonly({arr})" if readonly else f"{name} = {arr}")

    for k, (dt, nd) in enumerate(ins):
        view("args", k, dt, nd, f"x{k}", K.roles[K.inputs[k]] == IN)
    seeds: list[tuple[np.dtype[Any], int]] = (
        [ins[k] for k in floats] if kind == "fwd" else res if kind == "rev" else []
    )
    for j, (dt, nd) in enumerate(seeds):
        view("args", n + j, dt, nd, f"s{j}")
    outs: list[tuple[np.dtype[Any], int]] = (
        res if kind in ("primal", "fwd") else [ins[k] for k in floats]
    )
    for j, (dt, nd) in enumerate(outs):
        view("rets", j, dt, nd, f"r{j}")

    # The call's arguments, as Kernel.run builds them.
    call: list[str] = []
    example: list[Any] = []
    scalar_rets: list[int] = []  # ret index of each returned adjoint (rev)
    for i, role in enumerate(K.roles):
        if role == IN:
            k = K.inputs.index(i)
            dt, nd = ins[k]
            call.append(f"x{k}")
            example.append(_example(dt, nd, readonly=True))
            if kind == "primal" or dt not in FLOAT_DTYPES:
                continue
            f = floats.index(k)
            if kind == "fwd" and nd:
                emit(f"t{k} = s{f}.copy()")
                call.append(f"t{k}")
            elif kind == "fwd":
                call.append(f"s{f}")
            elif nd:
                emit(f"r{f}[...] = 0")
                call.append(f"r{f}")
            else:
                scalar_rets.append(f)
            continue
        j = K.results.index(i)
        dt, nd = res[j]
        example.append(_example(dt, nd))
        k = K.inputs.index(i) if role == INOUT else -1
        if kind == "primal":
            emit(f"r{j}[...] = x{k}" if role == INOUT else f"r{j}[...] = 0")
            call.append(f"r{j}")
            continue
        # the primal result lives in scratch memory; its shadow in a buffer
        if role == INOUT:
            emit(f"p{j} = x{k}.copy()")
        else:
            emit(f"p{j} = np.zeros_like({'s' if kind == 'rev' else 'r'}{j})")
        call.append(f"p{j}")
        if kind == "fwd":
            emit(f"r{j}[...] = s{floats.index(k)}" if role == INOUT else f"r{j}[...] = 0")
            call.append(f"r{j}")
        elif role == INOUT:
            f = floats.index(k)
            emit(f"r{f}[...] = s{j}")
            call.append(f"r{f}")
        else:
            emit(f"c{j} = s{j}.copy()")
            call.append(f"c{j}")
    fn = K.compiled(kind, example)
    emit(f"got = fn({', '.join(call)})")
    for m, f in enumerate(scalar_rets):
        emit(f"r{f}[0] = got[{m}]")
    emit("return _ptr(0)")
    body = "\n    ".join(lines)
    src = f"def h(frame):\n    {body}\n"
    scope: dict[str, Any] = {
        "np": np,
        "carray": carray,
        "_ptr": _ptr,
        "_metadata": _metadata,
        "_readonly": _readonly,
        "fn": fn,
    }
    exec(compile(src, f"<enzpy ffi {K.name} {kind}>", "exec"), scope)  # noqa: S102
    h = numba.cfunc(types.voidptr(types.voidptr))(scope["h"])
    name = f"enzpy_{next(_ids)}_{kind}"
    register(name, cast(int, h.address))
    _handlers[key] = (name, h)  # the cfunc lives as long as the module
    return name


def register(name: str, address: int) -> None:
    """Register the handler at ``address`` as the FFI target ``name``."""
    import jax

    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(address), platform="cpu")


class _Aval:
    """A shape-less stand-in for an input of dtype ``dt`` and rank ``nd``
    (output specs only look at shapes to size outputs: ranks matter here)."""

    def __init__(self, dt: np.dtype[Any], nd: int) -> None:
        self.dtype = dt
        self.shape = (2,) * nd
