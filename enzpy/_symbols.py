"""Process-wide int64 words that derivative code reads through a symbol.

The engine's code refers to a few settings of the process by symbol (the
launch floor of ``_parallel``, the tape budget of ``_tape_budget``); the
loader defines each symbol, the first time code that uses it is loaded, as
the address of words that Python owns and may change between calls.
"""

from __future__ import annotations

import ctypes

import llvmlite.binding as llvm


class Words:
    """``len(values)`` int64 words, defined as the symbol ``name`` on demand."""

    def __init__(self, name: str, *values: int) -> None:
        self.name = name
        self.words = (ctypes.c_int64 * len(values))(*values)
        self._published = False

    def publish(self) -> None:
        """Define the symbol for derivative code (once per process)."""
        if not self._published:
            llvm.add_symbol(self.name, ctypes.addressof(self.words))
            self._published = True

    def __getitem__(self, k: int) -> int:
        return int(self.words[k])

    def __setitem__(self, k: int, value: int) -> None:
        self.words[k] = value
