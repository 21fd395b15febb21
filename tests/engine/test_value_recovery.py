"""What the reverse sweep keeps for numba kernels of the C style (synthesis/
ValueRecovery, analysis/CachePolicy), read from the engine's decision log:
values invariant in a loop are recovered once per entry of the loop, not
taped per iteration; a running index in a triangular loop is recomputed from
the loops' counters; loads of memory no later store overwrites are re-read."""

from __future__ import annotations

import json
import math
from typing import Any

import numba
import numpy as np
from test_reused_buffers import history_sine, scratch_bilinear

import enzpy
from enzpy import Active, Duplicated, _build

from .conftest import Decisions


def decisions(f: Any, *args: Any) -> Decisions:
    """The engine's decisions for the reverse-mode derivative of ``f(*args)``."""
    b = _build.bind(f, args, enzpy.Reverse, enzpy.Active)
    captured, sig = _build._signature(b, b.prepared.noalias)
    _, log = _build._run_engine(captured, sig, log=True, log_format="json")
    return Decisions(json.loads(log))


def blocks_where(d: Decisions, kind: str, prefix: str) -> set[str | None]:
    """Blocks whose reverse made a ``kind`` decision about a value whose name
    starts with ``prefix``."""
    return {x.block for x in d.of("tape", kind) if x.value.startswith(prefix)}


@numba.njit
def centered_triangular(mu, icf, X):
    # Two scratch vectors allocated once (their allocations merge with null
    # on the way to raising), a triangular update with a running index li.
    n, d = X.shape
    xc = np.empty(d)
    y = np.empty(d)
    total = 0.0
    for s in range(n):
        for j in range(d):
            xc[j] = X[s, j] - mu[j]
        for j in range(d):
            y[j] = math.exp(icf[j]) * xc[j]
        li = d
        for col in range(d):
            for row in range(col + 1, d):
                y[row] += icf[li] * xc[col]
                li += 1
        sq = 0.0
        for j in range(d):
            sq += y[j] * y[j]
        total += sq
    return total


def _triangular_decisions() -> Decisions:
    r = np.random.default_rng(0)
    d = 4
    return decisions(
        centered_triangular,
        Duplicated(r.standard_normal(d), np.zeros(d)),
        Duplicated(r.standard_normal(d + d * (d - 1) // 2), np.zeros(d + d * (d - 1) // 2)),
        r.standard_normal((3, d)),
    )


def test_triangular_inner_loop_tapes_nothing():
    d = _triangular_decisions()
    # The inner (row) loop: where the running index is recomputed.
    inner = blocks_where(d, "recompute", "%li.")
    assert inner, "the running index li is not recomputed anywhere"
    taped_inside = [(v, b) for v, b in d.taped() if b in inner]
    assert not taped_inside, f"the triangular inner loop tapes {taped_inside}"


def test_running_index_start_is_obtained_once_per_inner_loop():
    d = _triangular_decisions()
    inner = blocks_where(d, "recompute", "%li.")
    hoisted = blocks_where(d, "hoisted", "%li.")
    assert inner & hoisted, "li's value on entering the row loop is not hoisted there"
    # Taped (at most) where the reverse enters the row loop, never in it.
    assert not blocks_where(d, "tape", "%li.") & inner


def test_scratch_shadow_pointers_are_not_taped_in_loops():
    d = _triangular_decisions()
    assert not [v for v, _ in d.taped() if "shadow" in v], "a shadow pointer is taped"
    # The scratch vectors' shadows are recomputed where the loops use them
    # (they were merged with null on raise paths and kept, until branches
    # known never to be taken were folded in preprocessing).
    assert [x for x in d.of("tape", "recompute") if "shadow" in x.value]


def test_load_unchanged_in_inner_loop_is_taped_once_per_loop_entry():
    r = np.random.default_rng(1)
    d = decisions(
        scratch_bilinear,
        Duplicated(r.standard_normal((3, 4)), np.zeros((3, 4))),
        Duplicated(r.standard_normal((3, 3)), np.zeros((3, 3))),
        r.standard_normal((5, 4)),
    )
    hoisted = {x.value: x.block for x in d.of("tape", "hoisted")}
    loads = [v for v in hoisted if any(v == t for t, _ in d.taped())]
    assert loads, "no value read in a loop is hoisted out of it"
    for v in loads:
        tape_blocks = {b for t, b in d.taped() if t == v}
        assert hoisted[v] not in tape_blocks, f"{v} is still taped per iteration"


def _history_decisions() -> Decisions:
    r = np.random.default_rng(2)
    steps, n = 4, 5
    return decisions(
        history_sine,
        Duplicated(r.standard_normal(n), np.zeros(n)),
        Duplicated(np.zeros((steps + 1, n)), np.zeros((steps + 1, n))),
        Active(0.7),
    )


def test_history_rows_read_after_the_last_write_are_reread():
    d = _history_decisions()
    # H is written, so no per-array rule allows re-reading it; per access,
    # nothing writes H after the loop that sums the last row, and inside the
    # time loop only rows above the one read are written. Both loops re-read.
    reread_blocks = {x.block for x in d.of("tape", "reread")}
    assert len(reread_blocks) >= 2, f"H is re-read only in {reread_blocks}"


def test_history_row_read_in_the_time_loop_is_not_taped():
    d = _history_decisions()
    reread = {x.value for x in d.of("tape", "reread")}
    taped = {v for v, _ in d.taped()}
    assert not reread & taped
    # What the time loop still tapes is sin's result (a call), not H[t, i].
    loop_blocks = {x.block for x in d.of("tape", "reread")}
    assert len([v for v, b in d.taped() if b in loop_blocks]) <= 1


def test_request_marks_array_extents():
    x = np.zeros((3, 4))
    b = _build.bind(
        history_sine,
        (Duplicated(np.zeros(4), np.zeros(4)), Duplicated(x, np.zeros_like(x)), Active(0.5)),
        enzpy.Reverse,
        enzpy.Active,
    )
    _, sig = _build._signature(b, b.prepared.noalias)
    params = sig.request["params"]
    extents = [i for i, p in enumerate(params) if p.get("extent")]
    # nitems and one shape entry per dimension: 2 for u0, 3 for H.
    assert len(extents) == 5
    assert all(params[i]["activity"] == "const" for i in extents)
    assert not any(p.get("extent") for p in params if p["activity"] != "const")


def test_broadcasting_loop_indices_are_recomputed_not_taped():
    # numba keeps each operand's index of a broadcasting loop in a select
    # recurrence (the index, or 0 along an axis of extent 1); preprocessing
    # folds it, so the reverse recomputes the indices from the loop counter
    # and tapes only the stencil's value a's adjoint needs.
    from test_array_expressions import heat_slices

    u = np.sin(np.linspace(0.0, 3.0, 12)) + 1.0
    d = decisions(heat_slices, Duplicated(u, np.zeros(12)), Active(0.2), 4)
    loops = blocks_where(d, "recompute", "%loop.index")
    assert loops, "no broadcasting loop found"
    for b in loops:
        taped = [v for v, blk in d.taped() if blk == b]
        assert len(taped) <= 1, f"the loop in {b} tapes {taped}"
