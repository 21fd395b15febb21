"""Call-time checks for arguments that share memory.

The engine handles a buffer reached through several arguments correctly
when every alias carries the same shadow: then reads and writes through any
of them update one cotangent. Everything else that shares memory cannot be
right, and is refused before anything runs (docs/design.md §3.3 (c)):

- a ``Const`` array sharing memory with a differentiated one: values read
  through the ``Const`` alias would carry no derivative. ``Const`` arrays
  are every array reachable from a ``Const`` argument, at any depth of
  tuples, named tuples and lists (numba passes tuples by value, but the
  arrays in them are views of the caller's memory);
- ``Duplicated`` arrays sharing memory whose shadows do not share memory the
  same way (another buffer, or another offset): one buffer would have two
  cotangents;
- one shadow buffer (or overlapping shadows) for two different primals, or
  for two lanes of a batch: two cotangents would be summed in one place;
- a shadow sharing memory with any argument's primal memory (its own, another
  differentiated array, or a ``Const`` array): the derivative would write
  cotangents into values the function reads, or read them as values.

These checks run only when the cheap bounds check of ``Prepared.finish``
found overlapping arrays among all primals (also those inside containers)
and shadows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import EnzpyValueError

__all__ = ["address", "arrays_in", "check_arguments", "check_shared_memory"]


def arrays_in(value: Any) -> list[np.ndarray]:
    """Every numpy array reachable from ``value``: itself, or its members at
    any depth of tuples (named tuples too) and lists."""
    if isinstance(value, np.ndarray):
        return [value]
    if isinstance(value, tuple | list):
        return [a for v in value for a in arrays_in(v)]
    return []


def _share(a: np.ndarray, b: np.ndarray) -> bool:
    if a.size == 0 or b.size == 0:
        return False
    try:
        return bool(np.shares_memory(a, b, max_work=100_000))  # type: ignore[arg-type]
    except np.exceptions.TooHardError:
        return True  # cannot tell: assume they do


def address(a: np.ndarray) -> int:
    """The address of ``a``'s first element."""
    return int(a.__array_interface__["data"][0])


#: A differentiated array: (position, lane, array, its shadow in that lane).
Shadowed = tuple[int, int, np.ndarray, np.ndarray]
#: A Const array: (position, array, whether it sits inside a container).
ConstArray = tuple[int, np.ndarray, bool]


def _const_name(j: int, nested: bool) -> str:
    return f"an array inside argument {j} (Const)" if nested else f"argument {j} (Const)"


def _shadow_name(i: int, lane: int, lanes: int) -> str:
    return f"the shadow of argument {i}" + (f" in lane {lane}" if lanes > 1 else "")


def check_shared_memory(
    duplicated: Sequence[Shadowed], const: Sequence[ConstArray], lanes: int = 1
) -> None:
    """Raise EnzpyValueError, naming both arguments, for the cases above."""
    for i, _, x, dx in duplicated:
        for j, c, nested in const:
            if _share(x, c):
                raise EnzpyValueError(
                    f"{_const_name(j, nested)} shares memory with argument {i} (Duplicated): "
                    "values read through the Const argument would carry no derivative; "
                    "pass the array itself as Duplicated with the matching view of the same "
                    "shadow, or pass a copy as Const"
                )
            if _share(dx, c):
                raise EnzpyValueError(
                    f"{_shadow_name(i, 0, 1)} shares memory with {_const_name(j, nested)}: "
                    "the derivative would write cotangents into a value the function reads; "
                    "give the shadow its own buffer"
                )
    for i, lane, _, dx in duplicated:
        for k, _, y, _ in duplicated:
            if _share(dx, y):
                whose = "its own argument" if k == i else f"argument {k}"
                raise EnzpyValueError(
                    f"{_shadow_name(i, lane, lanes)} shares memory with {whose}: the "
                    "derivative would write cotangents into values the function reads; "
                    "give every shadow its own buffer, apart from every argument"
                )
    for a in range(len(duplicated)):
        i, la, x, dx = duplicated[a]
        for b in range(a + 1, len(duplicated)):
            k, lb, y, dy = duplicated[b]
            if la != lb:
                if _share(dx, dy):
                    raise EnzpyValueError(
                        f"{_shadow_name(i, la, lanes)} shares memory with "
                        f"{_shadow_name(k, lb, lanes)}: two lanes' cotangents would be "
                        "summed in one place; give every lane its own shadow buffer"
                    )
                continue
            primals, shadows = _share(x, y), _share(dx, dy)
            if not primals and not shadows:
                continue
            mirrored = (
                primals
                and dx.strides == x.strides
                and dy.strides == y.strides
                and address(x) - address(y) == address(dx) - address(dy)
                and (shadows or dx is dy)
            )
            if mirrored:
                continue
            if primals:
                raise EnzpyValueError(
                    f"arguments {i} and {k} share memory but their shadows do not share "
                    "it the same way: pass views of one shadow array, laid out like the "
                    "views of the primal array (same strides and offsets)"
                )
            raise EnzpyValueError(
                f"{_shadow_name(i, la, lanes)} shares memory with {_shadow_name(k, lb, lanes)}"
                f", but arguments {i} and {k} are different arrays: one shadow buffer "
                "would hold the cotangents of two arrays; give each its own shadow"
            )


def check_arguments(args: Sequence[Any]) -> None:
    """``check_shared_memory`` over one call's (annotated) arguments, every
    lane of batch arguments at once."""
    from .annotations import Annotation, Const

    annotated = [a if isinstance(a, Annotation) else Const(a) for a in args]
    lanes = max((a.lanes for a in annotated), default=1)
    duplicated: list[Shadowed] = []
    const: list[ConstArray] = []
    for i, a in enumerate(annotated):
        if a.shadowed_memory(0) is None:
            v = a.const_memory()
            const.extend((i, c, c is not v) for c in arrays_in(v))
            continue
        for lane in range(a.lanes):
            pair = a.shadowed_memory(lane)
            if pair is None:
                continue
            # A tuple of arrays pairs up member by member.
            values, shadows = arrays_in(pair[0]), arrays_in(pair[1])
            if len(values) == len(shadows):
                duplicated.extend((i, lane, v, s) for v, s in zip(values, shadows, strict=True))
    check_shared_memory(duplicated, const, lanes)
