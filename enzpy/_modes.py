"""Differentiation modes as small strategy objects.

A mode decides what a derivative takes and returns: whether float scalars
may be ``Active``, whether the derivative takes the return value's cotangent
(``dret``) or returns its tangent, what the engine request's ``"mode"`` field
says, and what ``autodiff`` hands back. Everything else about a call (its
arguments' flattening, the request's parameters) is the call signature's
business (``_signature``); it asks the mode these questions and nothing more.

The public instances are ``Reverse``, ``ReverseWithPrimal``, ``Forward`` and
``ForwardWithPrimal``. A split reverse mode (an augmented forward that
returns a tape and a reverse that consumes it) would be one more subclass of
:class:`Mode` whose signature yields two derivatives; none exists yet.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from numba.core import types

from ._abi import contains_float
from ._config import FLOAT_TYPES
from .errors import EnzpyTypeError, EnzpyValueError

if TYPE_CHECKING:
    from ._signature import Prepared

__all__ = [
    "Forward",
    "ForwardMode",
    "ForwardWithPrimal",
    "Mode",
    "Reverse",
    "ReverseMode",
    "ReverseWithPrimal",
    "check_mode",
]


class Mode(ABC):
    """A differentiation mode (use the instances ``enzpy.Reverse``,
    ``enzpy.ReverseWithPrimal``, ``enzpy.Forward``, ``enzpy.ForwardWithPrimal``)."""

    __slots__ = ("name", "value", "returns_primal")

    #: The engine request's "mode" field.
    request_mode: ClassVar[str]
    #: Tag in the derivative's symbol name.
    symbol_tag: ClassVar[str]
    #: Forward mode: tangents go in beside the primal values.
    is_forward: ClassVar[bool]
    #: ``Active`` arguments (a float whose derivative is returned) are allowed.
    allows_active: ClassVar[bool]
    #: ``Duplicated(x, dx)`` also takes a float scalar (or tuple) ``x`` with
    #: its tangent ``dx``.
    scalar_tangents: ClassVar[bool]
    #: A seeded return value's cotangent is a trailing parameter ``dret``
    #: (otherwise its tangent is returned).
    takes_return_seed: ClassVar[bool]

    # Declared for mypy: enzpy.annotations.Mode.Reverse etc. (as with the enum
    # this class replaces) are set below.
    Reverse: ClassVar[ReverseMode]
    ReverseWithPrimal: ClassVar[ReverseMode]
    Forward: ClassVar[ForwardMode]
    ForwardWithPrimal: ClassVar[ForwardMode]

    def __init__(self, name: str, value: str, returns_primal: bool) -> None:
        self.name = name
        #: The name as a string (as the enum this class replaces had it).
        self.value = value
        #: The derivative also returns the primal return value.
        self.returns_primal = returns_primal

    def __repr__(self) -> str:
        return f"enzpy.{self.name}"

    def __reduce__(self) -> str:
        # Pickled as the module-level instance of its name (a singleton).
        return self.name

    @abstractmethod
    def sends_width(self, width: int) -> bool:
        """Whether the request names the batch ``width``."""

    @abstractmethod
    def autodiff_result(
        self, derivatives: tuple[Any, ...], return_derivative: Any, primal: Any
    ) -> Any:
        """What ``autodiff`` returns, given the derivative of each argument
        (None where there is none), that of the return value (None when
        there is none) and the primal return value (None when not asked)."""

    @abstractmethod
    def seeding_problem(self, restype: types.Type) -> str | None:
        """Why a return value of ``restype`` cannot take part although it
        carries floats (None when it can, or carries nothing differentiable)."""

    @abstractmethod
    def refuse_active(self, position: int) -> None:
        """Raise if this mode takes no ``Active`` argument (at ``position``)."""

    @abstractmethod
    def apply_return_seeds(self, seeds: tuple[float, ...], prepared: Prepared) -> None:
        """Check ``ret=(s1, ..., sW)`` against the call ``prepared`` (which it
        may turn into a batch of W)."""


def _cannot_seed(restype: types.Type) -> bool:
    return restype not in FLOAT_TYPES and contains_float(restype)


class ReverseMode(Mode):
    """Reverse mode: cotangents flow from the return value and the shadows
    back to the arguments; Active arguments' derivatives are returned."""

    __slots__ = ()
    request_mode = "reverse"
    symbol_tag = "rev"
    is_forward = False
    allows_active = True
    scalar_tangents = False
    takes_return_seed = True

    def sends_width(self, width: int) -> bool:
        return width != 1

    def autodiff_result(
        self, derivatives: tuple[Any, ...], return_derivative: Any, primal: Any
    ) -> Any:
        return (derivatives, primal) if self.returns_primal else derivatives

    def seeding_problem(self, restype: types.Type) -> str | None:
        if not _cannot_seed(restype):
            return None
        return (
            f"the function returns {restype}, which enzpy cannot seed with a "
            "cotangent yet (only float32/float64 scalars): write the result into an "
            "output argument passed as Duplicated(out, dout) with dout holding its "
            "cotangent, or pass ret=enzpy.Const to differentiate only through the "
            "arguments"
        )

    def refuse_active(self, position: int) -> None:
        return None

    def apply_return_seeds(self, seeds: tuple[float, ...], prepared: Prepared) -> None:
        prepared.seed_lanes(len(seeds))


class ForwardMode(Mode):
    """Forward mode: tangents flow from the arguments to the return value
    and into the shadows of the arrays the function writes."""

    __slots__ = ()
    request_mode = "forward"
    symbol_tag = "fwd"
    is_forward = True
    allows_active = False
    scalar_tangents = True
    takes_return_seed = False

    def sends_width(self, width: int) -> bool:
        return True

    def autodiff_result(
        self, derivatives: tuple[Any, ...], return_derivative: Any, primal: Any
    ) -> Any:
        return (return_derivative, primal) if self.returns_primal else return_derivative

    def seeding_problem(self, restype: types.Type) -> str | None:
        if not _cannot_seed(restype):
            return None
        return (
            f"the function returns {restype}, whose tangent enzpy cannot return "
            "yet (only float32/float64 scalars); pass ret=enzpy.Const to get only "
            "the tangents of the arrays it writes, or return a float"
        )

    def refuse_active(self, position: int) -> None:
        raise EnzpyTypeError(
            f"argument {position}: Active is for reverse mode; in forward mode pass a float "
            "scalar with its tangent as Duplicated(x, dx)"
        )

    def apply_return_seeds(self, seeds: tuple[float, ...], prepared: Prepared) -> None:
        raise EnzpyValueError(
            "ret=(s1, ..., sW) seeds the return of a reverse-mode batch; forward mode "
            "takes ret=enzpy.Active or enzpy.Const"
        )


#: Reverse mode: ``autodiff`` returns one derivative (or None) per argument.
Reverse = ReverseMode("Reverse", "reverse", returns_primal=False)
#: Reverse mode that also returns the primal result: ``(derivatives, primal)``.
ReverseWithPrimal = ReverseMode("ReverseWithPrimal", "reverse_with_primal", returns_primal=True)
#: Forward mode: ``autodiff`` returns the tangent of the return value (shadows
#: of the arrays the function writes receive their tangents).
Forward = ForwardMode("Forward", "forward", returns_primal=False)
#: Forward mode that also returns the primal result: ``(tangent, primal)``.
ForwardWithPrimal = ForwardMode("ForwardWithPrimal", "forward_with_primal", returns_primal=True)

Mode.Reverse = Reverse
Mode.ReverseWithPrimal = ReverseWithPrimal
Mode.Forward = Forward
Mode.ForwardWithPrimal = ForwardWithPrimal


def check_mode(mode: object) -> Mode:
    """``mode`` itself if it is a mode, else an ``EnzpyValueError``."""
    if isinstance(mode, Mode):
        return mode
    raise EnzpyValueError(
        "mode must be enzpy.Reverse, enzpy.ReverseWithPrimal, enzpy.Forward or "
        f"enzpy.ForwardWithPrimal, got {mode!r}"
    )
