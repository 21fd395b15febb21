"""Measuring one benchmark case: the primal's and enzpy's reverse-mode times and
compile times, a directional check of the gradient, forward mode (one direction,
a batch, its check) and hvp, and the peers' gradient times. Each function fills
the case's JSON record (a dict); report.py prints it."""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import numpy as np
from peakmem import peak_growth, probe_in_subprocess
from peers import Scaled, load_peers
from timing import best_time, first_call


def run_kernel(k, peers, budget):
    rec = {"name": k.name, "description": k.description, "n_inputs": k.n_inputs()}
    k.primal_setup()
    compile_primal, _ = first_call(k.primal)
    t_primal = best_time(k.primal, setup=k.primal_setup, budget=budget)
    rec.update(primal_s=t_primal, compile_primal_s=compile_primal, fd_ratio=2 * k.n_inputs() + 1)

    try:
        k.grad_setup(full=True)
        compile_grad, _ = first_call(k.grad)
        t_grad = best_time(k.grad, setup=k.grad_setup, budget=budget)
        rec.update(
            grad_s=t_grad, ratio=t_grad / t_primal, compile_grad_s=max(compile_grad - t_grad, 0.0)
        )
        # Correctness along one random direction.
        k.grad_setup(full=True)
        k.grad()
        g = k.grad_vector()
        v = np.random.default_rng(7).standard_normal(g.size)
        v /= np.linalg.norm(v)
        fd = k.directional_fd(v, k.check_step)
        ad = float(g @ v)
        rec.update(check_ad=ad, check_fd=fd, check_rel_err=abs(ad - fd) / max(abs(fd), 1e-300))
    except Exception as e:  # noqa: BLE001 - the engine may not handle a kernel yet
        rec["error"] = f"{type(e).__name__}: {e}"
        print(f"  enzpy failed on {k.name}: {rec['error']}", file=sys.stderr)
        if os.environ.get("ENZPY_BENCH_TRACEBACK"):
            traceback.print_exc()

    try:
        run_forward(k, rec, t_primal, budget)
    except Exception as e:  # noqa: BLE001 - the engine may not handle a kernel yet
        rec["fwd_error"] = f"{type(e).__name__}: {e}"
        print(f"  enzpy forward mode failed on {k.name}: {rec['fwd_error']}", file=sys.stderr)
        if os.environ.get("ENZPY_BENCH_TRACEBACK"):
            traceback.print_exc()

    rec["peers"] = {}
    for peer in ("jax", "torch"):
        if peer not in peers:
            continue
        try:
            compile_peer, fn = first_call(getattr(k, peer))
            t_first, _ = first_call(fn)
            t_peer = best_time(fn, budget=budget)
            factor = fn.factor if isinstance(fn, Scaled) else 1.0
            rec["peers"][peer] = {
                "grad_s": t_peer * factor,
                "ratio": t_peer * factor / t_primal,
                "compile_s": max(compile_peer + t_first - t_peer, 0.0),
            }
            if isinstance(fn, Scaled):
                rec["peers"][peer]["scaled"] = fn.note
        except Exception as e:  # noqa: BLE001
            rec["peers"][peer] = {"error": f"{type(e).__name__}: {e}"}
    return rec


BATCH_WIDTH = 8


def run_forward(k, rec, t_primal, budget):
    """Forward mode: one direction, a batch of BATCH_WIDTH, and a check of the
    tangent against a central difference."""
    rng = np.random.default_rng(11)
    nin = k.n_inputs()
    vs = [rng.standard_normal(nin) for _ in range(BATCH_WIDTH)]
    vs = [v / np.linalg.norm(v) for v in vs]
    one = k.forward(vs[:1], batch=False)
    compile_fwd, _ = first_call(one)
    t_fwd = best_time(one, budget=budget)
    rec.update(fwd_s=t_fwd, fwd_ratio=t_fwd / t_primal, compile_fwd_s=max(compile_fwd - t_fwd, 0.0))
    tangent = float(one())
    fd = k.directional_fd(vs[0], k.check_step)
    rec.update(
        fwd_check_ad=tangent,
        fwd_check_fd=fd,
        fwd_check_rel_err=abs(tangent - fd) / max(abs(fd), 1e-300),
    )
    many = k.forward(vs, batch=True)
    first_call(many)
    t_batch = best_time(many, budget=budget)
    rec.update(
        batch_width=BATCH_WIDTH,
        batch_s=t_batch,
        batch_ratio=t_batch / t_primal,
        batch_vs_separate=t_batch / (BATCH_WIDTH * t_fwd),
    )
    hvp = k.hvp(vs[0])
    if hvp is not None and "grad_s" in rec:
        compile_hvp, _ = first_call(hvp)
        t_hvp = best_time(hvp, budget=budget)
        rec.update(
            hvp_s=t_hvp,
            hvp_ratio=t_hvp / t_primal,
            hvp_vs_grad=t_hvp / rec["grad_s"],
            compile_hvp_s=max(compile_hvp - t_hvp, 0.0),
        )
    tangents = many()
    rec["batch_max_rel_diff"] = max(
        abs(float(t) - float(k.forward([v], batch=False)())) / max(abs(float(t)), 1e-300)
        for t, v in zip(tangents, vs)
    )


# --------------------------------------------------------------------------
# peak memory (bench/peakmem.py), one fresh subprocess per measurement

MEMORY_WHATS = ("primal", "enzpy", "jax", "torch")


def memory_probe(spec, kernels):
    """In the probe subprocess: measure one kernel:what (a case among
    ``kernels``) and print JSON."""
    name, what = spec.split(":")
    (k,) = [k for k in kernels if k.name == name]
    try:
        if what == "primal":
            nbytes = peak_growth(k.primal, k.primal_setup)
        elif what == "enzpy":
            nbytes = peak_growth(k.grad, lambda: k.grad_setup(full=True))
        else:
            peers, skipped = load_peers(True)
            if what not in peers:
                raise ImportError(skipped.get(what, what))
            fn = getattr(k, what)()
            nbytes = peak_growth(fn) * (fn.factor if isinstance(fn, Scaled) else 1.0)
        print(json.dumps({"bytes": nbytes}))
    except Exception as e:  # noqa: BLE001 - reported in the parent's table
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
    return 0


def run_memory(records, peers, quick, script: Path):
    """Peak memory of each record's kernel (primal, enzpy, peers), each measured
    by ``script --memory-probe`` in a fresh subprocess."""
    extra = ["--quick"] if quick else []
    for r in records:
        print(f"peak memory of {r['name']} ...", flush=True)
        mem = {}
        for what in MEMORY_WHATS:
            if what in ("jax", "torch") and (what not in peers or "ratio" not in r["peers"][what]):
                continue
            if what == "enzpy" and "ratio" not in r:
                continue
            mem[what] = probe_in_subprocess(script, r["name"], what, extra)
        r["peak_memory"] = mem
