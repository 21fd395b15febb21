"""Compile time of large kernels: does enzpy's first gradient scale like
numba's own compile of the primal?

A seeded generator writes kernels of N statements in the mix long numerical
functions have (scalar math chains, loops that update an array in place,
branches on computed values, reads of array elements). For each N it times,
each in a fresh process so that no compile is shared:

  numba     the first call of the primal (numba's whole compile),
  capture   enzpy's debug-info copy of numba's IR (a second numba lowering),
  engine    the C++ engine (analyses, synthesis, O3),
  link      loading the derivative into numba's JIT (numba's O3 and codegen),
  first     the first gradient call in total (the stages above plus the
            wrapper's compile and the call).

    python bench/compile_time.py                # N = 100, 200, 400, 800
    python bench/compile_time.py --sizes 50,100 --out /tmp/ct.json

With ``--disk-cache`` it times instead, for each bench kernel (cases.py, the
--quick sizes) compiled with ``cache=True``, the first call of the primal,
of the gradient and of the forward derivative in a fresh process with empty
numba and enzpy disk caches (cold), then in a second fresh process that finds
both caches filled by the first (warm). A first call's time is the call's
total minus the time of a later call (the compile and load alone).

    python bench/compile_time.py --disk-cache [--only mlp,gmm]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

# This folder and examples/ (shared kernels) by plain name, also under `python -P`.
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "examples")]

from report import print_rows, save_results  # noqa: E402

MATH = ("np.sin", "np.cos", "np.exp", "np.tanh", "np.sqrt", "np.log1p")


def kernel_source(n_statements: int, seed: int = 0) -> str:
    """A kernel ``big(x, y, a)`` of about ``n_statements`` statements."""
    r = random.Random(seed)
    lines = ["def big(x, y, a):", "    n = x.shape[0]", "    s = 0.0", "    t = a"]
    names = ["s", "t"]
    count = 0
    while count < n_statements:
        k = r.random()
        v = f"v{count}"
        a, b = r.choice(names), r.choice(names)
        if k < 0.5:
            f = r.choice(MATH)
            arg = f"{a} * {a}" if f in ("np.sqrt", "np.log1p") else a
            lines.append(f"    {v} = {f}({arg}) {r.choice('+-*')} 0.5 * {b}")
            names.append(v)
            count += 1
        elif k < 0.7:
            lines.append("    for i in range(n):")
            lines.append(f"        y[i] = y[i] * 0.9 + {a} * x[i]")
            count += 2
        elif k < 0.85:
            lines += [
                f"    if {a} > {b}:",
                f"        {v} = {a} * 0.3",
                "    else:",
                f"        {v} = {b} + 0.1",
            ]
            names.append(v)
            count += 2
        else:
            lines.append(f"    {v} = {a} + x[{r.randrange(4)}] * y[{r.randrange(4)}]")
            names.append(v)
            count += 1
    lines.append("    return " + " + ".join(names[-20:]) + " + y.sum()")
    return "\n".join(lines)


def measure(n_statements: int) -> dict[str, float]:
    """Stage times for one size (run in this process: call it in a fresh one)."""
    import numba
    import numpy as np

    import enzpy
    from enzpy import Active, Duplicated, _build, _link

    namespace: dict = {"np": np}
    exec(kernel_source(n_statements), namespace)  # noqa: S102 - generated source
    x, y = np.linspace(0.1, 1.0, 8), np.ones(8)
    rec: dict[str, float] = {"statements": n_statements}

    f = numba.njit(namespace["big"])
    t0 = time.perf_counter()
    f(x, y.copy(), 0.3)
    rec["numba_s"] = time.perf_counter() - t0

    args = (Duplicated(x, np.zeros(8)), Duplicated(y.copy(), np.zeros(8)), Active(0.3))
    bound = _build.bind(f, args, enzpy.Reverse, enzpy.Active)
    t0 = time.perf_counter()
    captured, sig = _build._signature(bound, True)
    rec["capture_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    bitcode, _ = _build._run_engine(captured, sig, log=False)
    rec["engine_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _link.link(bitcode, sig, captured.libraries, "big", captured.environments)
    rec["link_s"] = time.perf_counter() - t0

    # The public path from scratch (a new dispatcher, so nothing is cached).
    g = numba.njit(namespace["big"])
    g(x, y.copy(), 0.3)
    t0 = time.perf_counter()
    enzpy.autodiff(g, *args)
    rec["first_gradient_s"] = time.perf_counter() - t0
    rec["ratio"] = rec["first_gradient_s"] / rec["numba_s"]
    return rec


def measure_cached(name: str) -> dict[str, float | str]:
    """First-call times of the bench kernel ``name`` in this process, its
    functions compiled with ``cache=True`` (numba's and enzpy's disk caches)."""
    import functools

    import numba

    njit = numba.njit
    numba.njit = functools.partial(njit, cache=True)  # before the kernels are defined
    import numpy as np
    from cases import make_kernels
    from timing import first_call

    from enzpy import _cache

    (k,) = [k for k in make_kernels(quick=True) if k.name == name]
    rec: dict[str, float | str] = {"kernel": name}
    for what, call in (("primal", k.primal), ("gradient", k.grad)):
        k.primal_setup()
        k.grad_setup(full=True)
        first, _ = first_call(call)
        k.primal_setup()
        k.grad_setup(full=True)
        again, _ = first_call(call)
        rec[f"{what}_s"] = max(first - again, 0.0)
    rng = np.random.default_rng(0)
    forward = k.forward([rng.standard_normal(k.n_inputs())], batch=False)
    first, _ = first_call(forward)
    again, _ = first_call(forward)
    rec["forward_s"] = max(first - again, 0.0)
    info = _cache.info()
    rec["disk_hits"], rec["disk_writes"] = info.disk_hits, info.disk_writes
    return rec


def disk_cache_table(names: list[str] | None, out: Path) -> None:
    """Cold and warm first calls of the bench kernels, each in fresh processes."""
    import tempfile

    from cases import make_kernels

    kernels = [k.name for k in make_kernels(quick=True) if not names or k.name in names]
    records = []
    for name in kernels:
        with tempfile.TemporaryDirectory() as tmp:
            env = {
                **os.environ,
                "ENZPY_CACHE_DIR": str(Path(tmp) / "enzpy"),
                "NUMBA_CACHE_DIR": str(Path(tmp) / "numba"),
            }
            env.pop("ENZPY_DISABLE_CACHE", None)
            runs = {}
            for state in ("cold", "warm"):
                print(f"{name}: {state} caches ...", flush=True)
                done = subprocess.run(
                    [sys.executable, "-P", __file__, "--cached-one", name],
                    capture_output=True,
                    text=True,
                    check=True,
                    env=env,
                )
                runs[state] = json.loads(done.stdout.strip().splitlines()[-1])
        records.append({"kernel": name, **runs})
    rows = []
    for r in records:
        cold, warm = r["cold"], r["warm"]
        row = [r["kernel"]]
        for what in ("primal", "gradient", "forward"):
            row.append(f"{cold[what + '_s']:.2f} / {warm[what + '_s']:.3f} s")
        row.append(f"{cold['gradient_s'] / max(warm['gradient_s'], 1e-9):.0f}x")
        row.append(f"{warm['disk_hits']}")
        rows.append(row)
    cols = ["kernel", "primal cold/warm", "gradient cold/warm", "forward cold/warm"]
    print_rows(cols + ["gradient speedup", "disk hits (warm)"], rows)
    print(
        "first call minus a later call, in a fresh process: cold = empty numba and enzpy "
        "disk caches, warm = both filled by the cold run (cache=True on every kernel)"
    )
    save_results(out, {"kernels": records})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100,200,400,800")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "compile_time.json"))
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child process
    ap.add_argument("--disk-cache", action="store_true", help="cold vs warm disk caches")
    ap.add_argument("--only", help="--disk-cache: these bench kernels (comma-separated)")
    ap.add_argument("--cached-one", help=argparse.SUPPRESS)  # child process
    a = ap.parse_args(argv)
    if a.one is not None:
        print(json.dumps(measure(a.one)))
        return
    if a.cached_one is not None:
        print(json.dumps(measure_cached(a.cached_one)))
        return
    if a.disk_cache:
        out = (
            Path(a.out)
            if "--out" in (argv or sys.argv)
            else Path(a.out).with_name("disk_cache.json")
        )
        disk_cache_table(a.only.split(",") if a.only else None, out)
        return
    records = []
    for n in (int(s) for s in a.sizes.split(",")):
        print(f"compiling a {n}-statement kernel ...", flush=True)
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(n)],
            capture_output=True,
            text=True,
            check=True,
        )
        records.append(json.loads(out.stdout.strip().splitlines()[-1]))
    cols = ["statements", "numba", "capture", "engine", "link", "first gradient", "ratio"]
    print_rows(
        cols,
        [
            [r["statements"]]
            + [
                f"{r[k]:.2f} s"
                for k in ("numba_s", "capture_s", "engine_s", "link_s", "first_gradient_s")
            ]
            + [f"{r['ratio']:.2f}x"]
            for r in records
        ],
    )
    print("ratio = enzpy's first gradient call / numba's first call of the primal")
    save_results(Path(a.out), {"kernels": records})


if __name__ == "__main__":
    main()
