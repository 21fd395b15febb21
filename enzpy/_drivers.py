"""The drivers built on autodiff: jacobian (forward or reverse, in batch
chunks), hvp (reverse over forward) and hessian (one hvp per element)."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _build, _native
from ._aliasing import address, arrays_in, check_arguments
from ._config import FLOAT_DTYPES, MAX_BATCH_WIDTH
from ._modes import Forward, Mode, Reverse, ReverseWithPrimal, check_mode
from ._progress import bar, check_progress
from ._values import arrays_disjoint, check_plain_array, staged_like, zeros_like_strided
from .annotations import Active, BatchDuplicated, Const, Duplicated
from .errors import ActivityError, EnzpyTypeError, EnzpyValueError, PiecewiseConstantError

__all__ = ["JACOBIAN_CHUNK", "hessian", "hvp", "jacobian"]


def _autodiff(f: Any, *args: Any, mode: Mode = Reverse, ret: Any = Active) -> Any:
    return _build.autodiff(f, args, mode, ret)


def _root(a: np.ndarray) -> np.ndarray:
    """The array that owns ``a``'s memory (``a`` itself when the chain of
    bases ends in something that is not an array)."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _view_into(copy: np.ndarray, root: np.ndarray, a: np.ndarray) -> np.ndarray:
    """The view of ``copy`` (laid out like ``root``) that ``a`` is of ``root``."""
    raw = _root(copy)
    offset = address(copy) - address(raw) + address(a) - address(root)
    return np.ndarray(a.shape, a.dtype, buffer=raw, offset=offset, strides=a.strides)


def replica(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """``values`` with every array in them (at any depth of tuples, named
    tuples and lists) replaced by a private copy of the same dtype, shape,
    strides and writeability, so that a driver's ``f`` can run any number of
    times on its own copies and leave the caller's arrays as they were.

    Arrays that share memory share it in the copies the same way (arrays
    over one buffer are views of one copy of that buffer), so ``f`` computes
    the same function on the copies as on the originals.
    """
    arrays = arrays_in(values)
    for k, a in enumerate(arrays):
        check_plain_array(f"array {k} of the arguments", a)
    users: dict[int, int] = {}
    for a in {id(a): a for a in arrays}.values():
        users[id(_root(a))] = users.get(id(_root(a)), 0) + 1
    copies: dict[int, np.ndarray] = {}
    wholes: dict[int, np.ndarray] = {}

    def copy(a: np.ndarray) -> np.ndarray:
        done = copies.get(id(a))
        if done is not None:
            return done
        root = _root(a)
        if users[id(root)] > 1:
            whole = wholes.get(id(root))
            if whole is None:
                whole = wholes[id(root)] = staged_like(root, root)
            c = whole if a is root else _view_into(whole, root, a)
        else:
            c = staged_like(a, a)
        if not a.flags.writeable:
            c.flags.writeable = False
        copies[id(a)] = c
        return c

    def walk(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            return copy(v)
        if isinstance(v, tuple):
            items = [walk(m) for m in v]
            make = getattr(type(v), "_make", None)
            return make(items) if make is not None else tuple(items)
        if isinstance(v, list):
            return [walk(m) for m in v]
        return v

    return tuple(walk(v) for v in values)


def _float_array(driver: str, what: str, a: Any) -> np.ndarray:
    """``a``, checked to be a non-empty float array (``what`` names it, in the
    messages of ``driver``)."""
    if isinstance(a, np.ndarray):
        check_plain_array(f"{driver}: {what}", a)
    if not isinstance(a, np.ndarray) or a.dtype not in FLOAT_DTYPES:
        raise EnzpyTypeError(
            f"{driver}: {what} must be a float32 or float64 numpy array, got "
            f"{type(a).__name__}" + (f" of dtype {a.dtype}" if isinstance(a, np.ndarray) else "")
        )
    if a.size == 0:
        raise EnzpyValueError(f"{driver}: {what} is empty")
    return a


def _unit(shape: tuple[int, ...], dtype: Any, j: int) -> np.ndarray:
    """The ``j``-th unit array (all zeros for ``j < 0``: padding)."""
    e = np.zeros(shape, dtype)
    if j >= 0:
        e[np.unravel_index(j, shape)] = 1
    return e


#: Default batch width of forward-mode jacobian().
JACOBIAN_CHUNK = 8


def jacobian(
    f: Any,
    x: Any,
    *args: Any,
    out: Any = None,
    mode: Mode = Forward,
    chunk: int | None = None,
    progress: bool | None = None,
) -> np.ndarray:
    """Jacobian of ``f`` with respect to the float array ``x``.

    Without ``out``, ``f(x, *args)`` must return a float; the result has
    ``x``'s shape (the gradient). With ``out=y``, ``f(x, y, *args)`` writes
    the float array ``y`` and the result has shape ``y.shape + x.shape``:
    ``J[i..., j...] = d y[i...] (after the call) / d x[j...]``. ``args`` are
    constant. ``f`` runs on private copies (``replica``): ``x``, ``out`` and
    the arrays in ``args`` are left as they are.

    ``mode=Forward`` (the default) propagates ``chunk`` unit directions per
    call in batch mode (default 8, at most 64; the last chunk is padded with
    zero directions so that one compiled derivative serves every chunk), so
    it costs ``ceil(x.size / chunk)`` sweeps (one direction per sweep when
    ``f`` calls a function with a custom rule, such as ``np.linalg.solve``,
    which has no forward batch mode, unless ``chunk`` is given: then that is
    an error). ``mode=Reverse`` propagates
    ``chunk`` unit cotangents of ``out`` per reverse sweep in batch mode (the
    same default and padding), one sweep giving ``chunk`` rows, so it costs
    ``ceil(out.size / chunk)`` sweeps; without ``out`` it is one gradient
    sweep.

    ``progress`` shows a progress bar over the sweeps (tqdm, when installed):
    ``True`` always, ``False`` never, ``None`` (the default) for work of many
    sweeps that is still running after a few seconds (``enzpy._progress``).
    """
    m = check_mode(mode)
    progress = check_progress("jacobian", progress)
    x = _float_array("jacobian", "x", x)
    if out is not None:
        out = _float_array("jacobian", "out", out)
    n = x.size
    shape = x.shape if out is None else out.shape + x.shape
    dtype = np.result_type(x.dtype, out.dtype) if out is not None else x.dtype

    def returned(t: Any) -> Any:
        if t is None:
            name = _build.function_name(_build.dispatcher(f))
            raise EnzpyTypeError(
                f"jacobian: {name} returns no float; pass the array "
                "it writes as out=... (it is then called as f(x, out, *args))"
            )
        return t

    width = JACOBIAN_CHUNK if chunk is None else int(chunk)
    if not 1 <= width <= MAX_BATCH_WIDTH:
        raise EnzpyValueError(f"jacobian: chunk must be from 1 to {MAX_BATCH_WIDTH}, got {chunk!r}")

    def forward_sweeps(width: int) -> np.ndarray:
        J = np.zeros((n,) + (() if out is None else out.shape), dtype)
        with bar(-(-n // width), "enzpy.jacobian", progress, unit="sweep") as sweeps:
            for start in range(0, n, width):
                lanes = [j if j < n else -1 for j in range(start, start + width)]
                seeds = tuple(_unit(x.shape, x.dtype, j) for j in lanes)
                xc, oc, *ac = replica((x, out, *args))
                xa = BatchDuplicated(xc, seeds)
                if out is None:
                    ts = returned(_autodiff(f, xa, *ac, mode=Forward))
                    for k, j in enumerate(lanes):
                        if j >= 0:
                            J[j] = ts[k]
                else:
                    douts = tuple(np.zeros_like(out, order="C") for _ in lanes)
                    _autodiff(f, xa, BatchDuplicated(oc, douts), *ac, mode=Forward, ret=Const)
                    for k, j in enumerate(lanes):
                        if j >= 0:
                            J[j] = douts[k]
                sweeps.update()
        return J.reshape((n, -1)).T.reshape(shape) if out is not None else J.reshape(shape)

    if m.is_forward:
        width = min(width, n)
        try:
            return forward_sweeps(width)
        except _native.BatchUnsupportedError:
            # Forward batch mode through a custom rule (np.linalg, a user
            # rule): one direction per sweep, unless the caller chose chunk.
            if chunk is not None or width == 1:
                raise
            return forward_sweeps(1)
    if out is None:
        g = np.zeros(x.shape, x.dtype)
        xc, *ac = replica((x, *args))
        _, primal = _autodiff(f, Duplicated(xc, g), *ac, mode=ReverseWithPrimal)
        returned(primal if isinstance(primal, float | np.floating) else None)
        return g
    rows = out.size
    width = min(width, rows)
    J = np.zeros((rows,) + x.shape, dtype)
    with bar(-(-rows // width), "enzpy.jacobian", progress, unit="sweep") as sweeps:
        for start in range(0, rows, width):
            lanes = [i if i < rows else -1 for i in range(start, start + width)]
            dxs = tuple(np.zeros(x.shape, x.dtype) for _ in lanes)
            douts = tuple(_unit(out.shape, out.dtype, i) for i in lanes)
            xc, oc, *ac = replica((x, out, *args))
            _autodiff(f, BatchDuplicated(xc, dxs), BatchDuplicated(oc, douts), *ac, ret=Const)
            for k, i in enumerate(lanes):
                if i >= 0:
                    J[i] = dxs[k]
            sweeps.update()
    return J.reshape(shape)


def _same_array_like(what: str, x: np.ndarray, a: Any) -> np.ndarray:
    if isinstance(a, np.ndarray):
        check_plain_array(f"hvp: {what}", a)
    if not isinstance(a, np.ndarray) or a.dtype != x.dtype or a.shape != x.shape:
        raise EnzpyTypeError(
            f"hvp: {what} must be a {x.dtype} array of x's shape {x.shape}, got "
            + (f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__)
        )
    return a


def hvp(f: Any, x: Any, v: Any, *args: Any) -> np.ndarray:
    """Hessian-vector product ``H v`` of the float-valued ``f(x, *args)`` with
    respect to the float array ``x`` (``args`` are constant).

    enzpy differentiates its own forward-mode derivative ``x -> <grad f(x), v>``
    in reverse mode (reverse over forward), which gives ``H v`` for the
    symmetric Hessian of a twice continuously differentiable ``f`` at the cost
    of a few primal evaluations, with no Hessian formed. ``f`` runs once as
    part of it, on private copies of ``x`` and of the arrays in ``args``
    (the caller's arrays are left as they are, as in ``jacobian``).
    """
    x = _float_array("hvp", "x", x)
    v = _same_array_like("v", x, v)
    x, *rest = replica((x, *args))
    args = tuple(rest)
    # The derivative writes the tangent of what f writes into x into v's
    # memory: v is always a private copy too.
    v = staged_like(x, v)
    hv = zeros_like_strided(x)
    check_arguments((Duplicated(x, hv), *args))
    arrays = [x, v, hv] + arrays_in(args)
    noalias = not any(isinstance(a, tuple | list) for a in args) and arrays_disjoint(arrays)
    try:
        entry = _build.hvp_entry(f, x, v, args, noalias)
    except ActivityError as e:
        _explain_written_x(f, e)
        raise
    _build.invoke(entry, (x, hv, *args, v, 1.0))
    return hv if hv.flags.c_contiguous or hv.flags.f_contiguous else np.array(hv)


def _explain_written_x(f: Any, e: ActivityError) -> None:
    """Add to ``e`` why a store into ``x`` is refused in ``hvp``: the
    forward derivative writes the tangent of what ``f`` writes into ``x``
    into the direction ``v``, which the reverse sweep treats as constant."""
    if isinstance(e, PiecewiseConstantError):
        return  # strict mode: about control, not about a store into x
    disp = _build.dispatcher(f)
    code = getattr(disp.py_func, "__code__", None)
    first = code.co_varnames[0] if code is not None and code.co_argcount else None
    if first is not None and f"argument '{first}'" in e.message:
        e.message += (
            f" (hvp/hessian: {_build.function_name(disp)} overwrites its first argument "
            "with values that depend on it, which the Hessian-vector product does not "
            "support yet; copy it inside the function, e.g. x = x.copy(), and write the copy)"
        )
        e.args = (e.message,)


def hessian(f: Any, x: Any, *args: Any, progress: bool | None = None) -> np.ndarray:
    """The Hessian of the float-valued ``f(x, *args)`` with respect to the
    float array ``x``, of shape ``x.shape + x.shape``, from one
    Hessian-vector product per element of ``x`` (for small problems).
    ``progress`` shows a bar over the products, as in ``jacobian``."""
    progress = check_progress("hessian", progress)
    x = _float_array("hessian", "x", x)
    H = np.zeros((x.size,) + x.shape, x.dtype)
    with bar(x.size, "enzpy.hessian", progress, unit="hvp") as products:
        for j in range(x.size):
            H[j] = hvp(f, x, _unit(x.shape, x.dtype, j), *args)
            products.update()
    return H.reshape(x.shape + x.shape)
