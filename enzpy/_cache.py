"""Cache of compiled derivatives.

A derivative is keyed by the numba dispatcher, numba's compile result for
the call (so that, as in numba, a derivative keeps the global values numba
froze into the function until numba recompiles it), the numba types of the
arguments, their activities, the mode, whether the return value is seeded and
strict mode (``enzpy.strict()``: it refuses what non-strict mode builds).
A cached derivative is reused without any compilation; ``info()`` counts hits,
misses and builds so that tests can check this, and the lookups of the disk
cache (``_diskcache``), which a build consults first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

from . import _diskcache

__all__ = ["CacheInfo", "clear", "get_or_build", "info", "lookup"]


class CacheInfo(NamedTuple):
    hits: int
    misses: int
    builds: int
    size: int
    #: Derivatives loaded from the disk cache, looked up there and not
    #: found (or unreadable), and written to it.
    disk_hits: int = 0
    disk_misses: int = 0
    disk_writes: int = 0


_entries: dict[Hashable, Any] = {}
_lock = threading.RLock()
_hits = 0
_misses = 0
_builds = 0


def lookup(key: Hashable) -> Any | None:
    """The cached entry for ``key`` (counted as a hit), or None."""
    global _hits
    entry = _entries.get(key)
    if entry is not None:
        _hits += 1
    return entry


def get_or_build(key: Hashable, build: Callable[[], Any]) -> Any:
    """The entry for ``key``, built once (thread-safe) on a miss."""
    global _hits, _misses, _builds
    entry = _entries.get(key)
    if entry is not None:
        _hits += 1
        return entry
    with _lock:
        entry = _entries.get(key)
        if entry is not None:
            _hits += 1
            return entry
        _misses += 1
        entry = build()
        _builds += 1
        _entries[key] = entry
        return entry


def info() -> CacheInfo:
    """Counters: lookups that hit, lookups that missed, derivatives built
    (or loaded from disk), entries held, and the disk cache's counters."""
    disk = _diskcache.counts()
    return CacheInfo(
        _hits, _misses, _builds, len(_entries), disk["hits"], disk["misses"], disk["writes"]
    )


def clear() -> None:
    """Forget all cached derivatives and reset the counters."""
    global _hits, _misses, _builds
    with _lock:
        _entries.clear()
        _hits = _misses = _builds = 0
        _diskcache.reset_counts()
