"""PyTorch bridge: an njit kernel with output arguments as a PyTorch op.

    >>> import enzpy.torch
    >>> heat = enzpy.torch.kernel(step, outputs={"out": "u"})  # step(u, a, out)
    >>> out = heat(u, a)              # CPU tensors (a: a 0-d tensor)
    >>> out.sum().backward()          # u.grad, a.grad from enzpy's reverse mode

The kernel becomes a ``torch.library`` custom op ``enzpy::<name>`` with a
fake (meta) implementation and a registered autograd formula whose backward
is a second custom op ``enzpy::<name>_vjp`` (enzpy's reverse mode), so that
``torch.compile`` traces both without graph breaks. CPU tensors are handed
to the kernel as numpy views of their memory (no copies, except for
non-contiguous inputs and the in-place arguments, which the op updates in a
copy); results are tensors over the arrays the kernel wrote. See
docs/bridges.md for the contract.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

try:
    import torch
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"enzpy.torch needs PyTorch: pip install 'enzpy[torch]' ({e})") from e

from ._bridge import Kernel, OutSpec
from .errors import EnzpyTypeError, EnzpyValueError

__all__ = ["kernel"]

_NUMPY = {
    torch.float32: np.float32,
    torch.float64: np.float64,
    torch.float16: np.float16,
    torch.int64: np.int64,
    torch.int32: np.int32,
    torch.int16: np.int16,
    torch.int8: np.int8,
    torch.uint8: np.uint8,
    torch.bool: np.bool_,
}
_names = itertools.count()


def _np_dtype(d: Any) -> Any:
    if isinstance(d, np.dtype):
        return d
    try:
        return np.dtype(_NUMPY[d])
    except KeyError:
        raise EnzpyTypeError(f"enzpy.torch: tensors of dtype {d} are not supported") from None


def _torch_dtype(d: np.dtype[Any]) -> torch.dtype:
    return next(t for t, n in _NUMPY.items() if np.dtype(n) == d)


def _check_device(K: Kernel, ts: Sequence[torch.Tensor]) -> None:
    for k, t in enumerate(ts):
        if t.device.type != "cpu":
            raise EnzpyValueError(
                f"{K.name}: input {K.params[K.inputs[k]]!r} is on {t.device}; "
                "enzpy.torch runs on CPU tensors"
            )


def _numpy(K: Kernel, ts: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """numpy views of the CPU tensors ``ts`` (no copies)."""
    _check_device(K, ts)
    return [t.detach().numpy() for t in ts]


def kernel(
    f: Any,
    outputs: Mapping[str, OutSpec] | None = None,
    inplace: Sequence[str] = (),
    name: str | None = None,
) -> Callable[..., Any]:
    """The njit kernel ``f`` as a PyTorch op with autograd.

    ``outputs`` and ``inplace`` are as in :func:`enzpy.jax.kernel`: the
    parameters ``f`` writes (with their shapes) and those it reads and
    writes; the others are inputs, the op's arguments in order (tensors;
    scalars as 0-d tensors; float tensors carry gradients). The op returns
    the outputs' and in-place parameters' final contents in parameter
    order (one tensor when there is one); the argument tensors are never
    written. ``name`` names the op (``enzpy::name``; default: the kernel's
    name and a number)."""
    K = Kernel(f, outputs, inplace)
    n = len(K.inputs)
    nres = len(K.results)
    base = name or f"{re.sub(r'[^0-9A-Za-z_]', '_', K.name)}_{next(_names)}"
    params = ", ".join(f"Tensor x{k}" for k in range(n))
    returns = "Tensor" if nres == 1 else "(" + ", ".join(["Tensor"] * nres) + ")"

    def specs(ts: Sequence[torch.Tensor]) -> list[tuple[tuple[int, ...], torch.dtype]]:
        return [(s, _torch_dtype(d)) for s, d in K.result_specs(ts, _np_dtype)]

    def primal(*ts: torch.Tensor) -> Any:
        res = [torch.from_numpy(r) for r in K.run("primal", _numpy(K, ts))]
        return res[0] if nres == 1 else tuple(res)

    def primal_fake(*ts: torch.Tensor) -> Any:
        res = [torch.empty(s, dtype=d) for s, d in specs(ts)]
        return res[0] if nres == 1 else tuple(res)

    op = torch.library.custom_op(
        f"enzpy::{base}", primal, mutates_args=(), schema=f"({params}) -> {returns}"
    )
    op.register_fake(primal_fake)

    def vjp(ts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        xs = _numpy(K, ts[:n])
        cts = [c.detach().numpy() for c in ts[n:]]
        return [torch.from_numpy(np.asarray(g, order="C")) for g in K.run("rev", xs, cts)]

    cparams = ", ".join(f"Tensor c{j}" for j in range(nres))
    vjp_op = torch.library.custom_op(
        f"enzpy::{base}_vjp",
        lambda *ts: vjp(ts),
        mutates_args=(),
        schema=f"({params}, {cparams}) -> Tensor[]",
    )
    vjp_op.register_fake(lambda *ts: [torch.empty_like(t) for t in ts[:n]])

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.save_for_backward(*inputs)

    def backward(ctx: Any, *grads: Any) -> Any:
        xs = ctx.saved_tensors
        specs_ = specs(xs)
        cts = [
            g if g is not None else torch.zeros(s, dtype=d)
            for g, (s, d) in zip(grads, specs_, strict=True)
        ]
        got = vjp_op(*xs, *cts)
        return tuple(g if x.dtype.is_floating_point else None for g, x in zip(got, xs, strict=True))

    op.register_autograd(backward, setup_context=setup_context)

    def wrapped(*xs: Any) -> Any:
        ts = tuple(x if isinstance(x, torch.Tensor) else torch.as_tensor(x) for x in xs)
        if not torch.compiler.is_compiling():  # the op's fake checks them then
            K.check_types(ts, _np_dtype)
            _check_device(K, ts)
        return op(*ts)

    wrapped.__name__ = K.name
    wrapped.__doc__ = f"{K.name} as a PyTorch op enzpy::{base} (enzpy.torch.kernel)."
    wrapped.op = op  # type: ignore[attr-defined]
    return wrapped
