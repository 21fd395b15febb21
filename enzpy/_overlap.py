"""Run-time checks, in njit code, that array arguments do not share memory.

A derivative compiled for arrays that did not overlap (its arrays and shadows
are ``noalias`` parameters, docs/design.md §3.3) gives wrong numbers when it
is later called, as a compiled function (``enzpy.derivative``, ``enzpy.split``),
with arrays that do. ``autodiff`` checks every call in Python before anything
runs (``_aliasing``); these checks do the same where the call comes from njit
code or through a compiled wrapper: each pair of array arguments is compared
by the bytes it spans.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numba
from numba.core import cgutils, types
from numba.extending import overload

from .errors import EnzpyValueError

__all__ = ["emit_shared_memory_checks", "refuse_shared_memory"]


@numba.njit
def _span(a):  # type: ignore[no-untyped-def]  # numba code
    """The first byte and one past the last byte ``a`` may touch."""
    lo = a.ctypes.data
    hi = lo
    for k in range(a.ndim):
        extent = (a.shape[k] - 1) * a.strides[k]
        if extent < 0:
            lo += extent
        else:
            hi += extent
    return lo, hi + a.itemsize


@numba.njit
def _overlap(a, b):  # type: ignore[no-untyped-def]  # numba code
    if a.size == 0 or b.size == 0:
        return False
    alo, ahi = _span(a)
    blo, bhi = _span(b)
    return alo < bhi and blo < ahi


@numba.njit
def _moved_alike(a, b, da, db):  # type: ignore[no-untyped-def]  # numba code
    """Whether the shadows da, db of arrays a, b share memory as a and b do:
    the same offset between them and the same strides."""
    return (
        a.ctypes.data - b.ctypes.data == da.ctypes.data - db.ctypes.data
        and a.strides == da.strides
        and b.strides == db.strides
    )


def refuse_shared_memory(args: Any, roles: str) -> None:
    """Raise EnzpyValueError, before anything runs, when arrays of the tuple
    ``args`` share memory in a way the derivative cannot be right for.
    ``roles`` has a letter per member: ``D`` a differentiated array, ``S``
    its shadow (the member after it), ``C`` a Const array, ``-`` anything
    else; with a leading ``!`` the derivative was compiled for arrays that do
    not overlap at all; after a ``|``, the members' names, comma-separated.
    njit only (the rules of ``_aliasing``)."""
    raise NotImplementedError("called from njit code only")


_DISJOINT = "share memory, but it was compiled for arrays that do not overlap (pass copies)"
_SHADOW = "share memory: a shadow may not share memory with an array of the call"
_SHADOWS = "are shadows that share memory while their arrays do not share it the same way"
_CONST = "share memory, one Const and one differentiated: pass a copy as the Const one"
_MOVED = "share memory but their shadows do not share it the same way"


def _pair_checks(roles: str, arrays: list[int]) -> list[tuple[int, int, str, str]]:
    """(a, b, exemption, message) for each pair of array members a, b that
    may not share memory: refused when they overlap, unless the exemption
    holds ("" none; "primals": their arrays, the members before them,
    overlap and moved alike; "shadows": their shadows, the members after
    them, moved alike)."""
    disjoint = roles.startswith("!")
    role, _, names = roles.lstrip("!").partition("|")
    name = names.split(",") if names else [str(k) for k in range(len(role))]
    out = []
    for i, a in enumerate(arrays):
        for b in arrays[i + 1 :]:
            ra, rb = role[a], role[b]
            where = f"{name[a]} and {name[b]}"
            if disjoint:
                out.append((a, b, "", f"{where} {_DISJOINT}"))
            elif "S" in (ra, rb) and (ra, rb) != ("S", "S"):
                out.append((a, b, "", f"{where} {_SHADOW}"))
            elif (ra, rb) == ("S", "S"):
                out.append((a, b, "primals", f"{where} {_SHADOWS}"))
            elif {ra, rb} == {"C", "D"}:
                out.append((a, b, "", f"{where} {_CONST}"))
            elif (ra, rb) == ("D", "D") and role[a + 1 : a + 2] + role[b + 1 : b + 2] == "SS":
                out.append((a, b, "shadows", f"{where} {_MOVED}"))
    return out


def _condition(a: int, b: int, exemption: str) -> str:
    overlap = f"_overlap(args[{a}], args[{b}])"
    if exemption == "primals":
        p, q = a - 1, b - 1
        moved = f"_moved_alike(args[{p}], args[{q}], args[{a}], args[{b}])"
        alike = f"_overlap(args[{p}], args[{q}]) and {moved}"
        return f"{overlap} and not ({alike})"
    if exemption == "shadows":
        return f"{overlap} and not _moved_alike(args[{a}], args[{b}], args[{a + 1}], args[{b + 1}])"
    return overlap


@overload(refuse_shared_memory, prefer_literal=True)
def _refuse_shared_memory(args, roles):  # type: ignore[no-untyped-def]  # numba compares the signatures
    if not isinstance(args, types.BaseTuple) or not isinstance(roles, types.StringLiteral):
        return None
    members = list(args.types)  # type: ignore[attr-defined]  # a BaseTuple has them
    arrays = [k for k, t in enumerate(members) if isinstance(t, types.Array)]
    lines = ["def impl(args, roles):"]
    for a, b, exemption, message in _pair_checks(roles.literal_value, arrays):
        text = "enzpy derivative: arguments " + message
        check = f"    if {_condition(a, b, exemption)}:"
        lines += [check, f"        raise EnzpyValueError({text!r})"]
    lines.append("    return None")
    scope: dict[str, Any] = {
        "_overlap": _overlap,
        "_moved_alike": _moved_alike,
        "EnzpyValueError": EnzpyValueError,
    }
    exec("\n".join(lines) + "\n", scope)  # noqa: S102 - generated from the types only
    return scope["impl"]


# --- the same checks in a derivative's call (its intrinsic's lowering) --------------


def _spans(context: Any, builder: Any, ty: Any, value: Any) -> tuple[Any, Any, Any, Any]:
    """(first byte, one past the last byte, element count, array struct)."""
    ary = context.make_array(ty)(context, builder, value=value)
    intp = context.get_value_type(types.intp)
    lo = builder.ptrtoint(ary.data, intp)
    hi = lo
    zero = intp(0)
    for s, st in zip(
        cgutils.unpack_tuple(builder, ary.shape, ty.ndim),
        cgutils.unpack_tuple(builder, ary.strides, ty.ndim),
        strict=True,
    ):
        extent = builder.mul(builder.sub(s, intp(1)), st)
        negative = builder.icmp_signed("<", extent, zero)
        lo = builder.select(negative, builder.add(lo, extent), lo)
        hi = builder.select(negative, hi, builder.add(hi, extent))
    return lo, builder.add(hi, ary.itemsize), ary.nitems, ary


def emit_shared_memory_checks(
    context: Any, builder: Any, argtys: Sequence[types.Type], args: Sequence[Any], roles: str
) -> None:
    """Return EnzpyValueError from the function being lowered when arrays among
    ``args`` share memory as ``roles`` forbids (``refuse_shared_memory``)."""
    arrays = [k for k, t in enumerate(argtys) if isinstance(t, types.Array)]
    checks = _pair_checks(roles, arrays)
    if not checks:
        return
    spans: dict[int, tuple[Any, Any, Any, Any]] = {}

    def span(k: int) -> tuple[Any, Any, Any, Any]:
        if k not in spans:
            spans[k] = _spans(context, builder, argtys[k], args[k])
        return spans[k]

    def overlap(a: int, b: int) -> Any:
        alo, ahi, an, _ = span(a)
        blo, bhi, bn, _ = span(b)
        zero = an.type(0)
        nonempty = builder.and_(
            builder.icmp_signed("!=", an, zero), builder.icmp_signed("!=", bn, zero)
        )
        meet = builder.and_(
            builder.icmp_unsigned("<", alo, bhi), builder.icmp_unsigned("<", blo, ahi)
        )
        return builder.and_(nonempty, meet)

    def alike(a: int, b: int, da: int, db: int) -> Any:
        pa, pb, sa, sb = (span(k)[3] for k in (a, b, da, db))
        intp = context.get_value_type(types.intp)
        offset = builder.sub(builder.ptrtoint(pa.data, intp), builder.ptrtoint(pb.data, intp))
        shadow = builder.sub(builder.ptrtoint(sa.data, intp), builder.ptrtoint(sb.data, intp))
        same = builder.icmp_signed("==", offset, shadow)
        for x, y in ((a, da), (b, db)):
            nd = argtys[x].ndim  # type: ignore[attr-defined]  # an Array
            xs = cgutils.unpack_tuple(builder, span(x)[3].strides, nd)
            ys = cgutils.unpack_tuple(builder, span(y)[3].strides, nd)
            for u, v in zip(xs, ys, strict=True):
                same = builder.and_(same, builder.icmp_signed("==", u, v))
        return same

    for a, b, exemption, message in checks:
        refuse = overlap(a, b)
        if exemption == "primals":
            exempt = builder.and_(overlap(a - 1, b - 1), alike(a - 1, b - 1, a, b))
            refuse = builder.and_(refuse, builder.not_(exempt))
        elif exemption == "shadows":
            refuse = builder.and_(refuse, builder.not_(alike(a, b, a + 1, b + 1)))
        with cgutils.if_unlikely(builder, refuse):
            context.call_conv.return_user_exc(
                builder, EnzpyValueError, ("enzpy derivative: arguments " + message,)
            )
