"""Check annotated arguments against their values before anything is
compiled or called, and compute their numba types cheaply.

``prepare`` turns the arguments of one ``autodiff`` call into activity kinds,
numba types and the argument list of the derivative's wrapper. Shadows whose
strides differ from their primal's are staged through a buffer with exactly
the primal's layout (``Staged``); the caller copies them back after a
successful call. Errors name the argument's position and what was expected.

In forward mode (``prepare(args, forward=True)``) ``Duplicated(x, dx)`` also
takes a float scalar (or tuple of floats) ``x`` with its tangent ``dx``
(activity ``active``: a value with a tangent), ``Active`` is refused, and
``BatchDuplicated(x, (dx1, ..., dxW))`` gives ``W`` shadows per argument.

In reverse mode ``BatchDuplicated(x, (dx1, ..., dxW))`` takes float arrays
only (``W`` cotangents in one reverse sweep); float scalars stay ``Active(x)``
and get ``W`` adjoints back. A call mixes it with no plain ``Duplicated``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numba
import numpy as np
from numba.core import types

from ._abi import ACTIVE, CONST, DUP, DUPNONEED
from .annotations import Active, Annotation, BatchDuplicated, Const, Duplicated, DuplicatedNoNeed
from .errors import EnzpyTypeError, EnzpyValueError, UnsupportedError

__all__ = [
    "Prepared",
    "Staged",
    "prepare",
    "same_layout",
    "staged_like",
    "typeof",
    "zeros_like_strided",
]

_FLOAT_DTYPES = (np.dtype(np.float64), np.dtype(np.float32))
_FLOAT_SCALARS = (float, np.float64, np.float32)

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
        return numba.typeof(value)
    except Exception as e:  # noqa: BLE001 - numba raises ValueError/NumbaError
        raise EnzpyTypeError(
            f"numba cannot type a value of Python type {type(value).__name__}: {e}"
        ) from e


def _ordinal(i: int) -> str:
    return f"argument {i}"


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"a {value.ndim}-d {value.dtype} array of shape {value.shape}"
    return f"a value of type {type(value).__name__}"


def _is_float_tuple(value: Any) -> bool:
    if isinstance(value, tuple):
        return len(value) > 0 and all(_is_float_tuple(v) for v in value)
    return type(value) in _FLOAT_SCALARS


def _check_active(i: int, value: Any) -> None:
    t = type(value)
    if t in _FLOAT_SCALARS:
        return
    if isinstance(value, np.ndarray):
        raise EnzpyTypeError(
            f"{_ordinal(i)}: Active needs a float scalar, got {_describe(value)}; "
            "differentiate arrays with Duplicated(x, dx)"
        )
    if isinstance(value, complex | np.complexfloating):
        raise UnsupportedError(
            f"{_ordinal(i)}: complex numbers are not supported yet (got {_describe(value)})"
        )
    if isinstance(value, bool | np.bool_ | int | np.integer):
        raise EnzpyTypeError(
            f"{_ordinal(i)}: Active needs a float (float32 or float64), got "
            f"{_describe(value)} {value!r}; pass a float such as {float(value)!r}, or "
            "Const(...) for a value without derivative"
        )
    if isinstance(value, tuple) and _is_float_tuple(value):
        return
    raise EnzpyTypeError(
        f"{_ordinal(i)}: Active needs a float scalar (float32 or float64) or a "
        f"tuple of floats, got {_describe(value)}"
    )


_FLOAT_DTYPE_IDS = frozenset(id(d) for d in _FLOAT_DTYPES)


def _check_duplicated(i: int, x: Any, dx: Any, name: str) -> None:
    # Fast path: everything in order.
    if (
        type(x) is np.ndarray
        and type(dx) is np.ndarray
        and id(x.dtype) in _FLOAT_DTYPE_IDS
        and dx.dtype is x.dtype
        and dx.shape == x.shape
        and dx.flags.writeable
        and not np.may_share_memory(x, dx)
    ):
        return
    if not isinstance(x, np.ndarray):
        if type(x) in _FLOAT_SCALARS:
            raise EnzpyTypeError(
                f"{_ordinal(i)}: {name} needs an array, got a float scalar; "
                "pass float scalars as Active(x)"
            )
        if isinstance(x, complex | np.complexfloating):
            raise UnsupportedError(f"{_ordinal(i)}: complex numbers are not supported yet")
        raise EnzpyTypeError(
            f"{_ordinal(i)}: {name} needs a numpy float32 or float64 array, got {_describe(x)}"
        )
    if x.dtype not in _FLOAT_DTYPES:
        if x.dtype.kind == "c":
            raise UnsupportedError(
                f"{_ordinal(i)}: complex arrays are not supported yet (got dtype {x.dtype})"
            )
        raise EnzpyTypeError(
            f"{_ordinal(i)}: {name} needs a float32 or float64 array, got dtype {x.dtype}; "
            "pass arrays of other dtypes as Const(x)"
        )
    if type(x) is not np.ndarray:
        raise EnzpyTypeError(
            f"{_ordinal(i)}: {name} needs a plain numpy.ndarray, got {type(x).__name__}"
        )
    if not isinstance(dx, np.ndarray):
        raise EnzpyTypeError(
            f"{_ordinal(i)}: the shadow must be a numpy array of dtype {x.dtype} and "
            f"shape {x.shape}, got {_describe(dx)}"
        )
    if dx.dtype != x.dtype:
        raise EnzpyTypeError(
            f"{_ordinal(i)}: the shadow must have the argument's dtype {x.dtype}, got {dx.dtype}"
        )
    if dx.shape != x.shape:
        raise EnzpyValueError(
            f"{_ordinal(i)}: the shadow must have the argument's shape {x.shape}, got {dx.shape}"
        )
    if not dx.flags.writeable:
        raise EnzpyValueError(f"{_ordinal(i)}: the shadow array must be writeable")
    if dx.size and np.may_share_memory(x, dx):
        raise EnzpyValueError(f"{_ordinal(i)}: the shadow must not share memory with the argument")


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


class Prepared:
    """One call's arguments, checked and classified."""

    __slots__ = (
        "kinds",
        "argtypes",
        "call_args",
        "staged",
        "signature",
        "noalias",
        "width",
        "batch",
    )

    def __init__(
        self,
        kinds: tuple[str, ...],
        argtypes: tuple[types.Type, ...],
        call_args: list[Any],
        staged: list[Staged],
        signature: tuple[Any, ...],
        noalias: bool,
        width: int = 1,
        batch: bool = False,
    ) -> None:
        #: Activity of each argument.
        self.kinds = kinds
        #: numba type of each primal value.
        self.argtypes = argtypes
        #: Wrapper arguments: each value, followed by its shadow when duplicated.
        self.call_args = call_args
        #: Shadows staged through a buffer (copy back after a successful call).
        self.staged = staged
        #: A cheaply hashable key of kinds and types: (kind, id(type)) per
        #: argument (numba types are interned; the cache keeps them alive).
        self.signature = signature
        #: No two array arguments share memory (checked for this call).
        self.noalias = noalias
        #: Tangents (forward) or cotangents (reverse) per differentiable
        #: argument (batch width).
        self.width = width
        #: The shadows came as BatchDuplicated (each wrapper shadow argument
        #: is then a tuple of ``width`` shadows).
        self.batch = batch


def _check_scalar_tangent(i: int, x: Any, dx: Any, name: str) -> Any:
    """The tangent ``dx`` of the float scalar (or tuple of floats) ``x``,
    converted to ``x``'s type."""
    if isinstance(x, tuple):
        if not isinstance(dx, tuple) or len(dx) != len(x):
            raise EnzpyTypeError(
                f"{_ordinal(i)}: the tangent of a tuple of {len(x)} floats must be a "
                f"tuple of {len(x)} floats, got {dx!r}"
            )
        return tuple(_check_scalar_tangent(i, a, b, name) for a, b in zip(x, dx, strict=True))
    if isinstance(dx, bool | np.bool_) or not isinstance(
        dx, float | int | np.floating | np.integer
    ):
        raise EnzpyTypeError(
            f"{_ordinal(i)}: the tangent of a float scalar must be a real number, "
            f"got {_describe(dx)}"
        )
    return type(x)(dx)


def _forward_arg(
    i: int, a: Any, shadows: tuple[Any, ...], name: str
) -> tuple[str, list[Any], list[Staged]]:
    """Check one Duplicated/BatchDuplicated argument in forward mode: its
    kind and its checked shadows (staged where their strides differ)."""
    x = a.value
    staged: list[Staged] = []
    if type(x) in _FLOAT_SCALARS or (isinstance(x, tuple) and _is_float_tuple(x)):
        return ACTIVE, [_check_scalar_tangent(i, x, dx, name) for dx in shadows], staged
    if isinstance(x, bool | np.bool_ | int | np.integer):
        raise EnzpyTypeError(
            f"{_ordinal(i)}: {name} needs a float array or a float scalar, got "
            f"{_describe(x)} {x!r}; pass a float such as {float(x)!r}, or Const(...) "
            "for a value without derivative"
        )
    out: list[Any] = []
    for k, dx in enumerate(shadows):
        _check_duplicated(i, x, dx, name)
        for prev in out:
            if dx.size and np.may_share_memory(prev, dx):
                raise EnzpyValueError(
                    f"{_ordinal(i)}: shadow {k} shares memory with another shadow "
                    "of the same argument"
                )
        if dx.strides != x.strides and not same_layout(x, dx):
            st = Staged(dx, staged_like(x, dx))
            staged.append(st)
            dx = st.buffer
        out.append(dx)
    kind = DUPNONEED if type(a) is DuplicatedNoNeed else DUP
    return kind, out, staged


_MAX_WIDTH = 64


def _batch_shadows(i: int, a: BatchDuplicated) -> tuple[Any, ...]:
    sh = a.shadows
    if not isinstance(sh, tuple) or not sh:
        raise EnzpyTypeError(
            f"{_ordinal(i)}: BatchDuplicated needs a non-empty tuple of shadows, got {sh!r}"
        )
    if len(sh) > _MAX_WIDTH:
        raise EnzpyValueError(
            f"{_ordinal(i)}: a batch of {len(sh)} shadows is wider than the "
            f"supported {_MAX_WIDTH}; split it into chunks"
        )
    return sh


class _Collector:
    """What ``prepare`` gathers over one call's arguments, in both modes."""

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self.tys: list[types.Type] = []
        self.call_args: list[Any] = []
        self.staged: list[Staged] = []
        self.sig: list[Any] = []
        self.arrays: list[np.ndarray] = []
        self.containers = False
        self.widths: set[int] = set()
        self.plain = False  # a plain (one-shadow) Duplicated argument was seen

    def duplicated_array(self, i: int, a: Any, name: str) -> str:
        """A float array with one shadow (staged when its strides differ)."""
        x, dx = a.value, a.shadow
        _check_duplicated(i, x, dx, name)
        if dx.strides != x.strides and not same_layout(x, dx):
            st = Staged(dx, staged_like(x, dx))
            self.staged.append(st)
            dx = st.buffer
        self.call_args.append(x)
        self.call_args.append(dx)
        self.plain = True
        return DUP if type(a) is Duplicated else DUPNONEED

    def constant(self, i: int, a: Any) -> Any:
        """A Const or bare argument (or a misused annotation: an error)."""
        if type(a) is Const:
            v = a.value
        elif isinstance(a, Annotation):
            raise EnzpyTypeError(f"{_ordinal(i)}: unknown annotation {type(a).__name__}")
        elif isinstance(a, type) and issubclass(a, Annotation):
            raise EnzpyTypeError(
                f"{_ordinal(i)}: {a.__name__} is an annotation class; wrap the value, "
                f"e.g. {a.__name__}(x)"
            )
        else:
            v = a
        self.call_args.append(v)
        return v

    def record(self, v: Any, kind: str) -> None:
        if isinstance(v, np.ndarray):
            self.arrays.append(v)
        elif isinstance(v, tuple | list):
            self.containers = True
        ty = typeof(v)
        self.kinds.append(kind)
        self.tys.append(ty)
        self.sig.append(kind)
        self.sig.append(id(ty))

    def finish(self) -> Prepared:
        noalias = not self.containers and arrays_disjoint(self.arrays)
        width, batch = (_one_width(self.widths, self.plain), True) if self.widths else (1, False)
        self.sig += [noalias, width, batch]
        return Prepared(
            tuple(self.kinds),
            tuple(self.tys),
            self.call_args,
            self.staged,
            tuple(self.sig),
            noalias,
            width,
            batch,
        )


def prepare(args: Sequence[Any], forward: bool = False) -> Prepared:
    """Check and classify the (annotated) arguments of one call (of a
    forward-mode derivative when ``forward``)."""
    if forward:
        return _prepare_forward(args)
    c = _Collector()
    for i, a in enumerate(args):
        t = type(a)
        if t is Duplicated or t is DuplicatedNoNeed:
            v = a.value
            kind = c.duplicated_array(i, a, t.__name__)
        elif t is Active:
            v = a.value
            _check_active(i, v)
            kind = ACTIVE
            c.call_args.append(v)
        elif t is BatchDuplicated:
            v = a.value
            if type(v) in _FLOAT_SCALARS or (isinstance(v, tuple) and _is_float_tuple(v)):
                raise EnzpyTypeError(
                    f"{_ordinal(i)}: in reverse mode BatchDuplicated takes a float array; "
                    "pass a float scalar as Active(x): a batch call returns its W "
                    "adjoints as a tuple"
                )
            shadows = _batch_shadows(i, a)
            c.widths.add(len(shadows))
            kind, checked, st = _forward_arg(i, a, shadows, t.__name__)
            c.staged.extend(st)
            c.call_args.append(v)
            c.call_args.append(tuple(checked))
        else:
            v = c.constant(i, a)
            kind = CONST
        c.record(v, kind)
    return c.finish()


def _one_width(widths: set[int], plain: bool) -> int:
    """The batch width of a call whose BatchDuplicated arguments have
    ``widths`` shadows (``plain``: it also has plain Duplicated ones)."""
    if len(widths) > 1:
        raise EnzpyValueError(
            f"all BatchDuplicated arguments of one call need the same number of "
            f"shadows, got {sorted(widths)}"
        )
    if plain:
        raise EnzpyValueError(
            "a batch call needs every differentiable argument as BatchDuplicated "
            "(one shadow per direction); mixing it with Duplicated is ambiguous"
        )
    return next(iter(widths))


def _prepare_forward(args: Sequence[Any]) -> Prepared:
    c = _Collector()
    for i, a in enumerate(args):
        t = type(a)
        if (t is Duplicated or t is DuplicatedNoNeed) and type(a.value) is np.ndarray:
            # Fast path: an array with one shadow.
            v = a.value
            kind = c.duplicated_array(i, a, t.__name__)
        elif t is Duplicated or t is DuplicatedNoNeed or t is BatchDuplicated:
            if t is BatchDuplicated:
                shadows = _batch_shadows(i, a)
                c.widths.add(len(shadows))
            else:
                shadows = (a.shadow,)
                c.plain = True
            kind, checked, st = _forward_arg(i, a, shadows, t.__name__)
            c.staged.extend(st)
            v = a.value
            c.call_args.append(v)
            c.call_args.append(tuple(checked) if t is BatchDuplicated else checked[0])
        elif t is Active:
            raise EnzpyTypeError(
                f"{_ordinal(i)}: Active is for reverse mode; in forward mode pass a float "
                "scalar with its tangent as Duplicated(x, dx)"
            )
        else:
            v = c.constant(i, a)
            kind = CONST
        c.record(v, kind)
    return c.finish()


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
