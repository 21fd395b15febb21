"""Activity annotations for the arguments of a differentiated function, and
the differentiation modes.

``Const(v)``, ``Active(x)``, ``Duplicated(x, dx)``, ``DuplicatedNoNeed(x, dx)`` and
``BatchDuplicated(x, (dx1, ..., dxW))`` wrap the values passed to
:func:`enzpy.autodiff`; a bare value means ``Const``. ``Reverse``,
``ReverseWithPrimal``, ``Forward`` and ``ForwardWithPrimal`` select what
``autodiff`` computes and returns.
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
    derivative ``autodiff`` returns (reverse mode only: in forward mode a
    scalar's tangent is given as ``Duplicated(x, dx)``)."""

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


class DuplicatedNoNeed(Duplicated):
    """As :class:`Duplicated`, but the primal contents of ``x`` after the call
    are not needed (write-only outputs); the engine may skip computing them."""

    __slots__ = ()


class BatchDuplicated(Annotation):
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


class Mode(enum.Enum):
    """Differentiation mode."""

    Reverse = "reverse"
    ReverseWithPrimal = "reverse_with_primal"
    Forward = "forward"
    ForwardWithPrimal = "forward_with_primal"

    def __repr__(self) -> str:
        return f"enzpy.{self.name}"

    @property
    def returns_primal(self) -> bool:
        return self is Mode.ReverseWithPrimal or self is Mode.ForwardWithPrimal

    @property
    def is_forward(self) -> bool:
        return self is Mode.Forward or self is Mode.ForwardWithPrimal


#: Reverse mode: ``autodiff`` returns one derivative (or None) per argument.
Reverse = Mode.Reverse
#: Reverse mode that also returns the primal result: ``(derivatives, primal)``.
ReverseWithPrimal = Mode.ReverseWithPrimal
#: Forward mode: ``autodiff`` returns the tangent of the return value (shadows
#: of the arrays the function writes receive their tangents).
Forward = Mode.Forward
#: Forward mode that also returns the primal result: ``(tangent, primal)``.
ForwardWithPrimal = Mode.ForwardWithPrimal
