"""When a ``prange`` loop's derivative is worth numba's threads.

A launch on the threading layer costs a fixed time (about 0.2 ms on a small
machine): a loop whose serial run is shorter than a few launches runs faster
on one thread. Each derivative loop that may run in chunks measures its own
serial runs (cycles per iteration) and launches only when its estimated
serial cost reaches ``min_cycles()``; the engine's code reads that floor from
the symbol ``enzpy_parallel_min_cycles``, which the loader defines
(``WORDS``). ``ENZPY_PARALLEL_MIN_CYCLES`` sets it; 0 launches whenever the
loop is race-free and there is more than one thread (what the tests use).
"""

from __future__ import annotations

import os
from typing import Final

from ._symbols import Words
from .errors import EnzpyValueError

SYMBOL: Final = "enzpy_parallel_min_cycles"
#: About 0.35 ms at 3 GHz: twice a launch's cost where it was measured.
DEFAULT_MIN_CYCLES: Final = 1 << 20


def _from_environment() -> int:
    text = os.environ.get("ENZPY_PARALLEL_MIN_CYCLES", "").strip()
    if not text:
        return DEFAULT_MIN_CYCLES
    try:
        value = int(text, 0)
    except ValueError:
        value = -1
    if value < 0:
        raise EnzpyValueError(
            f"ENZPY_PARALLEL_MIN_CYCLES={text!r}: expected a number of cycles (0 or more)"
        )
    return value


#: The floor, as the loader defines it for derivative code.
WORDS: Final = Words(SYMBOL, _from_environment())


def min_cycles() -> int:
    """The least estimated serial cost (cycles) of a loop run worth a launch."""
    return WORDS[0]


def set_min_cycles(cycles: int) -> int:
    """Set the floor for loops run from now on; the previous value."""
    if cycles < 0:
        raise EnzpyValueError(f"a number of cycles is 0 or more, not {cycles}")
    previous = WORDS[0]
    WORDS[0] = cycles
    return previous
