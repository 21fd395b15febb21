"""A reverse derivative keeps its tape's memory for its next call (one block
per derivative, synthesis/Tape): calls that need more, less or no tape, and
calls from several threads at once, each get memory of their own and the
same derivative as a fresh call."""

from __future__ import annotations

import threading

import numba
import numpy as np

import enzpy
from enzpy import Active, Const, Duplicated


@numba.njit
def heat_with_reaction(u, a, steps):
    # u overwritten every step: every sweep's values go on the tape
    n = u.size
    for _ in range(steps):
        prev = u[0]
        for i in range(1, n - 1):
            cur = u[i]
            u[i] = cur + a * (prev - 2.0 * cur + u[i + 1]) + 0.01 * np.sin(cur)
            prev = cur
    return (u * u).sum()


def gradient(n: int, steps: int) -> tuple[np.ndarray, float]:
    u = np.sin(np.linspace(0.0, 3.0, n)) + 1.0
    du = np.zeros(n)
    _, da, _ = enzpy.autodiff(heat_with_reaction, Duplicated(u, du), Active(0.2), Const(steps))
    return du, da


def test_calls_needing_more_less_and_the_same_tape_match_each_other():
    sizes = [(50, 3), (4000, 40), (30, 2), (4000, 40), (50, 3), (20000, 30)]
    first: dict[tuple[int, int], tuple[np.ndarray, float]] = {}
    for key in sizes:
        du, da = gradient(*key)
        if key in first:
            np.testing.assert_array_equal(du, first[key][0])
            assert da == first[key][1]
        first[key] = (du, da)
    # and one of them against central differences in a
    n, steps = 50, 3
    u = np.sin(np.linspace(0.0, 3.0, n)) + 1.0
    h = 1e-6
    fd = (
        heat_with_reaction(u.copy(), 0.2 + h, steps) - heat_with_reaction(u.copy(), 0.2 - h, steps)
    ) / (2 * h)
    assert abs(first[(n, steps)][1] - fd) <= 1e-6 * max(1.0, abs(fd))


def test_threads_calling_one_derivative_at_once_get_tapes_of_their_own():
    n, steps = 3000, 20
    u0 = np.sin(np.linspace(0.0, 3.0, n)) + 1.0
    fwd, rev = enzpy.split(
        heat_with_reaction, Duplicated(u0.copy(), np.zeros(n)), Active(0.2), Const(steps)
    )

    @numba.njit(nogil=True)
    def repeat(u0, a, steps, out):
        for k in range(out.shape[0]):
            u = u0.copy()
            _, tape = fwd(u, a, steps)
            du = np.zeros_like(u0)
            (da,) = rev(tape, du, 1.0)
            out[k, 0] = da
            out[k, 1] = du.sum()

    want = np.zeros((1, 2))
    repeat(u0, 0.2, steps, want)
    outs = [np.zeros((40, 2)) for _ in range(4)]
    threads = [threading.Thread(target=repeat, args=(u0, 0.2, steps, o)) for o in outs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for o in outs:
        np.testing.assert_array_equal(o, np.broadcast_to(want, o.shape))
