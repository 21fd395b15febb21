"""Finite-difference references for enzpy's reverse-mode tests (a helper, not a test).

Reverse mode computes a vector-Jacobian product. For one call ``f(*args)`` we view

    inputs   u = (every Active scalar, initial contents of every Duplicated array)
    outputs  y = (the float return value, final contents of every Duplicated array)

so that ``y = F(u)``. Given cotangents ``w`` of the outputs -- ``dret = 1`` for a float
return (enzpy seeds it with 1.0; 0 with ``ret=Const``) and the *initial* shadow
contents for arrays -- enzpy returns ``Jᵀw``: the derivatives of the Active arguments
and the *final* shadow contents (docs/design.md §3, shadow semantics). For random
directions ``v`` we check the dot-product identity

    <w, J v>   (central finite differences of F, in float64)
        ==
    <Jᵀw, v>   (from enzpy).

The check is made once per differentiable argument (``v`` nonzero in that argument
only), so a failure names the argument. Read-only arrays need no special case: their
final contents equal their initial contents, which contributes ``<w_x, v_x>`` on the
FD side and is exactly why their shadows accumulate (``+=``) on the enzpy side.
Write-only outputs likewise: their final contents do not depend on their initial
contents, so a correct shadow is consumed to zero wherever the function wrote.

The module does not import enzpy at import time: the reverse-mode call goes through a
*backend* (by default :func:`enzpy_backend`), so the harness itself can be checked
against hand-written vector-Jacobian products of numpy functions
(``tests/test_fd_harness.py``).

Tolerances. Float64 kernels: central differences with a step of ``h = 1e-6``
relative to the size of each input (``v`` is scaled by ``max(|u|, 1)``) have a
truncation error of about ``h² |F'''| ≈ 1e-12`` relative and a rounding error of
about ``eps·|y|/h ≈ 2e-10`` relative; ``rtol = 1e-6`` sits well above both and far
below the O(1) relative error of a wrong sign or of a missing term. The rounding
part is added explicitly as ``NOISE_ULPS·eps·Σ|w||y|/h`` so that outputs that hardly
depend on an argument do not produce false alarms. Float32 kernels: see
``RTOL_FLOAT32``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "Const",
    "Active",
    "Dup",
    "DupNoNeed",
    "check_vjp",
    "check_gradient",
    "fd_gradient",
    "enzpy_backend",
    "RTOL_FLOAT64",
    "RTOL_FLOAT32",
    "random_array",
]

#: Default relative tolerance for float64 kernels (see the module docstring).
RTOL_FLOAT64 = 1e-6
#: Default relative tolerance when any differentiable argument is float32. The
#: derivative is then *computed* in float32 (eps = 1.2e-7) while the reference is
#: the float64 finite difference of the same function at the same (float32-exact)
#: point. Each float32 operation of the reverse sweep contributes a relative error
#: of about eps, so a sweep of k dependent operations with condition number c is off
#: by about k·c·eps; for the small kernels of this suite (k ≲ 50 dependent
#: operations, c ≲ 10 -- sums run over at most a few hundred elements, whose
#: rounding grows like sqrt(n)·eps in practice) that is ≲ 6e-5. 1e-4 keeps that
#: margin and still flags a wrong sign or a missing term, which are O(1) errors.
RTOL_FLOAT32 = 1e-4
#: Rounding error of a kernel's outputs assumed by the FD noise estimate, in ulps.
NOISE_ULPS = 32
#: Primal results computed by enzpy's augmented forward sweep must equal the plain
#: primal's up to this relative error (they run the same floating-point operations).
PRIMAL_RTOL = {np.dtype(np.float64): 1e-13, np.dtype(np.float32): 1e-6}

_EPS64 = float(np.finfo(np.float64).eps)


# --------------------------------------------------------------------------------------
# argument specifications (independent of enzpy's own annotation classes)
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Const:
    """A constant argument, passed to enzpy as ``enzpy.Const(value)``.

    A bare value in ``check_vjp`` is passed to enzpy as a bare value (which also means
    Const). Arrays are copied for every finite-difference evaluation, so a Const
    scratch array that the function writes is fine.
    """

    value: Any


@dataclasses.dataclass
class Active:
    """A float scalar whose derivative enzpy returns (``enzpy.Active``)."""

    value: Any


@dataclasses.dataclass
class Dup:
    """A float array with a shadow (``enzpy.Duplicated``).

    ``shadow`` makes the shadow array: ``shadow(x) -> ndarray`` of x's shape and dtype,
    possibly with other strides (e.g. a view into a larger buffer). The harness writes
    the random cotangent into it before every call. Default: ``np.zeros_like(x)``.
    """

    value: np.ndarray
    shadow: Callable[[np.ndarray], np.ndarray] | None = None


@dataclasses.dataclass
class DupNoNeed(Dup):
    """As :class:`Dup`, passed as ``enzpy.DuplicatedNoNeed``: the primal contents of
    the array after the call are not checked."""


def _spec(a):
    return a if isinstance(a, (Const, Active, Dup)) else None


def _is_float_scalar(x) -> bool:
    return isinstance(x, (float, np.floating)) and not isinstance(x, bool)


def _is_float_return(r) -> bool:
    return _is_float_scalar(r)


def random_array(rng, shape, dtype=np.float64, low=-1.0, high=1.0):
    """Uniform random array, exactly representable in ``dtype``."""
    return rng.uniform(low, high, size=shape).astype(dtype)


# --------------------------------------------------------------------------------------
# the enzpy side
# --------------------------------------------------------------------------------------


def enzpy_backend(f, specs, shadows, ret_active: bool, with_primal: bool):
    """Reverse-mode call through ``enzpy.autodiff``.

    ``specs`` is the list of the user's arguments (fd specs or bare values);
    ``shadows[i]`` is the shadow array for Dup arguments (None otherwise). Returns
    ``(derivatives tuple, primal return or None)`` and checks the shape of the result
    that docs/design.md §3 promises: one entry per argument, None for non-Active ones.
    """
    import enzpy

    ann = []
    for s, dx in zip(specs, shadows):
        if isinstance(s, DupNoNeed):
            ann.append(enzpy.DuplicatedNoNeed(s.value, dx))
        elif isinstance(s, Dup):
            ann.append(enzpy.Duplicated(s.value, dx))
        elif isinstance(s, Active):
            ann.append(enzpy.Active(s.value))
        elif isinstance(s, Const):
            ann.append(enzpy.Const(s.value))
        else:
            ann.append(s)
    kw = {}
    if not ret_active:
        kw["ret"] = enzpy.Const
    if with_primal:
        kw["mode"] = enzpy.ReverseWithPrimal
        out = enzpy.autodiff(f, *ann, **kw)
        assert isinstance(out, tuple) and len(out) == 2, (
            f"ReverseWithPrimal must return (derivatives, primal), got {out!r}"
        )
        derivs, primal = out
    else:
        derivs = enzpy.autodiff(f, *ann, **kw)
        primal = None
    assert isinstance(derivs, tuple), f"autodiff must return a tuple, got {derivs!r}"
    assert len(derivs) == len(specs), (
        f"autodiff returned {len(derivs)} entries for {len(specs)} arguments"
    )
    for i, (s, d) in enumerate(zip(specs, derivs)):
        if isinstance(s, Active):
            assert _is_float_scalar(d), (
                f"derivative of Active argument {i} must be a float, got {d!r}"
            )
        else:
            assert d is None, f"entry {i} (not Active) must be None, got {d!r}"
    return derivs, primal


# --------------------------------------------------------------------------------------
# the finite-difference side
# --------------------------------------------------------------------------------------


def _promote(x, fd_dtype):
    """Copy of an argument for one evaluation, float32 promoted to ``fd_dtype``."""
    if isinstance(x, np.ndarray):
        if fd_dtype is not None and x.dtype.kind == "f":
            return np.array(x, dtype=np.result_type(x.dtype, fd_dtype), copy=True)
        return np.array(x, copy=True)
    if fd_dtype is not None and isinstance(x, np.floating):
        return np.result_type(x, fd_dtype).type(x)
    return x


def _evaluate(f, values, fd_dtype):
    """Run f on copies; returns (return value, list of final argument values)."""
    args = [_promote(v, fd_dtype) for v in values]
    r = f(*args)
    return r, args


@dataclasses.dataclass
class Trial:
    """One reverse-mode call and its check, for further assertions by a test."""

    derivs: tuple  # enzpy's result
    primal: Any  # primal return from ReverseWithPrimal (or None)
    shadows_in: list  # copies of the cotangents written before the call
    shadows_out: list  # copies of the shadows after the call
    lhs: dict  # argument index -> <w, J v> by FD
    rhs: dict  # argument index -> <Jᵀw, v> from enzpy


def _dot_abs(a, b):
    return float(np.sum(np.abs(np.asarray(a, np.float64)) * np.abs(np.asarray(b, np.float64))))


def _dot(a, b):
    return float(np.sum(np.asarray(a, np.float64) * np.asarray(b, np.float64)))


def _outputs_along(f, base, k, x0, v, t, fd_dtype, ret_is_output, w, dup_idx):
    """Outputs ``[(cotangent, value), ...]`` of f at ``base`` with argument k moved to
    ``x0 + t v`` (all arrays copied, float32 promoted to ``fd_dtype``)."""
    vals = [_promote(val, fd_dtype) for val in base]
    moved = np.asarray(x0, dtype=np.float64) + t * v
    if isinstance(vals[k], np.ndarray):
        placed = np.empty_like(vals[k])  # the argument's own layout (C or F order)
        placed[...] = moved
        vals[k] = placed
    else:
        vals[k] = float(moved) if fd_dtype is not None else type(x0)(float(moved))
    r = f(*vals)
    outs = []
    if ret_is_output:
        outs.append((1.0, float(r)))
    for i in dup_idx:
        outs.append((w[i], np.asarray(vals[i], dtype=np.float64)))
    return outs


def check_vjp(
    f,
    *args,
    ret: str = "active",
    with_primal: bool = False,
    trials: int = 2,
    seed: int = 0,
    rtol: float | None = None,
    atol: float = 0.0,
    h: float = 1e-6,
    fd_dtype=np.float64,
    backend: Callable = enzpy_backend,
    check_primal: bool = True,
    shadow_scale: float = 1.0,
) -> list:
    """Check enzpy's reverse mode of ``f(*args)`` against central finite differences.

    ``args`` are fd specs (:class:`Const`, :class:`Active`, :class:`Dup`,
    :class:`DupNoNeed`) or bare values. Arrays are not aliased with each other. The
    arrays passed in are the ones enzpy sees (keep views as views); they are restored
    to their initial contents before every call and left with the primal's results
    of the last call. ``ret``: "active" (a float return is seeded with 1.0) or
    "const". Returns the list of :class:`Trial`.

    Also checks: the primal results that enzpy leaves in Duplicated arrays (and in
    Const arrays) equal the plain call's, and with ``with_primal`` the returned
    primal equals the plain call's return value.
    """
    assert ret in ("active", "const")
    specs = list(args)
    values = [s.value if _spec(s) is not None else s for s in specs]
    arrays0 = [np.array(v, copy=True) if isinstance(v, np.ndarray) else None for v in values]
    diff_idx = [i for i, s in enumerate(specs) if isinstance(s, (Active, Dup))]
    for i in diff_idx:
        v = values[i]
        if isinstance(specs[i], Active):
            assert _is_float_scalar(v), f"Active argument {i} must be a float scalar"
        else:
            assert isinstance(v, np.ndarray) and v.dtype.kind == "f", (
                f"Dup argument {i} must be a float array"
            )
    dtypes = {np.asarray(values[i]).dtype for i in diff_idx}
    if rtol is None:
        rtol = RTOL_FLOAT32 if np.dtype(np.float32) in dtypes else RTOL_FLOAT64
    dup_idx = [i for i in diff_idx if isinstance(specs[i], Dup)]
    rng = np.random.default_rng(seed)

    results = []
    reference = None  # (return, final args) of the plain call, native dtypes
    for trial in range(trials):
        # restore the user's arrays in place (keeps views and layouts)
        for i, a0 in enumerate(arrays0):
            if a0 is not None:
                values[i][...] = a0
        # cotangents of the outputs: the shadows' initial contents
        shadows = [None] * len(specs)
        w = {}
        for i in dup_idx:
            x = values[i]
            make = specs[i].shadow or np.zeros_like
            dx = make(x)
            assert dx.shape == x.shape and dx.dtype == x.dtype, "bad shadow factory"
            dx[...] = (shadow_scale * rng.standard_normal(x.shape)).astype(x.dtype)
            shadows[i] = dx
            w[i] = np.array(dx, dtype=np.float64, copy=True)
        shadows_in = [None if s is None else s.copy() for s in shadows]

        derivs, primal = backend(f, specs, shadows, ret == "active", with_primal)

        shadows_out = [None if s is None else np.array(s, copy=True) for s in shadows]
        after = [np.array(v, copy=True) if isinstance(v, np.ndarray) else None for v in values]

        if reference is None:
            # the plain primal, after the first enzpy call (so that enzpy also
            # meets dispatchers that numba has not compiled yet)
            r0, final0 = _evaluate(
                f, [a0 if a0 is not None else v for a0, v in zip(arrays0, values)], None
            )
            reference = (r0, final0)
            assert (
                r0 is None
                or _is_float_return(r0)
                or isinstance(r0, (int, np.integer, bool, np.bool_))
            ), f"check_vjp handles a None, float or integer return, got {r0!r}"
        r0, final0 = reference
        ret_is_output = ret == "active" and _is_float_return(r0)

        if check_primal:
            for i, s in enumerate(specs):
                if isinstance(s, DupNoNeed) or after[i] is None:
                    continue
                ref = final0[i]
                tol = PRIMAL_RTOL.get(ref.dtype, 0.0)
                np.testing.assert_allclose(
                    after[i],
                    ref,
                    rtol=tol,
                    atol=tol * float(np.max(np.abs(ref), initial=0.0)),
                    err_msg=f"argument {i}: primal contents after the reverse-mode "
                    f"call differ from the plain call's",
                )
            if with_primal:
                if r0 is None:
                    assert primal is None, f"primal return must be None, got {primal!r}"
                else:
                    assert primal is not None, "ReverseWithPrimal returned no primal"
                    np.testing.assert_allclose(
                        float(primal),
                        float(r0),
                        rtol=PRIMAL_RTOL.get(np.asarray(r0).dtype, 1e-13),
                        err_msg="primal return of ReverseWithPrimal",
                    )

        # directions, one differentiable argument at a time
        lhs, rhs = {}, {}
        failures = []
        for k in diff_idx:
            x0 = values[k] if isinstance(specs[k], Active) else arrays0[k]
            x0f = np.asarray(x0, dtype=np.float64)
            v = rng.standard_normal(x0f.shape) * np.maximum(np.abs(x0f), 1.0)

            base = [a0 if a0 is not None else val for a0, val in zip(arrays0, values)]
            plus, minus = (
                _outputs_along(f, base, k, x0, v, t, fd_dtype, ret_is_output, w, dup_idx)
                for t in (h, -h)
            )
            lhs_k = 0.0
            fd_scale = 0.0
            noise = 0.0
            for (wo, yp), (_, ym) in zip(plus, minus):
                dy = (np.asarray(yp) - np.asarray(ym)) / (2.0 * h)
                lhs_k += _dot(wo, dy)
                fd_scale += _dot_abs(wo, dy)
                noise += _dot_abs(wo, np.maximum(np.abs(yp), np.abs(ym)))
            noise *= NOISE_ULPS * _EPS64 / h
            if isinstance(specs[k], Active):
                d = float(derivs[k])
                rhs_k = d * float(v)
                ad_scale = abs(rhs_k)
            else:
                g = np.asarray(shadows_out[k], dtype=np.float64)
                rhs_k = _dot(g, v)
                ad_scale = _dot_abs(g, v)
            lhs[k], rhs[k] = lhs_k, rhs_k
            tol = rtol * max(fd_scale, ad_scale) + noise + atol
            err = abs(lhs_k - rhs_k)
            if not (err <= tol):  # also catches NaN
                kind = type(specs[k]).__name__ if _spec(specs[k]) else "?"
                failures.append(
                    f"argument {k} ({kind}), trial {trial}: <w, J v> by FD = {lhs_k!r}, "
                    f"<J^T w, v> from enzpy = {rhs_k!r}, |diff| = {err:.3e} > "
                    f"tol = {tol:.3e} (rtol={rtol}, scale={max(fd_scale, ad_scale):.3e}, "
                    f"noise={noise:.3e})"
                )
        assert not failures, "reverse mode disagrees with finite differences:\n  " + "\n  ".join(
            failures
        )
        results.append(Trial(derivs, primal, shadows_in, shadows_out, lhs, rhs))
    return results


# --------------------------------------------------------------------------------------
# gradients of scalar-valued functions
# --------------------------------------------------------------------------------------


def fd_gradient(f, *xs, h: float = 1e-6, fd_dtype=np.float64):
    """Central-difference gradient of a float-valued ``f(*xs)``, one component at a
    time (small inputs only). Returns ``(value, [gradient per argument])``: a float for
    a float scalar, an array for a float array, None for anything else. The step for
    component j is ``h·max(|x_j|, 1)``. Arrays are copied for every evaluation."""
    base = [_promote(x, fd_dtype) for x in xs]

    def call(vals):
        return float(f(*[_promote(v, None) for v in vals]))

    f0 = call(base)
    grads = []
    for k, x in enumerate(base):
        if _is_float_scalar(x):
            hk = h * max(abs(float(x)), 1.0)
            vp, vm = list(base), list(base)
            vp[k] = float(x) + hk
            vm[k] = float(x) - hk
            grads.append((call(vp) - call(vm)) / (2 * hk))
        elif isinstance(x, np.ndarray) and x.dtype.kind == "f":
            g = np.zeros(x.shape)
            for j in np.ndindex(x.shape):
                hk = h * max(abs(float(x[j])), 1.0)
                xp, xm = x.copy(order="K"), x.copy(order="K")
                xp[j] += hk
                xm[j] -= hk
                vp, vm = list(base), list(base)
                vp[k], vm[k] = xp, xm
                g[j] = (call(vp) - call(vm)) / (2 * hk)
            grads.append(g)
        else:
            grads.append(None)
    return f0, grads


def _fd_tolerance(f0, x, rtol, atol, h, g_fd):
    hk = h * np.maximum(np.abs(np.asarray(x, dtype=np.float64)), 1.0)
    return rtol * np.abs(g_fd) + NOISE_ULPS * _EPS64 * abs(f0) / hk + atol


def check_gradient(
    f,
    *xs,
    rtol: float | None = None,
    atol: float = 0.0,
    h: float = 1e-6,
    grad: Callable | None = None,
):
    """Compare ``enzpy.gradient(f, *xs)`` (or ``grad(f, *xs)``) with the componentwise
    central-difference gradient (:func:`fd_gradient`). Float32 inputs use
    ``RTOL_FLOAT32`` and a float64 reference. ``gradient`` returns one gradient per
    argument, or the gradient itself for a single argument. Returns the gradients
    as a tuple."""
    if grad is None:
        import enzpy

        grad = enzpy.gradient
    copies = [np.array(x, copy=True) if isinstance(x, np.ndarray) else x for x in xs]
    g = grad(f, *xs)
    if len(xs) == 1:
        # enzpy.gradient returns the single gradient itself for one argument
        assert not isinstance(g, tuple), f"gradient of one argument returned a tuple {g!r}"
        g = (g,)
    assert isinstance(g, tuple) and len(g) == len(xs), (
        f"gradient must return one entry per argument, got {g!r}"
    )
    for x, x0 in zip(xs, copies):
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, x0, err_msg="gradient() changed its input")
    f0, g_fd = fd_gradient(f, *copies, h=h)
    for k, (x, gk, gfk) in enumerate(zip(copies, g, g_fd)):
        if gfk is None:
            continue
        is32 = np.asarray(x).dtype == np.float32
        r = rtol if rtol is not None else (RTOL_FLOAT32 if is32 else RTOL_FLOAT64)
        assert gk is not None, f"gradient of argument {k} is None"
        gk = np.asarray(gk, dtype=np.float64)
        assert gk.shape == np.shape(gfk), (
            f"gradient of argument {k} has shape {gk.shape}, expected {np.shape(gfk)}"
        )
        tol = _fd_tolerance(f0, x, r, atol, h, gfk)
        # float32 AD: rounding relative to the function's own scale, too
        if is32:
            tol = tol + r * np.max(np.abs(gfk), initial=0.0)
        bad = ~(np.abs(gk - gfk) <= tol)
        assert not np.any(bad), (
            f"gradient of argument {k} disagrees with finite differences at "
            f"{np.argwhere(bad).tolist() if np.ndim(bad) else ''}:\n"
            f"  enzpy: {gk!r}\n  FD:    {gfk!r}"
        )
    return g


def assert_close_to_reference(value, reference, rtol=RTOL_FLOAT64, atol=0.0, what=""):
    """value ≈ reference (an analytic formula), NaN-safe, with a readable message."""
    value = np.asarray(value, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    err = np.abs(value - reference)
    ok = err <= rtol * np.abs(reference) + atol
    if not np.all(ok):
        with np.printoptions(precision=17):
            raise AssertionError(
                f"{what}: got {value!r}, expected {reference!r} "
                f"(max |diff| {np.max(err):.3e}, rtol {rtol}, atol {atol})"
            )
