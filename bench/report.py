"""The benchmark's report: the tables printed after a run (reverse mode, forward
mode, peak memory) and the JSON file of results (bench/results/*.json)."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
from pathlib import Path

import numba
import numpy as np
from measure import BATCH_WIDTH

import enzpy


def print_rows(cols, rows):
    """A plain-text table: the header, a rule, one line per row, each column
    padded to its widest cell."""
    widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths))
    print(line)
    print("-" * len(line))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))


def print_forward_table(records):
    cols = [
        "kernel",
        "tangent",
        "ratio",
        "compile",
        f"batch {BATCH_WIDTH}",
        "ratio",
        f"vs {BATCH_WIDTH} calls",
        "check",
    ]
    rows = []
    for r in records:
        if "fwd_s" not in r:
            rows.append([r["name"]] + ["-"] * 6 + ["FAILED" if "fwd_error" in r else "-"])
            continue
        rows.append(
            [
                r["name"],
                fmt_time(r["fwd_s"]),
                fmt_ratio(r["fwd_ratio"]),
                f"{r['compile_fwd_s']:.2f} s",
                fmt_time(r.get("batch_s")),
                fmt_ratio(r.get("batch_ratio")),
                f"{r['batch_vs_separate']:.2f}" if "batch_vs_separate" in r else "-",
                f"{r['fwd_check_rel_err']:.1e}",
            ]
        )
    print_rows(cols, rows)
    print(
        "\nforward mode: ratio = time / numba primal time; 'vs 8 calls' = batch time / "
        "(8 x one-direction time); check = rel. error of the tangent vs a central difference"
    )
    for r in records:
        if "fwd_error" in r:
            print(f"{r['name']}: enzpy forward-mode error: {r['fwd_error']}")
        if "hvp_s" in r:
            print(
                f"{r['name']}: hvp (reverse over forward) {fmt_time(r['hvp_s'])} = "
                f"{fmt_ratio(r['hvp_ratio'])} primal = {r['hvp_vs_grad']:.2f}x gradient "
                f"(compile {r['compile_hvp_s']:.2f} s)"
            )


def fmt_time(s):
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1.0:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_ratio(r):
    if r is None:
        return "-"
    return f"{r:.3g}x" if r < 1e4 else f"{r:.1e}x"


def print_table(records, peers):
    cols = ["kernel", "primal", "gradient", "ratio", "compile (primal/grad)", "FD"]
    cols += [f"{p} ratio" for p in peers] + ["check"]
    rows = []
    for r in records:
        row = [
            r["name"],
            fmt_time(r["primal_s"]),
            fmt_time(r.get("grad_s")),
            fmt_ratio(r.get("ratio")),
            f"{r['compile_primal_s']:.2f} s / "
            + (f"{r['compile_grad_s']:.2f} s" if "compile_grad_s" in r else "-"),
            fmt_ratio(r["fd_ratio"]),
        ]
        for p in peers:
            pr = r["peers"].get(p, {})
            mark = "~" if "scaled" in pr else ""
            row.append(mark + fmt_ratio(pr["ratio"]) if "ratio" in pr else "error")
        row.append(
            f"{r['check_rel_err']:.1e}"
            if "check_rel_err" in r
            else ("FAILED" if "error" in r else "-")
        )
        rows.append(row)
    print_rows(cols, rows)
    print(
        "\nratio = time / numba primal time (single thread, float64); "
        "FD = (2n+1) primal calls; check = rel. error of enzpy's gradient "
        "along a random direction vs a central difference"
    )
    for r in records:
        if "error" in r:
            print(f"{r['name']}: enzpy error: {r['error']}")
        for p, pr in r["peers"].items():
            if "error" in pr:
                print(f"{r['name']}: {p} error: {pr['error']}")
            if "scaled" in pr:
                print(f"{r['name']}: {p} '~': {pr['scaled']}")


def fmt_bytes(m):
    if m is None:
        return "-"
    if "error" in m:
        return "error"
    b = m["bytes"]
    if b < 1024:
        return f"{b:.0f} B"
    if b < 1 << 20:
        return f"{b / 1024:.0f} KB"
    return f"{b / (1 << 20):.1f} MB"


def print_memory_table(records, peers):
    cols = ["kernel", "inputs", "numba primal", "enzpy gradient", "gradient/primal"]
    cols += [f"{p} gradient" for p in peers]
    rows = []
    for r in records:
        mem = r.get("peak_memory", {})
        p, g = mem.get("primal"), mem.get("enzpy")
        if p and g and "bytes" in p and "bytes" in g:
            ratio = fmt_ratio(g["bytes"] / p["bytes"]) if p["bytes"] >= 1 << 18 else "-"
        else:
            ratio = "-"
        inputs = fmt_bytes({"bytes": 8 * r["n_inputs"]})
        row = [r["name"], inputs, fmt_bytes(p), fmt_bytes(g), ratio]
        for peer in peers:
            mark = "~" if "scaled" in r["peers"].get(peer, {}) else ""
            m = mem.get(peer)
            row.append(mark + fmt_bytes(m) if m and "bytes" in m else fmt_bytes(m))
        rows.append(row)
    print_rows(cols, rows)
    print(
        "\npeak memory = growth of the resident set during one call after a warm-up call "
        "(inputs and shadows allocated before the call are not counted), each in a fresh "
        "process; inputs = 8 bytes per differentiable input; gradient/primal only where the "
        "primal itself needs >= 256 KB"
    )
    for r in records:
        for what, m in r.get("peak_memory", {}).items():
            if "error" in m:
                print(f"{r['name']}: {what} memory probe error: {m['error']}")


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def run_header(peers=None):
    """The date, machine and versions every results file starts with;
    ``peers`` adds the versions of the peer systems that ran."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "threads": numba.config.NUMBA_NUM_THREADS,
            "platform": platform.platform(),
        },
        "versions": {
            "python": platform.python_version(),
            "enzpy": getattr(enzpy, "__version__", None),
            "numba": numba.__version__,
            "numpy": np.__version__,
            **(peers or {}),
        },
    }


def save_results(path: Path, body, peers=None):
    """Write ``body`` under the run's header (``run_header``) to ``path`` as
    JSON, through a temporary file so that a failed write leaves no half file,
    and say where it went."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({**run_header(peers), **body}, indent=2) + "\n")
    tmp.replace(path)
    print(f"wrote {path}")


def write_results(path: Path, records, peers, skipped, quick):
    """The main benchmark's records, with the peers that were skipped."""
    save_results(path, {"quick": quick, "peers_skipped": skipped, "kernels": records}, peers)
