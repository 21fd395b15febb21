"""enzpy benchmarks: gradient time / primal time on a few kernels, with peers.

For each kernel this prints and records
  primal     best time of the numba-compiled function,
  gradient   best time of enzpy.autodiff(...) (reverse mode, shadows zeroed
             outside the timed region),
  ratio      gradient / primal,
  compile    the first call's extra time: numba's compile of the primal, and
             enzpy's compile of the derivative,
  FD         finite differences' cost as a ratio, (2n+1) primal calls for n inputs,
  jax/torch  jax.jit(jax.grad(...)) and torch autograd on the same algorithm,
             divided by the numba primal's time, when importable (skipped
             otherwise); all single-threaded, float64,
  check      relative error of enzpy's gradient along one random direction
             against a central finite difference (a fast wrong gradient must not
             look good).
and for forward mode (enzpy.autodiff(..., mode=Forward), one direction):
  tangent    best time of the forward-mode call, and tangent / primal,
  batch 8    best time of one BatchDuplicated call with 8 directions, and its
             ratio to 8 separate forward calls,
  check      relative error of the tangent against the central difference
             along the same random direction,
  hvp        for functions of one array, enzpy.hvp time (reverse over forward)
             divided by the gradient's time.
and, unless --no-memory, the peak memory of one call (bench/peakmem.py): the
growth of the process's resident set during one call after a warm-up call,
each measured in a fresh subprocess, for the numba primal, enzpy's gradient
and the peers' gradients (tracemalloc cannot see numba's, the engine's, XLA's
or PyTorch's allocations). A peer result marked '~' was measured on fewer
time steps and scaled linearly (a sequential in-place sweep is a Python loop
of scalar operations in PyTorch).

The run's JSON goes to bench/results/latest.json (--out) and, when matplotlib
is importable, its ratios per kernel and system to bench/results/ratios.png
(plot.py, which also redraws it from a JSON file).

The code: cases.py (the kernels, their inputs and peer versions), measure.py
(timing, checks and memory of one case), peers.py (loading JAX and PyTorch),
timing.py, peakmem.py (peak memory in a subprocess) and report.py (tables and
JSON); kernels shared with the demo and the tests are in examples/kernels.py.

    .venv/bin/python -P bench/run.py [--quick] [--no-peers] [--no-memory] [--only heat,lorenz]
                                     [--progress | --no-progress]

A progress bar over the kernels (tqdm, the `progress` extra) appears when the
run is still going after a few seconds; --progress shows it at once,
--no-progress never.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# This folder and examples/ (shared kernels) by plain name, also under `python -P`.
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "examples")]

from cases import make_kernels  # noqa: E402
from measure import memory_probe, run_kernel, run_memory  # noqa: E402
from peakmem import PROBE_FLAG  # noqa: E402
from peers import load_peers  # noqa: E402
from plot import plot  # noqa: E402
from report import print_forward_table, print_memory_table, print_table, write_results  # noqa: E402

from enzpy._progress import bar  # noqa: E402

RESULTS = HERE / "results"


def main(argv=None):
    ap = argparse.ArgumentParser(description="enzpy benchmarks")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--no-peers", action="store_true", help="skip jax and torch")
    ap.add_argument("--only", default="", help="comma-separated kernel names")
    ap.add_argument(
        "--budget",
        type=float,
        default=1.0,
        help="seconds of repeats per measurement (best time is kept)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    ap.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar over the kernels (tqdm; default: when the run takes a while)",
    )
    ap.add_argument(PROBE_FLAG, default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_probe:
        return memory_probe(args.memory_probe, make_kernels(args.quick))

    kernels = make_kernels(args.quick)
    if args.only:
        wanted = set(args.only.split(","))
        kernels = [k for k in kernels if k.name in wanted]
    peers, skipped = load_peers(not args.no_peers)
    for p, why in skipped.items():
        print(f"skipping {p}: {why}")

    records = []
    with bar(len(kernels), "bench", args.progress, unit="kernel", min_steps=1) as progress:
        for k in kernels:
            progress.note(k.name)
            progress.write(f"running {k.name}: {k.description} ...")
            records.append(run_kernel(k, peers, args.budget))
            progress.update()
    print()
    print_table(records, list(peers))
    print()
    print_forward_table(records)
    if not args.no_memory:
        print()
        run_memory(records, peers, args.quick, Path(__file__).resolve())
        print()
        print_memory_table(records, list(peers))

    write_results(args.out, records, peers, skipped, args.quick)
    png = (
        RESULTS / "ratios.png"
        if args.out == RESULTS / "latest.json"
        else args.out.with_suffix(".png")
    )
    if plot(json.loads(args.out.read_text()), png):
        print(f"wrote {png}")
    else:
        print("matplotlib is not installed: no plot (bench/plot.py draws it later)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
