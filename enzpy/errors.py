"""Exception classes of enzpy.

Every error enzpy raises derives from :class:`EnzpyError`. When the engine or
numba knows which Python source line an error is about, ``file`` and ``line``
carry it and ``str(error)`` reads ``"file:line: message"``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "EnzpyError",
    "UnsupportedError",
    "ActivityError",
    "PiecewiseConstantError",
    "EnzpyTypeError",
    "EnzpyValueError",
    "CompilationError",
    "InternalError",
    "TapeBudgetError",
]


class EnzpyError(Exception):
    """Base class of all enzpy errors.

    ``message`` is the bare message; ``file`` and ``line`` name the Python
    source location the error is about, when one is known. ``log`` holds the
    engine's decision log when the engine was asked for one (see
    ``enzpy.explain``), else "".
    """

    log: str = ""

    def __init__(
        self, message: str = "", *, file: str | None = None, line: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = file or None
        self.line = line or None

    def __str__(self) -> str:
        if self.file and self.line:
            return f"{self.file}:{self.line}: {self.message}"
        if self.file:
            return f"{self.file}: {self.message}"
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:  # keep file/line when pickled (e.g. across processes)
        return (_rebuild, (type(self), self.message, self.file, self.line))


def _rebuild(cls: type[EnzpyError], message: str, file: str | None, line: int | None) -> EnzpyError:
    return cls(message, file=file, line=line)


class UnsupportedError(EnzpyError):
    """A construct, call or type that enzpy cannot differentiate (yet)."""


class ActivityError(EnzpyError):
    """Active (differentiable) data would flow where no derivative can go,
    e.g. into memory of an argument annotated ``Const``."""


class PiecewiseConstantError(ActivityError):
    """Raised in strict mode (``with enzpy.strict():``) when a result depends
    on active inputs only through control that has no derivative: a loop
    whose exit condition depends on them (a solver: enzpy would differentiate
    the iterations, not the solution), or an output that depends on them only
    through comparisons or float-to-integer conversions (its derivative would
    be 0). ``line`` is the condition's line."""


class EnzpyTypeError(EnzpyError, TypeError):
    """An argument or annotation has the wrong type (e.g. ``Active`` on an
    array, ``Duplicated`` on a scalar, a shadow of another dtype)."""


class EnzpyValueError(EnzpyError, ValueError):
    """An argument has the right type but a wrong value (e.g. a shadow of
    another shape, a read-only shadow)."""


class CompilationError(EnzpyError):
    """numba failed to compile the function; the message is numba's.

    The original numba exception is kept as ``__cause__`` and as ``numba_error``.
    """

    def __init__(
        self,
        message: str = "",
        *,
        file: str | None = None,
        line: int | None = None,
        numba_error: BaseException | None = None,
    ) -> None:
        super().__init__(message, file=file, line=line)
        self.numba_error = numba_error


class TapeBudgetError(EnzpyError, MemoryError):
    """A reverse-mode call would need a tape larger than the memory budget
    (``enzpy.set_tape_budget``, ``ENZPY_TAPE_BUDGET``); raised before the
    memory is taken, with the shadows as they were."""


class InternalError(EnzpyError):
    """A bug in enzpy (or its engine): please report it."""
