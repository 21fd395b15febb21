"""Per-call overhead of the framework bridges (enzpy.jax, enzpy.torch,
enzpy.scipy) on a tiny kernel, where the kernel's own work is negligible:
what a call through the bridge costs beyond calling the compiled code
directly. Writes bench/results/bridges.json. Not run in CI.

    PYTHONPATH=... .venv/bin/python -P bench/bridges.py

JAX has two paths: a host callback (jax.pure_callback: a Python round trip
per call) and an XLA FFI custom call (XLA calls the compiled handler
directly). Each figure is the best of several repetitions of the mean over a block of
calls, in microseconds: the kernel (or its compiled derivative) called
directly from Python, then through each bridge path. A framework that is
not importable is skipped.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np

import enzpy
from enzpy import Active, Duplicated

N = 16


@numba.njit
def stencil(u, a, out):
    for i in range(1, u.shape[0] - 1):
        out[i] = u[i] + a * (u[i - 1] - 2 * u[i] + u[i + 1]) ** 2


@numba.njit
def loss(x, c):
    s = 0.0
    for i in range(x.shape[0] - 1):
        s += c * (x[i + 1] - x[i] ** 2) ** 2 + (1.0 - x[i]) ** 2
    return s


def per_call(fn: Callable[[], Any], block: int = 2000, reps: int = 7) -> float:
    """Microseconds per call: best over ``reps`` blocks of ``block`` calls."""
    fn()
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(block):
            fn()
        best = min(best, (time.perf_counter() - t) / block)
    return best * 1e6


def direct(u: np.ndarray, a: float) -> dict[str, float]:
    out = np.zeros_like(u)
    du, dout = np.zeros_like(u), np.ones_like(u)
    rev = enzpy.derivative(stencil, Duplicated(u, du), Active(a), Duplicated(out, dout))
    fwd = enzpy.derivative(
        stencil, Duplicated(u, du), Duplicated(a, 1.0), Duplicated(out, dout), mode=enzpy.Forward
    )
    return {
        "kernel": per_call(lambda: stencil(u, a, out)),
        "reverse derivative": per_call(lambda: rev(u, du, a, out, dout)),
        "forward derivative": per_call(lambda: fwd(u, du, a, 1.0, out, dout)),
    }


def jax_paths(u: np.ndarray, a: float) -> dict[str, float]:
    import jax
    import jax.numpy as jnp

    import enzpy.jax

    jax.config.update("jax_enable_x64", True)
    ju, ja = jnp.asarray(u), jnp.asarray(a)
    block = 500
    res: dict[str, float] = {}
    for via in ("callback", "ffi"):
        g = enzpy.jax.kernel(stencil, outputs={"out": "u"}, via=via)
        primal = jax.jit(g)
        grad = jax.jit(jax.grad(lambda u, a, g=g: jnp.sum(g(u, a)), argnums=(0, 1)))
        jvp = jax.jit(lambda u, a, g=g: jax.jvp(g, (u, a), (u, a))[1])
        res[f"jit primal ({via})"] = per_call(lambda f=primal: f(ju, ja).block_until_ready(), block)
        res[f"jit grad ({via}: primal + reverse)"] = per_call(
            lambda f=grad: f(ju, ja)[0].block_until_ready(), block
        )
        res[f"jit jvp ({via}: primal + forward)"] = per_call(
            lambda f=jvp: f(ju, ja).block_until_ready(), block
        )

    def native(u: Any, a: Any) -> Any:  # the same stencil in jax.numpy, for scale
        return u.at[1:-1].set(u[1:-1] + a * (u[:-2] - 2 * u[1:-1] + u[2:]) ** 2).at[0].set(0.0)

    jn = jax.jit(native)
    res["jit jax.numpy stencil (no kernel call, for scale)"] = per_call(
        lambda: jn(ju, ja).block_until_ready(), block
    )
    return res


def torch_paths(u: np.ndarray, a: float) -> dict[str, float]:
    import torch

    import enzpy.torch

    op = enzpy.torch.kernel(stencil, outputs={"out": "u"})
    tu, ta = torch.tensor(u), torch.tensor(a)
    gu, ga = tu.clone().requires_grad_(), ta.clone().requires_grad_()

    def fwd_bwd() -> None:
        op(gu, ga).sum().backward()

    block = 500
    res = {
        "op forward (no grad)": per_call(lambda: op(tu, ta), block),
        "op forward + backward": per_call(fwd_bwd, block),
    }
    compiled = torch.compile(lambda u, a: op(u, a).sum(), backend="aot_eager")

    def compiled_fwd_bwd() -> None:
        compiled(gu, ga).backward()

    res["torch.compile (aot_eager) forward + backward"] = per_call(compiled_fwd_bwd, block)
    return res


def scipy_paths(u: np.ndarray) -> dict[str, float]:
    import enzpy.scipy

    obj = enzpy.scipy.Objective(loss, 100.0)
    x = u.copy()
    dx = np.zeros_like(x)
    d = enzpy.derivative(loss, Duplicated(x, dx), 100.0, mode=enzpy.ReverseWithPrimal)
    return {
        "compiled value-and-gradient, direct": per_call(lambda: d(x, dx, 100.0, 1.0)),
        "Objective.value_and_grad": per_call(lambda: obj.value_and_grad(x)),
    }


def main() -> None:
    rng = np.random.default_rng(0)
    u = rng.uniform(-1, 1, N)
    a = 0.3
    results: dict[str, Any] = {
        "what": f"per-call time in microseconds, stencil kernel on {N} float64 elements",
        "direct": direct(u, a),
    }
    for name, fn in (("jax", lambda: jax_paths(u, a)), ("torch", lambda: torch_paths(u, a))):
        try:
            results[name] = fn()
        except ImportError as e:
            results[name] = f"skipped: {e}"
    results["scipy"] = scipy_paths(u)
    peers = {}
    for name in ("jax", "torch"):
        try:
            peers[name] = importlib.import_module(name).__version__
        except ImportError:
            pass
    json.dump(results, sys.stdout, indent=2)
    print()
    here = Path(__file__).resolve().parent
    sys.path[:0] = [str(here)]
    from report import save_results

    save_results(here / "results" / "bridges.json", results, peers)


if __name__ == "__main__":
    main()
