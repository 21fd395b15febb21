"""Kernels and references shared by the bridge tests (test_jax, test_torch;
a helper, not a test).

Each kernel is an njit function with output arguments, in the styles
numerical code uses: a stencil with a scalar parameter writing an output
array, an in-place update, a kernel with an integer parameter whose output
shape depends on it, and a kernel with two outputs. ``reference`` runs a
kernel directly (outputs allocated here, in-place arguments copied) and
``fd_jacobian`` differentiates that by central differences: the bridges'
results are compared with these, never with themselves.
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit
def stencil(u, a, out):
    """out[i] = u[i] + a (u[i-1] - 2u[i] + u[i+1])^2 inside, 0 at the ends."""
    for i in range(1, u.shape[0] - 1):
        out[i] = u[i] + a * (u[i - 1] - 2 * u[i] + u[i + 1]) ** 2


@numba.njit
def update(a, x, y):
    """y <- y * x + a sin(x), in place."""
    for i in range(y.shape[0]):
        y[i] = y[i] * x[i] + a * math.sin(x[i])


@numba.njit
def window(x, w, out):
    """out[i] = sum of x[i+j]^2 (j < w) times x[i]: an integer parameter."""
    for i in range(out.shape[0]):
        s = 0.0
        for j in range(w):
            s += x[i + j] * x[i + j]
        out[i] = s * x[i]


@numba.njit
def polar(x, y, r, th):
    """Two outputs: r = |(x, y)|, th = atan2(y, x)."""
    for i in range(x.shape[0]):
        r[i] = math.sqrt(x[i] * x[i] + y[i] * y[i])
        th[i] = math.atan2(y[i], x[i])


# name -> (kernel, outputs, inplace, example inputs (float64), reference)
def _stencil_ref(u, a):
    out = np.zeros_like(u)
    stencil(u.copy(), a, out)
    return [out]


def _update_ref(a, x, y):
    y = y.copy()
    update(a, x.copy(), y)
    return [y]


def _window_ref(x, w):
    out = np.zeros(x.shape[0] - int(w) + 1, x.dtype)
    window(x.copy(), int(w), out)
    return [out]


def _polar_ref(x, y):
    r, th = np.zeros_like(x), np.zeros_like(x)
    polar(x.copy(), y.copy(), r, th)
    return [r, th]


def cases(rng):
    """The test cases: name -> (kernel, outputs, inplace, inputs, reference)."""
    n = 7
    return {
        "stencil": (
            stencil,
            {"out": "u"},
            (),
            [rng.uniform(-1, 1, n), np.float64(0.7)],
            _stencil_ref,
        ),
        "update": (
            update,
            {},
            ("y",),
            [np.float64(-0.4), rng.uniform(-1, 1, n), rng.uniform(-1, 1, n)],
            _update_ref,
        ),
        "window": (
            window,
            {"out": lambda x, w: (x.shape[0] - 2,)},
            (),
            [rng.uniform(-1, 1, n), np.int64(3)],
            _window_ref,
        ),
        "polar": (
            polar,
            {"r": "x", "th": "x"},
            (),
            [rng.uniform(0.5, 1, n), rng.uniform(-1, 1, n)],
            _polar_ref,
        ),
    }


def is_float(x) -> bool:
    return np.asarray(x).dtype.kind == "f"


def fd_jacobian(ref, xs, h=1e-6):
    """Central-difference Jacobian blocks ``J[j][k]`` of result j with respect to
    float input k (shape ``result.shape + input.shape``; None for other inputs),
    in float64."""
    xs = [np.asarray(x, np.float64) if is_float(x) else x for x in xs]
    y0 = ref(*xs)
    J = [[None] * len(xs) for _ in y0]
    for k, x in enumerate(xs):
        if not is_float(x):
            continue
        x = np.asarray(x)
        blocks = [np.zeros(y.shape + x.shape) for y in y0]
        for idx in np.ndindex(x.shape):
            step = h * max(abs(float(x[idx])), 1.0)
            hi, lo = x.copy(), x.copy()
            hi[idx] += step
            lo[idx] -= step
            args_hi = list(xs)
            args_lo = list(xs)
            args_hi[k] = hi if x.ndim else np.float64(hi)
            args_lo[k] = lo if x.ndim else np.float64(lo)
            for j, (yh, yl) in enumerate(zip(ref(*args_hi), ref(*args_lo))):
                blocks[j][(...,) + idx] = (yh - yl) / (2 * step)
        for j in range(len(y0)):
            J[j][k] = blocks[j]
    return y0, J


def jvp_ref(J, ts):
    """Tangents of the results: sum over float inputs of J[j][k] . t_k."""
    out = []
    for row in J:
        acc = None
        for k, Jk in enumerate(row):
            if Jk is None:
                continue
            t = np.asarray(ts[k], np.float64)
            c = np.tensordot(Jk, t, axes=t.ndim) if t.ndim else Jk * float(t)
            acc = c if acc is None else acc + c
        out.append(acc)
    return out


def vjp_ref(J, cts):
    """Cotangents of the float inputs (None for the others)."""
    out = []
    for k in range(len(J[0])):
        if J[0][k] is None:
            out.append(None)
            continue
        acc = 0.0
        for j, c in enumerate(cts):
            c = np.asarray(c, np.float64)
            acc = acc + np.tensordot(c, J[j][k], axes=c.ndim)
        out.append(np.asarray(acc))
    return out
