"""Activity annotations for the arguments of a differentiated function, and
the differentiation modes.

``Const(v)``, ``Active(x)``, ``Duplicated(x, dx)``, ``DuplicatedNoNeed(x, dx)`` and
``BatchDuplicated(x, (dx1, ..., dxW))`` wrap the values passed to
:func:`enzpy.autodiff`; a bare value means ``Const``. ``Reverse``,
``ReverseWithPrimal``, ``Forward`` and ``ForwardWithPrimal`` select what
``autodiff`` computes and returns.

Each annotation class holds everything about its kind of argument:

- ``bind`` checks one call's value (and shadows) -- errors name the
  argument's position and what was expected -- and hands the values the
  derivative's wrapper takes to the call being prepared;
- ``layout`` says, from the argument's numba type alone, how it flattens
  into the derivative: the engine's activity of each LLVM parameter, the
  wrapper parameters (``_params``) and the derivative returned for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from numba.core import types

from ._abi import (
    ACTIVE,
    CONST,
    DUP,
    DUPNONEED,
    array_data_offset,
    contains_float,
    flat_llvm_params,
    float_elem,
    leaves,
)
from ._config import FLOAT_DTYPE_IDS, FLOAT_DTYPES, FLOAT_SCALARS, FLOAT_TYPES, MAX_BATCH_WIDTH
from ._modes import Forward, ForwardWithPrimal, Mode, Reverse, ReverseWithPrimal
from ._params import ArgLayout, CallShape, Lanes, Param, ShadowArrays, Tangents, Value
from ._values import describe, is_array_tuple, is_float_tuple, ordinal, overlaps_itself
from .errors import EnzpyTypeError, EnzpyValueError, InternalError, UnsupportedError

if TYPE_CHECKING:
    from ._signature import Prepared

__all__ = [
    "Annotation",
    "Const",
    "Active",
    "Duplicated",
    "DuplicatedNoNeed",
    "BatchDuplicated",
    "Mode",
    "Reverse",
    "ReverseWithPrimal",
    "Forward",
    "ForwardWithPrimal",
]


class Annotation:
    """Base class of the activity annotations."""

    __slots__ = ()

    def bind(self, i: int, mode: Mode, call: Prepared) -> None:
        """Check this annotation as argument ``i`` of a call in ``mode`` and
        add its values to ``call``."""
        raise EnzpyTypeError(f"{ordinal(i)}: unknown annotation {type(self).__name__}")

    @classmethod
    def layout(cls, i: int, ty: types.Type, shape: CallShape) -> ArgLayout:
        """How argument ``i`` of numba type ``ty`` flattens into the derivative."""
        raise InternalError(f"{cls.__name__} has no layout")

    # What the checks for arguments that share memory (``_aliasing``) see.

    @property
    def lanes(self) -> int:
        """Batch lanes of its shadows."""
        return 1

    def shadowed_memory(self, lane: int) -> tuple[Any, Any] | None:
        """(value, its shadow in ``lane``) of an argument with shadows."""
        return None

    def const_memory(self) -> Any:
        """The value of an argument read without derivative."""
        return None


def _const_layout(i: int, ty: types.Type, shape: CallShape) -> ArgLayout:
    n = len(flat_llvm_params(shape.context, ty))
    return ArgLayout(i, ty, tuple({"activity": CONST} for _ in range(n)), (Value(i, ty),))


def _float_params(i: int, ty: types.Type, shape: CallShape) -> tuple[dict[str, str], ...]:
    """The engine's entries for a float scalar (or tuple of floats) that
    carries a derivative: one ``active`` entry per LLVM parameter."""
    flat = flat_llvm_params(shape.context, ty)
    elems = [float_elem(t) for t in flat]
    if not flat or None in elems or not contains_float(ty):
        raise EnzpyTypeError(
            f"argument {i}: Active needs a float scalar or a tuple of floats, got numba type {ty}"
        )
    return tuple({"activity": ACTIVE, "elem": e} for e in elems if e is not None)


class Const(Annotation):
    """``Const(v)``: no derivative flows through ``v``.

    Integers, booleans and other non-float values are always constant; a bare
    (unannotated) argument is treated as ``Const``.
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Const({self.value!r})"

    def bind(self, i: int, mode: Mode, call: Prepared) -> None:
        call.add(Const, self.value)

    def const_memory(self) -> Any:
        return self.value

    @classmethod
    def layout(cls, i: int, ty: types.Type, shape: CallShape) -> ArgLayout:
        return _const_layout(i, ty, shape)


class Active(Annotation):
    """``Active(x)``: a float scalar (or tuple of floats) passed by value whose
    derivative ``autodiff`` returns (reverse mode only: in forward mode a
    scalar's tangent is given as ``Duplicated(x, dx)``)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Active({self.value!r})"

    def bind(self, i: int, mode: Mode, call: Prepared) -> None:
        if not mode.allows_active:
            mode.refuse_active(i)
        value = self.value
        if type(value) not in FLOAT_SCALARS:
            _check_active(i, value)
        call.add(Active, value)

    @classmethod
    def layout(cls, i: int, ty: types.Type, shape: CallShape) -> ArgLayout:
        params = _float_params(i, ty, shape)
        adjoint = Lanes(i, ty, shape.width, shape.batch)
        return ArgLayout(i, ty, params, (Value(i, ty),), adjoint)


def _check_active(i: int, value: Any) -> None:
    if isinstance(value, np.ndarray):
        raise EnzpyTypeError(
            f"{ordinal(i)}: Active needs a float scalar, got {describe(value)}; "
            "differentiate arrays with Duplicated(x, dx)"
        )
    if isinstance(value, complex | np.complexfloating):
        raise UnsupportedError(
            f"{ordinal(i)}: complex numbers are not supported yet (got {describe(value)})"
        )
    if isinstance(value, bool | np.bool_ | int | np.integer):
        raise EnzpyTypeError(
            f"{ordinal(i)}: Active needs a float (float32 or float64), got "
            f"{describe(value)} {value!r}; pass a float such as {float(value)!r}, or "
            "Const(...) for a value without derivative"
        )
    if isinstance(value, tuple) and is_float_tuple(value):
        return
    raise EnzpyTypeError(
        f"{ordinal(i)}: Active needs a float scalar (float32 or float64) or a "
        f"tuple of floats, got {describe(value)}"
    )


class _Shadowed(Annotation):
    """An argument that comes with shadows: a float array with shadow arrays
    of its shape and dtype, or (in forward mode) a float scalar or tuple of
    floats with its tangents."""

    __slots__ = ()
    #: The engine's activity of an array's data pointer.
    activity: ClassVar[str] = DUP

    @classmethod
    def layout(cls, i: int, ty: types.Type, shape: CallShape) -> ArgLayout:
        primal: Param = Value(i, ty)
        members = leaves(ty)
        arrays = [t for t in members if isinstance(t, types.Array)]
        is_arrays = len(arrays) == len(members)
        if not is_arrays and shape.mode.scalar_tangents:
            tangents = Tangents(i, ty, shape.width, shape.batch)
            return ArgLayout(i, ty, _float_params(i, ty, shape), (primal, tangents))
        if not is_arrays or any(t.dtype not in FLOAT_TYPES for t in arrays):
            raise EnzpyTypeError(
                f"argument {i}: Duplicated needs a float32 or float64 array (or a tuple "
                f"of them), got numba type {ty}; pass other values as separate arguments"
            )
        # A tuple's arrays are flattened one after the other, each as an
        # array argument is: only its data pointer carries a shadow.
        params: list[dict[str, str]] = []
        for t in arrays:
            data = array_data_offset(shape.context, t)
            elem = "double" if t.dtype == types.float64 else "float"
            params += [
                {"activity": cls.activity, "elem": elem} if j == data else {"activity": CONST}
                for j in range(len(flat_llvm_params(shape.context, t)))
            ]
        shadows = ShadowArrays(i, ty, shape.width, shape.batch)
        return ArgLayout(i, ty, tuple(params), (primal, shadows))

    @staticmethod
    def check_array_shadow(i: int, x: Any, dx: Any, name: str) -> None:
        """Check the float array ``x`` (argument ``i``, annotated ``name``)
        and its shadow array ``dx``."""
        # Fast path: everything in order.
        if (
            type(x) is np.ndarray
            and type(dx) is np.ndarray
            and id(x.dtype) in FLOAT_DTYPE_IDS
            and dx.dtype is x.dtype
            and dx.shape == x.shape
            and dx.flags.writeable
            and not np.may_share_memory(x, dx)
            and not overlaps_itself(x)
            and not overlaps_itself(dx)
        ):
            return
        _explain_array_shadow(i, x, dx, name)

    def bind_lanes(self, i: int, call: Prepared, shadows: tuple[Any, ...]) -> None:
        """Check the value and its ``shadows`` (the tangents of a float
        scalar or tuple, or shadow arrays) and add them to ``call``; a
        BatchDuplicated's shadows as a tuple."""
        x = self.value
        name = type(self).__name__
        batch = isinstance(self, BatchDuplicated)
        checked: list[Any] = []
        if is_float_tuple(x):
            for k, dx in enumerate(shadows):
                with _naming_direction(k, batch):
                    checked.append(_check_scalar_tangent(i, x, dx))
        elif is_array_tuple(x):
            seen: list[Any] = []
            for k, dx in enumerate(shadows):
                with _naming_direction(k, batch):
                    checked.append(_stage_tuple_shadow(i, call, x, dx, name, seen))
        elif isinstance(x, bool | np.bool_ | int | np.integer):
            raise EnzpyTypeError(
                f"{ordinal(i)}: {name} needs a float array or a float scalar, got "
                f"{describe(x)} {x!r}; pass a float such as {float(x)!r}, or Const(...) "
                "for a value without derivative"
            )
        else:
            for k, dx in enumerate(shadows):
                with _naming_direction(k, batch):
                    self.check_array_shadow(i, x, dx, name)
                for prev in checked:
                    if dx.size and np.may_share_memory(prev, dx):
                        raise EnzpyValueError(
                            f"{ordinal(i)}: the shadow of direction {k} shares memory with "
                            "another direction's shadow of the same argument"
                        )
                checked.append(call.stage(x, dx))
        call.add(type(self), x, tuple(checked) if isinstance(self, BatchDuplicated) else checked[0])

    # Set by the subclasses.
    value: Any


@contextmanager
def _naming_direction(k: int, batch: bool) -> Iterator[None]:
    """Errors of the checks within say which direction of a BatchDuplicated
    (``k``) they are about."""
    try:
        yield
    except (EnzpyTypeError, EnzpyValueError) as e:
        if not batch:
            raise
        raise type(e)(f"{e} (in direction {k} of the BatchDuplicated)") from None


def _stage_tuple_shadow(
    i: int, call: Prepared, x: tuple[Any, ...], dx: Any, name: str, seen: list[Any]
) -> tuple[Any, ...]:
    """Check the shadow ``dx`` of the tuple of arrays ``x`` (argument ``i``):
    a tuple of the same structure, each array a shadow of its counterpart,
    none sharing memory with a shadow in ``seen`` (which it joins). Returns
    it as a plain tuple of the (staged) shadow arrays."""
    if not isinstance(dx, tuple) or len(dx) != len(x):
        raise EnzpyTypeError(
            f"{ordinal(i)}: the shadow of a tuple of {len(x)} arrays must be a tuple of "
            f"{len(x)} arrays of the same shapes and dtypes, got {describe(dx)}"
        )
    out: list[Any] = []
    for k, (a, da) in enumerate(zip(x, dx, strict=True)):
        if isinstance(a, tuple):
            out.append(_stage_tuple_shadow(i, call, a, da, name, seen))
            continue
        try:
            _Shadowed.check_array_shadow(i, a, da, name)
        except (EnzpyTypeError, EnzpyValueError) as e:
            raise type(e)(f"{e} (member {k} of the tuple)") from None
        for prev in seen:
            if da.size and np.may_share_memory(prev, da):
                raise EnzpyValueError(
                    f"{ordinal(i)}: member {k} of the shadow shares memory with another "
                    "shadow array of the same argument"
                )
        seen.append(da)
        out.append(call.stage(a, da))
    return tuple(out)


def _explain_array_shadow(i: int, x: Any, dx: Any, name: str) -> None:
    """Raise the error that says what is wrong with ``x`` and its shadow ``dx``
    (nothing when they are in order)."""
    if not isinstance(x, np.ndarray):
        if type(x) in FLOAT_SCALARS:
            raise EnzpyTypeError(
                f"{ordinal(i)}: {name} needs an array, got a float scalar; "
                "pass float scalars as Active(x)"
            )
        if isinstance(x, complex | np.complexfloating):
            raise UnsupportedError(f"{ordinal(i)}: complex numbers are not supported yet")
        raise EnzpyTypeError(
            f"{ordinal(i)}: {name} needs a numpy float32 or float64 array, got {describe(x)}"
        )
    if x.dtype not in FLOAT_DTYPES:
        if x.dtype.kind == "c":
            raise UnsupportedError(
                f"{ordinal(i)}: complex arrays are not supported yet (got dtype {x.dtype})"
            )
        raise EnzpyTypeError(
            f"{ordinal(i)}: {name} needs a float32 or float64 array, got dtype {x.dtype}; "
            "pass arrays of other dtypes as Const(x)"
        )
    if type(x) is not np.ndarray:
        raise EnzpyTypeError(
            f"{ordinal(i)}: {name} needs a plain numpy.ndarray, got {type(x).__name__}"
        )
    if type(dx) is not np.ndarray:
        raise EnzpyTypeError(
            f"{ordinal(i)}: the shadow must be a plain numpy array of dtype {x.dtype} and "
            f"shape {x.shape}, got "
            + (
                f"a {type(dx).__name__} (an ndarray subclass)"
                if isinstance(dx, np.ndarray)
                else describe(dx)
            )
        )
    if dx.dtype != x.dtype:
        raise EnzpyTypeError(
            f"{ordinal(i)}: the shadow must have the argument's dtype {x.dtype}, got {dx.dtype}"
        )
    if dx.shape != x.shape:
        raise EnzpyValueError(
            f"{ordinal(i)}: the shadow must have the argument's shape {x.shape}, got {dx.shape}"
        )
    if not dx.flags.writeable:
        raise EnzpyValueError(f"{ordinal(i)}: the shadow array must be writeable")
    if dx.size and np.may_share_memory(x, dx):
        raise EnzpyValueError(f"{ordinal(i)}: the shadow must not share memory with the argument")
    if overlaps_itself(x):
        raise EnzpyValueError(
            f"{ordinal(i)}: {name} needs an array whose elements each have memory of their "
            "own; elements of this one share memory (a stride-0 broadcast such as "
            "np.broadcast_to, or overlapping windows such as sliding_window_view), so no "
            "shadow holds one derivative per element. Pass a copy (np.array(x)), or "
            "Const(x) if it is not differentiated"
        )
    if overlaps_itself(dx):
        raise EnzpyValueError(
            f"{ordinal(i)}: elements of the shadow share memory (a stride-0 broadcast or "
            "overlapping windows); it needs one element of its own per element of the "
            "argument: pass np.zeros_like(x) or a copy"
        )


def _check_scalar_tangent(i: int, x: Any, dx: Any) -> Any:
    """The tangent ``dx`` of the float scalar (or tuple of floats) ``x``,
    converted to ``x``'s type."""
    if isinstance(x, tuple):
        if not isinstance(dx, tuple) or len(dx) != len(x):
            raise EnzpyTypeError(
                f"{ordinal(i)}: the tangent of a tuple of {len(x)} floats must be a "
                f"tuple of {len(x)} floats, got {dx!r}"
            )
        items = [_check_scalar_tangent(i, a, b) for a, b in zip(x, dx, strict=True)]
        # The tangent has the primal's type: a named tuple's tangent is one too.
        make = getattr(type(x), "_make", None)
        return make(items) if make is not None else tuple(items)
    if isinstance(dx, bool | np.bool_) or not isinstance(
        dx, float | int | np.floating | np.integer
    ):
        raise EnzpyTypeError(
            f"{ordinal(i)}: the tangent of a float scalar must be a real number, got {describe(dx)}"
        )
    return type(x)(dx)


class Duplicated(_Shadowed):
    """``Duplicated(x, dx)``: a float array ``x`` and its shadow ``dx`` of the
    same shape and dtype.

    Reverse mode: on entry ``dx`` holds the cotangent of ``x``'s contents after
    the call; on exit the cotangent of its contents before the call (shadows of
    inputs accumulate, shadows of write-only outputs are consumed).

    Forward mode: on entry ``dx`` holds the tangent of ``x``'s contents before
    the call; on exit the tangent of its contents after the call (elements the
    function only reads keep their tangent, elements it writes receive the
    tangent of what it wrote). In forward mode ``x`` may also be a float scalar
    (or a tuple of floats) and ``dx`` its tangent, a value of the same kind.
    """

    __slots__ = ("value", "shadow")

    def __init__(self, value: Any, shadow: Any) -> None:
        self.value = value
        self.shadow = shadow

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.value!r}, {self.shadow!r})"

    def bind(self, i: int, mode: Mode, call: Prepared) -> None:
        call.plain = True
        x = self.value
        if type(x) is np.ndarray or not (mode.scalar_tangents or is_array_tuple(x)):
            # The usual case: an array with one shadow.
            dx = self.shadow
            self.check_array_shadow(i, x, dx, type(self).__name__)
            call.add(type(self), x, call.stage(x, dx))
        else:
            self.bind_lanes(i, call, (self.shadow,))

    def shadowed_memory(self, lane: int) -> tuple[Any, Any] | None:
        return self.value, self.shadow


class DuplicatedNoNeed(Duplicated):
    """As :class:`Duplicated`, but the primal contents of ``x`` after the call
    are not needed (write-only outputs); the engine may skip computing them."""

    __slots__ = ()
    activity = DUPNONEED


class BatchDuplicated(_Shadowed):
    """``BatchDuplicated(x, (dx1, ..., dxW))``: ``x`` with ``W`` shadows, in
    forward mode: one primal evaluation propagates the ``W`` tangents (batch
    mode; ``W`` is fixed when the derivative is compiled). Each ``dxk`` is a
    shadow as in :class:`Duplicated` (an array like ``x``, or the tangent of a
    float scalar). All differentiable arguments of one call must then be
    ``BatchDuplicated`` with the same ``W``."""

    __slots__ = ("value", "shadows")

    def __init__(self, value: Any, shadows: Any) -> None:
        self.value = value
        self.shadows = tuple(shadows) if isinstance(shadows, list | tuple) else shadows

    def __repr__(self) -> str:
        return f"BatchDuplicated({self.value!r}, {self.shadows!r})"

    def bind(self, i: int, mode: Mode, call: Prepared) -> None:
        if not mode.scalar_tangents and is_float_tuple(self.value):
            raise EnzpyTypeError(
                f"{ordinal(i)}: in reverse mode BatchDuplicated takes a float array; "
                "pass a float scalar as Active(x): a batch call returns its W "
                "adjoints as a tuple"
            )
        sh = self.shadows
        if not isinstance(sh, tuple) or not sh:
            raise EnzpyTypeError(
                f"{ordinal(i)}: BatchDuplicated needs a non-empty tuple of shadows, got {sh!r}"
            )
        if len(sh) > MAX_BATCH_WIDTH:
            raise EnzpyValueError(
                f"{ordinal(i)}: a batch of {len(sh)} shadows is wider than the "
                f"supported {MAX_BATCH_WIDTH}; split it into chunks"
            )
        call.widths.add(len(sh))
        self.bind_lanes(i, call, sh)

    @property
    def lanes(self) -> int:
        return len(self.shadows) if isinstance(self.shadows, tuple) else 1

    def shadowed_memory(self, lane: int) -> tuple[Any, Any] | None:
        sh = self.shadows
        return self.value, sh[lane] if isinstance(sh, tuple) and lane < len(sh) else None
