"""Custom rules: the numba functions the engine calls in place of a function
with a rule (``ir_passes/rules/CustomRules.h`` documents their ABI).

A rule author writes ``forward``, ``augmented`` and ``reverse`` once, as if
every float argument were differentiable (``enzpy.register_rule``). For each
argument types a kernel calls the function with, this module builds three
wrappers around them that take what the engine passes -- bit masks for
``cfg.active`` and ``cfg.overwritten``, a word with the batch width, lane
and result activity, the call's own operands, and one
shadow operand per argument (an array's shadow data pointer, a float's
tangent, 0 for other arguments) -- and turns them into the author's
arguments: a ``RuleConfig``, and for each array a shadow array of its shape
and strides over the shadow memory (a zero array where the argument carries
no derivative). It checks what the author's functions return, and describes
the wrappers to the engine (the request's ``rules`` entry). A derivative calls
a wrapper through a declaration under a name of this process
(``Wrappers.symbols``), which ``publish`` defines as the compiled wrapper's
address: the rule code is compiled once per process, not again in every
derivative.

Arguments are float and integer scalars, arrays (njit functions) and raw
pointers (C functions); a tape is an array, a scalar, or a tuple of them.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import llvmlite.binding as llvm
import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, compiler, types
from numba.core.compiler_lock import global_compiler_lock
from numba.core.dispatcher import Dispatcher
from numba.core.registry import cpu_target
from numba.extending import intrinsic, overload
from numba.np.arrayobj import populate_array

from ._rule_config import RuleConfig
from .errors import EnzpyTypeError, UnsupportedError

__all__ = [
    "CustomRule",
    "Wrappers",
    "arg_spec",
    "is_wrapper",
    "members",
    "publish",
    "wrappers",
]


@dataclass(frozen=True)
class CustomRule:
    """A rule given by forward, augmented and reverse functions. A rule whose
    reverse is built for each argument types (``enzpy.register_jvp``) gives
    ``reverse_for(argtypes, restype)`` instead."""

    forward: Dispatcher | None
    augmented: Dispatcher | None
    reverse: Dispatcher | None
    display: str
    reverse_for: Callable[[tuple[types.Type, ...], types.Type | None], Dispatcher] | None = None
    #: The rule runs at every call, whether or not its inputs carry
    #: derivatives, and what the call writes carries them (a function that
    #: brings values from outside the kernel: a receive from another process).
    always_active: bool = False
    #: The arguments (by position) whose memory the function only reads: a
    #: C function may otherwise write through every pointer it is passed.
    reads_only: frozenset[int] = frozenset()
    #: The augmented function gets the shadows too, as the forward function
    #: does (those of the batch's first lane).
    augmented_shadows: bool = False
    #: The function writes none of its arguments (enzpy.register_jvp's
    #: contract): the engine refuses a call of one whose body does.
    writes_nothing: bool = False


@intrinsic
def _shadow_like(typingctx: Any, ptr: types.Type, like: types.Type) -> Any:
    """An array of ``like``'s shape and strides over the memory at ``ptr``
    (owned by nobody: no MemInfo)."""
    if ptr != types.voidptr or not isinstance(like, types.Array):
        return None
    out = like.copy(readonly=False)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        src = context.make_array(signature.args[1])(context, builder, value=args[1])
        arr = context.make_array(signature.return_type)(context, builder)
        populate_array(
            arr,
            data=builder.bitcast(args[0], src.data.type),
            shape=src.shape,
            strides=src.strides,
            itemsize=src.itemsize,
            meminfo=None,
        )
        return arr._getvalue()

    return out(ptr, like), codegen


@intrinsic
def _extent(typingctx: Any, arr: types.Type) -> Any:
    """``(bytes, offset)``: the size of the allocation ``arr`` lies in and
    where its data pointer lies in it; ``(0, -1)`` for an array that owns no
    allocation (a view of a global, of foreign memory)."""
    if not isinstance(arr, types.Array):
        return None
    sig = types.UniTuple(types.intp, 2)(arr)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        intp = context.get_value_type(types.intp)
        a = context.make_array(signature.args[0])(context, builder, value=args[0])
        size = cgutils.alloca_once_value(builder, ir.Constant(intp, 0))
        off = cgutils.alloca_once_value(builder, ir.Constant(intp, -1))
        with builder.if_then(cgutils.is_not_null(builder, a.meminfo)):
            base = context.nrt.meminfo_data(builder, a.meminfo)
            raw = builder.bitcast(a.meminfo, ir.IntType(8).as_pointer())
            field = builder.bitcast(builder.gep(raw, [ir.Constant(intp, 32)]), intp.as_pointer())
            builder.store(builder.load(field), size)
            delta = builder.sub(builder.ptrtoint(a.data, intp), builder.ptrtoint(base, intp))
            builder.store(delta, off)
        return context.make_tuple(
            builder, signature.return_type, [builder.load(size), builder.load(off)]
        )

    return sig, codegen


@intrinsic
def _meminfo_address(typingctx: Any, arr: types.Type) -> Any:
    """The address of ``arr``'s MemInfo (0 for none)."""
    if not isinstance(arr, types.Array):
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        a = context.make_array(signature.args[0])(context, builder, value=args[0])
        return builder.ptrtoint(a.meminfo, context.get_value_type(types.intp))

    return types.intp(arr), codegen


@intrinsic
def _data_pointer(typingctx: Any, arr: types.Type, offset: types.Type) -> Any:
    """``arr``'s data pointer plus ``offset`` bytes."""
    if not isinstance(arr, types.Array) or not isinstance(offset, types.Integer):
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        a = context.make_array(signature.args[0])(context, builder, value=args[0])
        raw = builder.bitcast(a.data, ir.IntType(8).as_pointer())
        return builder.gep(raw, [args[1]])

    return types.voidptr(arr, offset), codegen


def members(t: types.Type) -> tuple[types.Type, ...]:
    """The member types of a numba tuple type."""
    return tuple(getattr(t, "types", ()))


def _flat_count(t: types.Type) -> int:
    """How many LLVM values numba passes for an argument of type ``t``
    (numba's own argument packing says)."""
    return len(cpu_target.target_context.get_arg_packer((t,)).argument_types)


def _tape_owners(t: types.Type, rule: str, start: int = 0) -> list[int]:
    """The positions of the MemInfos among the tape's scalar leaves."""
    if isinstance(t, types.Array):
        return [start]
    if isinstance(t, types.BaseTuple):
        owners: list[int] = []
        for m in members(t):
            owners += _tape_owners(m, rule, start)
            start += _flat_count(m)
        return owners
    if isinstance(t, types.Float | types.Integer | types.Boolean):
        return []
    raise EnzpyTypeError(
        f"the rule for {rule}: its augmented function returns a tape of type {t}; a "
        "tape is an array, a float or integer, or a tuple of them"
    )


def _kind(t: types.Type) -> str:
    if isinstance(t, types.Array):
        return "a"
    if t == types.voidptr or isinstance(t, types.CPointer):
        return "p"
    if isinstance(t, types.Float):
        return "f"
    if isinstance(t, types.Integer | types.Boolean):
        return "o"
    return "?"


@dataclass(frozen=True)
class Wrappers:
    forward: Dispatcher | None
    augmented: Dispatcher | None
    reverse: Dispatcher | None
    #: Argument types of each wrapper (None where absent).
    forward_args: tuple[types.Type, ...] | None
    augmented_args: tuple[types.Type, ...] | None
    reverse_args: tuple[types.Type, ...] | None
    #: The engine's description of the arguments ("a4,f7,o8").
    args: str
    tape_owners: list[int]
    #: LLVM types of what each wrapper returns ("" for None).
    results: dict[str, str]
    #: The symbol under which a derivative declares each wrapper (unique in
    #: the process; ``publish`` compiles the wrapper and defines it).
    symbols: dict[str, str]
    #: The LLVM declaration of each wrapper under its symbol.
    declarations: dict[str, str]

    def compiled(self, what: str) -> tuple[Dispatcher, tuple[types.Type, ...]]:
        """The wrapper ``what`` ("forward", "augmented", "reverse") and its
        argument types."""
        disp, args = {
            "forward": (self.forward, self.forward_args),
            "augmented": (self.augmented, self.augmented_args),
            "reverse": (self.reverse, self.reverse_args),
        }[what]
        assert disp is not None and args is not None
        return disp, args


def _source(
    name: str,
    params: list[str],
    n: int,
    kinds: list[str],
    call: str,
    shadows: bool = True,
    lanes: bool = False,
) -> str:
    """A wrapper ``name(params)`` that builds ``cfg`` from the masks and the
    shadow arrays ``d<i>``, and returns ``call``. With ``lanes`` (the forward
    function) nothing is overwritten, and a call for a batch lane other than
    the first runs on copies of the arrays whose bits are set in
    ``overwritten`` (a ``ValueError`` when one shares memory with another
    array argument)."""
    lines = [f"def {name}({', '.join(params)}):"]
    bits = lambda mask: ", ".join(f"({mask} >> {i}) & 1 != 0" for i in range(n))  # noqa: E731
    comma = "," if n == 1 else ""
    written = "False, " * n if lanes else bits("overwritten") + comma
    lines.append(
        f"    cfg = RuleConfig(({bits('active')}{comma}), ({written}), lanes & 255, "
        "(lanes >> 8) & 255, (lanes >> 16) & 1 != 0)"
    )
    for i, k in enumerate(kinds if shadows else []):
        if k == "a":
            shadow, zero = f"_shadow_like(s{i}, x{i})", f"np.zeros_like(x{i})"
            lines.append(f"    d{i} = {shadow} if (active >> {i}) & 1 else {zero}")
        elif k in "pf":
            lines.append(f"    d{i} = s{i}")
        else:
            lines.append(f"    d{i} = 0")
    # After the shadows, which have the strides of the argument itself. A
    # copy would no longer share memory with another argument that does.
    arrays = [i for i, k in enumerate(kinds) if k == "a"] if lanes else []
    for i in arrays:
        for j in arrays:
            if j != i:
                lines += [
                    f"    if (overwritten >> {i}) & 1 and _meminfo_address(x{i}) != 0 "
                    f"and _meminfo_address(x{i}) == _meminfo_address(x{j}):",
                    "        raise ValueError(LANE_ALIAS)",
                ]
    for i in arrays:
        lines.append(f"    x{i} = _lane_copy(x{i}) if (overwritten >> {i}) & 1 else x{i}")
    lines.append(f"    return {call}")
    return "\n".join(lines) + "\n"


def _lane_copy(x: np.ndarray) -> np.ndarray:
    """A copy of ``x`` of the same layout (numba only)."""
    raise NotImplementedError


@overload(_lane_copy)
def _lane_copy_impl(x):  # type: ignore[no-untyped-def]  # numba compares the signatures
    if x.layout == "F":
        return lambda x: x.T.copy().T
    return lambda x: x.copy()


def _compile(source: str, name: str, scope: dict[str, Any], qualname: str) -> Dispatcher:
    exec(source, scope)  # noqa: S102 - generated from argument counts only
    fn = scope[name]
    fn.__qualname__ = qualname
    compiled: Dispatcher = numba.njit(fn)
    return compiled


def _return_type(disp: Dispatcher, args: tuple[types.Type, ...]) -> types.Type:
    """What ``disp`` returns for ``args``: numba's typing and lowering only,
    no machine code (a wrapper is compiled when a derivative calls it,
    ``publish``). The functions it calls are compiled as usual (loaded from
    numba's cache where they have one)."""
    d: Any = disp  # numba's compiler internals, as _capture._compile_copy uses them
    comp = d._compiler
    flags = compiler.Flags()
    d.targetdescr.options.parse_as_flags(flags, d.targetoptions)
    flags = comp._customize_flags(flags)
    flags.no_cpython_wrapper = True
    flags.no_cfunc_wrapper = True
    flags.no_compile = True
    with global_compiler_lock:
        cres = compiler.compile_extra(
            d.targetdescr.typing_context,
            d.targetdescr.target_context,
            comp._get_implementation(args, {}),
            args=args,
            return_type=None,
            flags=flags,
            locals={},
        )
    found: types.Type = cres.signature.return_type
    return found


def _check_pair(found: types.Type, restype: types.Array, what: str, meaning: str) -> None:
    """``found`` is ``(restype, an array of floats of its dimensions)``, or
    an error naming ``what``."""
    pair = members(found) if isinstance(found, types.BaseTuple) else ()
    ok = (
        len(pair) == 2
        and pair[0] == restype
        and isinstance(pair[1], types.Array)
        and pair[1].ndim == restype.ndim
        and isinstance(pair[1].dtype, types.Float)
    )
    if not ok:
        raise EnzpyTypeError(
            f"{what} returns {found}; expected a pair {meaning} with the result a "
            f"{restype} and its tangent an array of floats of {restype.ndim} "
            "dimension(s)"
        )


def _array_scope(
    name: str, restype: types.Array, argtypes: tuple[types.Type, ...]
) -> dict[str, Any]:
    """What the wrappers of a function returning an array use."""
    dtype = np.dtype(str(restype.dtype))
    scope: dict[str, Any] = {
        "_extent": _extent,
        "_meminfo_address": _meminfo_address,
        "_data_pointer": _data_pointer,
        "DTYPE": getattr(np, dtype.name),
        "ITEMSIZE": dtype.itemsize,
        "NOT_OWNED": f"the rule for {name} returned an array that owns no memory (a "
        "view of a global or of foreign memory): return a new array",
        "SHAPE": f"the forward function of the rule for {name} returned a tangent "
        "whose shape is not the result's",
    }
    for i, t in enumerate(argtypes):
        if isinstance(t, types.Array):
            scope[f"ALIAS{i}"] = (
                f"the rule for {name} returned an array that shares memory with its "
                f"argument {i}: return a new array (a copy)"
            )
    return scope


def _array_source(
    fname: str, params: str, argtypes: tuple[types.Type, ...], unpack: str, rest: str
) -> str:
    """A wrapper that calls ``inner`` (the wrapper of the author's function)
    with ``params`` and checks that the array ``y`` it returns is new memory:
    the engine gives it a shadow of its own."""
    lines = [
        f"def {fname}({params}):",
        f"    {unpack} = inner({params})",
        "    size, off = _extent(y)",
        "    if off < 0:",
        "        raise ValueError(NOT_OWNED)",
    ]
    for i, t in enumerate(argtypes):
        if isinstance(t, types.Array):
            lines += [
                f"    if _meminfo_address(y) == _meminfo_address(x{i}):",
                f"        raise ValueError(ALIAS{i})",
            ]
    return "\n".join(lines) + rest + "\n"


_built: dict[
    tuple[int, tuple[types.Type, ...], types.Type | None], tuple[CustomRule, Wrappers]
] = {}


def wrappers(
    rule: CustomRule,
    argtypes: tuple[types.Type, ...],
    restype: types.Type | None,
) -> Wrappers:
    """The wrappers of ``rule`` for a function of ``argtypes`` returning
    ``restype`` (None for nothing), built once per process."""
    key = (id(rule), argtypes, restype)
    found = _built.get(key)
    if found is not None and found[0] is rule:
        return found[1]
    built = _build(rule, argtypes, restype)
    _built[key] = (rule, built)
    return built


def arg_spec(rule: CustomRule, argtypes: tuple[types.Type, ...]) -> str:
    """The engine's description of the arguments of a function of
    ``argtypes`` with ``rule`` ("a4d,p9f,f7,o8": kind -- array, raw pointer,
    float, other -- and flattened operand of each, and the float type of the
    memory's elements), without compiling
    anything; an error for arguments a rule cannot
    take."""
    kinds = [_kind(t) for t in argtypes]
    for i, (k, t) in enumerate(zip(kinds, argtypes, strict=True)):
        if k == "?":
            raise UnsupportedError(
                f"the rule for {rule.display}: argument {i} is of type {t}; a function "
                "with a custom rule takes float and integer scalars, arrays and pointers"
            )
    for i in sorted(rule.reads_only):
        if i >= len(kinds) or kinds[i] not in "ap":
            raise EnzpyTypeError(
                f"the rule for {rule.display}: reads_only names argument {i}, which is "
                "not an array or a pointer"
            )
    if len(argtypes) > 62:
        raise UnsupportedError(f"the rule for {rule.display}: more than 62 arguments")
    spec: list[str] = []
    offset = 0
    for k, t in zip(kinds, argtypes, strict=True):
        spec.append(f"a{offset + 4}" if k == "a" else f"{k}{offset}")
        if k in "ap" and len(spec) - 1 in rule.reads_only:
            spec[-1] += "r"
        # The float type memory holds, where numba's type says: an array the
        # kernel touches only through such calls has no other source of it.
        dtype = getattr(t, "dtype", None)
        if k in "ap" and dtype in (types.float64, types.float32):
            spec[-1] += "d" if dtype == types.float64 else "f"
        offset += _flat_count(t)
    return ",".join(spec)


def _build(
    rule: CustomRule,
    argtypes: tuple[types.Type, ...],
    restype: types.Type | None,
) -> Wrappers:
    name = rule.display
    spec = arg_spec(rule, argtypes)
    reverse = rule.reverse_for(argtypes, restype) if rule.reverse_for else rule.reverse
    kinds = [_kind(t) for t in argtypes]
    stypes = tuple(
        types.voidptr if k in "ap" else t if k == "f" else types.int64
        for k, t in zip(kinds, argtypes, strict=True)
    )
    n = len(argtypes)
    xs = [f"x{i}" for i in range(n)]
    ss = [f"s{i}" for i in range(n)]
    pairs = ", ".join(f"x{i}, d{i}" for i in range(n))
    scope: dict[str, Any] = {
        "RuleConfig": RuleConfig,
        "np": np,
        "_shadow_like": _shadow_like,
        "_lane_copy": _lane_copy,
        "_meminfo_address": _meminfo_address,
        "LANE_ALIAS": f"forward batch mode through the rule for {name}: an argument it "
        "writes shares memory with another argument; run one direction at a time",
        "forward": rule.forward,
        "augmented": rule.augmented,
        "reverse": reverse,
    }
    masks = (types.int64, types.int64, types.int64)
    float_result = isinstance(restype, types.Float)
    array_result = isinstance(restype, types.Array)
    if array_result:
        assert isinstance(restype, types.Array)
        scope.update(_array_scope(name, restype, argtypes))
    fwd = aug = rev = None
    fwd_args = aug_args = rev_args = None
    fwd_ret = aug_ret = rev_ret = None
    owners: list[int] = []
    if rule.forward is not None:
        src = _source(
            "forward_rule",
            ["active", "overwritten", "lanes", *xs, *ss],
            n,
            kinds,
            f"forward(cfg, {pairs})",
            lanes=True,
        )
        fwd = _compile(src, "forward_rule", dict(scope), f"{name}.forward")
        fwd_args = (*masks, *argtypes, *stypes)
        found = fwd_ret = _return_type(fwd, fwd_args)
        if isinstance(restype, types.Array):
            _check_pair(
                found,
                restype,
                f"the forward function of the rule for {name}",
                "(the result and its tangent)",
            )
            params = ", ".join(["active", "overwritten", "lanes", *xs, *ss])
            src = _array_source(
                "forward_array",
                params,
                argtypes,
                "y, dy",
                """
    if dy.shape != y.shape:
        raise ValueError(SHAPE)
    buf = np.zeros(size // ITEMSIZE + 1, DTYPE)
    sd = _shadow_like(_data_pointer(buf, off), y)
    for idx in np.ndindex(y.shape):
        sd[idx] = dy[idx]
    return y, buf, _data_pointer(sd, 0)""",
            )
            fwd = _compile(src, "forward_array", dict(scope, inner=fwd), f"{name}.forward")
            fwd_ret = _return_type(fwd, fwd_args)
        elif found != (
            want := types.UniTuple(restype, 2) if float_result else restype or types.none
        ):
            raise EnzpyTypeError(
                f"the forward function of the rule for {name} returns {found}; "
                f"expected {want}"
                + (" (the result and its tangent)" if float_result else " (the result)")
            )
    if rule.augmented is not None and reverse is not None:
        with_shadows = rule.augmented_shadows
        aug_params = ["active", "overwritten", "lanes", *xs, *(ss if with_shadows else [])]
        src = _source(
            "augmented_rule",
            aug_params,
            n,
            kinds,
            f"augmented(cfg, {pairs if with_shadows else ', '.join(xs)})",
            shadows=with_shadows,
        )
        aug = _compile(src, "augmented_rule", dict(scope), f"{name}.augmented")
        aug_args = (*masks, *argtypes, *(stypes if with_shadows else ()))
        found = aug_ret = _return_type(aug, aug_args)
        if restype is not None and restype != types.none:
            if not (
                isinstance(found, types.BaseTuple)
                and len(found) == 2
                and members(found)[0] == restype
            ):
                raise EnzpyTypeError(
                    f"the augmented function of the rule for {name} returns {found}; "
                    f"expected (result, tape) with the result a {restype}"
                )
            tape = members(found)[1]
            if array_result:
                params = ", ".join(aug_params)
                src = _array_source(
                    "augmented_array",
                    params,
                    argtypes,
                    "y, tape",
                    """
    return y, (y, tape)""",
                )
                aug = _compile(src, "augmented_array", dict(scope, inner=aug), f"{name}.augmented")
                aug_ret = _return_type(aug, aug_args)
        else:
            tape = found
        if tape == types.none:
            raise EnzpyTypeError(
                f"the augmented function of the rule for {name} returns no tape; return "
                "0 when the reverse needs nothing"
            )
        tail: tuple[types.Type, ...] = ()
        if array_result:
            # The engine's tape: (y, the author's tape); y's shadow holds
            # its cotangent.
            tape = members(aug_ret)[1]
            call = f"reverse(cfg, tape[1], {pairs}, _shadow_like(ybar, tape[0]))"
            tail = (types.voidptr,)
        else:
            call = f"reverse(cfg, tape, {pairs}{', ybar' if float_result else ''})"
            if float_result and restype is not None:
                tail = (restype,)
        owners = _tape_owners(tape, name)
        src = _source(
            "reverse_rule",
            ["active", "overwritten", "lanes", "tape", *xs, *ss] + (["ybar"] if tail else []),
            n,
            kinds,
            call,
        )
        rev = _compile(src, "reverse_rule", dict(scope), f"{name}.reverse")
        rev_args = (*masks, tape, *argtypes, *stypes, *tail)
        found = rev_ret = _return_type(rev, rev_args)
        floats = [t for t in argtypes if isinstance(t, types.Float)]
        outs = members(found) if isinstance(found, types.BaseTuple) else (found,)
        ok = (
            (not floats and isinstance(found, types.BaseTuple) and len(found) == 0)
            or (not floats and found == types.none)
            or (len(floats) == 1 and isinstance(found, types.Float))
            or (
                len(floats) > 1
                and isinstance(found, types.BaseTuple)
                and len(outs) == len(floats)
                and all(isinstance(m, types.Float) for m in outs)
            )
        )
        if not ok:
            expected = (
                "() (no float arguments)"
                if not floats
                else "one float"
                if len(floats) == 1
                else f"a tuple of {len(floats)} floats"
            )
            raise EnzpyTypeError(
                f"the reverse function of the rule for {name} returns {found}; expected "
                f"{expected}: the cotangent of each float argument, in order"
            )
    elif rule.augmented is not None or reverse is not None:
        raise EnzpyTypeError(f"the rule for {name} needs both augmented= and reverse=")
    results: dict[str, str] = {}
    symbols: dict[str, str] = {}
    declarations: dict[str, str] = {}
    serial = next(_serial)
    for what, disp, argtys, restype_ in (
        ("forward", fwd, fwd_args, fwd_ret),
        ("augmented", aug, aug_args, aug_ret),
        ("reverse", rev, rev_args, rev_ret),
    ):
        if disp is None or argtys is None or restype_ is None:
            continue
        results[what] = _llvm_type(restype_)
        symbols[what] = symbol = f"enzpy.rule.{serial}.{what}"
        declarations[what] = _declaration(symbol, restype_, argtys)
    built = Wrappers(
        fwd,
        aug,
        rev,
        fwd_args,
        aug_args,
        rev_args,
        spec,
        owners,
        results,
        symbols,
        declarations,
    )
    for what, symbol in symbols.items():
        _wrapper_symbols[symbol] = built.compiled(what)
    return built


_TYPED_POINTER = re.compile(r"\b(?:i\d+|double|float|half|void)\*+")


def _llvm_type(t: types.Type) -> str:
    """numba's LLVM value type of ``t``, spelled with opaque pointers ("" for
    None)."""
    if t == types.none:
        return ""
    return _TYPED_POINTER.sub("ptr", str(cpu_target.target_context.get_value_type(t)))


def _declaration(symbol: str, restype: types.Type, args: tuple[types.Type, ...]) -> str:
    """The declaration of a wrapper under ``symbol``: numba's native calling
    convention for ``args`` returning ``restype``."""
    tctx = cpu_target.target_context
    fnty = tctx.call_conv.get_function_type(restype, args)
    params = ", ".join(_TYPED_POINTER.sub("ptr", str(t)) for t in fnty.args)
    ret = _TYPED_POINTER.sub("ptr", str(fnty.return_type))
    return f'declare {ret} @"{symbol}"({params})'


_serial = itertools.count()
#: The wrapper each symbol of ``Wrappers.symbols`` stands for.
_wrapper_symbols: dict[str, tuple[Dispatcher, tuple[types.Type, ...]]] = {}
#: The symbols ``publish`` defined.
_published: set[str] = set()


def is_wrapper(symbol: str) -> bool:
    """Whether ``symbol`` names a wrapper of this process (``Wrappers.symbols``):
    code calling it runs in this process only."""
    return symbol in _wrapper_symbols


def publish(symbol: str) -> bool:
    """Compile the wrapper ``symbol`` names (once) and define the symbol as
    its address in the JIT's symbol table, where the derivatives that
    declare it find it; False if ``symbol`` names no wrapper."""
    found = _wrapper_symbols.get(symbol)
    if found is None:
        return False
    if symbol in _published:
        return True
    disp, args = found
    with global_compiler_lock:
        disp.compile(args)
        cres: Any = disp.overloads[args]
        address = cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name)
        if not address:
            return False
        llvm.add_symbol(symbol, address)
        _published.add(symbol)
    return True
