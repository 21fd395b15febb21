"""Split mode: the primal now, its reverse sweep later.

``fwd, rev = enzpy.split(f, *annotations)`` returns two njit functions:

* ``fwd(*args) -> (primal, tape)`` runs ``f(*args)`` with all its side
  effects and returns its result and a tape;
* ``rev(tape, *shadows, dret=1.0) -> (derivatives...)`` runs the reverse
  sweep: shadows of the ``Duplicated`` arguments (in order) hold the
  cotangents of the arrays' contents after ``fwd`` and receive those of their
  contents before it (the reverse-mode shadow semantics, docs/design.md
  §3.1); it returns the derivatives of the ``Active`` arguments.

The tape is a snapshot of what the reverse sweep needs to recompute the
primal: a copy of every array argument taken before ``f`` runs (so the
arguments may change between ``fwd`` and ``rev``; ``overwritten=[...]``
declares arguments that do not, which are then kept by reference), the
scalar arguments, a tag naming the split it belongs to and a use flag. The
reverse sweep recomputes the primal from the snapshot and runs the combined
reverse derivative on it: ``rev`` costs one primal more than a combined
gradient. The tape owns its copies; they are freed when the tape is dropped.
Using a tape twice, or with another split's ``rev``, raises ``ValueError``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numba
import numpy as np
from numba.core import types
from numba.core.dispatcher import Dispatcher

from . import _build
from ._build import dispatcher
from ._modes import Reverse
from ._overlap import refuse_shared_memory
from .annotations import Active, Const, Duplicated, DuplicatedNoNeed
from .errors import EnzpyValueError, UnsupportedError

__all__ = ["split"]

_tags = itertools.count(1)


def _kind(i: int, a: Any) -> str:
    """'dup', 'active' or 'const' for the annotation ``a`` of argument ``i``."""
    if isinstance(a, Duplicated | DuplicatedNoNeed):
        if not isinstance(a.value, np.ndarray):
            raise UnsupportedError(
                f"split mode: argument {i} is Duplicated but not an array; split mode "
                "takes float arrays (Duplicated), float scalars (Active) and constants"
            )
        return "dup"
    if isinstance(a, Active):
        return "active"
    if isinstance(a, Const) or not hasattr(a, "value"):
        return "const"
    raise UnsupportedError(f"split mode does not take {type(a).__name__} arguments")


def _value(a: Any) -> Any:
    return a.value if hasattr(a, "value") else a


def split(
    f: Any,
    *args: Any,
    ret: type = Active,
    overwritten: Sequence[bool] | None = None,
) -> tuple[Dispatcher, Dispatcher]:
    """Split ``f``'s reverse-mode derivative into ``fwd`` and ``rev`` (see
    the module's doc). ``args`` are annotated examples as for
    ``enzpy.autodiff``: they fix the activities and types. ``ret``:
    ``Active`` seeds a float return with ``dret``; ``Const`` does not.
    ``overwritten[i] = False`` declares that array argument ``i`` is not
    changed by ``f`` nor between ``fwd`` and ``rev``: it is not copied."""
    disp = dispatcher(f)
    kinds = [_kind(i, a) for i, a in enumerate(args)]
    values = [_value(a) for a in args]
    if overwritten is None:
        overwritten = [True] * len(args)
    if len(overwritten) != len(args):
        raise EnzpyValueError(
            f"overwritten has {len(overwritten)} entries for {len(args)} arguments"
        )
    for i, v in enumerate(values):
        if isinstance(v, tuple) and any(isinstance(m, np.ndarray) for m in v):
            raise UnsupportedError(
                f"split mode: argument {i} is a tuple of arrays, which split mode does "
                "not take yet; pass the arrays as separate arguments"
            )
    copied = [isinstance(v, np.ndarray) and ow for v, ow in zip(values, overwritten, strict=True)]
    # The combined reverse derivative, compiled for C-contiguous snapshots.
    examples: list[Any] = []
    for k, v in zip(kinds, values, strict=True):
        snap = np.ascontiguousarray(v) if isinstance(v, np.ndarray) else v
        if k == "dup":
            examples.append(Duplicated(snap.copy(), np.zeros_like(snap)))
        elif k == "active":
            examples.append(Active(v))
        else:
            examples.append(Const(snap))
    built = _build.entry(_build.bind(disp, examples, Reverse, ret), noalias=False)
    deriv = built.wrapper
    seeded = ret is Active and isinstance(built.restype, types.Float)
    tag = next(_tags)
    name = getattr(disp.py_func, "__qualname__", "f")
    n = len(args)
    a = [f"a{i}" for i in range(n)]
    snaps = [f"np.ascontiguousarray({a[i]}).copy()" if copied[i] else a[i] for i in range(n)]
    shadows = [f"d{i}" for i in range(n) if kinds[i] == "dup"]
    call_args = []
    for i in range(n):
        # Kept by reference (not overwritten): the derivative still reads a
        # C-contiguous array.
        by_reference = isinstance(values[i], np.ndarray) and not copied[i]
        call_args.append(f"np.ascontiguousarray(s{i})" if by_reference else f"s{i}")
        if kinds[i] == "dup":
            call_args.append(f"c{i}")
    dups = [i for i in range(n) if kinds[i] == "dup"]
    stage_in = "".join(f"    c{i} = np.ascontiguousarray(d{i})\n" for i in dups)
    stage_out = "".join(
        f"    if not d{i}.flags.c_contiguous:\n        d{i}[...] = c{i}\n" for i in dups
    )
    snapshot = ", ".join(f"s{i}" for i in range(n)) + ("," if n == 1 else "")
    dret = ", dret=1.0" if seeded else ""
    # The tape keeps a copy of each array: arrays that share memory would
    # come back apart. A differentiated array, and each shadow, needs memory
    # of its own per element, too (shadows sharing memory with each other
    # are the derivative's own check).
    roles = "!" + "".join("D" if k == "dup" else "-" for k in kinds) + "|" + ",".join(a)
    shadow_roles = "D" * len(shadows) + "|" + ",".join(shadows)
    check_shadows = (
        f"    refuse_shared_memory(({', '.join(shadows)},), {shadow_roles!r})\n" if shadows else ""
    )
    source = f"""
def fwd({", ".join(a)}):
    refuse_shared_memory(({", ".join(a)}{"," if n == 1 else ""}), {roles!r})
    {"; ".join(f"s{i} = {snaps[i]}" for i in range(n)) or "pass"}
    r = f({", ".join(a)})
    return r, ({tag}, np.zeros(1, np.bool_), ({snapshot}))

def rev(tape{"".join(", " + s for s in shadows)}{dret}):
    tag, used, snap = tape
    if tag != {tag}:
        raise ValueError("enzpy.split: this tape belongs to another function's split")
    if used[0]:
        raise ValueError("enzpy.split: this tape was used by rev already")
    used[0] = True
{check_shadows}    {"; ".join(f"s{i} = snap[{i}]" for i in range(n)) or "pass"}
{stage_in}    out = deriv({", ".join(call_args)}{", dret" if seeded else ""})
{stage_out}    return out
"""
    scope: dict[str, Any] = {
        "np": np,
        "f": disp,
        "deriv": deriv,
        "refuse_shared_memory": refuse_shared_memory,
    }
    exec(compile(source, f"<enzpy.split({name})>", "exec"), scope)  # noqa: S102
    fwd, rev = scope["fwd"], scope["rev"]
    fwd.__qualname__ = f"split({name}).fwd"
    rev.__qualname__ = f"split({name}).rev"
    compiled_fwd: Dispatcher = numba.njit(fwd)
    compiled_rev: Dispatcher = numba.njit(rev)
    return compiled_fwd, compiled_rev
