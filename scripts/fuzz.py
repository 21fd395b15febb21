#!/usr/bin/env python
"""Differential fuzzing of enzpy: random kernels, reverse vs forward vs finite
differences, width one and batch (issue #10). The generator and the checks are in
tests/fuzz/ (grammar.py, differential.py).

    .venv/bin/python -P scripts/fuzz.py --count 300 --seed 1000
    .venv/bin/python -P scripts/fuzz.py --seed 1234 --count 1 --show   # reproduce one

Seeds ``S .. S+N-1`` are checked in a worker subprocess; a worker that dies (a
segfault in the engine, say) is recorded as a "crash" finding for the seed it was
on, and a new worker resumes after it. A kernel that takes longer than --timeout
is a "hang" finding. Prints a summary table (ok / refused / finding / rejected)
and writes every result to tests/fuzz/results/<run>.jsonl and the findings (kernel
source, seed, which check, expected vs got) to tests/fuzz/results/<run>-findings.json.
Re-running a seed reproduces its kernel and its inputs exactly.

Run it with ``nice`` on a shared machine; it uses one core.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import selectors
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))


def worker(first: int, last: int, width: int | None, profile: str) -> None:
    """Checks seeds first..last-1, one JSON line per seed on stdout; "start" lines
    let the parent know which seed a crash happened on."""
    from fuzz.differential import run_seed

    for seed in range(first, last):
        print(json.dumps({"start": seed}), flush=True)
        t = time.time()
        r = run_seed(seed, width, profile)
        d = dataclasses.asdict(r)
        d["seconds"] = round(time.time() - t, 2)
        print(json.dumps(d, default=str), flush=True)


def _run(a, cmd_base, nxt, end, log, results):
    """Feeds seeds nxt..end-1 to worker processes, restarting after a crash or hang."""
    while nxt < end:
        cmd = cmd_base + [str(nxt), str(end)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        current = None
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = None
        while True:
            ready = sel.select(timeout=5.0)
            if deadline is not None and time.time() > deadline:
                proc.kill()
                proc.wait()
                r = {
                    "seed": current,
                    "attempt": None,
                    "outcome": "finding",
                    "kind": "hang",
                    "message": f"no result after {a.timeout} s",
                    "source": "",
                }
                results.append(r)
                log.write(json.dumps(r) + "\n")
                log.flush()
                print(f"seed {current}: finding [hang]", flush=True)
                nxt = current + 1
                break
            if not ready:
                continue
            line = proc.stdout.readline()
            if not line:
                rc = proc.wait()
                if current is not None:
                    err = proc.stderr.read()[-3000:]
                    r = {
                        "seed": current,
                        "attempt": None,
                        "outcome": "finding",
                        "kind": "crash",
                        "message": f"worker died with code {rc}",
                        "details": {"stderr": err},
                        "source": "",
                    }
                    results.append(r)
                    log.write(json.dumps(r) + "\n")
                    log.flush()
                    print(f"seed {current}: finding [crash] code {rc}", flush=True)
                    nxt = current + 1
                else:
                    nxt = end
                break
            d = json.loads(line)
            if "start" in d:
                current = d["start"]
                deadline = time.time() + a.timeout
                continue
            current, deadline = None, None
            results.append(d)
            nxt = d["seed"] + 1
            log.write(line)
            log.flush()
            msg = f"seed {d['seed']}/{d['attempt']}: {d['outcome']}"
            if d["kind"]:
                msg += f" [{d['kind']}]"
            if d["outcome"] != "ok" and d["message"]:
                msg += ": " + d["message"].splitlines()[0][:160]
            print(f"{d['seconds']:6.1f}s {msg}", flush=True)
            if a.show and d["outcome"] == "finding":
                print(d["source"])


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--count", type=int, default=100, help="number of kernels")
    ap.add_argument("--width", type=int, default=None, help="batch width (default 2 or 3 by seed)")
    ap.add_argument(
        "--profile",
        default=None,
        choices=["base", "wide"],
        help="grammar: base (the CI slice's) or wide (base plus gather/scatter through a "
        "Const index array, numpy reductions and sort, array-level and overlapping slice "
        "updates, active exponents, rows/columns of 2-D arrays, per-iteration allocation, "
        "more math functions); default wide",
    )
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per kernel")
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fuzz", "results"))
    ap.add_argument("--show", action="store_true", help="print each finding's source")
    ap.add_argument("--worker", nargs=2, type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        # the parent always passes --profile; "base" is what the first version ran
        worker(a.worker[0], a.worker[1], a.width, a.profile or "base")
        return 0

    a.profile = a.profile or "wide"
    os.makedirs(a.out, exist_ok=True)
    run = f"{a.profile}-seed{a.seed}-n{a.count}-{time.strftime('%Y%m%d-%H%M%S')}"
    log_path = os.path.join(a.out, f"{run}.jsonl")
    results = []
    nxt, end = a.seed, a.seed + a.count
    t0 = time.time()
    cmd_base = [sys.executable, "-P", os.path.abspath(__file__), "--profile", a.profile]
    if a.width:
        cmd_base += ["--width", str(a.width)]
    cmd_base += ["--worker"]
    try:
        with open(log_path, "w") as log:
            _run(a, cmd_base, nxt, end, log, results)
    except KeyboardInterrupt:  # Ctrl-C reaches the worker too (same process group)
        print("interrupted: summary of the kernels checked so far", flush=True)

    counts = collections.Counter(r["outcome"] for r in results)
    kinds = collections.Counter(r["kind"] for r in results if r["outcome"] == "finding")
    refusals = collections.Counter(
        r["message"].split(": ")[1] if r["outcome"] == "refused" and ": " in r["message"] else ""
        for r in results
        if r["outcome"] == "refused"
    )
    print()
    print(f"{len(results)} kernels (seeds {a.seed}..{end - 1}) in {time.time() - t0:.0f} s")
    print(f"  {'outcome':<10} {'count':>6}")
    for k in ("ok", "refused", "finding", "rejected"):
        print(f"  {k:<10} {counts.get(k, 0):>6}")
    for k, c in kinds.most_common():
        print(f"    finding: {k}: {c}")
    for k, c in refusals.most_common():
        print(f"    refused: {k}: {c}")
    findings = [r for r in results if r["outcome"] == "finding"]
    fpath = os.path.join(a.out, f"{run}-findings.json")
    with open(fpath, "w") as f:
        json.dump(findings, f, indent=1, default=str)
    print(f"results: {log_path}\nfindings: {fpath}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
