"""Call-time checks for arguments that share memory.

The engine handles a buffer reached through several arguments correctly
when every alias carries the same shadow: then reads and writes through any
of them update one cotangent. Two situations cannot be right, and are
refused before anything runs:

- a ``Const`` array sharing memory with a ``Duplicated`` one: values read
  through the ``Const`` alias would carry no derivative;
- ``Duplicated`` arrays sharing memory whose shadows do not share memory the
  same way (another buffer, or another offset): one buffer would have two
  cotangents.

These checks run only when the cheap bounds check of ``_validate`` found
overlapping arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import EnzpyValueError

__all__ = ["check_arguments", "check_shared_memory"]


def _share(a: np.ndarray, b: np.ndarray) -> bool:
    try:
        return bool(np.shares_memory(a, b, max_work=100_000))  # type: ignore[arg-type]
    except np.exceptions.TooHardError:
        return True  # cannot tell: assume they do


def _address(a: np.ndarray) -> int:
    return int(a.__array_interface__["data"][0])


def check_shared_memory(
    duplicated: Sequence[tuple[int, np.ndarray, np.ndarray]],
    const: Sequence[tuple[int, np.ndarray]],
) -> None:
    """``duplicated``: (position, array, shadow as passed); ``const``:
    (position, array). Raises EnzpyValueError for the two cases above."""
    for i, x, _ in duplicated:
        for j, c in const:
            if _share(x, c):
                raise EnzpyValueError(
                    f"argument {j} (Const) shares memory with argument {i} (Duplicated): "
                    "values read through the Const argument would carry no derivative; "
                    "pass it as Duplicated with the matching view of the same shadow"
                )
    for a in range(len(duplicated)):
        i, x, dx = duplicated[a]
        for b in range(a + 1, len(duplicated)):
            k, y, dy = duplicated[b]
            if not _share(x, y):
                continue
            mirrored = (
                dx.strides == x.strides
                and dy.strides == y.strides
                and _address(x) - _address(y) == _address(dx) - _address(dy)
                and (_share(dx, dy) or dx is dy)
            )
            if not mirrored:
                raise EnzpyValueError(
                    f"arguments {i} and {k} share memory but their shadows do not share "
                    "it the same way: pass views of one shadow array, laid out like the "
                    "views of the primal array (same strides and offsets)"
                )


def check_arguments(args: Sequence[Any]) -> None:
    """``check_shared_memory`` over one call's (annotated) arguments; for
    batch arguments, once per lane."""
    from .annotations import Annotation, Const

    annotated = [a if isinstance(a, Annotation) else Const(a) for a in args]
    for lane in range(max((a.lanes for a in annotated), default=1)):
        duplicated: list[tuple[int, np.ndarray, np.ndarray]] = []
        const: list[tuple[int, np.ndarray]] = []
        for i, a in enumerate(annotated):
            pair = a.shadowed_memory(lane)
            if pair is None:
                v = a.const_memory()
                if isinstance(v, np.ndarray):
                    const.append((i, v))
            elif isinstance(pair[0], np.ndarray) and isinstance(pair[1], np.ndarray):
                duplicated.append((i, pair[0], pair[1]))
        check_shared_memory(duplicated, const)
