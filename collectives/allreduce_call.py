"""One allreduce call, read and checked: its buffers, datatype, operation and local reducer (:class:`Call`).

What :mod:`collectives.allreduce` runs every algorithm on. Bad specs raise
here, naming the operation, the datatypes and the sizes, before anything is
sent; what commlib does not handle comes back as ``None`` (MPI's to take).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from mpi4py import MPI

from .bufspec import TypedBuffer, datatype_of, typed_buffer
from .reduction import Reducer, array_module, reducer

__all__ = ["AliasedBuffers", "Call", "on_host", "prepare", "staged"]


class AliasedBuffers(MPI.Exception, ValueError):
    """Send and receive buffers that share memory (``MPI.ERR_BUFFER``, as MPI reports it; also a ``ValueError``)."""

    def __init__(self, message: str) -> None:
        super().__init__(MPI.ERR_BUFFER)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _check_disjoint(send: Any, recv: Any, datatype: MPI.Datatype) -> None:
    """Raise :class:`AliasedBuffers` when ``send`` and ``recv`` (contiguous arrays) share any byte."""
    if array_module(recv).may_share_memory(send, recv):
        raise AliasedBuffers(
            f"allreduce: sendbuf and recvbuf overlap ({send.size} and {recv.size} elements of "
            f"{datatype.Get_name() or recv.dtype}): pass MPI.IN_PLACE as sendbuf to reduce in place"
        )


class Call:
    """One allreduce, validated: ``send`` is ``None`` for ``MPI.IN_PLACE``."""

    __slots__ = ("datatype", "op", "recv", "reduce", "send")

    def __init__(self, send: Any | None, recv: Any, datatype: MPI.Datatype, op: MPI.Op, reduce: Reducer) -> None:
        self.send, self.recv, self.datatype, self.op, self.reduce = send, recv, datatype, op, reduce


def _plain(sendbuf: Any, recvbuf: Any, op: Any) -> Call | None:
    """The call for the common case - C-contiguous numpy arrays that match - else ``None``."""
    rflags = recvbuf.flags
    if not (rflags.c_contiguous and rflags.writeable):
        return None
    if sendbuf is MPI.IN_PLACE:
        send = None
    elif sendbuf.flags.c_contiguous and sendbuf.dtype == recvbuf.dtype and sendbuf.size == recvbuf.size:
        send = sendbuf.reshape(-1)
    else:
        return None
    datatype = datatype_of(recvbuf.dtype)
    red = None if datatype is None else reducer(op, datatype)
    if red is None:
        return None
    if send is not None:
        _check_disjoint(send, recvbuf, datatype)
    return Call(send, recvbuf.reshape(-1), datatype, op, red)


def prepare(comm: Any, sendbuf: Any, recvbuf: Any, op: Any) -> Call | None:
    """The validated call, or ``None`` for what goes to MPI untouched; bad specs raise here."""
    if not isinstance(comm, MPI.Intracomm) or comm == MPI.COMM_NULL:
        return None
    if type(recvbuf) is np.ndarray and (sendbuf is MPI.IN_PLACE or type(sendbuf) is np.ndarray):
        call = _plain(sendbuf, recvbuf, op)
        if call is not None:
            return call
    recv = typed_buffer(recvbuf, "recvbuf", writable=True)
    if recv is None:
        return None
    send: TypedBuffer | None = None
    if sendbuf is not MPI.IN_PLACE:
        send = typed_buffer(sendbuf, "sendbuf", writable=False)
        if send is None:
            return None
        if send.array.dtype != recv.array.dtype:
            raise ValueError(
                f"allreduce: sendbuf holds {send.datatype.Get_name()} ({send.array.dtype}) elements but recvbuf "
                f"{recv.datatype.Get_name()} ({recv.array.dtype}): the datatypes must match"
            )
        if send.count != recv.count:
            raise ValueError(
                f"allreduce: sendbuf has {send.count} and recvbuf {recv.count} elements of "
                f"{recv.datatype.Get_name()}: the counts must match"
            )
        if array_module(send.array) is not array_module(recv.array):
            raise TypeError("allreduce: sendbuf and recvbuf must both be host arrays or both device arrays")
    red = reducer(op, recv.datatype)
    if red is None:
        return None
    if send is not None:
        _check_disjoint(send.array, recv.array, recv.datatype)
    return Call(None if send is None else send.array, recv.array, recv.datatype, op, red)


def staged(call: Call) -> tuple[Call, Any]:
    """The call on host copies of device arrays (for an MPI that cannot take device memory)."""
    xp = array_module(call.recv)
    host_recv = xp.asnumpy(call.recv)
    host_send = None if call.send is None else xp.asnumpy(call.send)
    return Call(host_send, host_recv, call.datatype, call.op, call.reduce), host_recv


def on_host(spec: Any) -> bool:
    """Whether a buffer spec certainly names host memory (cheap: true whenever cupy is not even imported)."""
    cupy = sys.modules.get("cupy")
    if cupy is None:
        return True
    buf = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    return not isinstance(buf, cupy.ndarray)
