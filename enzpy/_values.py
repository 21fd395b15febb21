"""Facts about argument values, computed cheaply before anything is compiled:
numba's type of a value, how to describe one in an error, and the layout of
shadow arrays.

A shadow whose strides differ from its primal's is staged through a buffer
with exactly the primal's layout (``Staged``); the caller copies it back
after a successful call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numba
import numpy as np
from numba.core import types

from ._config import FLOAT_SCALARS
from .errors import EnzpyTypeError

__all__ = [
    "Staged",
    "arrays_disjoint",
    "check_plain_array",
    "describe",
    "is_array_tuple",
    "is_float_tuple",
    "ordinal",
    "overlaps_itself",
    "same_layout",
    "staged_like",
    "typeof",
    "zeros_like_strided",
]

# numba's type of an ndarray depends only on its dtype, ndim, contiguity and
# writeability (see numba's typeof for ndarrays); memoizing on these skips
# numba's slower typeof. Only numpy's builtin dtype singletons are memoized
# by identity, so ids cannot be reused.
_MEMO_DTYPES = {
    id(d): d
    for d in (
        np.dtype(t)
        for t in (
            np.float64,
            np.float32,
            np.complex128,
            np.complex64,
            np.int64,
            np.int32,
            np.int16,
            np.int8,
            np.uint64,
            np.uint32,
            np.uint16,
            np.uint8,
            np.bool_,
        )
    )
}
_FLAGS_MASK = 0x1 | 0x2 | 0x400  # C_CONTIGUOUS | F_CONTIGUOUS | WRITEABLE
_array_types: dict[tuple[int, int, int], types.Type] = {}
_scalar_types: dict[type, types.Type] = {
    float: types.float64,
    bool: types.boolean,
    np.float64: types.float64,
    np.float32: types.float32,
    np.bool_: types.boolean,
}


def typeof(value: Any) -> types.Type:
    """numba's type of ``value`` as an argument (memoized for arrays)."""
    t = type(value)
    if t is np.ndarray:
        dt = value.dtype
        if id(dt) in _MEMO_DTYPES:
            key = (id(dt), value.ndim, value.flags.num & _FLAGS_MASK)
            ty = _array_types.get(key)
            if ty is None:
                ty = _array_types[key] = _numba_typeof(value)
            return ty
        return _numba_typeof(value)
    ty = _scalar_types.get(t)
    if ty is not None:
        return ty
    return _numba_typeof(value)


def _numba_typeof(value: Any) -> types.Type:
    try:
        ty: types.Type = numba.typeof(value)
    except Exception as e:  # noqa: BLE001 - numba raises ValueError/NumbaError
        raise EnzpyTypeError(
            f"numba cannot type a value of Python type {type(value).__name__}: {e}"
        ) from e
    return ty


def check_plain_array(what: str, a: np.ndarray) -> None:
    """Refuse an ndarray subclass (``numpy.ma.MaskedArray``, ``numpy.matrix``,
    ...) as ``what`` (e.g. "argument 1"): numba types it as a plain array or
    not at all, and either way what the subclass adds (a mask, matrix
    semantics) would be dropped."""
    if type(a) is not np.ndarray:
        raise EnzpyTypeError(
            f"{what}: enzpy takes plain numpy arrays, got a "
            f"{type(a).__module__}.{type(a).__name__} (an ndarray subclass, which numba "
            "cannot pass to compiled code faithfully); pass np.asarray(x) or the data "
            "you mean"
        )


# Above this many elements a layout the quick test cannot clear counts as
# overlapping without the exact test (which sorts every element's offset).
_EXACT_OVERLAP_LIMIT = 1 << 22


def overlaps_itself(a: np.ndarray) -> bool:
    """Two different elements of ``a`` share memory: a stride-0 broadcast
    (``np.broadcast_to``), overlapping windows (``sliding_window_view``).
    Contiguous arrays are cleared at once; other layouts when each stride
    spans the smaller ones (no interleaving); what remains by comparing the
    elements' byte offsets."""
    if a.size <= 1 or a.flags.c_contiguous or a.flags.f_contiguous:
        return False
    dims = sorted((abs(s), n) for s, n in zip(a.strides, a.shape, strict=True) if n > 1)
    reach = a.itemsize
    for stride, n in dims:
        if stride < reach:
            break
        reach += stride * (n - 1)
    else:
        return False
    if dims[0][0] == 0 or a.size > _EXACT_OVERLAP_LIMIT:
        return True
    offsets = np.zeros((), np.int64)
    for s, n in zip(a.strides, a.shape, strict=True):
        offsets = np.add.outer(offsets, np.arange(n, dtype=np.int64) * s)
    return bool(np.any(np.diff(np.sort(offsets, axis=None)) < a.itemsize))


def ordinal(i: int) -> str:
    """How errors name argument ``i``."""
    return f"argument {i}"


def describe(value: Any) -> str:
    """A value's kind in words, for errors."""
    if isinstance(value, np.ndarray):
        return f"a {value.ndim}-d {value.dtype} array of shape {value.shape}"
    return f"a value of type {type(value).__name__}"


def is_array_tuple(value: Any) -> bool:
    """Whether ``value`` is a (nested, possibly named) tuple of arrays."""
    return (
        isinstance(value, tuple)
        and len(value) > 0
        and all(isinstance(v, np.ndarray) or is_array_tuple(v) for v in value)
    )


def is_float_tuple(value: Any) -> bool:
    """Whether ``value`` is a float scalar or a (nested) tuple of them."""
    if isinstance(value, tuple):
        return len(value) > 0 and all(is_float_tuple(v) for v in value)
    return type(value) in FLOAT_SCALARS


def same_layout(x: np.ndarray, dx: np.ndarray) -> bool:
    """Whether ``dx`` (of ``x``'s shape) addresses its elements with ``x``'s
    strides; strides of dimensions of extent <= 1 do not matter."""
    if x.size == 0:
        return True
    return all(n <= 1 or a == b for n, a, b in zip(x.shape, x.strides, dx.strides, strict=True))


def _extent(shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int) -> tuple[int, int]:
    """Byte offsets (lowest, one past highest) an array touches."""
    lo = hi = 0
    for n, s in zip(shape, strides, strict=True):
        if n == 0:
            return 0, 0
        if s < 0:
            lo += s * (n - 1)
        else:
            hi += s * (n - 1)
    return lo, hi + itemsize


def zeros_like_strided(x: np.ndarray) -> np.ndarray:
    """A zeroed array with exactly ``x``'s shape, dtype and strides (also
    negative ones), over a fresh buffer that covers ``x``'s extent."""
    lo, hi = _extent(x.shape, x.strides, x.itemsize)
    if hi - lo == 0:
        return np.zeros(x.shape, dtype=x.dtype)
    align = max(x.dtype.alignment, 1)
    nelem = (hi - lo + align - 1) // align + 1
    raw = np.zeros(nelem * align, dtype=np.uint8)
    # Keep the data pointer's alignment relative to the dtype equal to x's.
    base_addr = raw.__array_interface__["data"][0]
    want = x.__array_interface__["data"][0] % align
    shift = (want - (base_addr - lo)) % align
    return np.ndarray(
        shape=x.shape, dtype=x.dtype, buffer=raw, offset=shift - lo, strides=x.strides
    )


def staged_like(x: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """A copy of ``dx`` laid out with ``x``'s strides."""
    buf = zeros_like_strided(x)
    np.copyto(buf, dx)
    return buf


class Staged:
    """A shadow staged through a buffer with its primal's strides."""

    __slots__ = ("user", "buffer")

    def __init__(self, user: np.ndarray, buffer: np.ndarray) -> None:
        self.user = user
        self.buffer = buffer

    def copy_back(self) -> None:
        np.copyto(self.user, self.buffer)


def arrays_disjoint(arrays: Sequence[np.ndarray]) -> bool:
    """No two of ``arrays`` may share memory (a cheap bounds check: arrays
    whose extents overlap count as sharing). The engine may then re-read
    arrays the function never writes instead of taping them."""
    n = len(arrays)
    if n < 2:
        return True
    for i in range(n):
        for j in range(i + 1, n):
            if np.may_share_memory(arrays[i], arrays[j]):
                return False
    return True
