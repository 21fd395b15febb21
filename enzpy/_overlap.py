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

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numba
from numba.core import cgutils, types
from numba.extending import overload

from ._abi import tuple_types
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
def _overlaps_itself(a):  # type: ignore[no-untyped-def]  # numba code
    """Elements of ``a`` surely share memory: its bytes span less than its
    elements take, or a stride is 0 along an extent above 1 (the test of
    ``_values.overlaps_itself`` less the exact search: never a false alarm,
    and it catches broadcasts and sliding windows)."""
    if a.size < 2:
        return False
    lo, hi = _span(a)
    if hi - lo < a.size * a.itemsize:
        return True
    for k in range(a.ndim):
        if a.shape[k] > 1 and a.strides[k] == 0:
            return True
    return False


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
    ``roles`` has a letter per member: ``D`` a differentiated array (or tuple
    of arrays), ``S`` its shadow(s) (the member after it, of the same
    structure), ``B`` its shadows in batch mode (the member after it: a tuple
    of one such per direction), ``C`` a Const array or tuple, ``-`` anything
    else; with a leading ``!`` the derivative was compiled for arrays that do
    not overlap at all; after a ``|``, the members' names, comma-separated.
    Every array inside the members (tuple members, batch lanes) is checked.
    njit only (the rules of ``_aliasing``)."""
    raise NotImplementedError("called from njit code only")


_DISJOINT = "share memory, but it was compiled for arrays that do not overlap (pass copies)"
_SHADOW = "share memory: a shadow may not share memory with an array of the call"
_SHADOWS = "are shadows that share memory while their arrays do not share it the same way"
_LANES = "are one array's shadows in two directions and share memory: give each its own buffer"
_CONST = "share memory, one Const and one differentiated: pass a copy as the Const one"
_MOVED = "share memory but their shadows do not share it the same way"
_SELF = (
    "has elements that share memory (a stride-0 broadcast or overlapping windows), so "
    "no shadow holds one derivative per element: pass a copy"
)


@dataclass(frozen=True)
class _Leaf:
    """An array inside the arguments: where it is (the member, then indices
    into tuples), its role (D, S or C), its name, and for a shadow the leaf
    of its array."""

    path: tuple[int, ...]
    role: str
    name: str
    primal: int = -1


#: A condition on leaves: ("overlap", a, b), or ("alike", a, b, da, db): the
#: shadows da, db of a, b share memory as a and b do.
_Term = tuple[Any, ...]


def _array_paths(ty: types.Type) -> list[tuple[int, ...]]:
    """Where the arrays of a value of type ``ty`` are (indices into tuples)."""
    if isinstance(ty, types.Array):
        return [()]
    if isinstance(ty, types.BaseTuple):
        return [(j, *p) for j, t in enumerate(tuple_types(ty)) for p in _array_paths(t)]
    return []


def _leaves(
    role: str, names: list[str], members: Sequence[types.Type], disjoint: bool
) -> list[_Leaf]:
    """The arrays inside ``members``: those of every member when ``disjoint``
    (no two may overlap), else those of the roles the rules name."""
    out: list[_Leaf] = []
    of_member: dict[int, list[int]] = {}
    for k, (r, ty) in enumerate(zip(role, members, strict=True)):
        if r in "DC" or (r == "-" and disjoint):
            of_member[k] = []
            for p in _array_paths(ty):
                of_member[k].append(len(out))
                out.append(_Leaf((k, *p), r, names[k] + "".join(f"[{j}]" for j in p)))
        elif r in "SB":
            lanes: list[tuple[tuple[int, ...], types.Type]] = [((), ty)]
            if r == "B":
                assert isinstance(ty, types.BaseTuple)  # one member per direction
                lanes = [((w,), t) for w, t in enumerate(tuple_types(ty))]
            for lane, lane_ty in lanes:
                for p, primal in zip(_array_paths(lane_ty), of_member.get(k - 1, []), strict=False):
                    path = (*lane, *p)
                    name = names[k] + "".join(f"[{j}]" for j in path)
                    out.append(_Leaf((k, *path), "S", name, primal))
    return out


def _pair_checks(
    roles: str, members: Sequence[types.Type]
) -> tuple[list[_Leaf], list[tuple[int, int, tuple[_Term, ...], str]]]:
    """The array leaves of ``members``, and (a, b, exemption, message) for each
    pair of leaves a, b that may not share memory: refused when they overlap,
    unless every term of the exemption holds; a == b for a differentiated
    array or shadow whose own elements may not share memory."""
    disjoint = roles.startswith("!")
    role, _, named = roles.lstrip("!").partition("|")
    names = named.split(",") if named else [str(k) for k in range(len(role))]
    leaves = _leaves(role, names, members, disjoint)
    shadows: dict[int, list[int]] = {}
    for i, leaf in enumerate(leaves):
        if leaf.role == "S":
            shadows.setdefault(leaf.primal, []).append(i)
    out: list[tuple[int, int, tuple[_Term, ...], str]] = [
        (a, a, (), _SELF) for a, leaf in enumerate(leaves) if leaf.role in "DS"
    ]
    for a, la in enumerate(leaves):
        for b in range(a + 1, len(leaves)):
            lb = leaves[b]
            pair = (la.role, lb.role)
            if disjoint:
                out.append((a, b, (), _DISJOINT))
            elif "S" in pair and pair != ("S", "S"):
                out.append((a, b, (), _SHADOW))
            elif pair == ("S", "S") and la.primal == lb.primal:
                out.append((a, b, (), _LANES))
            elif pair == ("S", "S"):
                pa, pb = la.primal, lb.primal
                out.append((a, b, (("overlap", pa, pb), ("alike", pa, pb, a, b)), _SHADOWS))
            elif set(pair) == {"C", "D"}:
                out.append((a, b, (), _CONST))
            elif pair == ("D", "D") and shadows.get(a) and shadows.get(b):
                lanes = zip(shadows[a], shadows[b], strict=True)
                out.append((a, b, tuple(("alike", a, b, sa, sb) for sa, sb in lanes), _MOVED))
    return leaves, out


def _message(leaves: list[_Leaf], a: int, b: int, text: str) -> str:
    if a == b:
        return f"enzpy derivative: argument {leaves[a].name} {text}"
    return f"enzpy derivative: arguments {leaves[a].name} and {leaves[b].name} {text}"


def _condition(leaves: list[_Leaf], a: int, b: int, exemption: tuple[_Term, ...]) -> str:
    def at(k: int) -> str:
        return "args" + "".join(f"[{j}]" for j in leaves[k].path)

    def term(t: _Term) -> str:
        if t[0] == "overlap":
            return f"_overlap({at(t[1])}, {at(t[2])})"
        return f"_moved_alike({', '.join(at(k) for k in t[1:])})"

    if a == b:
        return f"_overlaps_itself({at(a)})"
    overlap = f"_overlap({at(a)}, {at(b)})"
    if not exemption:
        return overlap
    return f"{overlap} and not ({' and '.join(term(t) for t in exemption)})"


@overload(refuse_shared_memory, prefer_literal=True)
def _refuse_shared_memory(args, roles):  # type: ignore[no-untyped-def]  # numba compares the signatures
    if not isinstance(args, types.BaseTuple) or not isinstance(roles, types.StringLiteral):
        return None
    leaves, checks = _pair_checks(roles.literal_value, tuple_types(args))
    lines = ["def impl(args, roles):"]
    for a, b, exemption, text in checks:
        lines += [
            f"    if {_condition(leaves, a, b, exemption)}:",
            f"        raise EnzpyValueError({_message(leaves, a, b, text)!r})",
        ]
    lines.append("    return None")
    scope: dict[str, Any] = {
        "_overlap": _overlap,
        "_overlaps_itself": _overlaps_itself,
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
    leaves, checks = _pair_checks(roles, argtys)
    if not checks:
        return
    spans: dict[int, tuple[Any, Any, Any, Any]] = {}
    array_types: dict[int, types.Array] = {}

    def span(k: int) -> tuple[Any, Any, Any, Any]:
        if k not in spans:
            first, *rest = leaves[k].path
            ty, value = argtys[first], args[first]
            for j in rest:
                assert isinstance(ty, types.BaseTuple)
                ty, value = tuple_types(ty)[j], builder.extract_value(value, j)
            assert isinstance(ty, types.Array)
            array_types[k] = ty
            spans[k] = _spans(context, builder, ty, value)
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

    def overlaps_itself(k: int) -> Any:
        lo, hi, n, ary = span(k)
        nd = array_types[k].ndim
        one = n.type(1)
        short = builder.icmp_signed("<", builder.sub(hi, lo), builder.mul(n, ary.itemsize))
        shape = cgutils.unpack_tuple(builder, ary.shape, nd)
        strides = cgutils.unpack_tuple(builder, ary.strides, nd)
        for extent, stride in zip(shape, strides, strict=True):
            flat = builder.and_(
                builder.icmp_signed(">", extent, one),
                builder.icmp_signed("==", stride, stride.type(0)),
            )
            short = builder.or_(short, flat)
        return builder.and_(builder.icmp_signed(">", n, one), short)

    def alike(a: int, b: int, da: int, db: int) -> Any:
        pa, pb, sa, sb = (span(k)[3] for k in (a, b, da, db))
        intp = context.get_value_type(types.intp)
        offset = builder.sub(builder.ptrtoint(pa.data, intp), builder.ptrtoint(pb.data, intp))
        shadow = builder.sub(builder.ptrtoint(sa.data, intp), builder.ptrtoint(sb.data, intp))
        same = builder.icmp_signed("==", offset, shadow)
        for x, y in ((a, da), (b, db)):
            nd = array_types[x].ndim
            xs = cgutils.unpack_tuple(builder, span(x)[3].strides, nd)
            ys = cgutils.unpack_tuple(builder, span(y)[3].strides, nd)
            for u, v in zip(xs, ys, strict=True):
                same = builder.and_(same, builder.icmp_signed("==", u, v))
        return same

    for a, b, exemption, text in checks:
        refuse = overlaps_itself(a) if a == b else overlap(a, b)
        if exemption:
            terms = [overlap(*t[1:]) if t[0] == "overlap" else alike(*t[1:]) for t in exemption]
            refuse = builder.and_(refuse, builder.not_(functools.reduce(builder.and_, terms)))
        with cgutils.if_unlikely(builder, refuse):
            context.call_conv.return_user_exc(
                builder, EnzpyValueError, (_message(leaves, a, b, text),)
            )
