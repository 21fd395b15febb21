"""Progress bars for long work, drawn by tqdm when it is installed.

tqdm is an optional dependency (the ``progress`` extra): without it no bar is
drawn and nothing else changes. A ``progress`` argument (of ``jacobian``,
``hessian``, and the benchmark's ``--progress``) means:

- ``True``: a bar from the first step (a warning when tqdm is missing);
- ``False``: no bar;
- ``None`` (the default): a bar for work of at least :data:`AUTO_MIN_STEPS`
  steps that is still running after :data:`AUTO_DELAY` seconds (tqdm's
  ``delay``), removed when the work ends; shorter work prints nothing.

The bar goes to standard error (tqdm's default), or to ``file``.
"""

from __future__ import annotations

import warnings
from types import TracebackType
from typing import Any, TextIO

from .errors import EnzpyTypeError

__all__ = ["AUTO_DELAY", "AUTO_MIN_STEPS", "Bar", "bar", "check_progress"]

#: Under ``progress=None``, work of fewer steps never shows a bar.
AUTO_MIN_STEPS = 16
#: Under ``progress=None``, the bar appears only once the work has run this
#: many seconds.
AUTO_DELAY = 2.0


class Bar:
    """One bar over a known number of steps; does nothing when not drawn."""

    def __init__(self, impl: Any | None) -> None:
        self._impl = impl

    @property
    def drawn(self) -> bool:
        """Whether a tqdm bar stands behind this one."""
        return self._impl is not None

    def __enter__(self) -> Bar:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """``n`` more steps are done."""
        if self._impl is not None:
            self._impl.update(n)

    def note(self, text: str) -> None:
        """Show ``text`` (what runs now) after the bar."""
        if self._impl is not None:
            self._impl.set_postfix_str(text)

    def write(self, text: str) -> None:
        """Print a line of output above the bar (plainly without one)."""
        if self._impl is not None:
            self._impl.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._impl is not None:
            self._impl.close()
            self._impl = None


def _tqdm() -> Any | None:
    """tqdm's class (the notebook widget in Jupyter), or None without tqdm."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm


def check_progress(what: str, progress: Any) -> bool | None:
    if progress is not None and not isinstance(progress, bool):
        raise EnzpyTypeError(
            f"{what}: progress must be True, False or None (automatic), "
            f"got {type(progress).__name__}"
        )
    return progress


def bar(
    total: int,
    desc: str,
    progress: bool | None,
    *,
    unit: str = "it",
    min_steps: int = AUTO_MIN_STEPS,
    file: TextIO | None = None,
) -> Bar:
    """A bar over ``total`` steps, drawn as ``progress`` says (see the
    module's doc; ``min_steps`` replaces :data:`AUTO_MIN_STEPS`)."""
    if progress is False or total <= 0 or (progress is None and total < min_steps):
        return Bar(None)
    tqdm = _tqdm()
    if tqdm is None:
        if progress:
            warnings.warn(
                f"{desc}: progress=True needs tqdm (pip install tqdm); no progress bar is shown",
                stacklevel=3,
            )
        return Bar(None)
    explicit = progress is True
    return Bar(
        tqdm(
            total=total,
            desc=desc,
            unit=unit,
            delay=0.0 if explicit else AUTO_DELAY,
            leave=explicit,
            file=file,
        )
    )
