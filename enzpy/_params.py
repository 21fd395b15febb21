"""The pieces a call signature is made of: the parameters of a derivative's
njit wrapper and the members of its result.

A wrapper parameter (:class:`Param`) knows its numba type (checked when numba
types a call of the wrapper) and how its value becomes native arguments of
the derivative in numba's calling convention. The derivative takes them in
sections: every argument's primal parameters, then the shadows, then the
tangents of float scalars (forward mode), then the seeds of the return value
(reverse mode). A result member (:class:`Result`) knows the flat members the
derivative writes for it and how to regroup them into what callers get.

Annotations pick the parameters and results of their argument
(``Annotation.layout``); ``_signature`` puts them together.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from numba.core import cgutils, types
from numba.core.errors import TypingError

from ._abi import leaves, tuple_types

if TYPE_CHECKING:
    from ._modes import Mode

__all__ = [
    "ArgLayout",
    "CallShape",
    "DataOf",
    "Lanes",
    "Param",
    "Result",
    "Section",
    "Seeds",
    "ShadowArrays",
    "Tangents",
    "Value",
    "Whole",
]

#: (numba type, LLVM value) of each primal argument, by position, while a
#: call is lowered; shadows check their primal's shape and strides.
Primals = Mapping[int, tuple[types.Type, Any]]


class Section(enum.IntEnum):
    """Where a parameter's native values go among the derivative's
    parameters (in this order)."""

    PRIMAL = 0
    SHADOW = 1
    TANGENT = 2
    SEED = 3


class Param(ABC):
    """One parameter of the derivative's wrapper."""

    __slots__ = ("index",)
    section: ClassVar[Section]
    #: The wrapper parameter's name, given the argument's position.
    prefix: ClassVar[str] = "x"

    def __init__(self, index: int) -> None:
        #: Position of the primal argument this parameter belongs to.
        self.index = index

    @property
    def name(self) -> str:
        return f"{self.prefix}{self.index}"

    @abstractmethod
    def native_types(self) -> list[types.Type]:
        """The derivative's parameters this one becomes."""

    @abstractmethod
    def expect(self, typingctx: Any, actual: types.Type, what: str) -> types.Type:
        """The type the wrapper takes for an argument of type ``actual``
        (numba converts to it), or a ``TypingError`` naming ``what``."""

    @abstractmethod
    def lower(
        self, context: Any, builder: Any, ty: types.Type, value: Any, primals: Primals
    ) -> list[Any]:
        """The native values of ``value`` (of type ``ty``)."""


def _convertible(typingctx: Any, actual: types.Type, want: types.Type) -> bool:
    return bool(actual == want or typingctx.can_convert(actual, want) is not None)


class Value(Param):
    """A primal argument passed by value."""

    __slots__ = ("ty",)
    section = Section.PRIMAL

    def __init__(self, index: int, ty: types.Type) -> None:
        super().__init__(index)
        self.ty = ty

    def native_types(self) -> list[types.Type]:
        return [self.ty]

    def expect(self, typingctx: Any, actual: types.Type, what: str) -> types.Type:
        if not _convertible(typingctx, actual, self.ty):
            raise TypingError(
                f"enzpy derivative {what}: argument {self.index} has type {actual}, "
                f"the derivative was made for {self.ty}"
            )
        return self.ty

    def lower(
        self, context: Any, builder: Any, ty: types.Type, value: Any, primals: Primals
    ) -> list[Any]:
        return [value]


def _data_like(
    context: Any, builder: Any, primals: Primals, like: int, ty: types.Type, value: Any
) -> Any:
    """The data pointer of the array ``value``, checked at run time to have
    the shape and strides of primal argument ``like``."""
    _check_like(context, builder, primals[like], ty, value, like)
    return context.make_array(ty)(context, builder, value).data


def _check_like(
    context: Any,
    builder: Any,
    primal: tuple[types.Type, Any],
    ty: types.Type,
    value: Any,
    index: int,
) -> None:
    """Raise ValueError at run time unless the array ``value`` has the shape
    and (on dimensions longer than 1) the strides of the primal array."""
    xty, xval = primal
    assert isinstance(xty, types.Array)
    x = context.make_array(xty)(context, builder, xval)
    a = context.make_array(ty)(context, builder, value)
    ndim = xty.ndim
    xshape = cgutils.unpack_tuple(builder, x.shape, ndim)
    xstrides = cgutils.unpack_tuple(builder, x.strides, ndim)
    ashape = cgutils.unpack_tuple(builder, a.shape, ndim)
    astrides = cgutils.unpack_tuple(builder, a.strides, ndim)
    for k in range(ndim):
        with cgutils.if_unlikely(builder, builder.icmp_signed("!=", xshape[k], ashape[k])):
            context.call_conv.return_user_exc(
                builder,
                ValueError,
                (f"enzpy: the shadow of argument {index} has another shape than the argument",),
            )
    one = xshape[0].type(1) if ndim else None
    for k in range(ndim):
        longer = builder.icmp_signed(">", xshape[k], one)
        differs = builder.icmp_signed("!=", xstrides[k], astrides[k])
        with cgutils.if_unlikely(builder, builder.and_(longer, differs)):
            context.call_conv.return_user_exc(
                builder,
                ValueError,
                (f"enzpy: the shadow of argument {index} has other strides than the argument",),
            )


class DataOf(Param):
    """A primal parameter that is a data pointer (``CPointer``), passed as an
    array like argument ``like`` (of that argument's shape and strides)."""

    __slots__ = ("like", "array")
    section = Section.PRIMAL

    def __init__(self, index: int, like: int, array: types.Array) -> None:
        super().__init__(index)
        self.like = like
        self.array = array

    def native_types(self) -> list[types.Type]:
        return [types.CPointer(self.array.dtype)]

    def expect(self, typingctx: Any, actual: types.Type, what: str) -> types.Type:
        want = self.array
        if not _array_like(actual, want):
            raise TypingError(
                f"enzpy derivative {what}: expected a {want.ndim}-d {want.dtype} "
                f"array like argument {self.like}, got {actual}"
            )
        return actual

    def lower(
        self, context: Any, builder: Any, ty: types.Type, value: Any, primals: Primals
    ) -> list[Any]:
        return [_data_like(context, builder, primals, self.like, ty, value)]


def _array_like(actual: types.Type, want: types.Array) -> bool:
    return (
        isinstance(actual, types.Array) and actual.dtype == want.dtype and actual.ndim == want.ndim
    )


def _shadow_ok(actual: types.Type, want: types.Array) -> bool:
    return _array_like(actual, want) and bool(actual.mutable)


class _Lanes(Param):
    """A parameter that carries ``width`` lanes (a tuple of them in batch
    mode, else one value)."""

    __slots__ = ("width", "batch")

    def __init__(self, index: int, width: int, batch: bool) -> None:
        super().__init__(index)
        self.width = width
        self.batch = batch

    def lanes(self, builder: Any, ty: types.Type, value: Any) -> list[tuple[types.Type, Any]]:
        if not self.batch:
            return [(ty, value)]
        assert isinstance(ty, types.BaseTuple)
        return [(t, builder.extract_value(value, k)) for k, t in enumerate(tuple_types(ty))]


class ShadowArrays(_Lanes):
    """The shadow array(s) of argument ``index`` -- a float array, or a
    (nested) tuple of them -- passed to the derivative as data pointers: for
    each array of the argument in order, its shadow in every lane."""

    __slots__ = ("ty", "arrays")
    section = Section.SHADOW
    prefix = "dx"

    def __init__(self, index: int, ty: types.Type, width: int, batch: bool) -> None:
        super().__init__(index, width, batch)
        self.ty = ty
        #: The arrays of the argument, in the order numba flattens them.
        self.arrays: list[types.Array] = [t for t in leaves(ty) if isinstance(t, types.Array)]

    def native_types(self) -> list[types.Type]:
        return [types.CPointer(a.dtype) for a in self.arrays for _ in range(self.width)]

    def _one_ok(self, actual: types.Type) -> bool:
        if not isinstance(self.ty, types.BaseTuple):
            return _shadow_ok(actual, self.arrays[0])
        found = leaves(actual) if isinstance(actual, types.BaseTuple) else []
        return len(found) == len(self.arrays) and all(
            _shadow_ok(t, a) for t, a in zip(found, self.arrays, strict=True)
        )

    def _kind(self) -> str:
        if not isinstance(self.ty, types.BaseTuple):
            a = self.arrays[0]
            return f"a writeable {a.ndim}-d {a.dtype} array"
        each = ", ".join(f"{a.ndim}-d {a.dtype}" for a in self.arrays)
        return f"a tuple of writeable arrays like the argument's ({each})"

    def expect(self, typingctx: Any, actual: types.Type, what: str) -> types.Type:
        if self.batch:
            ok = (
                isinstance(actual, types.BaseTuple)
                and len(actual) == self.width
                and all(self._one_ok(t) for t in tuple_types(actual))
            )
            kind = f"a tuple of {self.width} shadows, each {self._kind()}"
        else:
            ok = self._one_ok(actual)
            kind = self._kind()
        if not ok:
            raise TypingError(
                f"enzpy derivative {what}: the shadow of argument {self.index} must be "
                f"{kind}, got {actual}"
            )
        return actual

    def lower(
        self, context: Any, builder: Any, ty: types.Type, value: Any, primals: Primals
    ) -> list[Any]:
        lanes = self.lanes(builder, ty, value)
        if not isinstance(self.ty, types.BaseTuple):
            return [_data_like(context, builder, primals, self.index, t, v) for t, v in lanes]
        pty, pval = primals[self.index]
        primal_arrays = list(zip(leaves(pty), _leaf_values(builder, pty, pval), strict=True))
        per_lane = [
            list(zip(leaves(t), _leaf_values(builder, t, v), strict=True)) for t, v in lanes
        ]
        out = []
        for k, primal in enumerate(primal_arrays):
            for lane in per_lane:
                t, v = lane[k]
                _check_like(context, builder, primal, t, v, self.index)
                out.append(context.make_array(t)(context, builder, v).data)
        return out


def _leaf_values(builder: Any, ty: types.Type, value: Any) -> list[Any]:
    """The scalar members of a (nested) tuple value, in order."""
    if isinstance(ty, types.BaseTuple):
        out: list[Any] = []
        for k, t in enumerate(tuple_types(ty)):
            out.extend(_leaf_values(builder, t, builder.extract_value(value, k)))
        return out
    return [value]


class _Scalars(_Lanes):
    """Float scalars (or tuples of them) of type ``ty`` in ``width`` lanes.
    The engine takes them per scalar of ``ty``, that scalar in every lane."""

    __slots__ = ("ty",)

    def __init__(self, index: int, ty: types.Type, width: int, batch: bool) -> None:
        super().__init__(index, width, batch)
        self.ty = ty

    def native_types(self) -> list[types.Type]:
        return [leaf for leaf in leaves(self.ty) for _ in range(self.width)]

    def wanted(self) -> types.Type:
        return types.UniTuple(self.ty, self.width) if self.batch else self.ty

    def lower(
        self, context: Any, builder: Any, ty: types.Type, value: Any, primals: Primals
    ) -> list[Any]:
        per_lane = [_leaf_values(builder, self.ty, v) for _, v in self.lanes(builder, ty, value)]
        return [lane[j] for j in range(len(per_lane[0])) for lane in per_lane]


class Tangents(_Scalars):
    """Forward mode: the tangent(s) of float scalar (or tuple) argument
    ``index``."""

    __slots__ = ()
    section = Section.TANGENT
    prefix = "dx"

    def expect(self, typingctx: Any, actual: types.Type, what: str) -> types.Type:
        want = self.wanted()
        if not _convertible(typingctx, actual, want):
            raise TypingError(
                f"enzpy derivative {what}: the tangent of argument {self.index} must be "
                f"{want}, got {actual}"
            )
        return want


class Seeds(_Scalars):
    """Reverse mode: the cotangent(s) of the float return value."""

    __slots__ = ()
    section = Section.SEED

    def __init__(self, ty: types.Type, width: int, batch: bool) -> None:
        super().__init__(-1, ty, width, batch)

    @property
    def name(self) -> str:
        return "dret"

    def expect(self, typingctx: Any, actual: types.Type, what: str) -> types.Type:
        want = self.wanted()
        if not _convertible(typingctx, actual, want):
            raise TypingError(f"enzpy derivative {what}: dret must be {want}, got {actual}")
        return want


class Result(ABC):
    """One member of the tuple a derivative returns."""

    __slots__ = ("owner",)

    #: ``owner`` of the primal return value and of the return value's
    #: derivative; otherwise it is the position of the argument.
    PRIMAL: ClassVar[int] = -2
    RETURN: ClassVar[int] = -1

    def __init__(self, owner: int) -> None:
        self.owner = owner

    @abstractmethod
    def flat_types(self) -> list[types.Type]:
        """The members of the derivative's own (flat) result."""

    @abstractmethod
    def result_type(self) -> types.Type:
        """The member's type in the tuple callers get."""

    @abstractmethod
    def regroup(self, context: Any, builder: Any, flat: Iterator[Any]) -> Any:
        """The member, built from the flat members in ``flat``."""


class Whole(Result):
    """A value the derivative returns as one member (the primal return)."""

    __slots__ = ("ty",)

    def __init__(self, owner: int, ty: types.Type) -> None:
        super().__init__(owner)
        self.ty = ty

    def flat_types(self) -> list[types.Type]:
        return [self.ty]

    def result_type(self) -> types.Type:
        return self.ty

    def regroup(self, context: Any, builder: Any, flat: Iterator[Any]) -> Any:
        return next(flat)


def _build(context: Any, builder: Any, ty: types.Type, leaf_values: Iterator[Any]) -> Any:
    if isinstance(ty, types.BaseTuple):
        return context.make_tuple(
            builder, ty, [_build(context, builder, t, leaf_values) for t in tuple_types(ty)]
        )
    return next(leaf_values)


class Lanes(Result):
    """A derivative of type ``ty`` in ``width`` lanes: the return value's
    tangent (forward mode) or an Active argument's adjoint (reverse mode).
    The engine writes, per scalar of ``ty``, that scalar in every lane;
    callers get a tuple of ``width`` of them in batch mode, else one."""

    __slots__ = ("ty", "width", "batch")

    def __init__(self, owner: int, ty: types.Type, width: int, batch: bool) -> None:
        super().__init__(owner)
        self.ty = ty
        self.width = width
        self.batch = batch

    def flat_types(self) -> list[types.Type]:
        return [leaf for leaf in leaves(self.ty) for _ in range(self.width)]

    def result_type(self) -> types.Type:
        return types.UniTuple(self.ty, self.width) if self.batch else self.ty

    def regroup(self, context: Any, builder: Any, flat: Iterator[Any]) -> Any:
        nleaves = len(leaves(self.ty))
        taken = [next(flat) for _ in range(nleaves * self.width)]
        lanes = [
            _build(context, builder, self.ty, iter(taken[k :: self.width]))
            for k in range(self.width)
        ]
        if not self.batch:
            return lanes[0]
        return context.make_tuple(builder, self.result_type(), lanes)


class CallShape(NamedTuple):
    """What an argument's layout depends on besides its own type."""

    #: numba's target context (its data models flatten the argument).
    context: Any
    mode: Mode
    #: Tangents (forward) or cotangents (reverse) per differentiable argument.
    width: int
    #: Shadows, tangents, seeds and adjoints come as tuples of ``width``.
    batch: bool


@dataclass(frozen=True)
class ArgLayout:
    """How one argument flattens into the derivative's parameters and
    results (decided by its annotation, ``Annotation.layout``)."""

    #: Position of the argument.
    index: int
    #: numba type of its primal parameter.
    ty: types.Type
    #: The engine request's entry of each LLVM parameter it flattens to.
    params: tuple[dict[str, str], ...]
    #: Its wrapper parameters, the primal first.
    wrapper: tuple[Param, ...]
    #: The derivative returned for it, if any.
    result: Result | None = None
