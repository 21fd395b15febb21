"""Check the derivatives enzpy computes for a function against central finite
differences: the rule author's test harness.

    >>> import numba, numpy as np
    >>> from enzpy.testing import check_derivative
    >>> @numba.njit
    ... def g(a, x):
    ...     return a * np.sin(x).sum()
    >>> check_derivative(g, 0.3, np.ones(4))  # raises DerivativeMismatch on a wrong derivative

:func:`check_derivative` differentiates ``f`` at the example arguments for
every combination of activities of its arguments, in forward and reverse
mode, at batch width 1 and wider, and checks each derivative:

1. the primal return value (``ForwardWithPrimal`` / ``ReverseWithPrimal``)
   equals the plain call's;
2. every array argument holds after the call what the plain call leaves in
   it (the plain call runs on copies);
3. tangents (forward) and cotangents (reverse) match central finite
   differences in float64, with the contents of differentiated arrays after
   the call counted as outputs (their shadow semantics, docs/design.md §3.1
   and §3.2);
4. forward and reverse agree on random directions: ``<J v, w> == <v, Jᵀ w>``.

The function is viewed as ``y = F(u)``: ``u`` are the float scalars and the
initial contents of the float arrays that are differentiated, ``y`` the
float return value and the final contents of the differentiated arrays.
Finite differences run the plain function in float64 (float32 arguments are
promoted; the derivative itself is computed in float32 and compared with a
looser tolerance). When the differentiable inputs have at most
``FULL_JACOBIAN_MAX`` entries the full Jacobian is formed, column by
column, once for all combinations; above that, directional derivatives along
the random directions are used, two plain calls per direction.

A derivative enzpy refuses (an :class:`enzpy.EnzpyError` when building or
calling it) is reported as :class:`DerivativeRefused`; a derivative that
disagrees as :class:`DerivativeMismatch`. Both are ``AssertionError``
subclasses, so a failed check fails a test.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final

import numpy as np

from . import _build
from ._config import FLOAT_DTYPES, FLOAT_SCALARS
from ._modes import ForwardWithPrimal, Mode, ReverseWithPrimal, check_mode
from ._values import is_array_tuple, is_float_tuple, zeros_like_strided
from .annotations import Active, BatchDuplicated, Const, Duplicated, DuplicatedNoNeed
from .api import autodiff
from .errors import EnzpyError

__all__ = [
    "FULL_JACOBIAN_MAX",
    "RTOL_FLOAT32",
    "RTOL_FLOAT64",
    "CheckReport",
    "DerivativeCheckError",
    "DerivativeMismatch",
    "DerivativeRefused",
    "Failure",
    "check_derivative",
    "compare",
]

#: Relative tolerance against finite differences when every differentiated
#: argument is float64. Central differences with a step of 1e-6 (relative to
#: each input's size) are off by about 1e-12 (truncation) plus the rounding
#: part, which is added to the tolerance separately; a wrong sign or a
#: missing term is an O(1) relative error.
RTOL_FLOAT64: Final = 1e-6
#: Relative tolerance when a differentiated argument is float32: the
#: derivative is computed in float32 (eps 1.2e-7, accumulated over the
#: operations of a sweep, a few thousand roundings at most), the reference in
#: float64. A wrong sign or a missing term is still an O(1) relative error,
#: three orders of magnitude above it.
RTOL_FLOAT32: Final = 3e-4
#: That error of a difference (below) is allowed this many times over, on
#: top of the float64 rounding model (NOISE_ULPS): a kernel that rounds to
#: float32 inside (``np.float32(a)`` of a float64 argument) has differences
#: good to about 1e-3 at best, where the float64 model would call enzpy wrong.
SPREAD_FACTOR: Final = 4.0
#: Each difference is checked against those with the relative steps
#: WIDE_STEP and twice it (near the best steps for float32 rounding): one
#: that differs from them by more than their own change, or than NOISY of
#: its size, comes from a kernel that rounds more coarsely than float64
#: inside, and the WIDE_STEP difference is used, allowing its change and
#: COARSE_ULPS float32 ulps of the output per step.
NOISY: Final = 1e-5
WIDE_STEP: Final = 1e-3
COARSE_ULPS: Final = 4
_EPS32: Final = float(np.finfo(np.float32).eps)
#: Up to this many differentiable input entries the full finite-difference
#: Jacobian is formed; above it, directional derivatives.
FULL_JACOBIAN_MAX: Final = 32
#: Rounding error assumed of each output of the plain function, in ulps, for
#: the rounding part of the finite-difference error.
NOISE_ULPS: Final = 32
#: Primal results (return value, array contents) must equal the plain
#: call's up to this relative error: the derivative runs the same
#: operations, possibly reassociated by the optimizer.
PRIMAL_RTOL: Final = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}
#: Mismatching entries listed in a report.
SHOWN_ENTRIES: Final = 5

_EPS64: Final = float(np.finfo(np.float64).eps)
_CONST, _DUP, _NONEED = "Const", "Duplicated", "DuplicatedNoNeed"


# ---------------------------------------------------------------------------
# Failures and reports
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Failure:
    """One failed check.

    ``check`` is ``"primal"``, ``"mutation"``, ``"tangent"``, ``"cotangent"``,
    ``"consistency"``, ``"result"`` (the derivative's result is not shaped as
    its mode promises) or ``"refused"``; ``combination`` the activities of the
    arguments (``"f(x=Duplicated, a=Active, n=Const)"``); ``mode`` and
    ``width`` the derivative's mode and batch width; ``where`` the argument
    or output concerned; ``details`` what was expected and what was found.
    """

    check: str
    combination: str
    mode: str
    width: int
    where: str
    details: str

    def __str__(self) -> str:
        details = self.details.replace("\n", "\n    ")
        return (
            f"[{self.check}] {self.mode}, batch width {self.width}, {self.combination}: "
            f"{self.where}\n    {details}"
        )


@dataclasses.dataclass(frozen=True)
class _Context:
    """The derivative a check is about."""

    combination: str
    mode: str
    width: int

    def failure(self, check: str, where: str, details: str) -> Failure:
        return Failure(check, self.combination, self.mode, self.width, where, details)


class DerivativeCheckError(AssertionError):
    """A derivative check failed; ``failures`` lists the :class:`Failure`\\ s."""

    def __init__(self, failures: Sequence[Failure], checked: int = 0) -> None:
        self.failures = list(failures)
        what = "refused" if isinstance(self, DerivativeRefused) else "wrong"
        head = f"{len(self.failures)} failed check(s): derivative {what}"
        if checked:
            head += f" ({checked} derivative(s) checked)"
        super().__init__(head + "\n" + "\n".join(str(f) for f in self.failures))


class DerivativeMismatch(DerivativeCheckError):
    """A derivative (or the primal it computes) disagrees with the plain
    function or with finite differences."""


class DerivativeRefused(DerivativeCheckError):
    """enzpy refused to build or run a derivative (an ``EnzpyError``, shown
    with its message): a gap, not a wrong number."""


@dataclasses.dataclass
class CheckReport:
    """What :func:`check_derivative` checked: ``checked`` lists each
    derivative run as ``(mode, width, combination)``, ``failures`` what
    failed (empty when all passed)."""

    function: str
    checked: list[tuple[str, int, str]] = dataclasses.field(default_factory=list)
    failures: list[Failure] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def raise_if_failed(self) -> None:
        """Raise :class:`DerivativeMismatch` when a check failed,
        :class:`DerivativeRefused` when every failure is a refusal."""
        if not self.failures:
            return
        refused = all(f.check == "refused" for f in self.failures)
        cls = DerivativeRefused if refused else DerivativeMismatch
        raise cls(self.failures, len(self.checked))

    def __str__(self) -> str:
        head = f"{self.function}: {len(self.checked)} derivative(s) checked, "
        if self.ok:
            return head + "all passed"
        return head + f"{len(self.failures)} failure(s)\n" + "\n".join(map(str, self.failures))


def compare(
    found: Any,
    expected: Any,
    *,
    rtol: float,
    atol: float = 0.0,
    scale: Any = None,
    noise: Any = 0.0,
    names: Callable[[int], str] | None = None,
) -> str | None:
    """None when ``found`` matches ``expected`` entry by entry, else a
    description of the mismatch: the largest absolute and relative error and
    the first mismatching entries (named by ``names(flat index)``).

    An entry matches when ``|found - expected| <= rtol * scale + noise +
    atol``; ``scale`` defaults to ``max(|found|, |expected|)`` (pass the sum
    of the magnitudes of the terms when ``expected`` is a sum that may
    cancel). NaN never matches, except where both are NaN."""
    a = np.atleast_1d(np.asarray(found, dtype=np.float64)).ravel()
    b = np.atleast_1d(np.asarray(expected, dtype=np.float64)).ravel()
    if a.shape != b.shape:
        return f"found {a.size} entries, expected {b.size}"
    err = np.abs(a - b)
    if scale is None:
        scale = np.maximum(np.abs(a), np.abs(b))
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float64).ravel(), a.shape)
    tol = rtol * scale + np.broadcast_to(np.asarray(noise, dtype=np.float64).ravel(), a.shape)
    tol = tol + atol
    both_nan = np.isnan(a) & np.isnan(b)
    bad = ~((err <= tol) | both_nan)
    if not bad.any():
        return None
    idx = np.flatnonzero(bad)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(np.abs(b) > 0, err / np.abs(b), np.inf)
    finite = np.where(np.isnan(err), np.inf, err)
    lines = [
        f"{idx.size} of {a.size} entries differ: max abs error {np.max(finite[bad]):.3e}, "
        f"max rel error {np.max(np.where(np.isnan(rel), np.inf, rel)[bad]):.3e} "
        f"(rtol {rtol:g}, atol {atol:g})"
    ]
    for j in idx[:SHOWN_ENTRIES]:
        name = names(int(j)) if names is not None else f"[{j}]"
        lines.append(
            f"{name}: found {float(a[j])!r}, expected {float(b[j])!r} "
            f"(|diff| {err[j]:.3e} > tol {tol[j]:.3e})"
        )
    if idx.size > SHOWN_ENTRIES:
        lines.append(f"... and {idx.size - SHOWN_ENTRIES} more")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Arguments: what is differentiable and how it flattens
# ---------------------------------------------------------------------------


def _float_leaves(x: Any) -> list[Any]:
    """The float scalars or arrays of ``x`` (a float, an array, or nested
    tuples of them), in order."""
    if isinstance(x, tuple):
        return [leaf for v in x for leaf in _float_leaves(v)]
    return [x]


def _rebuild(template: Any, leaves: Iterator[Any]) -> Any:
    """A value of ``template``'s structure whose leaves are taken in order
    from ``leaves``; named tuples stay named tuples."""
    if isinstance(template, tuple):
        items = [_rebuild(v, leaves) for v in template]
        make = getattr(type(template), "_make", None)
        return make(items) if make is not None else tuple(items)
    return next(leaves)


def _copy(x: Any) -> Any:
    """A copy of ``x`` with every array copied, keeping dtype, strides and
    writeability (so numba sees the same types)."""
    if isinstance(x, np.ndarray):
        c = zeros_like_strided(x)
        c[...] = x
        c.flags.writeable = x.flags.writeable
        return c
    if isinstance(x, tuple):
        return _rebuild(x, iter([_copy(v) for v in _float_leaves(x)]))
    if isinstance(x, list):
        return [_copy(v) for v in x]
    return x


def _arrays_of(x: Any) -> list[np.ndarray]:
    """Every array in ``x`` (at any depth of tuples and lists)."""
    if isinstance(x, np.ndarray):
        return [x]
    if isinstance(x, tuple | list):
        return [a for v in x for a in _arrays_of(v)]
    return []


def _entry_name(name: str, shape: tuple[int, ...], j: int) -> str:
    """``x[1, 2]``: the entry of flat index ``j`` of ``name`` of ``shape``."""
    if not shape:
        return name
    return f"{name}[{', '.join(str(int(i)) for i in np.unravel_index(j, shape))}]"


@dataclasses.dataclass
class _Arg:
    """One argument: its kind (``"scalar"`` a float or tuple of floats,
    ``"array"`` a float array or tuple of them, ``"const"`` anything else),
    the activities to try, and where its entries sit in ``u`` and ``y``."""

    index: int
    name: str
    value: Any
    kind: str
    states: tuple[str, ...] = ()
    shapes: list[tuple[int, ...]] = dataclasses.field(default_factory=list)
    dtypes: list[np.dtype[Any]] = dataclasses.field(default_factory=list)
    u: slice = dataclasses.field(default_factory=lambda: slice(0, 0))
    y: slice | None = None

    @property
    def size(self) -> int:
        return sum(int(np.prod(s, dtype=np.int64)) for s in self.shapes)

    @property
    def is32(self) -> bool:
        return any(d == np.float32 for d in self.dtypes)

    def block(self, x: Any) -> np.ndarray:
        """``x`` (of this argument's structure) flattened to float64."""
        return np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in _float_leaves(x)])

    def unblock(self, b: np.ndarray, promote: bool = False) -> Any:
        """The value of this argument's structure holding ``b`` (in the
        argument's dtypes, or float64 with ``promote``)."""
        out: list[Any] = []
        at = 0
        for shape, dt, leaf in zip(
            self.shapes, self.dtypes, _float_leaves(self.value), strict=True
        ):
            n = int(np.prod(shape, dtype=np.int64))
            part = b[at : at + n]
            at += n
            t = np.dtype(np.float64) if promote else dt
            if isinstance(leaf, np.ndarray):
                a = np.empty(shape, dtype=t) if promote else zeros_like_strided(leaf)
                a[...] = part.reshape(shape)
                out.append(a)
            else:
                out.append(float(part[0]) if promote else type(leaf)(part[0]))
        return _rebuild(self.value, iter(out))

    def entry(self, j: int, after: bool = False) -> str:
        """Name of entry ``j`` of the block: ``x[1][2, 0]`` (member 1 of a
        tuple, flattened in order)."""
        for m, shape in enumerate(self.shapes):
            n = int(np.prod(shape, dtype=np.int64))
            if j < n:
                member = f"{self.name}[{m}]" if len(self.shapes) > 1 else self.name
                return _entry_name(member, shape, j) + (" after the call" if after else "")
            j -= n
        return f"{self.name}[?]"


def _classify(i: int, name: str, x: Any) -> _Arg:
    arg = _Arg(i, name, x, "const")
    if isinstance(x, bool | np.bool_):
        return arg
    if is_float_tuple(x):
        arg.kind = "scalar"
    elif isinstance(x, np.ndarray) or is_array_tuple(x):
        leaves = _float_leaves(x)
        if not all(type(a) is np.ndarray and a.dtype in FLOAT_DTYPES for a in leaves):
            return arg
        arg.kind = "array"
    else:
        return arg
    for leaf in _float_leaves(x):
        arg.shapes.append(tuple(np.shape(leaf)))
        arg.dtypes.append(
            np.asarray(leaf).dtype if isinstance(leaf, np.ndarray) else np.dtype(type(leaf))
        )
    return arg


_STATE_OF: Final[dict[Any, str]] = {
    Const: _CONST,
    Active: _DUP,
    Duplicated: _DUP,
    BatchDuplicated: _DUP,
    DuplicatedNoNeed: _NONEED,
}


def _states(arg: _Arg, given: Any, mutated: bool) -> tuple[str, ...]:
    """The activities to try for ``arg``: ``given`` (None, an annotation
    class or a tuple of them) or the default."""
    if given is None:
        if arg.kind == "const":
            return (_CONST,)
        # An array the function writes is an output: as Const its
        # derivative would be dropped (or refused), which finite
        # differences cannot check.
        return (_DUP,) if mutated else (_CONST, _DUP)
    classes = given if isinstance(given, tuple | list) else (given,)
    states: list[str] = []
    for c in classes:
        state = _STATE_OF.get(c)
        if state is None:
            raise TypeError(
                f"activities for argument {arg.index} ({arg.name}): expected enzpy.Const, "
                f"Active, Duplicated, DuplicatedNoNeed or BatchDuplicated, got {c!r}"
            )
        if state != _CONST and arg.kind == "const":
            raise TypeError(
                f"argument {arg.index} ({arg.name}) is {type(arg.value).__name__}, which has "
                f"no derivative: it can only be Const, not {c.__name__}"
            )
        if state == _NONEED and arg.kind != "array":
            raise TypeError(f"argument {arg.index} ({arg.name}): DuplicatedNoNeed takes an array")
        if c is Active and arg.kind == "array":
            raise TypeError(
                f"argument {arg.index} ({arg.name}) is an array: Active takes a float "
                "scalar; use Duplicated"
            )
        if state not in states:
            states.append(state)
    if not states:
        raise TypeError(f"activities for argument {arg.index} ({arg.name}) is empty")
    return tuple(states)


def _given_activities(
    activities: Sequence[Any] | Mapping[str | int, Any] | None, names: list[str]
) -> list[Any]:
    """The ``activities`` argument as one entry per argument (None: the
    default)."""
    n = len(names)
    if activities is None:
        return [None] * n
    if isinstance(activities, Mapping):
        out: list[Any] = [None] * n
        for key, value in activities.items():
            i = names.index(key) if key in names else key
            if not isinstance(i, int) or not 0 <= i < n:
                raise TypeError(
                    f"activities names {key!r}, which is not an argument of the call "
                    f"({', '.join(names)})"
                )
            out[i] = value
        return out
    if len(activities) != n:
        raise TypeError(f"activities has {len(activities)} entries for {n} arguments")
    return list(activities)


def _names(f: Any, n: int) -> list[str]:
    try:
        params = list(inspect.signature(f).parameters)
    except (TypeError, ValueError):
        params = []
    return [params[i] if i < len(params) else f"arg{i}" for i in range(n)]


# ---------------------------------------------------------------------------
# Finite differences
# ---------------------------------------------------------------------------


class _FiniteDifferences:
    """Central differences of ``y = F(u)`` over every argument that may be
    differentiated (the others held at their values), in float64."""

    def __init__(self, f: Any, args: list[_Arg], ret_float: bool, step: float) -> None:
        self.f, self.args, self.ret_float, self.step = f, args, ret_float, step
        diff = [a for a in args if a.kind != "const" and a.states != (_CONST,)]
        at = 0
        for a in diff:
            a.u = slice(at, at + a.size)
            at += a.size
        self.n_in = at
        at = 1 if ret_float else 0
        for a in diff:
            if a.kind == "array":
                a.y = slice(at, at + a.size)
                at += a.size
        self.n_out = at
        self.diff = diff
        self.u0 = np.concatenate([a.block(a.value) for a in diff]) if diff else np.zeros(0)
        self.y0 = self.evaluate(self.u0)
        self.jac: np.ndarray | None = None
        #: |J(h) - J(2h)|, entry by entry: the estimated error of ``jac``
        self.spread: np.ndarray | None = None
        self.h = step * np.maximum(np.abs(self.u0), 1.0)
        if self.n_in <= FULL_JACOBIAN_MAX:
            self.jac = np.empty((self.n_out, self.n_in))
            self.spread = np.empty((self.n_out, self.n_in))
            for j in range(self.n_in):
                e = np.zeros(self.n_in)
                e[j] = 1.0
                wide = WIDE_STEP * max(abs(float(self.u0[j])), 1.0)
                self.jac[:, j], self.spread[:, j] = self._steadier(e, self.h[j], wide)

    def _central(self, v: np.ndarray, t: float) -> np.ndarray:
        """The central difference along ``v`` with step ``t``."""
        d: np.ndarray = (self.evaluate(self.u0 + t * v) - self.evaluate(self.u0 - t * v)) / (2 * t)
        return d

    def _steadier(self, v: np.ndarray, t: float, wide: float) -> tuple[np.ndarray, np.ndarray]:
        """The central difference along ``v`` with step ``t``, and its
        estimated error beyond float64 rounding. It is checked against the
        differences with the steps ``wide`` and ``2 * wide``: where it agrees
        with them within their own change it stands (error 0: the float64
        model holds); where it does not, the kernel rounds more coarsely
        (float32 inside) and the ``wide`` difference is taken, with its
        change and float32 rounding as its error."""
        d = self._central(v, t)
        try:
            dw = self._central(v, wide)
            spread = np.abs(dw - self._central(v, 2 * wide))
        except Exception:  # noqa: BLE001 - the wider steps left the function's domain
            return d, np.zeros_like(d)
        # (differences that are not finite at the wider steps say nothing)
        agrees = ~np.isfinite(dw + spread) | (np.abs(d - dw) <= 2 * spread + NOISY * np.abs(dw))
        coarse = COARSE_ULPS * _EPS32 * np.abs(self.y0) / wide
        return np.where(agrees, d, dw), np.where(agrees, 0.0, np.maximum(spread, coarse))

    def _promote(self, x: Any) -> Any:
        if isinstance(x, np.ndarray):
            return x.astype(np.float64) if x.dtype == np.float32 else x.copy()
        if isinstance(x, np.float32):
            return float(x)
        if isinstance(x, tuple):
            return _rebuild(x, iter([self._promote(v) for v in _float_leaves(x)]))
        if isinstance(x, list):
            return [self._promote(v) for v in x]
        return x

    def evaluate(self, u: np.ndarray) -> np.ndarray:
        """``F(u)``: the plain function on copies, float32 promoted."""
        vals = [self._promote(a.value) for a in self.args]
        for a in self.diff:
            vals[a.index] = a.unblock(u[a.u], promote=True)
        r = self.f(*vals)
        out = [np.array([float(r)])] if self.ret_float else []
        out += [a.block(vals[a.index]) for a in self.diff if a.kind == "array"]
        return np.concatenate(out) if out else np.zeros(0)

    def jvp(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(J v, scale, noise)`` for a direction ``v`` over ``u``: the
        reference, the magnitude of the terms summed into each entry, and
        the rounding part of the finite-difference error."""
        if self.jac is not None and self.spread is not None:
            noise = NOISE_ULPS * _EPS64 * np.abs(self.y0) * float(np.sum(np.abs(v) / self.h))
            noise = noise + SPREAD_FACTOR * (self.spread @ np.abs(v))
            return self.jac @ v, np.abs(self.jac) @ np.abs(v), noise
        t = self.step
        jv, spread = self._steadier(v, t, WIDE_STEP)
        noise = NOISE_ULPS * _EPS64 * np.abs(self.y0) / t
        return jv, np.abs(jv), noise + SPREAD_FACTOR * spread


# ---------------------------------------------------------------------------
# One derivative call
# ---------------------------------------------------------------------------


def _call_autodiff(f: Any, args: Sequence[Any], mode: Mode, ret: Any) -> Any:
    """enzpy's derivative call (a seam for the harness's own tests)."""
    return autodiff(f, *args, mode=mode, ret=ret)


@dataclasses.dataclass
class _Combination:
    states: tuple[str, ...]
    args: list[_Arg]
    function: str

    def state(self, a: _Arg) -> str:
        return self.states[a.index]

    def diff(self) -> list[_Arg]:
        return [a for a in self.args if self.states[a.index] != _CONST]

    def label(self, mode: Mode) -> str:
        parts = []
        for a in self.args:
            s = self.states[a.index]
            if s == _DUP and a.kind == "scalar" and not mode.is_forward:
                s = "Active"
            parts.append(f"{a.name}={s}")
        return f"{self.function}({', '.join(parts)})"


@dataclasses.dataclass
class _Result:
    primal: Any
    finals: list[Any]
    ret_tangents: list[float] | None  # forward: per lane
    blocks: dict[int, list[np.ndarray]]  # argument index -> per lane (shadows / adjoints)


def _run(
    f: Any,
    combo: _Combination,
    mode: Mode,
    width: int,
    seeds: dict[int, list[np.ndarray]],
    ret_seeds: list[float] | None,
) -> _Result:
    """Call the derivative: ``seeds`` holds per differentiated argument the
    tangents (forward) or, for arrays, the cotangents (reverse) of each
    lane; ``ret_seeds`` the return value's cotangents (reverse, None when
    the return is not seeded)."""
    anns: list[Any] = []
    shadows: dict[int, list[Any]] = {}
    values = []
    for a in combo.args:
        x = _copy(a.value)
        values.append(x)
        state = combo.state(a)
        if state == _CONST:
            anns.append(Const(x))
            continue
        if a.kind == "scalar" and not mode.is_forward:
            anns.append(Active(x))
            continue
        lanes = [a.unblock(s) for s in seeds[a.index]]
        shadows[a.index] = lanes
        if width > 1:
            anns.append(BatchDuplicated(x, tuple(lanes)))
        elif state == _NONEED:
            anns.append(DuplicatedNoNeed(x, lanes[0]))
        else:
            anns.append(Duplicated(x, lanes[0]))
    ret: Any = Const
    if ret_seeds is not None:
        # reverse batch: the return's cotangent per lane (width 1 seeds 1.0)
        batch_seeds = width > 1 and not mode.is_forward
        ret = tuple(ret_seeds) if batch_seeds else Active
    result = _call_autodiff(f, anns, mode, ret)
    try:
        return _unpack(result, combo, mode, width, ret_seeds is not None, values, shadows)
    except (TypeError, ValueError, IndexError, KeyError) as e:
        text = repr(result)
        raise _Malformed(
            f"{text[:300]}{' ...' if len(text) > 300 else ''} ({type(e).__name__}: {e})"
        ) from e


class _Malformed(Exception):
    """enzpy's result does not have the structure its mode promises."""


def _unpack(
    out: Any,
    combo: _Combination,
    mode: Mode,
    width: int,
    ret_seeded: bool,
    values: list[Any],
    shadows: dict[int, list[Any]],
) -> _Result:
    """The derivatives in ``autodiff``'s result ``out`` and the shadows."""
    primal = None
    if mode.returns_primal:
        out, primal = out
    blocks: dict[int, list[np.ndarray]] = {}
    ret_tangents = None
    if mode.is_forward:
        if ret_seeded:
            lanes = out if width > 1 else (out,)
            if len(lanes) != width or not all(type(t) in FLOAT_SCALARS for t in lanes):
                raise TypeError(f"expected the return's tangent as {width} float(s)")
            ret_tangents = [float(t) for t in lanes]
        for k, lanes in shadows.items():
            a = combo.args[k]
            if a.kind == "array":
                blocks[k] = [a.block(s) for s in lanes]
    else:
        for a in combo.diff():
            if a.kind == "scalar":
                d = out[a.index]
                lanes = d if width > 1 else (d,)
                if len(lanes) != width or not all(is_float_tuple(v) for v in lanes):
                    raise TypeError(f"expected the derivative of {a.name} in {width} lane(s)")
                blocks[a.index] = [a.block(v) for v in lanes]
            else:
                blocks[a.index] = [a.block(s) for s in shadows[a.index]]
    return _Result(primal, values, ret_tangents, blocks)


# ---------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------


def _same(found: Any, expected: Any, name: str) -> str | None:
    """None when the primal value ``found`` equals ``expected`` (floats up
    to ``PRIMAL_RTOL``), else what differs; entries are named after
    ``name``."""
    if isinstance(expected, tuple | list):
        if not isinstance(found, tuple | list) or len(found) != len(expected):
            return f"found {found!r}, expected {expected!r}"
        for k, (a, b) in enumerate(zip(found, expected, strict=True)):
            msg = _same(a, b, f"{name}[{k}]")
            if msg:
                return msg
        return None
    if expected is None or found is None:
        return None if found is expected else f"found {found!r}, expected {expected!r}"
    e = np.asarray(expected)
    a = np.asarray(found)
    if a.shape != e.shape:
        return f"found shape {a.shape}, expected {e.shape}"
    if e.dtype.kind == "f" or a.dtype.kind == "f":
        tol = PRIMAL_RTOL.get(e.dtype, 1e-12)
        scale = float(np.max(np.abs(e), initial=0.0)) if e.size else 0.0
        return compare(
            a, e, rtol=tol, atol=tol * scale, names=lambda j: _entry_name(name, e.shape, j)
        )
    if not np.array_equal(a, e):
        diff = np.argwhere(a != e)[:SHOWN_ENTRIES].tolist()
        return f"found {a!r}, expected {e!r} (differ at {diff})"
    return None


def _constant_name(name: str) -> Callable[[int], str]:
    """``names`` for :func:`compare` of a single number."""
    return lambda _: name


class _Checker:
    def __init__(
        self,
        f: Any,
        args: list[_Arg],
        ret0: Any,
        finals0: list[Any],
        fd: _FiniteDifferences,
        rtol: float | None,
        atol: float,
        report: CheckReport,
        collect: bool,
        rng: np.random.Generator,
        max_width: int,
    ) -> None:
        self.f, self.args, self.ret0, self.finals0, self.fd = f, args, ret0, finals0, fd
        self.rtol, self.atol, self.report, self.collect = rtol, atol, report, collect
        # Random directions per argument and lane, cotangents per lane, drawn
        # once: every combination and mode sees the same ones, so their
        # finite differences are computed once.
        self.v: dict[tuple[int, int], np.ndarray] = {}
        for a in fd.diff:
            for lane in range(max_width):
                v = rng.standard_normal(a.size) * np.maximum(np.abs(fd.u0[a.u]), 1.0)
                # exactly representable in the argument's dtype
                self.v[a.index, lane] = a.block(a.unblock(v))
        self.w: list[np.ndarray] = []
        for lane in range(max_width):
            w = np.zeros(fd.n_out)
            if fd.ret_float:
                w[0] = 1.0 if lane == 0 else float(rng.standard_normal())
            for a in fd.diff:
                if a.y is not None:
                    w[a.y] = a.block(a.unblock(rng.standard_normal(a.size)))
            self.w.append(w)
        self._jvp: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def jvp(self, a: _Arg, lane: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        key = (a.index, lane)
        if key not in self._jvp:
            v = np.zeros(self.fd.n_in)
            v[a.u] = self.v[key]
            self._jvp[key] = self.fd.jvp(v)
        return self._jvp[key]

    def rtol_for(self, combo: _Combination) -> float:
        if self.rtol is not None:
            return self.rtol
        return RTOL_FLOAT32 if any(a.is32 for a in combo.diff()) else RTOL_FLOAT64

    def fail(self, failure: Failure) -> None:
        self.report.failures.append(failure)
        if not self.collect:
            self.report.raise_if_failed()

    def outputs(self, combo: _Combination) -> np.ndarray:
        """Indices into ``y`` of the combination's outputs."""
        idx = [0] if self.fd.ret_float else []
        for a in combo.diff():
            if a.y is not None:
                idx += range(a.y.start, a.y.stop)
        return np.asarray(idx, dtype=np.intp)

    def output_name(self, combo: _Combination, i: int) -> str:
        """Name of entry ``i`` of the combination's outputs."""
        if self.fd.ret_float:
            if i == 0:
                return "return value"
            i -= 1
        for a in combo.diff():
            if a.y is not None:
                if i < a.size:
                    return a.entry(i, after=True)
                i -= a.size
        return f"output [{i}]"

    # -- one derivative ----------------------------------------------------

    def run(self, combo: _Combination, mode: Mode, width: int) -> Any:
        """Check ``combo`` in ``mode`` at ``width``; returns what the
        consistency check needs (None when the derivative failed)."""
        label = combo.label(mode)
        ctx = _Context(label, repr(mode), width)
        self.report.checked.append((repr(mode), width, label))
        diff = combo.diff()
        ret_seeds = None
        if self.fd.ret_float:
            ret_seeds = [float(self.w[lane][0]) for lane in range(width)]
        results: list[tuple[_Arg | None, _Result]] = []
        try:
            if mode.is_forward:
                # one call per differentiated argument, the others' tangents
                # zero, so that a mismatch names the argument
                for a in diff:
                    seeds = {
                        b.index: [
                            self.v[b.index, lane] if b is a else np.zeros(b.size)
                            for lane in range(width)
                        ]
                        for b in diff
                    }
                    results.append((a, _run(self.f, combo, mode, width, seeds, ret_seeds)))
            else:
                seeds = {
                    a.index: [self.w[lane][a.y] for lane in range(width)]
                    for a in diff
                    if a.y is not None
                }
                results.append((None, _run(self.f, combo, mode, width, seeds, ret_seeds)))
        except EnzpyError as e:
            self.fail(ctx.failure("refused", f"enzpy raised {type(e).__name__}", str(e)))
            return None
        except _Malformed as e:
            self.fail(ctx.failure("result", "autodiff's result has the wrong structure", str(e)))
            return None
        for _, res in results:
            self.check_primal(combo, mode, res, ctx)
        if mode.is_forward:
            return self.check_forward(
                combo, width, [(a, r) for a, r in results if a is not None], ctx
            )
        return self.check_reverse(combo, width, results[0][1], ctx)

    def check_primal(self, combo: _Combination, mode: Mode, res: _Result, ctx: _Context) -> None:
        if mode.returns_primal:
            msg = _same(res.primal, self.ret0, "return value")
            if msg:
                self.fail(ctx.failure("primal", "return value", msg))
        for a in self.args:
            if combo.state(a) == _NONEED or not _arrays_of(a.value):
                continue
            msg = _same(res.finals[a.index], self.finals0[a.index], a.name)
            if msg:
                where = (
                    f"argument {a.index} ({a.name}) after the call differs from the plain call's"
                )
                self.fail(ctx.failure("mutation", where, msg))

    def check_forward(
        self,
        combo: _Combination,
        width: int,
        results: list[tuple[_Arg, _Result]],
        ctx: _Context,
    ) -> dict[tuple[int, int], np.ndarray]:
        outs = self.outputs(combo)
        rtol = self.rtol_for(combo)
        found: dict[tuple[int, int], np.ndarray] = {}
        for a, res in results:
            for lane in range(width):
                parts = []
                if res.ret_tangents is not None:
                    parts.append(np.array([res.ret_tangents[lane]]))
                parts += [res.blocks[b.index][lane] for b in combo.diff() if b.y is not None]
                got = np.concatenate(parts) if parts else np.zeros(0)
                found[a.index, lane] = got
                jv, scale, noise = self.jvp(a, lane)
                exp, scale, noise = jv[outs], scale[outs], noise[outs]
                if a.is32 or any(b.is32 for b in combo.diff()):
                    noise = noise + rtol * float(np.max(np.abs(exp), initial=0.0))
                msg = compare(
                    got,
                    exp,
                    rtol=rtol,
                    atol=self.atol,
                    scale=np.maximum(scale, np.abs(got)),
                    noise=noise,
                    names=lambda i: self.output_name(combo, i),
                )
                if msg:
                    where = (
                        f"tangent of the outputs along argument {a.index} ({a.name}), "
                        f"lane {lane}, vs finite differences"
                    )
                    self.fail(ctx.failure("tangent", where, msg))
        return found

    def check_reverse(
        self, combo: _Combination, width: int, res: _Result, ctx: _Context
    ) -> dict[tuple[int, int], np.ndarray]:
        outs = self.outputs(combo)
        rtol = self.rtol_for(combo)
        fd = self.fd
        grads: dict[tuple[int, int], np.ndarray] = {}
        for lane in range(width):
            w = self.w[lane][outs]
            noise_y = NOISE_ULPS * _EPS64 * np.abs(fd.y0[outs])
            for a in combo.diff():
                g = res.blocks[a.index][lane]
                grads[a.index, lane] = g
                where = (
                    f"cotangent of argument {a.index} ({a.name}), lane {lane}, vs finite "
                    "differences"
                )
                if fd.jac is not None:
                    jac = fd.jac[np.ix_(outs, np.arange(a.u.start, a.u.stop))]
                    exp = jac.T @ w
                    scale = np.maximum(np.abs(jac).T @ np.abs(w), np.abs(g))
                    noise = (np.abs(w) @ noise_y) / fd.h[a.u]
                    assert fd.spread is not None
                    spread = fd.spread[np.ix_(outs, np.arange(a.u.start, a.u.stop))]
                    noise = noise + SPREAD_FACTOR * (np.abs(w) @ spread)
                    if a.is32 or any(b.is32 for b in combo.diff()):
                        noise = noise + rtol * float(np.max(np.abs(exp), initial=0.0))
                    msg = compare(
                        g,
                        exp,
                        rtol=rtol,
                        atol=self.atol,
                        scale=scale,
                        noise=noise,
                        names=a.entry,
                    )
                else:
                    # large input: <Jᵀw, v> against <w, J v> along this
                    # lane's direction for the argument
                    jv, scale_y, noise_j = self.jvp(a, lane)
                    v = self.v[a.index, lane]
                    lhs, rhs = float(w @ jv[outs]), float(g @ v)
                    scale = max(float(np.abs(w) @ scale_y[outs]), float(np.abs(g) @ np.abs(v)))
                    msg = compare(
                        rhs,
                        lhs,
                        rtol=rtol,
                        atol=self.atol,
                        scale=scale,
                        noise=float(np.abs(w) @ noise_j[outs]),
                        names=_constant_name(f"<Jᵀw, v> along a random v for {a.name}"),
                    )
                if msg:
                    self.fail(ctx.failure("cotangent", where, msg))
        return grads

    def check_consistency(
        self,
        combo: _Combination,
        width: int,
        tangents: dict[tuple[int, int], np.ndarray],
        grads: dict[tuple[int, int], np.ndarray],
        modes: str,
    ) -> None:
        """``<J v, w> == <v, Jᵀ w>`` with enzpy's forward and reverse results."""
        outs = self.outputs(combo)
        rtol = self.rtol_for(combo)
        for a in combo.diff():
            for lane in range(width):
                jv, g = tangents.get((a.index, lane)), grads.get((a.index, lane))
                if jv is None or g is None:
                    continue
                w, v = self.w[lane][outs], self.v[a.index, lane]
                lhs, rhs = float(jv @ w), float(v @ g)
                scale = float(np.abs(jv) @ np.abs(w) + np.abs(v) @ np.abs(g))
                msg = compare(
                    lhs,
                    rhs,
                    rtol=rtol,
                    atol=self.atol,
                    scale=scale,
                    names=_constant_name("<J v, w> (forward) vs <v, Jᵀ w> (reverse)"),
                )
                if msg:
                    self.fail(
                        Failure(
                            "consistency",
                            combination=combo.label(ReverseWithPrimal),
                            mode=modes,
                            width=width,
                            where=f"argument {a.index} ({a.name}), lane {lane}",
                            details=msg,
                        )
                    )


def check_derivative(
    f: Any,
    *args: Any,
    activities: Sequence[Any] | Mapping[str | int, Any] | None = None,
    modes: Sequence[Mode] = (ForwardWithPrimal, ReverseWithPrimal),
    widths: Sequence[int] = (1, 3),
    rtol: float | None = None,
    atol: float = 0.0,
    fd_step: float = 1e-6,
    seed: int = 0,
    report: bool = False,
) -> CheckReport:
    """Check enzpy's derivatives of ``f`` at the example arguments ``args``
    against the plain function and central finite differences.

    ``f`` is an ``@numba.njit`` function (or a plain function, compiled with
    njit). ``args`` are plain values: float scalars, tuples of floats,
    float32/float64 arrays and (nested, named) tuples of them are
    differentiable; everything else (ints, bools, integer arrays, ...) is
    passed as ``Const``. The arguments are not modified: every call runs on
    copies (with the same dtypes, strides and writeability).

    Every combination of activities is checked (except all-``Const``):
    float scalars ``Const`` or differentiated (``Active`` in reverse mode,
    ``Duplicated`` with a tangent in forward mode), float arrays ``Const``
    or ``Duplicated`` -- an array the plain call writes only as
    ``Duplicated``. ``activities`` restricts this per argument: a list with
    one entry per argument, each None (the default), an annotation class or
    a tuple of them (``[(Const, Active), Duplicated, Const]``);
    ``DuplicatedNoNeed`` (arrays) is tried only when asked for. A mapping
    from argument names (or positions) to those entries restricts only the
    arguments it names (``activities={"a": Active}``).

    ``modes``: forward and reverse modes to check (default
    ``ForwardWithPrimal`` and ``ReverseWithPrimal``, which also return the
    primal; ``Forward`` / ``Reverse`` check those variants). ``widths``:
    batch widths (``BatchDuplicated``; in reverse mode scalars stay
    ``Active`` and the return is seeded per lane). ``rtol`` defaults to
    ``RTOL_FLOAT64``, or ``RTOL_FLOAT32`` when a differentiated argument is
    float32; ``atol`` is added; ``fd_step`` is the finite-difference step
    relative to each input's size; ``seed`` seeds the random directions and
    cotangents.

    Raises :class:`DerivativeMismatch` at the first failed check, or
    :class:`DerivativeRefused` when enzpy refuses a derivative; with
    ``report=True`` checks everything and returns the :class:`CheckReport`
    with all failures instead. Returns the report.
    """
    disp = _build.dispatcher(f)
    fname = _build.function_name(disp)
    modes = tuple(check_mode(m) for m in modes)
    widths = tuple(int(w) for w in widths)
    if not widths or any(w < 1 for w in widths):
        raise ValueError(f"widths must be positive batch widths, got {widths!r}")
    names = _names(disp.py_func, len(args))
    given = _given_activities(activities, names)
    # the plain call, on copies
    plain = [_copy(x) for x in args]
    ret0 = disp(*plain)
    ret_float = type(ret0) in FLOAT_SCALARS
    argv = [_classify(i, names[i], x) for i, x in enumerate(args)]
    for a in argv:
        mutated = any(
            not np.array_equal(p, q, equal_nan=p.dtype.kind in "fc")
            for p, q in zip(_arrays_of(a.value), _arrays_of(plain[a.index]), strict=True)
        )
        a.states = _states(a, given[a.index], mutated)
    if all(a.states == (_CONST,) for a in argv):
        raise TypeError(
            f"{fname}: no argument is differentiable (float scalars, float arrays and "
            "tuples of them are), or activities makes them all Const: nothing to check"
        )
    fd = _FiniteDifferences(disp, argv, ret_float, fd_step)
    rep = CheckReport(fname)
    checker = _Checker(
        disp,
        argv,
        ret0,
        plain,
        fd,
        rtol,
        atol,
        rep,
        report,
        np.random.default_rng(seed),
        max(widths),
    )
    forward = [m for m in modes if m.is_forward]
    reverse = [m for m in modes if not m.is_forward]
    for states in itertools.product(*(a.states for a in argv)):
        if all(s == _CONST for s in states):
            continue
        combo = _Combination(states, argv, fname)
        has_array = any(a.kind == "array" for a in combo.diff())
        for width in widths:
            tangents, grads = None, None
            for mode in modes:
                # a reverse batch needs an array lane or a seeded return
                if width > 1 and not mode.is_forward and not (has_array or ret_float):
                    continue
                got = checker.run(combo, mode, width)
                if mode is (forward[0] if forward else None):
                    tangents = got
                if mode is (reverse[0] if reverse else None):
                    grads = got
            if tangents is not None and grads is not None:
                checker.check_consistency(
                    combo, width, tangents, grads, f"{forward[0]!r} vs {reverse[0]!r}"
                )
    if not report:
        rep.raise_if_failed()
    return rep
