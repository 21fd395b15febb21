"""MPI communication in njit kernels, with its derivatives (numba-mpi).

numba users call MPI from njit code through numba-mpi, whose functions call the
MPI library's C functions through ctypes bindings (their addresses). Importing
this module registers custom rules (``enzpy.register_rule``) on those C
functions, so a kernel that exchanges halos with ``numba_mpi.sendrecv``, sums
with ``numba_mpi.allreduce`` or broadcasts a parameter differentiates on every
rank, in forward and reverse mode::

    import enzpy.mpi  # registers the rules
    import numba_mpi as mpi

    @numba.njit
    def energy(u):  # each rank holds its own piece of u
        local = np.zeros(1)
        local[0] = (u * u).sum()
        total = np.zeros(1)
        mpi.allreduce(local, total)
        return total[0]

Every rank runs the derivative of the same kernel: each MPI call of the kernel
becomes the call itself plus the communication of its derivative, in the same
order on every rank.

=============================  ======================================================
MPI function (numba-mpi)       forward: tangents / reverse: cotangents
=============================  ======================================================
``MPI_Send`` (``send``)        sends the tangent after the value / receives the
                               cotangent from ``dest`` and adds it
``MPI_Recv`` (``recv``)        receives the tangent after the value / sends the
                               cotangent back to the sender (the one the status
                               names, also for ``ANY_SOURCE``), then zeroes it
``MPI_Sendrecv``               both of the above in one call
(``sendrecv``)
``MPI_Bcast`` (``bcast``)      broadcasts the tangent / sums the cotangents onto the
                               root
``MPI_Allreduce``              ``SUM``: sums the tangents / sums the cotangents and
(``allreduce``)                gives each rank the sum; ``MAX``/``MIN``: the tangent
                               of the rank holding the extremum (shared equally
                               between ranks that tie)
``MPI_Reduce`` (``reduce``)    as ``MPI_Allreduce``, the result on the root only
``MPI_Scatter``/``MPI_Gather``  each other's transposes; ``MPI_Allgather``'s is a
``MPI_Allgather``              reduce-scatter of the cotangents
``MPI_Isend``/``MPI_Irecv``    post the tangent after the value, completed with it /
(``isend``/``irecv``) and      the reverse of the completion posts the adjoint
``wait``, ``waitall``,         message, the reverse of the post completes it
``waitany``, ``test``,
``testall``, ``testany``
=============================  ======================================================

Buffers of ``float64`` carry derivatives; integer buffers are communicated as
they are. Other datatypes (``float32`` and complex buffers, derived datatypes)
with a derivative are an ``UnsupportedError`` when the derivative runs.
``MPI_Barrier``, ``MPI_Comm_rank``/``size`` and ``MPI_Wtime`` carry no
derivative and need no rule. Non-blocking communication (``isend``/``irecv``
completed by ``wait``, ``waitall``, ``waitany``, ``test``, ``testall`` or
``testany``) has its rules in ``enzpy._mpi_requests`` (see there for what it
requires): tangents are posted beside the values; the reverse of completing
a request posts its adjoint message, and the reverse of posting completes it.

What every rank must agree on: the derivative of an MPI call communicates
whenever the call carries derivatives on that rank, so a message whose value
carries derivatives on the sending rank must carry them on the receiving rank
too. Differentiating the same kernel with the same annotations on every rank
(SPMD code) gives that. ``MPI_IN_PLACE`` is not supported.

Importing this module needs numba-mpi and mpi4py (``pip install 'enzpy[mpi]'``;
enzpy's tests run them on the MPICH that ships as the ``mpich`` wheel).
"""

from __future__ import annotations

import ctypes
from typing import Any

import numba
import numpy as np
from numba.core import cgutils, types
from numba.extending import intrinsic

try:
    import numba_mpi  # noqa: F401  # the bindings whose addresses get the rules
    from mpi4py import MPI
    from numba_mpi import common as _numba_mpi
except ImportError as e:  # pragma: no cover - the mpi extra is installed in CI
    raise ImportError(
        "enzpy.mpi needs numba-mpi and mpi4py with an MPI library: pip install 'enzpy[mpi]'"
    ) from e

from ._rules import register_rule
from .errors import UnsupportedError

__all__: list[str] = []

# --- the MPI library's handles and bindings ----------------------------------


def _handle(obj: Any, ctype: Any) -> int:
    """The C value of an mpi4py handle (an int or a pointer, by implementation)."""
    return int(ctype.from_address(MPI._addressof(obj)).value or 0)


_Datatype = _numba_mpi._MpiDatatype
_Op = _numba_mpi._MpiOp
_Comm = _numba_mpi._MpiComm

_DOUBLE = _handle(MPI.DOUBLE, _Datatype)
#: Datatypes of integers and bytes: communicated as they are.
_DISCRETE = tuple(
    _handle(getattr(MPI, name), _Datatype)
    for name in (
        "CHAR SIGNED_CHAR UNSIGNED_CHAR BYTE WCHAR SHORT UNSIGNED_SHORT INT UNSIGNED "
        "LONG UNSIGNED_LONG LONG_LONG UNSIGNED_LONG_LONG INT8_T INT16_T INT32_T INT64_T "
        "UINT8_T UINT16_T UINT32_T UINT64_T C_BOOL AINT OFFSET COUNT"
    ).split()
    if hasattr(MPI, name)
)
_SUM = _handle(MPI.SUM, _Op)
_MAX = _handle(MPI.MAX, _Op)
_MIN = _handle(MPI.MIN, _Op)
_ANY_SOURCE = int(MPI.ANY_SOURCE)
_ANY_TAG = int(MPI.ANY_TAG)


def _status_layout() -> tuple[int, int, int]:
    """(size in ints, index of MPI_SOURCE, index of MPI_TAG) of ``MPI_Status``,
    read off a status mpi4py filled in: the layout differs between MPIs."""
    st = MPI.Status()
    st.Set_source(0x5A17)
    st.Set_tag(0x7A6)
    n = max(MPI._sizeof(st) // ctypes.sizeof(ctypes.c_int), 1)
    ints = list((ctypes.c_int * n).from_address(MPI._addressof(st)))
    return n, ints.index(0x5A17), ints.index(0x7A6)


_STATUS_INTS, _SOURCE, _TAG = _status_layout()

# numba-mpi's own ctypes functions: kernels call them, the rules below are
# registered on their addresses (any other binding of the same C function gets
# them too), and the rules' own code calls them for the messages of derivatives.
_lib = _numba_mpi.libmpi
_P, _I = ctypes.c_void_p, ctypes.c_int


def _binding(name: str, argtypes: list[Any]) -> Any:
    fn = getattr(_lib, name)
    fn.restype = ctypes.c_int
    fn.argtypes = argtypes
    return fn


_send = _binding("MPI_Send", [_P, _I, _Datatype, _I, _I, _Comm])
_recv = _binding("MPI_Recv", [_P, _I, _Datatype, _I, _I, _Comm, _P])
_sendrecv = _binding(
    "MPI_Sendrecv", [_P, _I, _Datatype, _I, _I, _P, _I, _Datatype, _I, _I, _Comm, _P]
)
_bcast = _binding("MPI_Bcast", [_P, _I, _Datatype, _I, _Comm])
_reduce = _binding("MPI_Reduce", [_P, _P, _I, _Datatype, _Op, _I, _Comm])
_allreduce = _binding("MPI_Allreduce", [_P, _P, _I, _Datatype, _Op, _Comm])
_scatter = _binding("MPI_Scatter", [_P, _I, _Datatype, _P, _I, _Datatype, _I, _Comm])
_gather = _binding("MPI_Gather", [_P, _I, _Datatype, _P, _I, _Datatype, _I, _Comm])
_allgather = _binding("MPI_Allgather", [_P, _I, _Datatype, _P, _I, _Datatype, _Comm])
_reduce_scatter_block = _binding("MPI_Reduce_scatter_block", [_P, _P, _I, _Datatype, _Op, _Comm])
_get_count = _binding("MPI_Get_count", [_P, _Datatype, _P])
_comm_rank = _binding("MPI_Comm_rank", [_Comm, _P])
_comm_size = _binding("MPI_Comm_size", [_Comm, _P])

# --- helpers of the rules ------------------------------------------------------

_OTHER_TYPE = (
    "enzpy.mpi: an MPI call whose buffer carries derivatives uses a datatype other "
    "than MPI_DOUBLE (float32, complex or derived): not supported"
)
_OTHER_OP = (
    "enzpy.mpi: a reduction whose buffer carries derivatives uses an operation other "
    "than MPI_SUM, MPI_MAX or MPI_MIN: not supported"
)
_BATCH_ANY = (
    "enzpy.mpi: forward batch mode through a receive from MPI_ANY_SOURCE or with "
    "MPI_ANY_TAG: the directions' messages cannot be matched; run one direction at a time"
)


@intrinsic
def _address(typingctx: Any, ptr: types.Type) -> Any:
    """A raw pointer as an integer (ctypes functions take either)."""

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return builder.ptrtoint(args[0], cgutils.intp_t)

    return types.intp(ptr), codegen


@intrinsic
def _pointer(typingctx: Any, address: types.Type) -> Any:
    """An integer address as a raw pointer (the inverse of _address)."""

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(address), codegen


@numba.njit
def _differentiable(dtype):
    """True for MPI_DOUBLE; False for integer and byte types; raises otherwise."""
    if dtype == _DOUBLE:
        return True
    for h in _DISCRETE:
        if dtype == h:
            return False
    raise UnsupportedError(_OTHER_TYPE)


@numba.njit
def _doubles(ptr, n):
    return numba.carray(ptr, (n,), np.float64)


@numba.njit
def _shadow(active, dptr, n):
    """The shadow memory of a buffer, or zeros where it carries no derivative
    (a scratch buffer for what a message brings into it)."""
    if active:
        return _doubles(dptr, n)
    return np.zeros(n)


@numba.njit
def _add(dptr, active, values):
    if active:
        d = _doubles(dptr, values.size)
        for i in range(values.size):
            d[i] += values[i]


@numba.njit
def _zero(dptr, active, n):
    if active:
        d = _doubles(dptr, n)
        for i in range(n):
            d[i] = 0.0


@numba.njit
def _rank(comm):
    r = np.zeros(1, np.intc)
    _comm_rank(comm, r.ctypes.data)
    return r[0]


@numba.njit
def _size(comm):
    r = np.zeros(1, np.intc)
    _comm_size(comm, r.ctypes.data)
    return r[0]


@numba.njit
def _status():
    return np.zeros(_STATUS_INTS, np.intc)


@numba.njit
def _keep_status(own, status):
    """Copy the status of a receive into the caller's (unless it is one of the
    MPI_STATUS_IGNORE sentinels, a small address)."""
    if _address(status) > 64:
        theirs = numba.carray(status, (_STATUS_INTS,), np.intc)
        for i in range(_STATUS_INTS):
            theirs[i] = own[i]


@numba.njit
def _received(own, dtype):
    n = np.zeros(1, np.intc)
    _get_count(own.ctypes.data, dtype, n.ctypes.data)
    return n[0]


@numba.njit
def _reduce_weights(send, count, dtype, op, comm):
    """The share of the reduction's result each element of ``send`` holds: 1
    for MPI_SUM; for MPI_MAX and MPI_MIN, 1/k where it is the extremum and k
    ranks tie, else 0. The extremum comes from a reduction of its own, so the
    weights are right on every rank and in every batch lane (lanes after the
    first run before the call's own result exists)."""
    w = np.ones(count)
    if op == _SUM:
        return w
    if op != _MAX and op != _MIN:
        raise UnsupportedError(_OTHER_OP)
    extremum = np.zeros(count)
    _allreduce(send, extremum.ctypes.data, count, dtype, op, comm)
    x = _doubles(send, count)
    for i in range(count):
        w[i] = 1.0 if x[i] == extremum[i] else 0.0
    ties = np.zeros(count)
    _allreduce(w.ctypes.data, ties.ctypes.data, count, dtype, _SUM, comm)
    for i in range(count):
        if w[i] != 0.0:
            w[i] /= ties[i]
    return w


# --- point to point ------------------------------------------------------------


def _send_forward(cfg, buf, dbuf, count, _c, dtype, _t, dest, _d, tag, _g, comm, _m):
    status = np.intc(0)
    if cfg.lane == 0:  # batch lanes 1.. run first and send their tangents only
        status = _send(buf, count, dtype, dest, tag, comm)
    if _differentiable(dtype):
        t = _shadow(cfg.active[0], dbuf, count)
        _send(t.ctypes.data, count, dtype, dest, tag, comm)
    return status


def _send_augmented(cfg, buf, count, dtype, dest, tag, comm):
    return _send(buf, count, dtype, dest, tag, comm), 0


def _send_reverse(cfg, _tape, buf, dbuf, count, _c, dtype, _t, dest, _d, tag, _g, comm, _m):
    if _differentiable(dtype):
        bar = np.empty(count)
        _recv(bar.ctypes.data, count, dtype, dest, tag, comm, _status().ctypes.data)
        _add(dbuf, cfg.active[0], bar)
    return ()


def _recv_forward(cfg, buf, dbuf, count, _c, dtype, _t, source, _s, tag, _g, comm, _m, status, _u):
    result = np.intc(0)
    src, tg = source, tag
    if cfg.lane == 0:
        own = _status()
        result = _recv(buf, count, dtype, source, tag, comm, own.ctypes.data)
        _keep_status(own, status)
        src, tg = own[_SOURCE], own[_TAG]
    elif source == _ANY_SOURCE or tag == _ANY_TAG:
        raise UnsupportedError(_BATCH_ANY)
    if _differentiable(dtype):
        t = _shadow(cfg.active[0], dbuf, count)
        _recv(t.ctypes.data, count, dtype, src, tg, comm, _status().ctypes.data)
    return result


def _recv_augmented(cfg, buf, count, dtype, source, tag, comm, status):
    own = _status()
    result = _recv(buf, count, dtype, source, tag, comm, own.ctypes.data)
    _keep_status(own, status)
    return result, (np.int64(own[_SOURCE]), np.int64(own[_TAG]), np.int64(_received(own, dtype)))


def _recv_reverse(
    cfg, tape, buf, dbuf, count, _c, dtype, _t, source, _s, tag, _g, comm, _m, status, _u
):
    if _differentiable(dtype):
        src, tg, n = tape
        bar = _shadow(cfg.active[0], dbuf, n)
        _send(bar.ctypes.data, n, dtype, src, tg, comm)
        _zero(dbuf, cfg.active[0], n)
    return ()


def _sendrecv_forward(
    cfg,
    sbuf,
    dsbuf,
    scount,
    _a,
    stype,
    _b,
    dest,
    _c,
    stag,
    _d,
    rbuf,
    drbuf,
    rcount,
    _e,
    rtype,
    _f,
    source,
    _g,
    rtag,
    _h,
    comm,
    _i,
    status,
    _j,
):
    result = np.intc(0)
    src, tg = source, rtag
    if cfg.lane == 0:
        own = _status()
        result = _sendrecv(
            sbuf, scount, stype, dest, stag, rbuf, rcount, rtype, source, rtag, comm,
            own.ctypes.data,
        )  # fmt: skip
        _keep_status(own, status)
        src, tg = own[_SOURCE], own[_TAG]
    elif source == _ANY_SOURCE or rtag == _ANY_TAG:
        raise UnsupportedError(_BATCH_ANY)
    sends, receives = _differentiable(stype), _differentiable(rtype)
    # The tangents travel like the values (a side that carries no derivative
    # sends or receives an empty message, so that the pairs still match).
    t = _shadow(cfg.active[0] and sends, dsbuf, scount if sends else 0)
    r = _shadow(cfg.active[5] and receives, drbuf, rcount if receives else 0)
    _sendrecv(
        t.ctypes.data, t.size, _DOUBLE, dest, stag, r.ctypes.data, r.size, _DOUBLE, src, tg,
        comm, _status().ctypes.data,
    )  # fmt: skip
    return result


def _sendrecv_augmented(
    cfg, sbuf, scount, stype, dest, stag, rbuf, rcount, rtype, source, rtag, comm, status
):
    own = _status()
    result = _sendrecv(
        sbuf, scount, stype, dest, stag, rbuf, rcount, rtype, source, rtag, comm, own.ctypes.data
    )
    _keep_status(own, status)
    return result, (np.int64(own[_SOURCE]), np.int64(own[_TAG]), np.int64(_received(own, rtype)))


def _sendrecv_reverse(
    cfg,
    tape,
    sbuf,
    dsbuf,
    scount,
    _a,
    stype,
    _b,
    dest,
    _c,
    stag,
    _d,
    rbuf,
    drbuf,
    rcount,
    _e,
    rtype,
    _f,
    source,
    _g,
    rtag,
    _h,
    comm,
    _i,
    status,
    _j,
):
    src, tg, n = tape
    sends, receives = _differentiable(stype), _differentiable(rtype)
    # The received values' cotangents go back to their sender, the sent
    # values' come back from where they went.
    back = _shadow(cfg.active[5] and receives, drbuf, n if receives else 0)
    bar = np.zeros(scount if sends else 0)
    _sendrecv(
        back.ctypes.data, back.size, _DOUBLE, src, tg, bar.ctypes.data, bar.size, _DOUBLE, dest,
        stag, comm, _status().ctypes.data,
    )  # fmt: skip
    if receives:
        _zero(drbuf, cfg.active[5], n)
    if sends:
        _add(dsbuf, cfg.active[0], bar)
    return ()


# --- collectives -----------------------------------------------------------------


def _bcast_forward(cfg, buf, dbuf, count, _c, dtype, _t, root, _r, comm, _m):
    result = np.intc(0)
    if cfg.lane == 0:
        result = _bcast(buf, count, dtype, root, comm)
    if _differentiable(dtype):
        t = _shadow(cfg.active[0], dbuf, count)
        _bcast(t.ctypes.data, count, dtype, root, comm)
    return result


def _bcast_augmented(cfg, buf, count, dtype, root, comm):
    return _bcast(buf, count, dtype, root, comm), 0


def _bcast_reverse(cfg, _tape, buf, dbuf, count, _c, dtype, _t, root, _r, comm, _m):
    if _differentiable(dtype):
        # Every rank's copy came from the root's: the root's cotangent is the
        # sum of all of them, the others' copies were overwritten.
        mine = _shadow(cfg.active[0], dbuf, count).copy()
        total = np.zeros(count)
        _reduce(mine.ctypes.data, total.ctypes.data, count, dtype, _SUM, root, comm)
        _zero(dbuf, cfg.active[0], count)
        if _rank(comm) == root:
            _add(dbuf, cfg.active[0], total)
    return ()


def _allreduce_forward(cfg, send, dsend, recv, drecv, count, _c, dtype, _t, op, _o, comm, _m):
    result = np.intc(0)
    if cfg.lane == 0:
        result = _allreduce(send, recv, count, dtype, op, comm)
    if _differentiable(dtype):
        w = _reduce_weights(send, count, dtype, op, comm)
        t = _shadow(cfg.active[0], dsend, count) * w
        out = _shadow(cfg.active[1], drecv, count)
        _allreduce(t.ctypes.data, out.ctypes.data, count, dtype, _SUM, comm)
    return result


def _allreduce_augmented(cfg, send, recv, count, dtype, op, comm):
    result = _allreduce(send, recv, count, dtype, op, comm)
    w = np.ones(0)
    if _differentiable(dtype):
        w = _reduce_weights(send, count, dtype, op, comm)
    return result, w


def _allreduce_reverse(cfg, w, send, dsend, recv, drecv, count, _c, dtype, _t, op, _o, comm, _m):
    if _differentiable(dtype):
        mine = _shadow(cfg.active[1], drecv, count).copy()
        total = np.zeros(count)
        _allreduce(mine.ctypes.data, total.ctypes.data, count, dtype, _SUM, comm)
        _zero(drecv, cfg.active[1], count)
        _add(dsend, cfg.active[0], total * w)
    return ()


def _reduce_forward(
    cfg, send, dsend, recv, drecv, count, _c, dtype, _t, op, _o, root, _r, comm, _m
):
    result = np.intc(0)
    if cfg.lane == 0:
        result = _reduce(send, recv, count, dtype, op, root, comm)
    if _differentiable(dtype):
        w = _reduce_weights(send, count, dtype, op, comm)
        t = _shadow(cfg.active[0], dsend, count) * w
        at_root = _rank(comm) == root
        out = _shadow(cfg.active[1] and at_root, drecv, count)
        _reduce(t.ctypes.data, out.ctypes.data, count, dtype, _SUM, root, comm)
    return result


def _reduce_augmented(cfg, send, recv, count, dtype, op, root, comm):
    result = _reduce(send, recv, count, dtype, op, root, comm)
    w = np.ones(0)
    if _differentiable(dtype):
        w = _reduce_weights(send, count, dtype, op, comm)
    return result, w


def _reduce_reverse(
    cfg, w, send, dsend, recv, drecv, count, _c, dtype, _t, op, _o, root, _r, comm, _m
):
    if _differentiable(dtype):
        at_root = _rank(comm) == root
        bar = np.zeros(count)
        if at_root:
            bar[:] = _shadow(cfg.active[1], drecv, count)
            _zero(drecv, cfg.active[1], count)
        _bcast(bar.ctypes.data, count, dtype, root, comm)
        _add(dsend, cfg.active[0], bar * w)
    return ()


def _scatter_forward(
    cfg, send, dsend, scount, _a, stype, _b, recv, drecv, rcount, _c, rtype, _d, root, _r, comm, _m
):
    result = np.intc(0)
    if cfg.lane == 0:
        result = _scatter(send, scount, stype, recv, rcount, rtype, root, comm)
    if _differentiable(rtype):
        at_root = _rank(comm) == root
        n = scount * _size(comm) if at_root else 0
        t = _shadow(cfg.active[0] and at_root, dsend, n)
        out = _shadow(cfg.active[3], drecv, rcount)
        _scatter(t.ctypes.data, scount, stype, out.ctypes.data, rcount, rtype, root, comm)
    return result


def _scatter_augmented(cfg, send, scount, stype, recv, rcount, rtype, root, comm):
    return _scatter(send, scount, stype, recv, rcount, rtype, root, comm), 0


def _scatter_reverse(
    cfg,
    _tape,
    send,
    dsend,
    scount,
    _a,
    stype,
    _b,
    recv,
    drecv,
    rcount,
    _c,
    rtype,
    _d,
    root,
    _r,
    comm,
    _m,
):
    if _differentiable(rtype):
        at_root = _rank(comm) == root
        mine = _shadow(cfg.active[3], drecv, rcount).copy()
        _zero(drecv, cfg.active[3], rcount)
        bar = np.zeros(scount * _size(comm) if at_root else 0)
        _gather(mine.ctypes.data, rcount, rtype, bar.ctypes.data, scount, stype, root, comm)
        if at_root:
            _add(dsend, cfg.active[0], bar)
    return ()


def _gather_forward(
    cfg, send, dsend, scount, _a, stype, _b, recv, drecv, rcount, _c, rtype, _d, root, _r, comm, _m
):
    result = np.intc(0)
    if cfg.lane == 0:
        result = _gather(send, scount, stype, recv, rcount, rtype, root, comm)
    if _differentiable(stype):
        at_root = _rank(comm) == root
        t = _shadow(cfg.active[0], dsend, scount)
        n = rcount * _size(comm) if at_root else 0
        out = _shadow(cfg.active[3] and at_root, drecv, n)
        _gather(t.ctypes.data, scount, stype, out.ctypes.data, rcount, rtype, root, comm)
    return result


def _gather_augmented(cfg, send, scount, stype, recv, rcount, rtype, root, comm):
    return _gather(send, scount, stype, recv, rcount, rtype, root, comm), 0


def _gather_reverse(
    cfg,
    _tape,
    send,
    dsend,
    scount,
    _a,
    stype,
    _b,
    recv,
    drecv,
    rcount,
    _c,
    rtype,
    _d,
    root,
    _r,
    comm,
    _m,
):
    if _differentiable(stype):
        at_root = _rank(comm) == root
        n = rcount * _size(comm) if at_root else 0
        blocks = _shadow(cfg.active[3] and at_root, drecv, n).copy()
        if at_root:
            _zero(drecv, cfg.active[3], n)
        bar = np.zeros(scount)
        _scatter(blocks.ctypes.data, rcount, rtype, bar.ctypes.data, scount, stype, root, comm)
        _add(dsend, cfg.active[0], bar)
    return ()


def _allgather_forward(
    cfg, send, dsend, scount, _a, stype, _b, recv, drecv, rcount, _c, rtype, _d, comm, _m
):
    result = np.intc(0)
    if cfg.lane == 0:
        result = _allgather(send, scount, stype, recv, rcount, rtype, comm)
    if _differentiable(stype):
        t = _shadow(cfg.active[0], dsend, scount)
        out = _shadow(cfg.active[3], drecv, rcount * _size(comm))
        _allgather(t.ctypes.data, scount, stype, out.ctypes.data, rcount, rtype, comm)
    return result


def _allgather_augmented(cfg, send, scount, stype, recv, rcount, rtype, comm):
    return _allgather(send, scount, stype, recv, rcount, rtype, comm), 0


def _allgather_reverse(
    cfg, _tape, send, dsend, scount, _a, stype, _b, recv, drecv, rcount, _c, rtype, _d, comm, _m
):
    if _differentiable(stype):
        n = rcount * _size(comm)
        blocks = _shadow(cfg.active[3], drecv, n).copy()
        _zero(drecv, cfg.active[3], n)
        bar = np.zeros(scount)
        _reduce_scatter_block(blocks.ctypes.data, bar.ctypes.data, scount, stype, _SUM, comm)
        _add(dsend, cfg.active[0], bar)
    return ()


# Every call runs its rule, active or not, so that the messages of derivatives
# pair up on every rank (a receive brings derivatives from another process even
# where nothing in this one carries any); send buffers are only read.
for _fn, _rules, _reads in (
    (_send, (_send_forward, _send_augmented, _send_reverse), (0,)),
    (_recv, (_recv_forward, _recv_augmented, _recv_reverse), ()),
    (_sendrecv, (_sendrecv_forward, _sendrecv_augmented, _sendrecv_reverse), (0,)),
    (_bcast, (_bcast_forward, _bcast_augmented, _bcast_reverse), ()),
    (_allreduce, (_allreduce_forward, _allreduce_augmented, _allreduce_reverse), (0,)),
    (_reduce, (_reduce_forward, _reduce_augmented, _reduce_reverse), (0,)),
    (_scatter, (_scatter_forward, _scatter_augmented, _scatter_reverse), (0,)),
    (_gather, (_gather_forward, _gather_augmented, _gather_reverse), (0,)),
    (_allgather, (_allgather_forward, _allgather_augmented, _allgather_reverse), (0,)),
):
    register_rule(
        _fn,
        forward=_rules[0],
        augmented=_rules[1],
        reverse=_rules[2],
        always_active=True,
        reads_only=_reads,
    )

# Non-blocking communication: its rules use the helpers above.
from . import _mpi_requests  # noqa: E402, F401
