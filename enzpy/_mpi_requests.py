"""Non-blocking MPI in differentiated kernels: rules for numba-mpi's ``isend``
and ``irecv`` and for the calls that complete their requests (``wait``,
``waitall``, ``waitany``, ``test``, ``testall``, ``testany``).

A message posted without blocking is complete only when a wait (or a test
that says so) returns; its derivative follows the same pattern:

- **Forward mode.** The tangent is posted right after the value, to the same
  rank with the same tag (MPI keeps the order of two messages between two
  ranks with one tag, so the pairs match), into the receive buffer's shadow;
  the call that completes the value's request completes the tangent's too.
- **Reverse mode.** The reverse of completing a request posts the adjoint
  message, without blocking: a receive's cotangent (taken out of its
  buffer's shadow, which is zeroed) goes back to the sender, and the
  sender's side posts the receive of it. The reverse of the post completes
  the adjoint message; a send's then adds the cotangent into its buffer's
  shadow. So the adjoint exchanges overlap as the values did, and a halo
  exchange posted on every rank before anyone waits does not deadlock in
  reverse either.

The reverse of the completion needs to know where the receive buffer's
cotangent will be: the augmented functions get the shadows
(``register_rule(..., augmented_shadows=True)``). The requests in flight
live in three tables of this process (requests posted; adjoint messages
posted; message counts per rank, tag and direction).

Requirements, checked where they can be (an ``UnsupportedError`` otherwise):

- Receives that carry derivatives name their source and tag (no
  ``ANY_SOURCE``/``ANY_TAG``; the blocking ``recv`` handles those).
- Two messages between the same two ranks with the same tag are completed
  in the order they were posted, on both sides (adjoint messages are posted
  in the reverse order of completion, and MPI matches them in posting
  order). A completion out of that order is refused in the forward sweep,
  before any derivative message is sent.
- One batch lane (``cfg.width == 1``): batch mode through a non-blocking
  call is refused.

This module is imported by :mod:`enzpy.mpi`, which defines the shared
helpers it uses.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numba
import numpy as np
from numba_mpi import common as _numba_mpi

from . import mpi as _m
from ._rules import register_rule
from .errors import UnsupportedError

_P, _I = ctypes.c_void_p, ctypes.c_int
_isend = _m._binding("MPI_Isend", [_P, _I, _m._Datatype, _I, _I, _m._Comm, _P])
_irecv = _m._binding("MPI_Irecv", [_P, _I, _m._Datatype, _I, _I, _m._Comm, _P])
_wait = _m._binding("MPI_Wait", [_P, _P])
_waitall = _m._binding("MPI_Waitall", [_I, _P, _P])
_waitany = _m._binding("MPI_Waitany", [_I, _P, _P, _P])
_test = _m._binding("MPI_Test", [_P, _P, _P])
_testall = _m._binding("MPI_Testall", [_I, _P, _P, _P])
_testany = _m._binding("MPI_Testany", [_I, _P, _P, _P, _P])

_libc = ctypes.CDLL(None)
_malloc = _libc.malloc
_malloc.restype = ctypes.c_void_p
_malloc.argtypes = [ctypes.c_size_t]
_free = _libc.free
_free.restype = None
_free.argtypes = [ctypes.c_void_p]

#: numba-mpi's request handle type (int for MPICH, a pointer for Open MPI).
_REQUEST = _numba_mpi.RequestType
_REQUEST_BYTES = np.dtype(_REQUEST).itemsize
_SEND, _RECV = 0, 1

# --- the tables -------------------------------------------------------------------
# Rows of int64; a row is in use when its first field is 1. The arrays live as
# long as this module; njit code reaches them by address.

# posted requests: in use, request handle, kind, peer, tag, count, datatype,
# communicator, receive buffer's shadow (reverse mode), sequence number,
# tangent request (forward mode), scratch buffer (forward mode), id (the
# order of posting), where the handle was written
_R_HANDLE, _R_KIND, _R_PEER, _R_TAG, _R_COUNT, _R_TYPE, _R_COMM = 1, 2, 3, 4, 5, 6, 7
_R_SHADOW, _R_SEQ, _R_TREQ, _R_TEMP, _R_ID, _R_ADDR, _R_FIELDS = 8, 9, 10, 11, 12, 13, 14
# adjoint messages in flight (reverse sweep): in use, id, request, buffer
_A_ID, _A_REQ, _A_TEMP, _A_FIELDS = 1, 2, 3, 4
# message counts: in use, peer, tag, kind, posted, completed
_S_PEER, _S_TAG, _S_KIND, _S_POSTED, _S_DONE, _S_FIELDS = 1, 2, 3, 4, 5, 6
# ids of posts (reverse mode): one counter
_ROWS = 4096

_posted = np.zeros((_ROWS, _R_FIELDS), np.int64)
_adjoint = np.zeros((_ROWS, _A_FIELDS), np.int64)
_counts = np.zeros((_ROWS, _S_FIELDS), np.int64)
_next_id = np.zeros(1, np.int64)
_POSTED = _posted.ctypes.data
_ADJOINT = _adjoint.ctypes.data
_COUNTS = _counts.ctypes.data
_NEXT_ID = _next_id.ctypes.data

_FULL = "enzpy.mpi: more than 4095 non-blocking MPI requests in flight at once"
_ANY = (
    "enzpy.mpi: a non-blocking receive from MPI_ANY_SOURCE or with MPI_ANY_TAG "
    "carries derivatives; name the source and the tag (or use the blocking recv)"
)
_BATCH = (
    "enzpy.mpi: batch mode through a non-blocking MPI call; run one direction "
    "or cotangent at a time"
)
_ORDER = (
    "enzpy.mpi: two non-blocking messages between the same two ranks with the same "
    "tag were completed in another order than they were posted in; their adjoint "
    "messages would be matched the wrong way round. Complete them in the order "
    "they were posted (or give them different tags)"
)


def _handle_codec(ctype: Any) -> tuple[Any, Any]:
    """(to int64, back) for an MPI handle type: an int (MPICH) or a pointer."""

    def int_to_int64(h):
        return np.int64(h)

    def int64_to_int(v):
        return np.intc(v)

    def pointer_to_int64(h):
        return _m._address(h)

    def int64_to_pointer(v):
        return _m._pointer(v)

    if ctype is ctypes.c_int:
        return numba.njit(int_to_int64), numba.njit(int64_to_int)
    return numba.njit(pointer_to_int64), numba.njit(int64_to_pointer)


_comm_int, _comm_of = _handle_codec(_m._Comm)
_type_int, _type_of = _handle_codec(_m._Datatype)


@numba.njit
def _table(address, fields):
    return numba.carray(_m._pointer(address), (_ROWS, fields), np.int64)


@numba.njit
def _rows(table):
    """The rows that may be in use: 1 to the high-water mark that row 0
    keeps (row 0 is never in use)."""
    return range(1, table[0, 1])


@numba.njit
def _find(table, field, value):
    for r in _rows(table):
        if table[r, 0] == 1 and table[r, field] == value:
            return r
    return -1


@numba.njit
def _lookup(t, handle, address):
    """The row of the posted request ``handle`` (read from ``address``):
    the one posted there, else the earliest posted with that handle (MPICH
    gives every request that completed at once the same handle)."""
    best = -1
    for r in _rows(t):
        if t[r, 0] == 1 and t[r, _R_HANDLE] == handle:
            if t[r, _R_ADDR] == address:
                return r
            if best < 0 or t[r, _R_ID] < t[best, _R_ID]:
                best = r
    return best


@numba.njit
def _free_row(table):
    for r in _rows(table):
        if table[r, 0] == 0:
            table[r, 0] = 1
            return r
    r = max(table[0, 1], 1)
    if r >= _ROWS:
        raise UnsupportedError(_FULL)
    table[0, 1] = r + 1
    table[r, 0] = 1
    return r


@numba.njit
def _handle(ptr, k):
    """The k-th request handle at ``ptr``, as an int64."""
    return np.int64(numba.carray(ptr, (k + 1,), _REQUEST)[k])


@numba.njit
def _handles(ptr, n):
    """The n request handles at ``ptr`` and the addresses they are read from."""
    out = np.empty((n, 2), np.int64)
    for k in range(n):
        out[k, 0] = _handle(ptr, k)
        out[k, 1] = _m._address(ptr) + k * _REQUEST_BYTES
    return out


@numba.njit
def _complete(handle):
    """Wait for a request of the rules' own (a tangent or adjoint message)."""
    r = np.empty(1, _REQUEST)
    r[0] = handle
    _wait(r.ctypes.data, _m._status().ctypes.data)


@numba.njit
def _post(send, ptr, count, dtype, peer, tag, comm):
    """Post a message of the rules' own; returns its request handle."""
    r = np.empty(1, _REQUEST)
    if send:
        _isend(ptr, count, dtype, peer, tag, comm, r.ctypes.data)
    else:
        _irecv(ptr, count, dtype, peer, tag, comm, r.ctypes.data)
    return np.int64(r[0])


@numba.njit
def _scratch(count, zero):
    """``count`` doubles from malloc (zeroed with ``zero``), as an address."""
    p = np.int64(_malloc(max(count, 1) * 8))
    if p == 0:
        raise MemoryError("enzpy.mpi: out of memory for a derivative message")
    if zero:
        d = _m._doubles(_m._pointer(p), count)
        for i in range(count):
            d[i] = 0.0
    return p


@numba.njit
def _counter(peer, tag, kind):
    s = _table(_COUNTS, _S_FIELDS)
    for r in _rows(s):
        if s[r, 0] == 1 and s[r, _S_PEER] == peer and s[r, _S_TAG] == tag and s[r, _S_KIND] == kind:
            return r
    r = _free_row(s)
    s[r, _S_PEER], s[r, _S_TAG], s[r, _S_KIND] = peer, tag, kind
    s[r, _S_POSTED] = 0
    s[r, _S_DONE] = 0
    return r


@numba.njit
def _register(req, kind, count, dtype, peer, tag, comm):
    """A row for the request just posted at ``req`` (a stale row of the same
    handle, left by a derivative that raised, is taken over)."""
    t = _table(_POSTED, _R_FIELDS)
    handle, address = _handle(req, 0), _m._address(req)
    r = _lookup(t, handle, address)
    if r < 0 or t[r, _R_ADDR] != address:
        r = _free_row(t)
    t[r, _R_ADDR] = address
    n = numba.carray(_m._pointer(_NEXT_ID), (1,), np.int64)
    n[0] += 1
    t[r, _R_ID] = n[0]
    t[r, _R_HANDLE], t[r, _R_KIND], t[r, _R_PEER], t[r, _R_TAG] = handle, kind, peer, tag
    t[r, _R_COUNT], t[r, _R_TYPE], t[r, _R_COMM] = count, _type_int(dtype), _comm_int(comm)
    t[r, _R_SHADOW] = t[r, _R_TREQ] = t[r, _R_TEMP] = 0
    c = _table(_COUNTS, _S_FIELDS)
    s = _counter(peer, tag, kind)
    t[r, _R_SEQ] = c[s, _S_POSTED]
    c[s, _S_POSTED] += 1
    return r


@numba.njit
def _check_lanes(cfg):
    if cfg.width > 1:
        raise UnsupportedError(_BATCH)


# --- posting: forward mode -------------------------------------------------------


@numba.njit
def _post_value(cfg, kind, buf, count, dtype, peer, tag, comm, req):
    """The call itself, after the checks every post makes."""
    _check_lanes(cfg)
    named = peer != _m._ANY_SOURCE and tag != _m._ANY_TAG
    if kind == _RECV and not named and _m._differentiable(dtype):
        raise UnsupportedError(_ANY)
    if kind == _SEND:
        return _isend(buf, count, dtype, peer, tag, comm, req)
    return _irecv(buf, count, dtype, peer, tag, comm, req)


@numba.njit
def _post_forward(cfg, kind, buf, dbuf, count, dtype, peer, tag, comm, req):
    result = _post_value(cfg, kind, buf, count, dtype, peer, tag, comm, req)
    if _m._differentiable(dtype):
        r = _register(req, kind, count, dtype, peer, tag, comm)
        t = _table(_POSTED, _R_FIELDS)
        target = _m._address(dbuf)
        if not cfg.active[0]:  # zeros to send, or a buffer for what comes
            target = t[r, _R_TEMP] = _scratch(count, True)
        t[r, _R_TREQ] = _post(kind == _SEND, _m._pointer(target), count, dtype, peer, tag, comm)
    return result


def _isend_forward(cfg, buf, dbuf, count, _c, dtype, _t, dest, _d, tag, _g, comm, _m_, req, _r):
    return _post_forward(cfg, _SEND, buf, dbuf, count, dtype, dest, tag, comm, req)


def _irecv_forward(cfg, buf, dbuf, count, _c, dtype, _t, src, _s, tag, _g, comm, _m_, req, _r):
    return _post_forward(cfg, _RECV, buf, dbuf, count, dtype, src, tag, comm, req)


@numba.njit
def _done_forward(handles, done):
    """The tangent messages of the requests that completed."""
    t = _table(_POSTED, _R_FIELDS)
    for k in range(handles.shape[0]):
        if not done[k]:
            continue
        r = _lookup(t, handles[k, 0], handles[k, 1])
        if r < 0:
            continue
        _complete(t[r, _R_TREQ])
        if t[r, _R_TEMP] != 0:
            _free(t[r, _R_TEMP])
        t[r, 0] = 0


# --- posting: reverse mode ---------------------------------------------------------


@numba.njit
def _post_augmented(cfg, kind, buf, dbuf, count, dtype, peer, tag, comm, req):
    result = _post_value(cfg, kind, buf, count, dtype, peer, tag, comm, req)
    ident = np.int64(0)
    if _m._differentiable(dtype):
        r = _register(req, kind, count, dtype, peer, tag, comm)
        t = _table(_POSTED, _R_FIELDS)
        ident = t[r, _R_ID]
        if kind == _RECV and cfg.active[0]:
            t[r, _R_SHADOW] = _m._address(dbuf)
    return result, ident


def _isend_augmented(cfg, buf, dbuf, count, _c, dtype, _t, dest, _d, tag, _g, comm, _m_, req, _r):
    return _post_augmented(cfg, _SEND, buf, dbuf, count, dtype, dest, tag, comm, req)


def _irecv_augmented(cfg, buf, dbuf, count, _c, dtype, _t, src, _s, tag, _g, comm, _m_, req, _r):
    return _post_augmented(cfg, _RECV, buf, dbuf, count, dtype, src, tag, comm, req)


def _isend_reverse(cfg, ident, buf, dbuf, count, _c, dtype, _t, dest, _d, tag, _g, comm, _m_, *_):
    if ident != 0:
        temp = _take_adjoint(ident)
        _m._add(dbuf, cfg.active[0], _m._doubles(_m._pointer(temp), count))
        _free(temp)
    return ()


def _irecv_reverse(cfg, ident, *_):
    if ident != 0:
        _free(_take_adjoint(ident))
    return ()


@numba.njit
def _take_adjoint(ident):
    """Complete the adjoint message of post ``ident``; returns its buffer."""
    a = _table(_ADJOINT, _A_FIELDS)
    r = _find(a, _A_ID, ident)
    _complete(a[r, _A_REQ])
    a[r, 0] = 0
    return a[r, _A_TEMP]


# --- completion: reverse mode -------------------------------------------------------

_TAPE_FIELDS = 8  # kind, peer, tag, count, datatype, communicator, shadow, id


@numba.njit
def _done_augmented(handles, done):
    """The tape of a completion: one row per request that completed and
    carries derivatives (kind -1 for the others), after checking that
    messages between two ranks with one tag complete in posting order."""
    t = _table(_POSTED, _R_FIELDS)
    c = _table(_COUNTS, _S_FIELDS)
    tape = np.full((handles.shape[0], _TAPE_FIELDS), -1, np.int64)
    for k in range(handles.shape[0]):
        r = _lookup(t, handles[k, 0], handles[k, 1]) if done[k] else -1
        if r < 0:
            continue
        s = _counter(t[r, _R_PEER], t[r, _R_TAG], t[r, _R_KIND])
        if t[r, _R_SEQ] != c[s, _S_DONE]:
            raise UnsupportedError(_ORDER)
        c[s, _S_DONE] += 1
        tape[k, 0], tape[k, 1], tape[k, 2] = t[r, _R_KIND], t[r, _R_PEER], t[r, _R_TAG]
        tape[k, 3], tape[k, 4], tape[k, 5] = t[r, _R_COUNT], t[r, _R_TYPE], t[r, _R_COMM]
        tape[k, 6], tape[k, 7] = t[r, _R_SHADOW], t[r, _R_ID]
        t[r, 0] = 0
    return tape


@numba.njit
def _done_reverse(tape):
    """The reverse of a completion: post each request's adjoint message (in
    the reverse order)."""
    a = _table(_ADJOINT, _A_FIELDS)
    for k in range(tape.shape[0] - 1, -1, -1):
        kind = tape[k, 0]
        if kind < 0:
            continue
        count, dtype, comm = tape[k, 3], _type_of(tape[k, 4]), _comm_of(tape[k, 5])
        temp = _scratch(count, True)
        if kind == _RECV and tape[k, 6] != 0:  # the cotangent leaves the buffer
            bar = _m._doubles(_m._pointer(tape[k, 6]), count)
            out = _m._doubles(_m._pointer(temp), count)
            for i in range(count):
                out[i] = bar[i]
                bar[i] = 0.0
        r = _free_row(a)
        a[r, _A_ID], a[r, _A_TEMP] = tape[k, 7], temp
        peer, tag = tape[k, 1], tape[k, 2]
        a[r, _A_REQ] = _post(kind == _RECV, _m._pointer(temp), count, dtype, peer, tag, comm)


# --- the completion calls ------------------------------------------------------------


@numba.njit
def _all(n):
    return np.ones(n, np.bool_)


@numba.njit
def _flag(ptr):
    return numba.carray(ptr, (1,), np.intc)[0] != 0


@numba.njit
def _one(n, index_ptr):
    """Which of ``n`` requests waitany/testany completed (none: MPI_UNDEFINED,
    negative or out of range)."""
    done = np.zeros(n, np.bool_)
    k = numba.carray(index_ptr, (1,), np.intc)[0]
    if 0 <= k < n:
        done[k] = True
    return done


def _wait_forward(cfg, req, _r, status, _s):
    hs = _handles(req, 1)
    result = _wait(req, status)
    _done_forward(hs, _all(1))
    return result


def _wait_augmented(cfg, req, _r, status, _s):
    hs = _handles(req, 1)
    result = _wait(req, status)
    return result, _done_augmented(hs, _all(1))


def _waitall_forward(cfg, n, _n, reqs, _r, statuses, _s):
    hs = _handles(reqs, n)
    result = _waitall(n, reqs, statuses)
    _done_forward(hs, _all(n))
    return result


def _waitall_augmented(cfg, n, _n, reqs, _r, statuses, _s):
    hs = _handles(reqs, n)
    result = _waitall(n, reqs, statuses)
    return result, _done_augmented(hs, _all(n))


def _waitany_forward(cfg, n, _n, reqs, _r, index, _i, status, _s):
    hs = _handles(reqs, n)
    result = _waitany(n, reqs, index, status)
    _done_forward(hs, _one(n, index))
    return result


def _waitany_augmented(cfg, n, _n, reqs, _r, index, _i, status, _s):
    hs = _handles(reqs, n)
    result = _waitany(n, reqs, index, status)
    return result, _done_augmented(hs, _one(n, index))


def _test_forward(cfg, req, _r, flag, _f, status, _s):
    hs = _handles(req, 1)
    result = _test(req, flag, status)
    if _flag(flag):
        _done_forward(hs, _all(1))
    return result


def _test_augmented(cfg, req, _r, flag, _f, status, _s):
    hs = _handles(req, 1)
    result = _test(req, flag, status)
    done = _all(1) if _flag(flag) else np.zeros(1, np.bool_)
    return result, _done_augmented(hs, done)


def _testall_forward(cfg, n, _n, reqs, _r, flag, _f, statuses, _s):
    hs = _handles(reqs, n)
    result = _testall(n, reqs, flag, statuses)
    if _flag(flag):
        _done_forward(hs, _all(n))
    return result


def _testall_augmented(cfg, n, _n, reqs, _r, flag, _f, statuses, _s):
    hs = _handles(reqs, n)
    result = _testall(n, reqs, flag, statuses)
    done = _all(n) if _flag(flag) else np.zeros(n, np.bool_)
    return result, _done_augmented(hs, done)


def _testany_forward(cfg, n, _n, reqs, _r, index, _i, flag, _f, status, _s):
    hs = _handles(reqs, n)
    result = _testany(n, reqs, index, flag, status)
    if _flag(flag):
        _done_forward(hs, _one(n, index))
    return result


def _testany_augmented(cfg, n, _n, reqs, _r, index, _i, flag, _f, status, _s):
    hs = _handles(reqs, n)
    result = _testany(n, reqs, index, flag, status)
    done = _one(n, index) if _flag(flag) else np.zeros(n, np.bool_)
    return result, _done_augmented(hs, done)


def _done_rule_reverse(cfg, tape, *_args):
    _done_reverse(tape)
    return ()


for _fn, _forward, _augmented, _reverse, _reads in (
    (_isend, _isend_forward, _isend_augmented, _isend_reverse, (0,)),
    (_irecv, _irecv_forward, _irecv_augmented, _irecv_reverse, ()),
    (_wait, _wait_forward, _wait_augmented, _done_rule_reverse, ()),
    (_waitall, _waitall_forward, _waitall_augmented, _done_rule_reverse, ()),
    (_waitany, _waitany_forward, _waitany_augmented, _done_rule_reverse, ()),
    (_test, _test_forward, _test_augmented, _done_rule_reverse, ()),
    (_testall, _testall_forward, _testall_augmented, _done_rule_reverse, ()),
    (_testany, _testany_forward, _testany_augmented, _done_rule_reverse, ()),
):
    register_rule(
        _fn,
        forward=_forward,
        augmented=_augmented,
        reverse=_reverse,
        always_active=True,
        reads_only=_reads,
        augmented_shadows=True,
    )
