"""Arrays allocated inside the kernel (np.empty, np.zeros, np.ones,
np.empty_like, array expressions, copies, helpers returning arrays): their
shadows are allocated beside them, zeroed, and freed in the reverse sweep."""

import os

import fd
import numba
import numpy as np

import enzpy
from enzpy import Active, Duplicated


def rng(seed):
    return np.random.default_rng(seed)


@numba.njit
def via_empty(x, a):
    y = np.empty(x.shape[0])
    for i in range(x.shape[0]):
        y[i] = x[i] * x[i] * a
    s = 0.0
    for i in range(x.shape[0]):
        s += y[i] * x[i]
    return s


@numba.njit
def via_zeros_accumulated(x):
    acc = np.zeros(3)
    for i in range(x.shape[0]):
        acc[i % 3] += np.sin(x[i])
    return acc[0] * acc[1] + acc[2]


@numba.njit
def via_ones_and_empty_like(x):
    w = np.ones(x.shape[0])
    t = np.empty_like(x)
    for i in range(x.shape[0]):
        w[i] = w[i] + x[i]
        t[i] = w[i] * x[i]
    return np.sum(t * w)


@numba.njit
def expression_temporaries(x, a):
    y = x * x + a
    z = np.exp(-y) * x
    return np.sum(z * z)


@numba.njit
def _smoothed(x):
    out = np.empty(x.shape[0] - 2)
    for i in range(out.shape[0]):
        out[i] = (x[i] + 2.0 * x[i + 1] + x[i + 2]) / 4.0
    return out


@numba.njit
def helper_returning_array(x):
    y = _smoothed(x)
    z = _smoothed(y)
    return np.dot(z, z) if False else np.sum(z * z)


@numba.njit
def allocation_in_loop(x, steps):
    u = x.copy()
    for _ in range(steps):
        v = np.empty_like(u)
        for i in range(u.shape[0]):
            v[i] = np.tanh(u[i]) + 0.5 * u[i]
        u = v
    return np.sum(u * u)


@numba.njit
def slices_and_reshape(x):
    m = x.reshape((3, 4))
    head = m[:, :2]
    s = 0.0
    for i in range(3):
        for j in range(2):
            s += head[i, j] * m[i, j + 2]
    return s


def test_empty():
    fd.check_vjp(via_empty, fd.Dup(rng(1).uniform(-1, 1, 7)), fd.Active(0.7))


def test_zeros_accumulated_with_data_dependent_index():
    fd.check_vjp(via_zeros_accumulated, fd.Dup(rng(2).uniform(-1, 1, 10)))


def test_ones_and_empty_like():
    fd.check_vjp(via_ones_and_empty_like, fd.Dup(rng(3).uniform(-1, 1, 6)))


def test_array_expression_temporaries():
    fd.check_vjp(expression_temporaries, fd.Dup(rng(4).uniform(-1, 1, 8)), fd.Active(0.3))


def test_helper_returning_an_array():
    fd.check_vjp(helper_returning_array, fd.Dup(rng(5).uniform(-1, 1, 9)))


def test_allocation_inside_a_loop_and_copy():
    fd.check_vjp(allocation_in_loop, fd.Dup(rng(6).uniform(-1, 1, 5)), 4)


def test_slices_and_reshape():
    fd.check_vjp(slices_and_reshape, fd.Dup(rng(7).uniform(-1, 1, 12)))


def _rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_many_calls_do_not_grow_memory():
    # Each call allocates 20 arrays of 1e4 doubles and their shadows
    # (3.2 MB); leaking them for 300 calls would grow memory by ~1 GB.
    x = rng(8).uniform(-1, 1, 10_000)
    dx = np.zeros_like(x)
    enzpy.autodiff(allocation_in_loop, Duplicated(x, dx), 20)
    before = _rss_bytes()
    for _ in range(300):
        enzpy.autodiff(allocation_in_loop, Duplicated(x, dx), 20)
    grown = _rss_bytes() - before
    assert grown < 50e6, f"memory grew by {grown / 1e6:.1f} MB over 300 calls"


def test_active_scalar_with_allocation():
    res = enzpy.autodiff(via_empty, Duplicated(np.array([1.0, 2.0]), np.zeros(2)), Active(0.5))
    # s = a * sum(x^3): ds/da = sum(x^3) = 9
    np.testing.assert_allclose(res[1], 9.0, rtol=1e-14)


@numba.njit
def precomputed_table(x, reps):
    # the table is filled once, then only read: the reverse sweep re-reads
    # it instead of taping every read (the array is kept alive until then)
    t = np.empty(x.shape[0])
    for i in range(x.shape[0]):
        t[i] = np.exp(x[i])
    s = 0.0
    for r in range(reps):
        for i in range(x.shape[0]):
            s += t[i] * x[(i + r) % x.shape[0]]
    return s


def test_array_filled_then_only_read_is_reread_and_released():
    x = rng(9).uniform(-1, 1, 6)
    fd.check_vjp(precomputed_table, fd.Dup(x), 3)
    log = enzpy.explain(precomputed_table, Duplicated(x, np.zeros(6)), 3)
    assert "reread" in log
    big = rng(10).uniform(-1, 1, 100_000)
    dbig = np.zeros_like(big)
    enzpy.autodiff(precomputed_table, Duplicated(big, dbig), 1)
    before = _rss_bytes()
    for _ in range(200):
        enzpy.autodiff(precomputed_table, Duplicated(big, dbig), 1)
    grown = _rss_bytes() - before
    # 200 leaked tables (and shadows) would be 320 MB
    assert grown < 50e6, f"memory grew by {grown / 1e6:.1f} MB over 200 calls"
