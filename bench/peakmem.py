"""Peak memory of one call, as the growth of the process's resident set.

tracemalloc sees only Python's allocator, not numba's NRT, the engine's tapes,
XLA's or PyTorch's buffers, so we measure what the kernel sees: the resident
set size (RSS) of the process. For one call of ``fn``:

1. ``fn()`` runs once untimed (compilation, caches, lazily mapped code), and
   memory freed since is handed back to the OS (``malloc_trim``);
2. the current RSS is the baseline, and the kernel's peak-RSS counter
   (``VmHWM``) is reset by writing ``5`` to ``/proc/self/clear_refs``;
3. ``fn()`` runs again; ``VmHWM - baseline`` is the peak extra memory that
   call touched: tapes, shadows of temporaries, autograd graphs, XLA buffers.
   Inputs allocated before the call are not counted.

Each measurement runs in a fresh subprocess (``bench/run.py --memory-probe``),
so that one kernel's or one framework's freed-but-retained memory does not
hide another's. Linux only; elsewhere the measurement is reported as missing.
"""

from __future__ import annotations

import ctypes
import gc
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["peak_growth", "probe_in_subprocess", "PROBE_FLAG"]

PROBE_FLAG = "--memory-probe"


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_growth(fn: Callable[[], object], setup: Callable[[], object] | None = None) -> int:
    """Peak RSS growth in bytes during one call of ``fn()`` after a warm-up
    call; ``setup()`` runs (unmeasured) before each call."""
    if setup:
        setup()
    fn()
    if setup:
        setup()
    _trim()
    base = _status_kb("VmRSS")
    if base is None or not _reset_peak():
        raise OSError("peak RSS cannot be reset here (needs Linux /proc/self/clear_refs)")
    fn()
    peak = _status_kb("VmHWM")
    return max(peak - base, 0) * 1024


def probe_in_subprocess(script: Path, kernel: str, what: str, extra_args: list[str]) -> dict:
    """Run ``script --memory-probe kernel:what extra_args`` in a fresh Python
    process and return the JSON object it prints last ({"bytes": ...} or
    {"error": ...})."""
    cmd = [sys.executable, str(script), PROBE_FLAG, f"{kernel}:{what}", *extra_args]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or [""]
        return {"error": f"probe exited with {out.returncode}: {tail[0][:300]}"}
    return json.loads(lines[-1])
