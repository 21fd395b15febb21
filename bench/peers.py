"""The peers the benchmark compares enzpy with: JAX (``jax.jit(jax.grad(...))``)
and PyTorch autograd, each loaded only when importable, single-threaded and in
float64. Each kernel in cases.py builds its own peer gradients; this module
loads the libraries and marks peer measurements taken on a smaller problem."""

from __future__ import annotations

import os

# Single-threaded peers, as in docs/design.md §6. Must be set before importing them.
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)


def load_peers(enabled):
    peers = {}
    if not enabled:
        return peers, {"jax": "disabled (--no-peers)", "torch": "disabled (--no-peers)"}
    skipped = {}
    try:
        import jax

        jax.config.update("jax_enable_x64", True)
        peers["jax"] = jax.__version__
    except Exception as e:  # noqa: BLE001 - any import failure means "skip"
        skipped["jax"] = f"not importable ({type(e).__name__}: {e})"
    try:
        import torch

        torch.set_num_threads(1)
        peers["torch"] = torch.__version__
    except Exception as e:  # noqa: BLE001
        skipped["torch"] = f"not importable ({type(e).__name__}: {e})"
    return peers, skipped


class Scaled:
    """A peer's gradient measured on a smaller problem, for which the full one
    would take minutes: its time and memory are multiplied by ``factor``
    (both grow linearly in the part that was shortened) and the table marks
    them with '~'."""

    def __init__(self, fn, factor, note):
        self.fn, self.factor, self.note = fn, factor, note

    def __call__(self):
        return self.fn()
