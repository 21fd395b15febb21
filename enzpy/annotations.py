"""Activity annotations for the arguments of a differentiated function, and
the differentiation modes.

``Const(v)``, ``Active(x)``, ``Duplicated(x, dx)`` and ``DuplicatedNoNeed(x, dx)``
wrap the values passed to :func:`enzpy.autodiff`; a bare value means ``Const``.
``Reverse`` and ``ReverseWithPrimal`` select what ``autodiff`` computes and returns.
"""

from __future__ import annotations

import enum
from typing import Any

__all__ = [
    "Annotation",
    "Const",
    "Active",
    "Duplicated",
    "DuplicatedNoNeed",
    "Mode",
    "Reverse",
    "ReverseWithPrimal",
]


class Annotation:
    """Base class of the activity annotations."""

    __slots__ = ()


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


class Active(Annotation):
    """``Active(x)``: a float scalar (or tuple of floats) passed by value whose
    derivative ``autodiff`` returns."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Active({self.value!r})"


class Duplicated(Annotation):
    """``Duplicated(x, dx)``: a float array ``x`` and its shadow ``dx`` of the
    same shape and dtype.

    Reverse mode: on entry ``dx`` holds the cotangent of ``x``'s contents after
    the call; on exit the cotangent of its contents before the call (shadows of
    inputs accumulate, shadows of write-only outputs are consumed).
    """

    __slots__ = ("value", "shadow")

    def __init__(self, value: Any, shadow: Any) -> None:
        self.value = value
        self.shadow = shadow

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.value!r}, {self.shadow!r})"


class DuplicatedNoNeed(Duplicated):
    """As :class:`Duplicated`, but the primal contents of ``x`` after the call
    are not needed (write-only outputs); the engine may skip computing them."""

    __slots__ = ()


class Mode(enum.Enum):
    """Differentiation mode."""

    Reverse = "reverse"
    ReverseWithPrimal = "reverse_with_primal"

    def __repr__(self) -> str:
        return f"enzpy.{self.name}"

    @property
    def returns_primal(self) -> bool:
        return self is Mode.ReverseWithPrimal


#: Reverse mode: ``autodiff`` returns one derivative (or None) per argument.
Reverse = Mode.Reverse
#: Reverse mode that also returns the primal result: ``(derivatives, primal)``.
ReverseWithPrimal = Mode.ReverseWithPrimal
