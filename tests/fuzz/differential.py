"""Differential checks of one generated kernel: reverse vs forward vs central finite
differences, in width 1 and in batch mode.

The view is the one of tests/fd.py: every array argument is both an input (its
contents before the call) and an output (its contents after), so a kernel is a map

    F: u = (float scalars, initial contents of every array)
       -> y = (float return value, final contents of every array).

For one kernel, with random directions ``v`` (input tangents) and ``w`` (output
cotangents; the return's cotangent is enzpy's seed 1.0):

  reverse    enzpy's ``Jᵀw`` (Active derivatives, final shadows) against central
             differences, one differentiable argument at a time:
             ``<w, J v_k>`` (FD) == ``<Jᵀw, v_k>`` (enzpy), rtol ``RTOL_FD``
  forward    enzpy's ``J v`` (return tangent, final shadows) against the central
             difference of F along v, output by output, rtol ``RTOL_FD`` of the
             output's largest tangent
  adjoint    ``<w, J v>`` (forward) == ``<Jᵀw, v>`` (reverse), rtol ``RTOL_ADJ``:
             both are exact up to rounding, so this is the sharp check
  batch      forward and reverse ``BatchDuplicated`` of width 2-3 against width-one
             calls lane by lane (rtol ``RTOL_BATCH``)
  primal     the arrays enzpy leaves behind, and ForwardWithPrimal's return value,
             equal the plain call's

Non-smooth points: a direction along which the forward and backward one-sided
differences disagree (a branch, min/max, abs or a while-loop exit is crossed
within the step) is skipped and counted, not reported.

Outcomes: "ok"; "refused" (an EnzpyError other than InternalError/CompilationError:
the engine's documented "clear error"); "finding" (a wrong number, NaN where FD is
finite, InternalError, CompilationError of a kernel numba compiles, any other
exception); "rejected" (the generator's fault: the primal is not finite or too large,
or numba cannot compile it; the driver then tries the seed's next attempt).
"""

from __future__ import annotations

import dataclasses
import linecache
import os
import tempfile
import traceback

import numpy as np

from .grammar import Kernel, generate

RTOL_FD = 1e-5
RTOL_ADJ = 1e-10
RTOL_BATCH = 1e-11
H_STEP = 1e-6
NOISE_ULPS = 64
#: one-sided differences that disagree by more than this (relative) mark a kink
KINK_RTOL = 1e-3
MAX_ATTEMPTS = 6
_EPS = float(np.finfo(np.float64).eps)

_SRC_DIR = None


@dataclasses.dataclass
class Result:
    seed: int
    attempt: int
    outcome: str  # ok | refused | finding | rejected
    kind: str = ""  # for a finding: which check; for refused: the error class
    message: str = ""
    source: str = ""
    details: dict = dataclasses.field(default_factory=dict)
    kinks: int = 0  # directions skipped as non-smooth
    blocks: list = dataclasses.field(default_factory=list)
    profile: str = "base"

    def summary(self) -> str:
        s = f"seed {self.seed}/{self.attempt}: {self.outcome}"
        if self.kind:
            s += f" [{self.kind}]"
        if self.message:
            s += f": {self.message.splitlines()[0][:200]}"
        return s


class Finding(Exception):
    def __init__(self, kind, message, **details):
        super().__init__(message)
        self.kind = kind
        self.details = details


class Refused(Exception):
    pass


# --------------------------------------------------------------------------- setup


def compile_kernel(k: Kernel):
    """exec the kernel's module source under a real file name (numba's error
    messages and enzpy's file:line diagnostics then point at readable source)."""
    global _SRC_DIR
    if _SRC_DIR is None:
        _SRC_DIR = tempfile.mkdtemp(prefix="enzpy-fuzz-")
    path = os.path.join(_SRC_DIR, f"kernel_{k.seed}_{k.attempt}.py")
    with open(path, "w") as f:
        f.write(k.source)
    linecache.checkcache(path)
    ns: dict = {"__name__": f"enzpy_fuzz_kernel_{k.seed}_{k.attempt}", "__file__": path}
    exec(compile(k.source, path, "exec"), ns)
    return ns["kernel"]


def make_inputs(k: Kernel, rng):
    """Initial values: arrays with |entries| in [0.2, 1.2] and random signs (away from
    the branch boundary 0), scalars in [0.3, 0.9]."""
    vals = []
    for kind, _ in k.args:
        if kind == "arr":
            v = rng.uniform(0.2, 1.2, k.n) * rng.choice([-1.0, 1.0], k.n)
            vals.append(v)
        elif kind == "arr2":
            vals.append(rng.uniform(-1.0, 1.0, (k.T + 1, k.n)))
        elif kind == "scal":
            vals.append(float(rng.uniform(0.3, 0.9)))
        elif kind == "iarr":
            vals.append(rng.permutation(k.n))
        else:
            raise AssertionError(kind)
    return vals


def _layout(k: Kernel, vals):
    """The arrays the enzpy call sees: copies, strided views where the kernel says."""
    out = []
    for (kind, name), v in zip(k.args, vals):
        if kind in ("arr", "arr2"):
            if name in k.strided:
                buf = np.full(2 * v.size, 7.0)
                a = buf[::2]
                a[...] = v
                out.append(a)
            else:
                out.append(np.array(v, copy=True))
        else:
            out.append(v)
    return out


def _shadow_like(k: Kernel, name, v):
    if name in k.strided:
        return np.zeros(2 * v.size)[::2]
    return np.zeros_like(v)


class Problem:
    """F: u -> y for one kernel, plus its enzpy calls."""

    def __init__(self, k: Kernel, f, vals):
        self.k = k
        self.f = f
        self.vals = vals
        self.diff = [i for i, (kind, _) in enumerate(k.args) if kind in ("arr", "arr2", "scal")]
        self.arr = [i for i, (kind, _) in enumerate(k.args) if kind in ("arr", "arr2")]
        self.scal = [i for i, (kind, _) in enumerate(k.args) if kind == "scal"]

    def run(self, vals):
        """Outputs of F at vals: [return (or None)] + final arrays (float64 copies)."""
        args = [np.array(v, copy=True) if isinstance(v, np.ndarray) else v for v in vals]
        r = self.f(*args)
        out = [None if r is None else float(r)]
        out += [np.array(args[i], dtype=np.float64) for i in self.arr]
        return out

    def moved(self, direction, t):
        return [(v + t * d) if d is not None else v for v, d in zip(self.vals, direction)]


def _flat(outs):
    return [np.atleast_1d(np.asarray(o, dtype=np.float64)) for o in outs if o is not None]


def fd_jvp(p: Problem, direction, h=H_STEP):
    """Central difference of F along ``direction`` (a list like vals; None for
    non-differentiable). Returns (jv list, noise list, kink flag)."""
    y0 = _flat(p.run(p.vals))
    yp = _flat(p.run(p.moved(direction, h)))
    ym = _flat(p.run(p.moved(direction, -h)))
    jv, noise = [], []
    kink = False
    for a, b, c in zip(yp, y0, ym):
        central = (a - c) / (2 * h)
        fwd = (a - b) / h
        bwd = (b - c) / h
        mag = np.maximum(np.maximum(np.abs(a), np.abs(b)), np.abs(c))
        nz = NOISE_ULPS * _EPS * mag / h
        scale = np.max(np.abs(central), initial=0.0)
        if not np.all(np.isfinite(central)):
            kink = True
        elif np.any(np.abs(fwd - bwd) > KINK_RTOL * (np.abs(central) + scale) + 4 * nz + 1e-7):
            kink = True
        jv.append(central)
        noise.append(nz)
    return jv, noise, kink


def random_direction(p: Problem, rng, only=None):
    d = []
    for i, v in enumerate(p.vals):
        if i not in p.diff or (only is not None and i != only):
            d.append(None)
        elif isinstance(v, np.ndarray):
            d.append(rng.standard_normal(v.shape) * np.maximum(np.abs(v), 1.0))
        else:
            d.append(float(rng.standard_normal() * max(abs(v), 1.0)))
    return d


def _dot(a, b):
    return float(np.sum(np.asarray(a, np.float64) * np.asarray(b, np.float64)))


def _dot_abs(a, b):
    return float(np.sum(np.abs(np.asarray(a, np.float64)) * np.abs(np.asarray(b, np.float64))))


# ---------------------------------------------------------------------- enzpy calls


def _call(what, fn, *a, **kw):
    """An enzpy call; sorts its exceptions into refusals and findings."""
    import enzpy

    try:
        return fn(*a, **kw)
    except (enzpy.InternalError, enzpy.CompilationError) as e:
        raise Finding(
            f"{what}: {type(e).__name__}",
            f"{type(e).__name__}: {e}",
            traceback=traceback.format_exc(),
        ) from e
    except enzpy.EnzpyError as e:
        raise Refused(f"{what}: {type(e).__name__}: {e}") from e
    except Finding:
        raise
    except Exception as e:  # noqa: BLE001 - anything else is a finding
        raise Finding(
            f"{what}: {type(e).__name__}",
            f"{type(e).__name__}: {e}",
            traceback=traceback.format_exc(),
        ) from e


def reverse(p: Problem, w, ret_seed=True):
    """Width-one reverse call. w: list of cotangent arrays (None for non-arrays).
    Returns (gradient list like vals: floats for scalars, final shadows for arrays,
    arrays left behind by the call)."""
    import enzpy

    k = p.k
    args = _layout(k, p.vals)
    ann, shadows = [], []
    for (kind, name), v, wi in zip(k.args, args, w):
        if kind in ("arr", "arr2"):
            dx = _shadow_like(k, name, v)
            dx[...] = wi
            shadows.append(dx)
            ann.append(enzpy.Duplicated(v, dx))
        elif kind == "iarr":
            shadows.append(None)
            ann.append(v)  # a bare value: Const
        else:
            shadows.append(None)
            ann.append(enzpy.Active(v))
    ret = enzpy.Active if (k.returns_float and ret_seed) else enzpy.Const
    d = _call("reverse", enzpy.autodiff, p.f, *ann, ret=ret)
    g = []
    for i, (kind, _) in enumerate(k.args):
        if kind == "iarr":
            g.append(None)
        else:
            g.append(float(d[i]) if kind == "scal" else np.array(shadows[i], dtype=np.float64))
    return g, args


def forward(p: Problem, v):
    """Width-one ForwardWithPrimal call. Returns (J v outputs like F's, primal return,
    arrays left behind)."""
    import enzpy

    k = p.k
    args = _layout(k, p.vals)
    ann, shadows = [], []
    for (kind, name), x, vi in zip(k.args, args, v):
        if kind in ("arr", "arr2"):
            dx = _shadow_like(k, name, x)
            dx[...] = vi
            shadows.append(dx)
            ann.append(enzpy.Duplicated(x, dx))
        elif kind == "iarr":
            shadows.append(None)
            ann.append(x)
        else:
            shadows.append(None)
            ann.append(enzpy.Duplicated(x, float(vi)))
    t, primal = _call("forward", enzpy.autodiff, p.f, *ann, mode=enzpy.ForwardWithPrimal)
    outs = [None if not k.returns_float else t]
    outs += [np.array(s, dtype=np.float64) for s in shadows if s is not None]
    return outs, primal, args


def forward_batch(p: Problem, vs):
    import enzpy

    k = p.k
    W = len(vs)
    args = _layout(k, p.vals)
    ann, shadows = [], []
    for i, ((kind, name), x) in enumerate(zip(k.args, args)):
        if kind in ("arr", "arr2"):
            lanes = []
            for j in range(W):
                dx = _shadow_like(k, name, x)
                dx[...] = vs[j][i]
                lanes.append(dx)
            shadows.append(lanes)
            ann.append(enzpy.BatchDuplicated(x, tuple(lanes)))
        elif kind == "iarr":
            shadows.append(None)
            ann.append(x)
        else:
            shadows.append(None)
            ann.append(enzpy.BatchDuplicated(x, tuple(float(vs[j][i]) for j in range(W))))
    t = _call("forward batch", enzpy.autodiff, p.f, *ann, mode=enzpy.Forward)
    lanes_out = []
    for j in range(W):
        outs = [None if not k.returns_float else t[j]]
        outs += [np.array(s[j], dtype=np.float64) for s in shadows if s is not None]
        lanes_out.append(outs)
    return lanes_out


def reverse_batch(p: Problem, ws, seeds):
    import enzpy

    k = p.k
    W = len(ws)
    args = _layout(k, p.vals)
    ann, shadows = [], []
    for i, ((kind, name), x) in enumerate(zip(k.args, args)):
        if kind in ("arr", "arr2"):
            lanes = []
            for j in range(W):
                dx = _shadow_like(k, name, x)
                dx[...] = ws[j][i]
                lanes.append(dx)
            shadows.append(lanes)
            ann.append(enzpy.BatchDuplicated(x, tuple(lanes)))
        elif kind == "iarr":
            shadows.append(None)
            ann.append(x)
        else:
            shadows.append(None)
            ann.append(enzpy.Active(x))
    ret = tuple(seeds) if k.returns_float else enzpy.Const
    d = _call("reverse batch", enzpy.autodiff, p.f, *ann, ret=ret)
    lanes_out = []
    for j in range(W):
        g = []
        for i, (kind, _) in enumerate(k.args):
            g.append(
                None
                if kind == "iarr"
                else float(d[i][j])
                if kind == "scal"
                else np.array(shadows[i][j], dtype=np.float64)
            )
        lanes_out.append(g)
    return lanes_out


def reverse_seeded(p: Problem, w, seed):
    """Width-one reverse with the return's cotangent ``seed``: the reference for one
    lane of a reverse batch. Reverse mode is linear in the cotangents, so
    ``Jᵀ(seed, w) = seed · Jᵀ(1, w / seed)``; ``seed`` is a signed power of two, which
    makes the scaling exact, and the call reuses the width-one derivative (ret=Active)
    that is compiled already -- no extra compile per kernel."""
    if not p.k.returns_float:
        g, _ = reverse(p, w)
        return g
    scaled = [None if wi is None else wi / seed for wi in w]
    g, _ = reverse(p, scaled)
    return [None if gi is None else gi * seed for gi in g]


# --------------------------------------------------------------------------- checks


def _fmt(x):
    return np.array2string(np.asarray(x), precision=10) if isinstance(x, np.ndarray) else repr(x)


def _check_primal(p: Problem, ref_outs, args_after, what):
    for idx, i in enumerate(p.arr):
        ref = ref_outs[1 + idx]
        got = np.asarray(args_after[i], dtype=np.float64)
        tol = 1e-12 * max(1.0, float(np.max(np.abs(ref), initial=0.0)))
        if not np.all(np.abs(got - ref) <= tol):
            raise Finding(
                f"{what}: primal",
                f"{what}: the primal contents of argument {p.k.args[i][1]} after the call "
                "differ from the plain call's",
                expected=_fmt(ref),
                got=_fmt(got),
            )


def check_kernel(k: Kernel, f, rng, width: int) -> tuple[dict, int]:
    """Runs every check; raises Finding or Refused. Returns (details, kinks)."""
    vals = make_inputs(k, rng)
    p = Problem(k, f, vals)
    y0 = p.run(vals)
    kinks = 0

    # cotangents w (arrays) and a direction v
    w = [rng.standard_normal(np.shape(v)) if i in p.arr else None for i, v in enumerate(vals)]
    v = random_direction(p, rng)

    refused = []

    # ---- reverse, width one, against FD per argument
    g = None
    try:
        g, after = reverse(p, w)
        _check_primal(p, y0, after, "reverse")
    except Refused as e:
        refused.append(str(e))
    if g is not None:
        wflat = ([1.0] if k.returns_float else []) + [w[i] for i in p.arr]
        for i in p.diff:
            vk = random_direction(p, rng, only=i)
            jv, noise, kink = fd_jvp(p, vk)
            if kink:
                kinks += 1
                continue
            lhs = sum(_dot(wo, d) for wo, d in zip(wflat, jv))
            fd_scale = sum(_dot_abs(wo, d) for wo, d in zip(wflat, jv))
            nz = sum(_dot_abs(wo, n) for wo, n in zip(wflat, noise))
            rhs = _dot(g[i], vk[i])
            ad_scale = _dot_abs(g[i], vk[i])
            tol = RTOL_FD * max(fd_scale, ad_scale) + nz
            if not abs(lhs - rhs) <= tol:
                raise Finding(
                    "reverse vs FD",
                    f"reverse mode, argument {k.args[i][1]}: <w, J v> by FD = {lhs!r}, "
                    f"<J^T w, v> from enzpy = {rhs!r} (tol {tol:.3e})",
                    expected=lhs,
                    got=rhs,
                    gradient=_fmt(g[i]),
                )

    # ---- forward, width one, against FD along v
    jv_ad = None
    try:
        jv_ad, primal, after = forward(p, v)
        _check_primal(p, y0, after, "forward")
        if k.returns_float and not (abs(float(primal) - y0[0]) <= 1e-12 * max(1.0, abs(y0[0]))):
            raise Finding(
                "forward: primal",
                "ForwardWithPrimal's primal return differs from the plain call's",
                expected=y0[0],
                got=primal,
            )
    except Refused as e:
        refused.append(str(e))
    if jv_ad is not None:
        jv, noise, kink = fd_jvp(p, v)
        if kink:
            kinks += 1
        else:
            names = (["return"] if k.returns_float else []) + [k.args[i][1] for i in p.arr]
            for name, ad, fd, nz in zip(names, _flat(jv_ad), jv, noise):
                scale = max(np.max(np.abs(fd), initial=0.0), np.max(np.abs(ad), initial=0.0))
                bad = ~(np.abs(ad - fd) <= RTOL_FD * scale + nz)
                if np.any(bad):
                    raise Finding(
                        "forward vs FD",
                        f"forward mode, output {name}: J v differs from FD at "
                        f"{np.flatnonzero(bad).tolist()}",
                        expected=_fmt(fd),
                        got=_fmt(ad),
                    )

    # ---- adjoint identity between the two modes
    if g is not None and jv_ad is not None:
        wflat = ([1.0] if k.returns_float else []) + [w[i] for i in p.arr]
        lhs = sum(_dot(wo, d) for wo, d in zip(wflat, _flat(jv_ad)))
        rhs = sum(_dot(g[i], v[i]) for i in p.diff)
        scale = sum(_dot_abs(wo, d) for wo, d in zip(wflat, _flat(jv_ad))) + sum(
            _dot_abs(g[i], v[i]) for i in p.diff
        )
        if not abs(lhs - rhs) <= RTOL_ADJ * scale + 1e-300:
            raise Finding(
                "adjoint identity",
                f"<w, J v> (forward) = {lhs!r} != <J^T w, v> (reverse) = {rhs!r}",
                expected=lhs,
                got=rhs,
            )

    # ---- batch mode, lane by lane against width one
    vs = [random_direction(p, rng) for _ in range(width)]
    ws = [
        [rng.standard_normal(np.shape(x)) if i in p.arr else None for i, x in enumerate(vals)]
        for _ in range(width)
    ]
    seeds = [float(rng.choice([-1.0, 1.0]) * 2.0 ** rng.integers(-2, 3)) for _ in range(width)]
    if jv_ad is not None:
        try:
            lanes = forward_batch(p, vs)
            for j in range(width):
                one, _, _ = forward(p, vs[j])
                for o, (a, b) in enumerate(zip(_flat(lanes[j]), _flat(one))):
                    tol = RTOL_BATCH * max(1.0, float(np.max(np.abs(b), initial=0.0)))
                    if not np.all(np.abs(a - b) <= tol):
                        raise Finding(
                            "forward batch vs width one",
                            f"forward batch width {width}, lane {j}, output {o}",
                            expected=_fmt(b),
                            got=_fmt(a),
                        )
        except Refused as e:
            refused.append(str(e))
    if g is not None:
        try:
            lanes = reverse_batch(p, ws, seeds)
            for j in range(width):
                one = reverse_seeded(p, ws[j], seeds[j])
                for i in p.diff:
                    a, b = np.asarray(lanes[j][i]), np.asarray(one[i])
                    tol = RTOL_BATCH * max(1.0, float(np.max(np.abs(b), initial=0.0)))
                    if not np.all(np.abs(a - b) <= tol):
                        raise Finding(
                            "reverse batch vs width one",
                            f"reverse batch width {width}, lane {j}, argument {k.args[i][1]}",
                            expected=_fmt(b),
                            got=_fmt(a),
                        )
        except Refused as e:
            refused.append(str(e))
    if refused:
        raise Refused("; ".join(refused))
    return {}, kinks


def run_seed(seed: int, width: int | None = None, profile: str = "base") -> Result:
    """Generate the kernel of ``seed`` (moving on to the next attempt while the
    generator's kernel is rejected) and check it."""
    import numba

    last = None
    for attempt in range(MAX_ATTEMPTS):
        k = generate(seed, attempt, profile)
        rng = np.random.default_rng([seed, attempt])
        w = width if width is not None else 2 + (seed % 2)
        base = Result(seed, attempt, "", source=k.source, blocks=k.blocks, profile=profile)
        try:
            f = compile_kernel(k)
            vals = make_inputs(k, np.random.default_rng([seed, attempt]))
            p = Problem(k, f, vals)
            with np.errstate(all="ignore"):
                outs = _flat(p.run(vals))
        except numba.core.errors.NumbaError as e:
            last = dataclasses.replace(base, outcome="rejected", kind="numba", message=str(e)[:500])
            continue
        if not all(np.all(np.isfinite(o)) and np.all(np.abs(o) < 1e4) for o in outs):
            last = dataclasses.replace(
                base, outcome="rejected", kind="range", message="primal out of range"
            )
            continue
        try:
            with np.errstate(all="ignore"):
                _, kinks = check_kernel(k, f, rng, w)
        except Finding as e:
            return dataclasses.replace(
                base, outcome="finding", kind=e.kind, message=str(e), details=e.details
            )
        except Refused as e:
            return dataclasses.replace(base, outcome="refused", kind="refused", message=str(e))
        except Exception as e:  # noqa: BLE001 - a bug in the checker or the primal
            return dataclasses.replace(
                base,
                outcome="finding",
                kind=f"unexpected {type(e).__name__}",
                message=str(e),
                details={"traceback": traceback.format_exc()},
            )
        return dataclasses.replace(base, outcome="ok", kinks=kinks)
    return last
