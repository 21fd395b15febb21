"""The numpy side of the framework bridges (``enzpy.jax``, ``enzpy.torch``).

A :class:`Kernel` describes an njit function with output arguments as a
function of arrays: its parameters are *inputs* (read only), *outputs*
(written: the bridge allocates them, zero-filled) or *in-place* arguments
(read and written: the bridge passes a copy of the input and returns the
copy's final contents). The function the frameworks see is

    results = kernel(*inputs)    # inputs: the inputs and in-place arguments,
                                 # results: the outputs and in-place arguments,
                                 # both in the kernel's parameter order

and its derivatives are enzpy's: ``jvp`` (forward mode), ``vjp`` (reverse
mode), in batch mode when several tangents or cotangents share one primal,
and an njit loop over a leading batch axis when the primals are batched
(``vmap``). Everything here takes and returns numpy arrays; the compiled
derivatives are made once per argument types and reused.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numba
import numpy as np
from numba.core.errors import TypingError

from . import _build
from ._config import FLOAT_DTYPES
from ._modes import Forward, Reverse
from .annotations import Active, BatchDuplicated, Const, Duplicated
from .errors import EnzpyTypeError, EnzpyValueError

__all__ = ["Kernel", "LANES"]

#: Batch widths the lane-batched derivatives are compiled for: a batch of
#: ``B`` tangents (cotangents) runs in chunks of the smallest of these that
#: holds it, the last chunk padded with zero lanes, so that ``jacfwd`` of
#: inputs of any size compiles at most these few widths.
LANES = (1, 2, 4, 8)

IN, OUT, INOUT = "in", "out", "inout"

OutSpec = str | Callable[..., Any]


def _readonly(a: np.ndarray) -> np.ndarray:
    """A read-only view of ``a``: numba refuses, at compile time, a kernel
    that writes an argument declared as an input."""
    if not a.flags.writeable:
        return a
    v = a.view()
    v.flags.writeable = False
    return v


class Kernel:
    """An njit kernel with its parameters' roles (see the module's doc).

    ``outputs`` maps each output parameter to its shape: the name of an
    input parameter (the output is shaped like it, with its dtype), or a
    function of the inputs (anything with ``.shape`` and ``.dtype``: numpy
    arrays, JAX tracers, torch tensors) returning the shape, or
    ``(shape, dtype)``; without a dtype the output has the widest float
    dtype of the float inputs (float64 when there are none). ``inplace``
    names the parameters the kernel reads and writes."""

    def __init__(
        self,
        f: Any,
        outputs: Mapping[str, OutSpec] | None = None,
        inplace: Sequence[str] = (),
    ) -> None:
        self.disp = _build.dispatcher(f)
        self.name = _build.function_name(self.disp)
        params = list(inspect.signature(self.disp.py_func).parameters)
        outputs = dict(outputs or {})
        for n in [*outputs, *inplace]:
            if n not in params:
                raise EnzpyValueError(
                    f"{self.name} has no parameter {n!r} (its parameters: {', '.join(params)})"
                )
        both = set(outputs) & set(inplace)
        if both:
            raise EnzpyValueError(
                f"{self.name}: {', '.join(sorted(both))} is both an output and in place"
            )
        if not outputs and not inplace:
            raise EnzpyValueError(
                f"{self.name}: a bridged kernel needs at least one output or in-place argument"
            )
        self.params = params
        self.roles = [OUT if p in outputs else INOUT if p in inplace else IN for p in params]
        self.inputs = [i for i, r in enumerate(self.roles) if r != OUT]
        self.results = [i for i, r in enumerate(self.roles) if r != IN]
        for n, s in outputs.items():
            if isinstance(s, str) and (s not in params or self.roles[params.index(s)] == OUT):
                raise EnzpyValueError(
                    f"{self.name}: output {n!r} is shaped like {s!r}, which is not an input"
                )
        self.outputs = outputs
        self._compiled: dict[Any, Any] = {}

    # --- shapes -------------------------------------------------------------

    def result_specs(
        self, xs: Sequence[Any], dtype_of: Callable[[Any], Any] = np.dtype
    ) -> list[tuple[tuple[int, ...], np.dtype[Any]]]:
        """``(shape, numpy dtype)`` of each result for inputs ``xs`` (one per
        input, in order; anything with ``.shape`` and ``.dtype``;
        ``dtype_of`` converts a framework's dtype to numpy's)."""
        self._check_count(xs)
        dts = [np.dtype(dtype_of(x.dtype)) for x in xs]
        floats = [d for d in dts if d in FLOAT_DTYPES]
        default = max(floats, key=lambda d: d.itemsize) if floats else np.dtype(np.float64)
        specs = []
        for i in self.results:
            p = self.params[i]
            if self.roles[i] == INOUT:
                k = self.inputs.index(i)
                specs.append((tuple(xs[k].shape), dts[k]))
                continue
            s = self.outputs[p]
            if isinstance(s, str):
                k = self.inputs.index(self.params.index(s))
                specs.append((tuple(xs[k].shape), dts[k]))
                continue
            got = s(*xs)
            shape, dt = got if _is_shape_dtype(got) else (got, default)
            shape = (int(shape),) if isinstance(shape, int | np.integer) else tuple(shape)
            dt = np.dtype(dtype_of(dt)) if not isinstance(dt, np.dtype) else dt
            if dt not in FLOAT_DTYPES:
                raise EnzpyTypeError(
                    f"{self.name}: output {p!r} must be float32 or float64, got {dt}"
                )
            specs.append((shape, dt))
        return specs

    def check_types(self, xs: Sequence[Any], dtype_of: Callable[[Any], Any] = np.dtype) -> None:
        """Check the number and dtypes of the inputs ``xs`` (anything with
        ``.shape`` and ``.dtype``) and the shapes of the results, with enzpy
        errors; nothing runs."""
        self._check_count(xs)
        dts = [np.dtype(dtype_of(x.dtype)) for x in xs]
        for k, dt in enumerate(dts):
            _check_dtype(self.name, self.params[self.inputs[k]], dt)
        specs = self.result_specs(xs, dtype_of)
        key = (*((dt, len(x.shape)) for x, dt in zip(xs, dts, strict=True)), *specs)
        if key in self._compiled:  # these types were checked before
            return
        # Compile the kernel for these types now: a kernel that writes an
        # input, or does not compile for these ranks, is refused here.
        ins = [(dt, len(x.shape)) for x, dt in zip(xs, dts, strict=True)]
        sig = self._args(
            [_numba_type(dt, nd, self.roles[i] == IN) for (dt, nd), i in zip(ins, self.inputs)],
            [numba.types.Array(numba.from_dtype(dt), len(s), "C") for s, dt in specs],
        )
        try:
            self.disp.compile(tuple(sig))
        except TypingError as e:
            if "readonly" in str(e):
                self._run(_raise_typing(e), ())
            raise EnzpyTypeError(
                f"{self.name} does not compile for inputs of types "
                f"({', '.join(str(t) for t in sig)}): {str(e).splitlines()[0]}"
            ) from None
        self._compiled[key] = True

    def _check_count(self, xs: Sequence[Any]) -> None:
        if len(xs) != len(self.inputs):
            raise EnzpyTypeError(
                f"{self.name} takes {len(self.inputs)} inputs "
                f"({', '.join(self.params[i] for i in self.inputs)}), got {len(xs)}"
            )

    # --- checking inputs ------------------------------------------------------

    def check(self, xs: Sequence[Any], batched: Sequence[bool] | None = None) -> list[Any]:
        """The inputs as the kernel takes them: arrays C-contiguous (inputs
        read-only, in-place inputs copied), 0-d floats as float scalars of
        their dtype, 0-d integers as ints; raises an enzpy error for anything
        else, before any memory is touched. ``batched[k]``: input ``k`` has a
        leading batch axis (then a scalar stays a 1-d array)."""
        self._check_count(xs)
        out: list[Any] = []
        for k, x in enumerate(xs):
            p = self.params[self.inputs[k]]
            a = np.asarray(x)
            _check_dtype(self.name, p, a.dtype)
            if a.ndim == 0:
                out.append(a.dtype.type(a[()]) if a.dtype.kind == "f" else a[()].item())
            elif self.roles[self.inputs[k]] == INOUT:
                out.append(np.array(a, order="C"))  # the copy the kernel updates
            elif batched and batched[k] and a.ndim == 1 and a.dtype.kind != "f":
                out.append(np.ascontiguousarray(a))
            else:
                out.append(_readonly(np.ascontiguousarray(a)))
        return out

    # --- running ------------------------------------------------------------------

    def _args(self, ins: Sequence[Any], res: Sequence[Any]) -> list[Any]:
        """The kernel's arguments in parameter order."""
        args: list[Any] = [None] * len(self.params)
        for k, i in enumerate(self.inputs):
            args[i] = ins[k]
        for k, i in enumerate(self.results):
            args[i] = res[k]
        return args

    def _fresh_results(self, ins: Sequence[Any], batch: int | None) -> list[np.ndarray]:
        """Zero-filled outputs; the in-place inputs (already copies, given a
        batch axis when ``batch`` is set)."""
        lead = () if batch is None else (batch,)
        core = [
            _Abstract(x, batch is not None and k in self._batched_now) for k, x in enumerate(ins)
        ]
        res = []
        for i, (shape, dt) in zip(self.results, self.result_specs(core), strict=True):
            if self.roles[i] == INOUT:
                x = ins[self.inputs.index(i)]
                if batch is not None and self.inputs.index(i) not in self._batched_now:
                    x = np.array(np.broadcast_to(x, lead + x.shape))
                res.append(x)
            else:
                res.append(np.zeros(lead + shape, dt))
        return res

    _batched_now: frozenset[int] = frozenset()

    def _run(self, fn: Any, args: Sequence[Any]) -> Any:
        try:
            return fn(*args)
        except TypingError as e:
            if "readonly" in str(e):
                raise EnzpyTypeError(
                    f"{self.name} writes one of its input arguments "
                    f"({', '.join(self.params[i] for i in self.inputs)}); declare the "
                    "arguments it writes with inplace=(...) or outputs={...}"
                ) from None
            raise

    def compiled(self, kind: str, args: Sequence[Any]) -> Any:
        """The compiled kernel ('primal') or derivative ('fwd', 'rev') for
        arguments of the types of ``args`` (the kernel's, in parameter
        order), as an njit function (``enzpy.derivative``'s layout)."""
        return self._derivative(kind, args, 0)

    def _derivative(self, kind: str, args: Sequence[Any], width: int) -> Any:
        """The compiled function for ``kind`` ('primal', 'fwd' or 'rev';
        ``width`` lanes, 0 for plain ``Duplicated``) for the kernel's
        arguments ``args`` (unbatched examples)."""
        if kind == "primal":
            return self.disp
        key = (kind, width, tuple(_type_key(a) for a in args))
        d = self._compiled.get(key)
        if d is not None:
            return d
        ann: list[Any] = []
        for a in args:
            if isinstance(a, np.ndarray) and a.dtype in FLOAT_DTYPES:
                sh = tuple(np.zeros_like(a) for _ in range(max(width, 1)))
                ann.append(BatchDuplicated(a, sh) if width else Duplicated(a, sh[0]))
            elif isinstance(a, float | np.floating) and kind == "rev":
                ann.append(Active(a))
            elif isinstance(a, float | np.floating):
                z = type(a)(0)
                ann.append(BatchDuplicated(a, (z,) * width) if width else Duplicated(a, z))
            else:
                ann.append(Const(a))
        mode = Forward if kind == "fwd" else Reverse
        try:
            d = _build.entry(_build.bind(self.disp, ann, mode, Const), noalias=False).wrapper
        except TypingError as e:
            if "readonly" in str(e):
                self._run(self.disp, args)  # raises the bridge's error
            raise
        self._compiled[key] = d
        return d

    def run(
        self,
        kind: str,
        xs: Sequence[Any],
        seeds: Sequence[Any] = (),
        xb: Sequence[bool] | None = None,
        sb: Sequence[bool] | None = None,
        batch: int | None = None,
    ) -> list[Any]:
        """Run the kernel (``kind='primal'``: returns the results), its
        forward derivative (``'fwd'``, ``seeds`` the tangents of the inputs:
        returns the results then their tangents) or its reverse derivative
        (``'rev'``, ``seeds`` the cotangents of the results: returns the
        cotangents of the inputs, zeros for inputs without derivatives).

        With ``batch=B``, inputs ``k`` with ``xb[k]`` and seeds ``j`` with
        ``sb[j]`` have a leading axis of length ``B``: one njit loop runs the
        compiled code on each slice (results and derivatives get the axis)."""
        xb = list(xb) if xb is not None else [False] * len(xs)
        sb = list(sb) if sb is not None else [False] * len(seeds)
        self._batched_now = frozenset(k for k, b in enumerate(xb) if b)
        try:
            ins = self.check(xs, xb)
            res = self._fresh_results(ins, batch)
        finally:
            self._batched_now = frozenset()
        lead = () if batch is None else (batch,)
        args = self._args(ins, res)
        argb = self._args(xb, [batch is not None] * len(res))
        # The unbatched example of each argument: it fixes the types.
        example = [_element(a) if b else a for a, b in zip(args, argb, strict=True)]
        call: list[Any] = []
        callb: list[bool] = []
        tres: list[np.ndarray] = []
        shadows: dict[int, np.ndarray] = {}
        scalars: list[int] = []  # Active scalars, in order (reverse mode)
        for i, (a, e) in enumerate(zip(args, example, strict=True)):
            call.append(a)
            callb.append(argb[i])
            if kind == "primal":
                continue
            farr = isinstance(e, np.ndarray) and e.dtype in FLOAT_DTYPES
            fscal = isinstance(e, float | np.floating)
            if self.roles[i] != IN:
                j = self.results.index(i)
                if kind == "fwd":
                    t = np.zeros_like(a)
                    if self.roles[i] == INOUT:
                        t[...] = seeds[self.inputs.index(i)]
                    tres.append(t)
                else:
                    t = np.array(np.broadcast_to(seeds[j], a.shape), a.dtype, order="C")
                    shadows[i] = t
                call.append(t)
                callb.append(batch is not None)
                continue
            k = self.inputs.index(i)
            if farr and kind == "fwd":
                call.append(np.array(seeds[k], a.dtype, order="C"))
                callb.append(sb[k])
            elif farr:
                shadows[i] = np.zeros(lead + e.shape, e.dtype)
                call.append(shadows[i])
                callb.append(batch is not None)
            elif fscal and kind == "fwd":
                s = np.asarray(seeds[k], np.asarray(e).dtype)
                call.append(s if sb[k] else type(e)(s[()]))
                callb.append(sb[k])
            elif fscal:
                scalars.append(k)
        fn = self._derivative(kind, example, 0)
        if batch is None:
            got = self._run(fn, call)
        else:
            nret = len(scalars) if kind == "rev" else 0
            got = self._run(_looper(fn, tuple(callb), nret), [batch, *call])
        if kind == "primal":
            return res
        if kind == "fwd":
            return [*res, *tres]
        adj = dict(zip(scalars, np.asarray(got).T if batch is not None else got, strict=True))
        out: list[Any] = []
        for k, i in enumerate(self.inputs):
            dt = np.asarray(xs[k]).dtype
            if i in shadows:
                out.append(shadows[i])
            elif k in adj:
                out.append(np.asarray(adj[k], dt))
            else:
                out.append(np.zeros(lead + np.shape(xs[k])[1 if xb[k] else 0 :], dt))
        return out

    def lanes(self, kind: str, xs: Sequence[Any], seeds: Sequence[Any], width: int) -> list[Any]:
        """``run(kind, xs, seeds)`` for ``width`` seeds at once (each seed
        with a leading axis of length ``width``; seeds of inputs or results
        without derivatives are ignored), in batch mode: one primal
        evaluation per chunk of lanes. Returns the results without the axis
        and the derivatives with it (``'fwd'``), or the derivatives with it
        (``'rev'``)."""
        ins = self.check(xs)
        res0 = self._fresh_results(ins, None)
        base = self._args(ins, res0)
        out: list[list[np.ndarray]] = []
        results: list[np.ndarray] = res0
        for lo in range(0, width, LANES[-1]):
            w = min(width - lo, LANES[-1])
            lanes = next(n for n in LANES if n >= w)
            ins = self.check(xs) if lo else ins
            res = self._fresh_results(ins, None) if lo else res0
            args = self._args(ins, res)
            call: list[Any] = []
            per_lane: list[tuple[np.ndarray, ...]] = []
            scalars: list[int] = []
            for i, a in enumerate(args):
                call.append(a)
                farr = isinstance(a, np.ndarray) and a.dtype in FLOAT_DTYPES
                fscal = isinstance(a, float | np.floating)
                if self.roles[i] != IN or farr:
                    j = self.results.index(i) if self.roles[i] != IN else -1
                    k = self.inputs.index(i) if self.roles[i] != OUT else -1
                    if kind == "fwd":
                        src = seeds[k] if k >= 0 else None
                    else:
                        src = seeds[j] if j >= 0 else None
                    lane = tuple(
                        np.array(src[lo + m], a.dtype, order="C")
                        if src is not None
                        and m < w
                        and not (kind == "fwd" and k < 0)
                        and not (kind == "rev" and j < 0)
                        else np.zeros(a.shape, a.dtype)
                        for m in range(lanes)
                    )
                    call.append(lane)
                    if (
                        kind == "fwd"
                        and self.roles[i] != IN
                        or kind == "rev"
                        and self.roles[i] != OUT
                    ):
                        per_lane.append(lane)
                elif fscal and kind == "fwd":
                    k = self.inputs.index(i)
                    sd = np.asarray(seeds[k])
                    call.append(
                        tuple(type(a)(sd[lo + m]) if m < w else type(a)(0) for m in range(lanes))
                    )
                elif fscal:
                    scalars.append(self.inputs.index(i))
            fn = self._derivative(kind, base, lanes)
            got = self._run(fn, call)
            if kind == "fwd":
                if not lo:
                    results = res
                out.append([np.stack(lane[:w]) for lane in per_lane])
                continue
            adj = dict(zip(scalars, got, strict=True))
            arr = iter(per_lane)
            chunk: list[np.ndarray] = []
            for k, i in enumerate(self.inputs):
                dt = np.asarray(xs[k]).dtype
                if k in adj:
                    chunk.append(np.asarray(adj[k][:w], dt))
                elif self.roles[i] == INOUT or (
                    isinstance(ins[k], np.ndarray) and ins[k].dtype in FLOAT_DTYPES
                ):
                    chunk.append(np.stack(next(arr)[:w]))
                else:
                    chunk.append(np.zeros((w, *np.shape(xs[k])), dt))
            out.append(chunk)
        derivs = [np.concatenate(parts) for parts in zip(*out, strict=True)]
        return [*results, *derivs] if kind == "fwd" else derivs


def _numba_type(dt: np.dtype[Any], ndim: int, readonly: bool) -> Any:
    """The numba type of a (C-contiguous) input of dtype ``dt`` (0-d:
    the scalar the bridge passes)."""
    scalar = numba.from_dtype(dt)
    if ndim == 0:
        return numba.types.int64 if dt.kind in "iu" else scalar
    return numba.types.Array(scalar, ndim, "C", readonly=readonly)


def _raise_typing(e: TypingError) -> Callable[[], None]:
    def f() -> None:
        raise e

    return f


def _check_dtype(name: str, p: str, dt: np.dtype[Any]) -> None:
    if dt.kind not in "fiub":
        raise EnzpyTypeError(
            f"{name}: input {p!r} must be a float, integer or boolean array, got dtype {dt}"
        )
    if dt.kind == "f" and dt not in FLOAT_DTYPES:
        raise EnzpyTypeError(f"{name}: input {p!r} must be float32 or float64, got {dt}")


def _element(a: Any) -> Any:
    """Slice 0 of a batched argument (a scalar of the array's dtype for a
    1-d batch of scalars)."""
    if isinstance(a, np.ndarray) and a.ndim == 1:
        return a.dtype.type(a[0]) if a.dtype.kind == "f" else a[0].item()
    return a[0]


_loopers: dict[Any, Any] = {}


def _looper(fn: Any, batched: tuple[bool, ...], nret: int) -> Any:
    """An njit loop ``loop(B, *args)`` calling ``fn`` on slice ``b`` of each
    batched argument (the others as they are) for ``b`` in ``range(B)``;
    with ``nret`` > 0 it returns the ``nret`` floats ``fn`` returns, as a
    ``(B, nret)`` array."""
    key = (fn, batched, nret)
    loop = _loopers.get(key)
    if loop is not None:
        return loop
    names = [f"c{j}" for j in range(len(batched))]
    inner = ", ".join(f"{n}[b]" if bt else n for n, bt in zip(names, batched, strict=True))
    body = f"        r = fn({inner})\n"
    body += "".join(f"        out[b, {m}] = r[{m}]\n" for m in range(nret))
    src = (
        f"def loop(B, {', '.join(names)}):\n"
        f"    out = np.zeros((B, {max(nret, 1)}))\n"
        f"    for b in range(B):\n{body}"
        f"    return out\n"
    )
    scope: dict[str, Any] = {"fn": fn, "np": np}
    exec(compile(src, "<enzpy bridge loop>", "exec"), scope)  # noqa: S102
    loop = numba.njit(scope["loop"])
    _loopers[key] = loop
    return loop


class _Abstract:
    """Shape and dtype of a checked input (scalars are 0-d)."""

    __slots__ = ("shape", "dtype")

    def __init__(self, x: Any, batched: bool = False) -> None:
        self.shape = np.shape(x)[1:] if batched else np.shape(x)
        self.dtype = x.dtype if isinstance(x, np.ndarray | np.generic) else np.asarray(x).dtype


def _is_shape_dtype(got: Any) -> bool:
    return (
        isinstance(got, tuple)
        and len(got) == 2
        and isinstance(got[0], tuple | list | int | np.integer)
        and not isinstance(got[1], int | np.integer)
    )


def _type_key(a: Any) -> Any:
    """What fixes the numba type of the argument ``a`` (cheaper than
    ``numba.typeof``): arrays by dtype, rank and writeability (the bridge
    passes C-contiguous arrays), scalars by their Python type."""
    if isinstance(a, np.ndarray):
        return (a.dtype.str, a.ndim, a.flags.writeable)
    return type(a)
