"""The benchmark's plot: gradient (or tangent) time / numba primal time per
kernel and system, from a run's JSON (bench/results/latest.json), on a log
scale: enzpy reverse mode, enzpy forward mode (one direction) and, where the
run measured them, JAX's and PyTorch's gradients.

    python bench/plot.py [results.json] [--out bench/results/ratios.png]

matplotlib is optional (the ``bench`` extra): without it this says so and
writes nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

#: (label, how to read the ratio from a kernel's record), in plot order.
SYSTEMS = (
    ("enzpy reverse", lambda r: r.get("ratio")),
    ("enzpy forward", lambda r: r.get("fwd_ratio")),
    ("JAX", lambda r: r.get("peers", {}).get("jax", {}).get("ratio")),
    ("PyTorch", lambda r: r.get("peers", {}).get("torch", {}).get("ratio")),
)


def ratios(results: dict[str, Any]) -> tuple[list[str], dict[str, list[float | None]]]:
    """Kernel names and, per system that has any, its ratio per kernel
    (None where it was not measured)."""
    kernels = results["kernels"]
    names = [r["name"] for r in kernels]
    table = {}
    for label, read in SYSTEMS:
        column = [read(r) for r in kernels]
        if any(v is not None for v in column):
            table[label] = column
    return names, table


def plot(results: dict[str, Any], out: Path) -> bool:
    """Write the plot of ``results`` to ``out``; False when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, table = ratios(results)
    width = 0.8 / max(len(table), 1)
    fig, ax = plt.subplots(figsize=(max(8.0, 1.1 * len(names)), 4.8))
    for k, (label, column) in enumerate(table.items()):
        xs = [i + (k - (len(table) - 1) / 2) * width for i, v in enumerate(column) if v]
        ys = [v for v in column if v]
        bars = ax.bar(xs, ys, width, label=label)
        ax.bar_label(bars, labels=[f"{v:.3g}" for v in ys], fontsize=6, rotation=90, padding=2)
    ax.set_yscale("log")
    ax.axhline(1.0, color="black", linewidth=0.6)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("time / numba primal time")
    top = max((v for column in table.values() for v in column if v), default=10.0)
    ax.set_ylim(top=10 ** math.ceil(math.log10(top) + 0.5))
    date = results.get("date", "")[:10]
    ax.set_title(f"gradient / primal per kernel, single thread, float64 ({date})")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="?", type=Path, default=RESULTS / "latest.json")
    ap.add_argument("--out", type=Path, default=RESULTS / "ratios.png")
    a = ap.parse_args(argv)
    if not plot(json.loads(a.results.read_text()), a.out):
        print("matplotlib is not installed (pip install matplotlib): no plot written")
        return 0
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
