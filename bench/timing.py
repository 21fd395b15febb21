"""Timing primitives of the benchmark: the best wall time of repeated calls,
and the wall time of a first call (which includes compilation)."""

from __future__ import annotations

import time


def best_time(fn, setup=None, min_repeats=5, max_repeats=100, budget=1.0):
    """Best wall time of fn() after one warm-up call; setup() runs untimed before each."""
    if setup:
        setup()
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < max_repeats:
        if setup:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
        if elapsed >= budget and (len(times) >= min_repeats or elapsed >= 5 * budget):
            break
    return min(times)


def first_call(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out
