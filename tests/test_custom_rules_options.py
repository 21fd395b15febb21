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


# --- augmented_shadows: a derivative finished by a later call -------------------
# A "posted receive" fills its buffer when posted, but the cotangent of the
# buffer is handed back to the outside only when a later "completion" call is
# reversed (as a non-blocking MPI receive and its wait). The completion's rule
# has no array argument: the post's augmented function, which gets the
# shadows, records where the buffer's cotangent will be.

_POST_SIG = types.void(
    types.CPointer(types.float64),
    types.int64,
    types.CPointer(types.float64),
    types.CPointer(types.int64),
)
_DONE_SIG = types.void(types.int64, types.CPointer(types.float64), types.CPointer(types.int64))


@numba.cfunc(_POST_SIG)
def _c_post(p, n, box, slot):  # pragma: no cover - runs as C
    y = numba.carray(p, (n,))
    for i in range(n):
        y[i] = 1.0 + i


@numba.cfunc(_DONE_SIG)
def _c_done(n, box, slot):  # pragma: no cover - runs as C
    pass


@numba.extending.intrinsic
def _pointer(typingctx, address):  # type: ignore[no-untyped-def]
    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return builder.inttoptr(args[0], numba.core.cgutils.voidptr_t)

    return types.voidptr(address), codegen


def _post_fwd(cfg, p, dp, n, dn, box, dbox, slot, dslot):
    y = numba.carray(p, (n,), np.float64)
    for i in range(n):
        y[i] = 1.0 + i
    if cfg.active[0]:
        dy = numba.carray(dp, (n,), np.float64)
        mail = numba.carray(box, (2 * n,), np.float64)
        for i in range(n):
            dy[i] = mail[i]


def _post_aug(cfg, p, dp, n, dn, box, dbox, slot, dslot):
    y = numba.carray(p, (n,), np.float64)
    for i in range(n):
        y[i] = 1.0 + i
    where = numba.carray(slot, (2,), np.int64)
    where[0] = numba.carray(dp, (n,), np.float64).ctypes.data if cfg.active[0] else 0
    where[1] = cfg.width
    return 0


def _post_rev(cfg, tape, p, dp, n, dn, box, dbox, slot, dslot):
    return ()


def _done_fwd(cfg, n, dn, box, dbox, slot, dslot):
    pass


def _done_aug(cfg, n, box, slot):
    return 0


def _done_rev(cfg, tape, n, dn, box, dbox, slot, dslot):
    where = numba.carray(slot, (2,), np.int64)
    mail = numba.carray(box, (2 * n,), np.float64)
    if where[0] != 0:
        dy = numba.carray(_pointer(where[0]), (n,), np.float64)
        for i in range(n):
            mail[n + i] = dy[i]
            dy[i] = 0.0
    return ()


post = _c_post.ctypes
done = _c_done.ctypes
enzpy.register_rule(
    _c_post,
    forward=_post_fwd,
    augmented=_post_aug,
    reverse=_post_rev,
    always_active=True,
    reads_only=(2,),
    augmented_shadows=True,
)
enzpy.register_rule(
    _c_done,
    forward=_done_fwd,
    augmented=_done_aug,
    reverse=_done_rev,
    always_active=True,  # it carries no array of its own, like an MPI wait
    reads_only=(1,),
)


@numba.njit
def posted_then_completed(x, box, slot):
    y = np.empty(x.size)
    post(y.ctypes, y.size, box.ctypes, slot.ctypes)
    s = np.sum(x)  # work that overlaps the transfer
    done(y.size, box.ctypes, slot.ctypes)
    for i in range(x.size):  # y is read once the transfer is complete
        s += y[i] * np.sin(x[i])
    return s


def test_augmented_shadows_lets_a_later_call_hand_back_the_cotangent_of_a_buffer():
    x = np.array([0.4, -1.2, 2.5])
    box, slot = np.zeros(6), np.zeros(2, np.int64)
    dx = np.zeros(3)
    enzpy.autodiff(posted_then_completed, Duplicated(x, dx), Const(box), Const(slot))
    assert slot[0] != 0 and slot[1] == 1  # the shadow of y reached the augmented function
    np.testing.assert_allclose(box[3:], np.sin(x), rtol=1e-15)  # d s / d y, given back
    np.testing.assert_allclose(dx, 1.0 + (1.0 + np.arange(3.0)) * np.cos(x), rtol=1e-15)


def test_without_augmented_shadows_the_augmented_function_gets_the_arguments_only():
    # _receive_aug takes (cfg, p, n, box): registering it with
    # augmented_shadows=True would pass shadows it does not take.
    x = np.array([0.5, -1.5, 2.0])
    dx = np.zeros(3)
    enzpy.autodiff(weighted_by_received, Duplicated(x, dx), Const(np.zeros(6)))
    np.testing.assert_allclose(dx, 2 * x * (1.0 + np.arange(3.0)), rtol=1e-15)
