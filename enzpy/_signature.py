"""One call's arguments (``prepare``) and the signature of the derivative
that serves it (:class:`CallSignature`).

``prepare`` lets each argument's annotation check its values (``bind``) and
collects (:class:`Prepared`) what the derivative's wrapper is called with,
the numba types and a cheap cache key. A ``CallSignature`` is built from the captured function, the
annotations' layouts for its argument types, the mode and ``ret``. It is the
one place that knows the derivative's layout: it writes the engine request,
assembles the wrapper's arguments, types and lowers the wrapper's call of the
derivative (regrouping its flat result) and unpacks the result for
``autodiff``.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
from numba.core import cgutils, types
from numba.core.errors import TypingError

from ._abi import (
    ACTIVE,
    CONST,
    NO_MEMORY_STATUS,
    TAPE_BUDGET_STATUS,
    extent_params,
    llvm_type_str,
)
from ._aliasing import arrays_in
from ._config import FLOAT_TYPES, MAX_BATCH_WIDTH
from ._modes import Mode
from ._overlap import emit_shared_memory_checks
from ._params import (
    ArgLayout,
    CallShape,
    Lanes,
    Param,
    Result,
    Section,
    Seeds,
    ShadowArrays,
    Value,
    Whole,
)
from ._values import (
    Staged,
    arrays_disjoint,
    check_plain_array,
    ordinal,
    same_layout,
    staged_like,
    typeof,
)
from .annotations import Annotation, Const
from .errors import EnzpyTypeError, EnzpyValueError, TapeBudgetError

__all__ = ["CallSignature", "Prepared", "prepare"]

_counter = itertools.count(1)


class Prepared:
    """One call's arguments, checked and bound: ``prepare`` has each
    annotation ``bind`` its argument (``add``, ``stage``), then ``finish``es."""

    __slots__ = (
        "annotations",
        "argtypes",
        "call_args",
        "staged",
        "key",
        "noalias",
        "separate",
        "width",
        "batch",
        "plain",
        "widths",
        "_arrays",
        "_nested",
        "_shadows",
        "_lists",
    )

    def __init__(self) -> None:
        #: The annotation class of each argument (Const for a bare value).
        self.annotations: list[type[Annotation]] = []
        #: numba type of each primal value.
        self.argtypes: list[types.Type] = []
        #: Wrapper arguments: each value, followed by its shadow(s) or tangent(s).
        self.call_args: list[Any] = []
        #: Shadows staged through a buffer (copy back after a successful call).
        self.staged: list[Staged] = []
        #: A cheaply hashable key of annotations and types (numba types are
        #: interned; the cache keeps them alive), noalias, width and batch.
        self.key: tuple[Any, ...] = ()
        #: No two arrays of the call (arguments and tuple members) share memory
        #: (checked for this call; lists of arrays never count as apart).
        self.noalias = True
        #: Tangents (forward) or cotangents (reverse) per differentiable
        #: argument (batch width).
        self.width = 1
        #: Shadows come as tuples of ``width`` (BatchDuplicated).
        self.batch = False
        #: A plain (one-shadow) Duplicated argument is among them.
        self.plain = False
        #: Numbers of shadows of the BatchDuplicated arguments.
        self.widths: set[int] = set()
        #: No two arrays of the call -- primals, arrays inside containers and
        #: shadows -- overlap (cheap bounds check); else ``_aliasing`` checks.
        self.separate = True
        self._arrays: list[np.ndarray] = []
        self._nested: list[np.ndarray] = []
        self._shadows: list[np.ndarray] = []
        self._lists = False

    def add(self, annotation: type[Annotation], value: Any, *shadows: Any) -> None:
        """Argument ``value`` annotated ``annotation``, and the shadows or
        tangents that follow it among the wrapper's arguments."""
        position = len(self.annotations)
        if isinstance(value, np.ndarray):
            check_plain_array(ordinal(position), value)
            self._arrays.append(value)
        elif isinstance(value, tuple | list):
            self._lists = self._lists or _holds_list(value)
            nested = arrays_in(value)
            for a in nested:
                check_plain_array(ordinal(position), a)
            self._nested.extend(nested)
        self.call_args.append(value)
        self.call_args.extend(shadows)
        self.annotations.append(annotation)
        self.argtypes.append(typeof(value))

    def stage(self, x: np.ndarray, dx: np.ndarray) -> np.ndarray:
        """``dx``, or a buffer with ``x``'s strides standing in for it."""
        self._shadows.append(dx)
        if dx.strides != x.strides and not same_layout(x, dx):
            st = Staged(dx, staged_like(x, dx))
            self.staged.append(st)
            return st.buffer
        return dx

    def finish(self) -> Prepared:
        """Decide aliasing and the batch width once every argument is bound."""
        # Arrays in tuples are parameters of their own (numba flattens the
        # tuple), so they count; a list's arrays are reached through its
        # payload, which the engine does not see apart from other memory.
        self.noalias = not self._lists and arrays_disjoint(self._arrays + self._nested)
        self.separate = arrays_disjoint(self._arrays + self._nested + self._shadows)
        if self.widths:
            self.width, self.batch = self._one_width(), True
        self.key = (
            *self.annotations,
            *[id(t) for t in self.argtypes],
            self.noalias,
            self.width,
            self.batch,
        )
        return self

    def _one_width(self) -> int:
        if len(self.widths) > 1:
            raise EnzpyValueError(
                f"all BatchDuplicated arguments of one call need the same number of "
                f"shadows, got {sorted(self.widths)}"
            )
        if self.plain:
            raise EnzpyValueError(
                "a batch call needs every differentiable argument as BatchDuplicated "
                "(one shadow per direction); mixing it with Duplicated is ambiguous"
            )
        return next(iter(self.widths))

    def seed_lanes(self, width: int) -> None:
        """Reverse mode: the return value is seeded in ``width`` lanes
        (``ret=(s1, ..., sW)``), which makes a call without BatchDuplicated
        arguments a batch of ``width``."""
        if not self.batch:
            if self.plain:
                raise EnzpyValueError(
                    "ret=(s1, ..., sW) needs the arrays as BatchDuplicated with W shadows, "
                    "not Duplicated"
                )
            self.width, self.batch = width, True
            self.key = self.key + (width, True)
        elif self.width != width:
            raise EnzpyValueError(
                f"ret has {width} seeds but the BatchDuplicated arguments have "
                f"{self.width} shadows each"
            )
        if width > MAX_BATCH_WIDTH:
            raise EnzpyValueError(
                f"a batch of {width} seeds is wider than the supported {MAX_BATCH_WIDTH}"
            )


def _holds_list(value: Any) -> bool:
    """``value`` is a list, or a tuple with a list at some depth."""
    if isinstance(value, list):
        return True
    return isinstance(value, tuple) and any(_holds_list(v) for v in value)


def prepare(args: Sequence[Any], mode: Mode) -> Prepared:
    """Check and bind the (annotated) arguments of one call in ``mode``."""
    b = Prepared()
    for i, a in enumerate(args):
        if isinstance(a, Annotation):
            a.bind(i, mode, b)
        elif isinstance(a, type) and issubclass(a, Annotation):
            raise EnzpyTypeError(
                f"{ordinal(i)}: {a.__name__} is an annotation class; wrap the value, "
                f"e.g. {a.__name__}(x)"
            )
        else:
            b.add(Const, a)
    return b.finish()


class CallSignature:
    """The derivative of one function for one pattern of annotated argument
    types, one mode and one ``ret``: its engine request, its parameters and
    results, and how calls of it are assembled, lowered and unpacked."""

    def __init__(
        self,
        function: str,
        layouts: Sequence[ArgLayout],
        restype: types.Type,
        shape: CallShape,
        *,
        ret_active: bool,
        noalias: bool,
    ) -> None:
        context, mode, width, batch = shape
        self.mode = mode
        self.layouts = tuple(layouts)
        self.width = width
        self.batch = batch
        #: The primal's numba return type.
        self.primal_restype = restype
        is_none = restype == types.none
        #: The return value is seeded (reverse) or its tangent returned (forward).
        self.seeded = bool(ret_active) and restype in FLOAT_TYPES
        #: The result tuple starts with the primal return value.
        self.has_primal = mode.returns_primal and not is_none
        #: The primal returns memory numba counts references to (an array)
        #: that the caller does not take: the derivative returns it anyway
        #: and the call drops the reference, or every call would leak it.
        self.drops_primal = (
            not self.has_primal and not is_none and _holds_references(context, restype)
        )

        params: list[Param] = [p for lay in self.layouts for p in lay.wrapper]
        results: list[Result] = [Whole(Result.PRIMAL, restype)] if self.has_primal else []
        results += [lay.result for lay in self.layouts if lay.result is not None]
        if self.seeded and mode.takes_return_seed:
            params.append(Seeds(restype, width, batch))
        elif self.seeded:
            results.append(Lanes(Result.RETURN, restype, width, batch))
        #: The wrapper's parameters, in order.
        self.params = tuple(params)
        self.results = tuple(results)
        #: numba signature of the derivative itself (flat result struct).
        self.argtypes = tuple(
            t for s in Section for p in self.params if p.section is s for t in p.native_types()
        )
        native = [Whole(Result.PRIMAL, restype), *results] if self.drops_primal else results
        #: numba types of the derivative's flat result struct.
        self.flat_result_types = tuple(t for r in native for t in r.flat_types())
        self.restype: types.Type = types.Tuple(self.flat_result_types)
        #: What the wrapper returns.
        self.result_type: types.Type = types.Tuple([r.result_type() for r in results])

        # Arrays' extents are marked: the engine may take them as non-negative.
        entries = [
            {**e, "extent": True} if extent else e
            for lay in self.layouts
            for e, extent in zip(lay.params, _extents(context, lay), strict=True)
        ]
        ret_type = "void" if is_none else llvm_type_str(context.get_return_type(restype))
        digest = hashlib.sha1(
            repr(
                (function, ret_type, entries, self.seeded, self.returns_primal, noalias)
                + (mode.is_forward, width)
            ).encode()
        ).hexdigest()[:10]
        #: Symbol of the derivative.
        self.name = f"enzpy_{mode.symbol_tag}_{next(_counter)}_{digest}"
        #: The JSON request for ``enzpy_differentiate`` (without "log").
        self.request: dict[str, Any] = {
            "function": function,
            "name": self.name,
            "mode": mode.request_mode,
            "ret_type": ret_type,
            "ret_activity": ACTIVE if self.seeded else CONST,
            "return_primal": self.returns_primal,
            "params": entries,
            "noalias": bool(noalias),
        }
        if mode.sends_width(width):
            self.request["width"] = width
        # Where autodiff finds each argument's derivative and the return's.
        where = {r.owner: k for k, r in enumerate(results)}
        self._primal_at = where.get(Result.PRIMAL)
        self._return_at = where.get(Result.RETURN)
        self._argument_at = tuple(where.get(lay.index) for lay in self.layouts)

    @property
    def returns_primal(self) -> bool:
        """The derivative returns the primal value (to the caller, or to drop)."""
        return self.has_primal or self.drops_primal

    @classmethod
    def for_call(
        cls,
        function: str,
        annotations: Sequence[type[Annotation]],
        argtypes: Sequence[types.Type],
        restype: types.Type,
        shape: CallShape,
        *,
        ret_active: bool,
        noalias: bool,
    ) -> CallSignature:
        """The signature for arguments annotated ``annotations`` of types
        ``argtypes``: each annotation lays out its argument."""
        layouts = [a.layout(i, ty, shape) for i, (a, ty) in enumerate(zip(annotations, argtypes))]
        return cls(function, layouts, restype, shape, ret_active=ret_active, noalias=noalias)

    # -- the wrapper's parameters ------------------------------------------------

    @property
    def names(self) -> list[str]:
        """The wrapper's parameter names: ``x<i>`` for argument ``i``, its
        shadow or tangent ``dx<i>`` after it, then ``dret``."""
        return [p.name for p in self.params]

    def call_args(self, prepared: Prepared, ret: Any) -> list[Any]:
        """The wrapper's arguments for the call ``prepared``: its arguments,
        then the seeds of the return value (1.0, or ``ret=(s1, ..., sW)``)."""
        args = prepared.call_args
        if self.seeded and self.mode.takes_return_seed:
            if not self.batch:
                args.append(1.0)
            elif type(ret) is tuple:
                args.append(tuple(float(s) for s in ret))
            else:
                args.append((1.0,) * self.width)
        return args

    def type_call(self, typingctx: Any, argtys: Sequence[types.Type]) -> list[types.Type]:
        """The types the wrapper's arguments ``argtys`` are converted to (a
        ``TypingError`` when they do not fit)."""
        if len(argtys) != len(self.params):
            raise TypingError(
                f"enzpy derivative {self.name} takes {len(self.params)} arguments "
                f"({', '.join(self.names)}), got {len(argtys)}"
            )
        return [
            p.expect(typingctx, actual, f"{self.name} ({name})")
            for p, actual, name in zip(self.params, argtys, self.names, strict=True)
        ]

    def sharing_roles(self) -> str:
        """The roles of the wrapper's arguments for the checks of arrays that
        share memory (``_overlap.refuse_shared_memory``)."""
        out = []
        for k, p in enumerate(self.params):
            nxt = self.params[k + 1] if k + 1 < len(self.params) else None
            if isinstance(p, Value):
                shadowed = isinstance(nxt, ShadowArrays) and nxt.index == p.index
                out.append("D" if shadowed else "C")
            elif isinstance(p, ShadowArrays):
                out.append("B" if p.batch else "S")
            else:
                out.append("-")
        flags = "!" if self.request.get("noalias") else ""
        return flags + "".join(out) + "|" + ",".join(self.names)

    def lower_call(
        self, context: Any, builder: Any, argtys: Sequence[types.Type], args: Sequence[Any]
    ) -> Any:
        """Call the derivative (declared in ``builder``'s module) with the
        wrapper's arguments and return the result tuple callers get."""
        emit_shared_memory_checks(context, builder, argtys, args, self.sharing_roles())
        primals = {
            p.index: (ty, val)
            for p, ty, val in zip(self.params, argtys, args, strict=True)
            if isinstance(p, Value)
        }
        sections: dict[Section, list[Any]] = {s: [] for s in Section}
        for p, ty, val in zip(self.params, argtys, args, strict=True):
            sections[p.section].extend(p.lower(context, builder, ty, val, primals))
        fnty = context.call_conv.get_function_type(self.restype, self.argtypes)
        fn = cgutils.get_or_insert_function(builder.module, fnty, self.name)
        status, flat = context.call_conv.call_function(
            builder, fn, self.restype, self.argtypes, [v for s in Section for v in sections[s]]
        )
        with cgutils.if_unlikely(builder, status.is_error):
            _raise_own_failures(context, builder, status.code)
            context.call_conv.return_status_propagate(builder, status)
        if self.result_type == self.restype:
            return flat
        nflat = len(self.flat_result_types)
        flat_members = [builder.extract_value(flat, k) for k in range(nflat)]
        if self.drops_primal:
            context.nrt.decref(builder, self.primal_restype, flat_members.pop(0))
        members = iter(flat_members)
        return context.make_tuple(
            builder,
            self.result_type,
            [r.regroup(context, builder, members) for r in self.results],
        )

    # -- the result ---------------------------------------------------------------

    def autodiff_result(self, raw: tuple[Any, ...]) -> Any:
        """What ``autodiff`` returns for the wrapper's result ``raw``."""
        derivatives = self.derivatives(raw)
        ret = None if self._return_at is None else raw[self._return_at]
        primal = None if self._primal_at is None else raw[self._primal_at]
        return self.mode.autodiff_result(derivatives, ret, primal)

    def derivatives(self, raw: tuple[Any, ...]) -> tuple[Any, ...]:
        """Each argument's derivative in ``raw`` (None where there is none)."""
        return tuple([None if k is None else raw[k] for k in self._argument_at])

    def rename(self, name: str) -> None:
        """Name the derivative ``name`` (unique in the process) instead."""
        self.name = name
        self.request["name"] = name

    def docstring(self, what: str) -> str:
        """The wrapper's docstring (``what`` names the function)."""
        call = f"enzpy_derivative({', '.join(self.names)})"
        results = ["primal return"] if self.has_primal else []
        if self.mode.is_forward:
            if self.seeded:
                results.append("tangent of the return" + (" per direction" if self.batch else ""))
            return "\n".join(
                [
                    f"Forward-mode derivative of {what} (enzpy"
                    + (f", batch of {self.width} directions" if self.batch else "")
                    + ").",
                    "",
                    f"{call} -> ({', '.join(results)})",
                    "",
                    "x<i> is argument i of the function; dx<i> its tangent: the shadow array",
                    "of a Duplicated array (same shape and strides as x<i>, holding the input",
                    "tangent on entry and the output tangent on exit), or the tangent of a",
                    "float argument"
                    + ("; in batch mode a tuple, one per direction." if self.batch else "."),
                ]
            )
        results += [f"d/dx{lay.index}" for lay in self.layouts if lay.result is not None]
        lines = [
            f"Reverse-mode derivative of {what} (enzpy"
            + (f", batch of {self.width} cotangents" if self.batch else "")
            + ").",
            "",
            f"{call} -> ({', '.join(results)})",
            "",
            "x<i> is argument i of the function; dx<i> the shadow array of a",
            "Duplicated argument (same shape and strides as x<i>), updated in place;",
        ]
        if self.seeded:
            lines.append(
                "dret the cotangent of the return value"
                + (" (a tuple, one per lane);" if self.batch else ";")
            )
        lines.append(
            "d/dx<i> the derivative for each Active argument"
            + (" (a tuple, one per lane); shadows are tuples of arrays." if self.batch else ".")
        )
        return "\n".join(lines)


def _holds_references(context: Any, ty: types.Type) -> bool:
    """Values of ``ty`` hold references numba counts (arrays, and tuples or
    records holding them)."""
    return bool(context.data_model_manager[ty].contains_nrt_meminfo())


def _extents(context: Any, lay: ArgLayout) -> list[bool]:
    """Which of ``lay``'s request entries are arrays' extents (none when its
    entries are not one per LLVM parameter of its type)."""
    flags = extent_params(context, lay.ty)
    return flags if len(flags) == len(lay.params) else [False] * len(lay.params)


#: What the wrapper raises for the derivative's own failures (_abi). A
#: TapeBudgetError is completed with the sizes where Python sees it
#: (``_build.invoke``).
_OWN_FAILURES = (
    (
        NO_MEMORY_STATUS,
        MemoryError,
        "enzpy: the derivative could not allocate its own memory (its tape or the "
        "shadows of arrays the function allocates)",
    ),
    (
        TAPE_BUDGET_STATUS,
        TapeBudgetError,
        "the reverse sweep's tape would grow past enzpy's tape budget "
        "(enzpy.tape_budget(); raise it with enzpy.set_tape_budget or ENZPY_TAPE_BUDGET)",
    ),
)


def _raise_own_failures(context: Any, builder: Any, code: Any) -> None:
    """Return from the wrapper with a Python exception for each status of
    the derivative's own failures (numba's statuses propagate as they are)."""
    for value, exc, message in _OWN_FAILURES:
        hit = builder.icmp_signed("==", code, code.type(value))
        with builder.if_then(hit, likely=False):
            context.call_conv.return_user_exc(builder, exc, (message,))
