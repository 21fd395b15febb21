"""register_rule's always_active and reads_only options, on C functions that
stand for communication with the outside: a "receive" that fills a buffer
with values whose derivatives live elsewhere, and a "send" that only reads.

The outside is a mailbox array passed to the C functions (as a read-only
pointer the engine does not differentiate): the rules put the tangent they
send and the cotangent they give back into it, and take from it what the
outside sends."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from numba import types

import enzpy
from enzpy import Const, Duplicated

_SIG = types.void(types.CPointer(types.float64), types.int64, types.CPointer(types.float64))


@numba.cfunc(_SIG)
def _c_receive(p, n, box):  # pragma: no cover - runs as C
    y = numba.carray(p, (n,))
    for i in range(n):
        y[i] = 1.0 + i


@numba.cfunc(_SIG)
def _c_send(p, n, box):  # pragma: no cover - runs as C
    pass


@numba.cfunc(_SIG)
def _c_send_unmarked(p, n, box):  # pragma: no cover - runs as C
    pass


def _receive_fwd(cfg, p, dp, n, dn, box, dbox):
    y = numba.carray(p, (n,), np.float64)
    mail = numba.carray(box, (2 * n,), np.float64)
    for i in range(n):
        y[i] = 1.0 + i
    if cfg.active[0]:
        dy = numba.carray(dp, (n,), np.float64)
        for i in range(n):
            dy[i] = mail[i]  # the tangent the outside sends


def _receive_aug(cfg, p, n, box):
    y = numba.carray(p, (n,), np.float64)
    for i in range(n):
        y[i] = 1.0 + i
    return 0


def _receive_rev(cfg, tape, p, dp, n, dn, box, dbox):
    mail = numba.carray(box, (2 * n,), np.float64)
    if cfg.active[0]:
        dy = numba.carray(dp, (n,), np.float64)
        for i in range(n):
            mail[n + i] = dy[i]  # the cotangent goes back out
            dy[i] = 0.0
    return ()


def _send_fwd(cfg, p, dp, n, dn, box, dbox):
    mail = numba.carray(box, (2 * n,), np.float64)
    for i in range(n):
        mail[i] = numba.carray(dp, (n,), np.float64)[i] if cfg.active[0] else 0.0


def _send_aug(cfg, p, n, box):
    return 0


def _send_rev(cfg, tape, p, dp, n, dn, box, dbox):
    mail = numba.carray(box, (2 * n,), np.float64)
    if cfg.active[0]:
        dx = numba.carray(dp, (n,), np.float64)
        for i in range(n):
            dx[i] += mail[n + i]  # the cotangent the outside sends back
    return ()


receive = _c_receive.ctypes
send = _c_send.ctypes
send_unmarked = _c_send_unmarked.ctypes
enzpy.register_rule(
    _c_receive,
    forward=_receive_fwd,
    augmented=_receive_aug,
    reverse=_receive_rev,
    always_active=True,
    reads_only=(2,),
)
enzpy.register_rule(
    _c_send,
    forward=_send_fwd,
    augmented=_send_aug,
    reverse=_send_rev,
    always_active=True,
    reads_only=(0, 2),
)
enzpy.register_rule(
    _c_send_unmarked,
    forward=_send_fwd,
    augmented=_send_aug,
    reverse=_send_rev,
    always_active=True,
    reads_only=(2,),
)


@numba.njit
def weighted_by_received(x, box):
    y = np.empty(x.size)
    receive(y.ctypes, y.size, box.ctypes)  # nothing of this process makes y active
    s = 0.0
    for i in range(x.size):
        s += y[i] * x[i] * x[i]
    return s


def test_an_always_active_receive_carries_the_outside_tangent_into_a_fresh_buffer():
    x = np.array([0.5, -1.5, 2.0])
    box = np.zeros(6)
    box[:3] = [0.3, -0.7, 1.1]  # the outside's tangent of y
    t = enzpy.autodiff(
        weighted_by_received, Duplicated(x, np.zeros(3)), Const(box), mode=enzpy.Forward
    )
    assert t == pytest.approx(float(box[:3] @ x**2), rel=1e-14)


def test_an_always_active_receive_gives_the_cotangent_of_its_buffer_back():
    x = np.array([0.5, -1.5, 2.0])
    box = np.zeros(6)
    dx = np.zeros(3)
    enzpy.autodiff(weighted_by_received, Duplicated(x, dx), Const(box))
    y = 1.0 + np.arange(3.0)
    np.testing.assert_allclose(box[3:], x**2, rtol=1e-15)  # d s / d y
    np.testing.assert_allclose(dx, 2 * x * y, rtol=1e-15)


@numba.njit
def send_then_square(x, c, box):
    send(c.ctypes, c.size, box.ctypes)  # constant data: zero tangents go out
    send(x.ctypes, x.size, box.ctypes)
    return (x * x * c).sum()


def test_a_read_only_send_of_a_const_array_runs_its_rule_with_a_zero_shadow():
    x = np.array([1.0, 2.0])
    c = np.array([3.0, -1.0])
    box = np.full(4, 7.0)
    t = enzpy.autodiff(
        send_then_square,
        Duplicated(x, np.array([0.5, 0.25])),
        Const(c),
        Const(box),
        mode=enzpy.Forward,
    )
    assert t == pytest.approx(float((2 * x * c * [0.5, 0.25]).sum()))
    np.testing.assert_array_equal(box[:2], [0.5, 0.25])  # x's tangent, sent last
    box[2:] = [10.0, 20.0]  # what the outside sends back for both calls
    dx = np.zeros(2)
    enzpy.autodiff(send_then_square, Duplicated(x, dx), Const(c), Const(box))
    np.testing.assert_allclose(dx, 2 * x * c + [10.0, 20.0], rtol=1e-15)


@numba.njit
def send_const_unmarked(x, c, box):
    send_unmarked(c.ctypes, c.size, box.ctypes)
    return (x * c).sum()


def test_without_reads_only_an_always_active_call_may_not_write_a_const_array():
    with pytest.raises(enzpy.ActivityError, match="argument 'c', which is Const"):
        enzpy.autodiff(
            send_const_unmarked, Duplicated(np.ones(2), np.zeros(2)), Const(np.ones(2)),
            Const(np.zeros(4)),
        )  # fmt: skip


@numba.cfunc(_SIG)
def _c_misdeclared(p, n, box):  # pragma: no cover - runs as C
    pass


misdeclared = _c_misdeclared.ctypes
enzpy.register_rule(_c_misdeclared, forward=_send_fwd, reads_only=(1,))


@numba.njit
def calls_misdeclared(x, box):
    misdeclared(x.ctypes, x.size, box.ctypes)
    return x.sum()


def test_reads_only_naming_an_argument_that_is_not_memory_is_a_type_error():
    with pytest.raises(enzpy.EnzpyTypeError, match="reads_only names argument 1"):
        enzpy.autodiff(
            calls_misdeclared, Duplicated(np.ones(2), np.ones(2)), Const(np.zeros(4)),
            mode=enzpy.Forward,
        )  # fmt: skip
