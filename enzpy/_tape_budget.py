"""The memory the reverse sweep's tape may take.

A reverse-mode derivative keeps, on its tape, the values its reverse sweep
needs; a long time loop can make the tape larger than the machine's memory.
The engine's code never grows a tape beyond a budget: a growth past it (for
a counted loop: its whole need, reserved before the loop starts) fails the
call with :class:`enzpy.TapeBudgetError` before the memory is touched,
instead of swapping or being killed by the operating system.

The derivative reads the budget from the symbol ``enzpy_tape_budget`` (two
int64: the budget and, written by the derivative, the bytes of the growth it
refused), which the loader defines (``WORDS``). The default is three
quarters of the machine's physical memory; ``ENZPY_TAPE_BUDGET`` (bytes, or
with a K, M, G or T suffix: binary units) or :func:`set_tape_budget` change
it for the whole process.
"""

from __future__ import annotations

import os
import re
from typing import Final

from ._symbols import Words
from .errors import EnzpyValueError

SYMBOL: Final = "enzpy_tape_budget"
_UNITS: Final = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 34  # 16 GiB where the system does not say


def default_budget() -> int:
    """Three quarters of the machine's physical memory, in bytes."""
    return _physical_memory() // 4 * 3


def parse_bytes(text: str, what: str) -> int:
    """``text`` ("123", "512M", "8G", "1.5T") as a number of bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if m is None:
        raise EnzpyValueError(
            f"{what}={text!r}: expected a number of bytes, optionally with a K, M, G or T "
            "suffix (e.g. 8G)"
        )
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def _from_environment() -> int:
    text = os.environ.get("ENZPY_TAPE_BUDGET", "").strip()
    return default_budget() if not text else parse_bytes(text, "ENZPY_TAPE_BUDGET")


#: The budget and the last refused request, as the loader defines them.
WORDS: Final = Words(SYMBOL, _from_environment(), 0)


def tape_budget() -> int:
    """The most memory (bytes) one reverse-mode call's tape may take."""
    return int(WORDS[0])


def set_tape_budget(nbytes: int | str) -> int:
    """Set the most memory (bytes, or a string such as ``"8G"``) one
    reverse-mode call's tape may take, for calls from now on in this
    process; returns the previous budget. A call whose tape would need more
    raises :class:`enzpy.TapeBudgetError` before it takes the memory."""
    if isinstance(nbytes, str):
        value = parse_bytes(nbytes, "set_tape_budget")
    elif isinstance(nbytes, int) and not isinstance(nbytes, bool):
        value = nbytes
    else:
        raise EnzpyValueError(f"a tape budget is a number of bytes, not {nbytes!r}")
    if not 0 <= value < 1 << 63:
        raise EnzpyValueError(f"a tape budget is a number of bytes (0 or more), not {value}")
    previous = int(WORDS[0])
    WORDS[0] = value
    return previous


def refused_request() -> int:
    """The bytes the last refused tape growth asked for (0 when none was)."""
    return int(WORDS[1])
