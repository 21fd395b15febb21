"""JAX bridge: an njit kernel with output arguments as a JAX function.

    >>> import enzpy.jax
    >>> heat = enzpy.jax.kernel(step, outputs={"out": "u"})  # step(u, a, out)
    >>> out = heat(u, a)                                      # jax arrays in, out
    >>> jax.grad(lambda u, a: heat(u, a).sum(), argnums=(0, 1))(u, a)

The function works under ``jax.jit``, ``grad``, ``vjp``, ``jvp``,
``linearize`` and ``vmap``. XLA calls the compiled kernel and derivatives
through an FFI handler, with no Python round trip (``enzpy._ffi``), or
through a host callback (``jax.pure_callback``; ``via=`` chooses). The JVP
is enzpy's forward mode, as the primitive ``enzpy_kernel`` linear in the
tangents, whose transpose (so reverse mode) is enzpy's reverse mode. Under
``vmap`` the host callback receives the batch: tangents or cotangents
batched over one primal run in enzpy's batch mode (one primal evaluation
per chunk of lanes: ``jacfwd``/``jacrev``), batched primals in one njit
loop over the batch. See docs/bridges.md for the contract.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

try:
    import jax
    import jax.numpy as jnp
    from jax.extend.core import Primitive
    from jax.interpreters import ad, batching, mlir
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"enzpy.jax needs JAX 0.10: pip install 'enzpy[jax]' ({e})") from e

from . import _ffi
from ._bridge import Kernel, OutSpec
from .errors import EnzpyTypeError, EnzpyValueError

__all__ = ["kernel"]


def _unbatch(
    arrays: Sequence[np.ndarray], cores: Sequence[int]
) -> tuple[list[np.ndarray], list[bool], tuple[int, ...]]:
    """Undo ``vmap_method='expand_dims'``: every array has the same number
    of leading batch axes (size 1 where that argument is not batched).
    Returns the arrays with one leading axis (those batched) or none, the
    flags, and the batch shape."""
    extra = arrays[0].ndim - cores[0] if arrays else 0
    if extra <= 0:
        return list(arrays), [False] * len(arrays), ()
    shape = np.broadcast_shapes(*(a.shape[:extra] for a in arrays))
    size = math.prod(shape)
    out: list[np.ndarray] = []
    flags: list[bool] = []
    for a in arrays:
        core = a.shape[extra:]
        if all(n == 1 for n in a.shape[:extra]):
            out.append(a.reshape(core))
            flags.append(False)
        else:
            out.append(np.broadcast_to(a, shape + core).reshape((size, *core)))
            flags.append(True)
    return out, flags, shape


def _host(K: Kernel, kind: str, nx: int, cores: Sequence[int]) -> Callable[..., Any]:
    """The host callback for ``kind`` ('primal', 'fwd' or 'rev'): its
    arguments are the inputs then the seeds (the tangents of the float
    inputs, or the cotangents of the results)."""

    def callback(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        flat, flags, shape = _unbatch(arrays, cores)
        xs, xb = flat[:nx], flags[:nx]
        seeds: list[Any] = list(flat[nx:])
        sb: list[bool] = list(flags[nx:])
        if kind == "fwd":  # tangents of the float inputs only: spread them
            seeds, sb = _spread(xs, seeds, sb)
        if not shape:
            got = K.run(kind, xs, seeds)
        elif kind != "primal" and not any(xb):
            size = math.prod(shape)
            full = [
                s if s is None or b else np.broadcast_to(s, (size, *np.shape(s)))
                for s, b in zip(seeds, sb, strict=True)
            ]
            got = K.lanes(kind, xs, full, size)
        else:
            got = K.run(kind, xs, seeds, xb, sb, math.prod(shape))
        if kind == "fwd":  # the results come from the primal's callback
            got = got[len(K.results) :]
        if kind == "rev":
            got = [g for g, x in zip(got, xs, strict=True) if _is_float(x)]
        return tuple(np.asarray(g).reshape(shape + g.shape[1 if shape else 0 :]) for g in got)

    return callback


def _is_float(x: Any) -> bool:
    return np.asarray(x).dtype.kind == "f"


def _spread(xs: Sequence[Any], seeds: list[Any], sb: list[bool]) -> tuple[list[Any], list[bool]]:
    """Tangents given for the float inputs only, as one entry per input."""
    it = iter(zip(seeds, sb, strict=True))
    out: list[Any] = []
    flags: list[bool] = []
    for x in xs:
        s, b = next(it) if _is_float(x) else (None, False)
        out.append(s)
        flags.append(b)
    return out, flags


VIAS = ("auto", "ffi", "callback")


class _Call:
    """What the primitive ``enzpy_kernel`` runs: a kernel, the indices of
    its float inputs and how it is called (a parameter of the primitive,
    hashed by identity; one per kernel, float inputs and path)."""

    __slots__ = ("K", "floats", "via", "_batched")

    def __init__(self, K: Kernel, floats: tuple[int, ...], via: str) -> None:
        self.K = K
        self.floats = floats
        self.via = via
        self._batched: _Call | None = None

    def batched(self) -> _Call:
        """How to call under vmap: 'auto' turns to the host callback, which
        sees the batch (batch mode, njit loop); 'ffi' stays (XLA calls the
        handler per element)."""
        if self.via != "auto":
            return self
        if self._batched is None:
            self._batched = _Call(self.K, self.floats, "callback")
        return self._batched


def _run(call: _Call, kind: str, args: Sequence[Any]) -> Any:
    """Call ``kind`` of the kernel on the JAX values ``args`` (inputs, then
    seeds): through the XLA FFI handler ('ffi', and 'auto' where the kernel
    has no 0-d results) or a host callback."""
    K = call.K
    out = _out_specs(call, kind, args)
    if call.via != "callback":
        ins = [(np.dtype(a.dtype), int(jnp.ndim(a))) for a in args[: len(K.inputs)]]
        try:
            name = _ffi.handler(K, kind, ins)
        except EnzpyTypeError:
            if call.via == "ffi":
                raise
        else:
            return jax.ffi.ffi_call(name, out, vmap_method="sequential")(*args)
    host = _host(K, kind, len(K.inputs), [int(jnp.ndim(a)) for a in args])
    return jax.pure_callback(host, out, *args, vmap_method="expand_dims")


def _out_specs(call: _Call, kind: str, args: Sequence[Any]) -> list[jax.ShapeDtypeStruct]:
    """Shapes and dtypes of what ``kind`` returns: the results (primal),
    their tangents (fwd) or the cotangents of the float inputs (rev)."""
    xs = args[: len(call.K.inputs)]
    if kind == "rev":
        return [jax.ShapeDtypeStruct(jnp.shape(xs[k]), xs[k].dtype) for k in call.floats]
    return [jax.ShapeDtypeStruct(s, d) for s, d in call.K.result_specs(xs)]


def _impl(*args: Any, call: _Call, kind: str) -> Any:
    return tuple(_run(call, kind, args))


def _abstract(*args: Any, call: _Call, kind: str) -> Any:
    return [jax.core.ShapedArray(s.shape, s.dtype) for s in _out_specs(call, kind, args)]


def _transpose(cts: Sequence[Any], *args: Any, call: _Call, kind: str) -> list[Any]:
    """The transpose of the JVP (kind 'fwd', linear in the tangents):
    enzpy's reverse mode."""
    assert kind == "fwd", kind
    n = len(call.K.inputs)
    xs = args[:n]
    cts = [
        jnp.zeros(s.shape, s.dtype) if type(c) is ad.Zero else c
        for c, s in zip(cts, _out_specs(call, "primal", xs), strict=True)
    ]
    got = _kernel_p.bind(*xs, *cts, call=call, kind="rev")
    return [None] * n + list(got)


def _batch(args: Sequence[Any], dims: Sequence[Any], *, call: _Call, kind: str) -> Any:
    """Under vmap: the call's batched path (see ``_Call.batched``)."""
    b = call.batched()
    out = jax.vmap(lambda *a: _impl(*a, call=b, kind=kind), in_axes=tuple(dims))(*args)
    return out, [0] * len(out)


#: One primitive for every kernel and kind of call ('primal', 'fwd': the
#: JVP, linear in the tangents, whose transpose is 'rev').
_kernel_p = Primitive("enzpy_kernel")
_kernel_p.multiple_results = True
_kernel_p.def_impl(_impl)
_kernel_p.def_abstract_eval(_abstract)
mlir.register_lowering(_kernel_p, mlir.lower_fun(_impl, multiple_results=True))
ad.primitive_transposes[_kernel_p] = _transpose
batching.primitive_batchers[_kernel_p] = _batch


def kernel(
    f: Any,
    outputs: Mapping[str, OutSpec] | None = None,
    inplace: Sequence[str] = (),
    via: str = "auto",
) -> Callable[..., Any]:
    """The njit kernel ``f`` as a JAX function of its inputs.

    ``outputs`` maps each parameter ``f`` writes to the shape of what it
    writes (the name of an input shaped like it, or a function of the
    inputs returning its shape or ``(shape, dtype)``); ``inplace`` names the
    parameters ``f`` reads and writes. The other parameters are inputs, in
    order the arguments of the returned function: arrays, or 0-d arrays
    for scalars (float scalars carry derivatives, integers are constants).
    It returns the outputs and in-place parameters' final contents in
    parameter order (the single array when there is one). Outputs start
    zero-filled; the caller's arrays are never written.

    ``via``: ``"auto"`` (default) has XLA call the compiled code through an
    FFI handler, with no Python round trip, and under ``vmap`` hands the
    batch to a host callback (enzpy's batch mode, or one njit loop over
    batched primals); ``"ffi"`` uses the FFI handler under ``vmap`` too
    (XLA calls it once per batch element); ``"callback"`` always uses the
    host callback (``jax.pure_callback``). A kernel with a 0-d output runs
    through the host callback under ``"auto"``."""
    if via not in VIAS:
        raise EnzpyValueError(f"via must be one of {', '.join(map(repr, VIAS))}, got {via!r}")
    K = Kernel(f, outputs, inplace)
    nres = len(K.results)
    calls: dict[tuple[int, ...], _Call] = {}

    def plan(xs: Sequence[Any]) -> _Call:
        floats = tuple(k for k, x in enumerate(xs) if jnp.issubdtype(x.dtype, jnp.floating))
        if floats not in calls:
            calls[floats] = _Call(K, floats, via)
        return calls[floats]

    @jax.custom_jvp
    def call(*xs: Any) -> tuple[Any, ...]:
        return tuple(_kernel_p.bind(*xs, call=plan(xs), kind="primal"))

    @call.defjvp
    def call_jvp(primals: tuple[Any, ...], tangents: tuple[Any, ...]) -> Any:
        outs = call(*primals)
        c = plan(primals)
        touts = _kernel_p.bind(*primals, *(tangents[k] for k in c.floats), call=c, kind="fwd")
        return outs, tuple(touts)

    def wrapped(*xs: Any) -> Any:
        xs = tuple(jnp.asarray(x) for x in xs)
        K.check_types(xs)
        r = call(*xs)
        return r[0] if nres == 1 else r

    wrapped.__name__ = K.name
    wrapped.__doc__ = f"{K.name} as a JAX function (enzpy.jax.kernel)."
    return wrapped
