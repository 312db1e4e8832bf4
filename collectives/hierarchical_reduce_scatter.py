"""``Reduce_scatter_block`` and ``Reduce_scatter`` over the hierarchy (:mod:`collectives.hierarchical_calls`)."""

from __future__ import annotations

from typing import Any

import numpy as np
from mpi4py import MPI

from . import extrema, reduction_check
from .allreduce import allreduce
from .bufspec import datatype_of
from .hierarchical_blocks import reduce_scatter_blocks
from .hierarchical_plan import layouts, plain_array, plan, require, small
from .hierarchy import of_topology
from .reduction import reducer
from .settings import settings
from .topology import topology

__all__ = ["reduce_scatter", "reduce_scatter_block", "try_reduce_scatter", "try_reduce_scatter_block"]


def _mpi_wrong(comm: MPI.Intracomm, op: MPI.Op, datatype: MPI.Datatype) -> bool:
    """Whether MPI reduces ``op`` on ``datatype`` wrongly on ``comm`` beyond a NaN (collective the first time)."""
    if not settings.reduction_check:
        return False
    verdict = reduction_check.agreed(comm) or reduction_check.agree(comm)
    key = (op.handle, datatype.handle)
    return key in verdict.by_handle and key not in verdict.nan_only


def _exact(comm: MPI.Intracomm, send: Any, recv: Any, counts: list[int], op: MPI.Op) -> None:
    """The reduce-scatter in commlib's exact arithmetic: its allreduce (ring or star for such a pair), a block kept."""
    whole = np.empty(sum(counts), dtype=recv.dtype)
    allreduce(comm, send, whole, op)
    start = sum(counts[: comm.Get_rank()])
    recv[: counts[comm.Get_rank()]] = whole[start : start + counts[comm.Get_rank()]]


def _small_reduction(comm: Any, buf: Any, op: Any, algorithm: str | None) -> bool:
    """Whether ``auto`` keeps MPI's own for this input without looking further: small, and a pair MPI
    is known (on ``comm``) to reduce correctly."""
    if not small(buf, algorithm, settings.reduce_scatter):
        return False
    if not settings.reduction_check:
        return True
    codes = reduction_check.codes_by_handle.get(getattr(comm, "handle", None))
    return codes is not None and (getattr(op, "handle", None), buf.dtype.char) not in codes


def _run_reduce(
    comm: Any,
    name: str,
    send: Any,
    recv: Any,
    counts: list[int],
    mop: MPI.Op,
    algorithm: str,
    levels: int | None,
    segments: int | None,
) -> Any:
    """The reduce-scatter of ``send`` (rank order, ``counts``) into ``recv[:counts[rank]]``, or ``NotImplemented``."""
    datatype = datatype_of(recv.dtype)
    red = reducer(mop, datatype)
    if red is None:
        return NotImplemented
    if _mpi_wrong(comm, mop, datatype):
        _exact(comm, send, recv, counts, mop)
        return None
    nbytes = sum(counts) * recv.dtype.itemsize
    depth, segments = plan(comm, "reduce_scatter", nbytes, algorithm, levels, segments)
    if depth == 0 or sum(counts) == 0:
        return NotImplemented
    h = of_topology(topology(comm))
    if extrema.order_sensitive(red) and extrema.ambiguous(h.comm, send):
        return NotImplemented
    lays = layouts(h.view(depth), counts, segments)
    reduce_scatter_blocks(lays, send, recv[: counts[comm.Get_rank()]], datatype, mop)
    return None


def try_reduce_scatter_block(
    comm: Any,
    sendbuf: Any,
    recvbuf: Any,
    op: MPI.Op = MPI.SUM,
    algorithm: str | None = None,
    *,
    levels: int | None = None,
    segments: int | None = None,
) -> Any:
    """``Reduce_scatter_block`` by the hierarchy and ``None``, or ``NotImplemented`` (nothing touched)."""
    if not isinstance(comm, MPI.Intracomm) or comm == MPI.COMM_NULL or not isinstance(op, MPI.Op):
        return NotImplemented
    if levels is None and _small_reduction(comm, recvbuf if sendbuf is MPI.IN_PLACE else sendbuf, op, algorithm):
        return NotImplemented
    name, p = "Reduce_scatter_block", comm.Get_size()
    recv = plain_array(recvbuf, "recvbuf", name, writable=True)
    send = recv if sendbuf is MPI.IN_PLACE else plain_array(sendbuf, "sendbuf", name, writable=False)
    if recv is None or send is None:
        return NotImplemented
    if sendbuf is MPI.IN_PLACE:
        require(
            name,
            recv.size % p == 0,
            recv.dtype,
            "in place, recvbuf's {} elements do not split into {} blocks",
            recv.size,
            p,
        )
        count = recv.size // p
        send = recv.copy()
    else:
        count = recv.size
        require(name, send.dtype == recv.dtype, recv.dtype, "sendbuf holds {} but recvbuf", send.dtype)
        require(name, send.size == p * count, recv.dtype, "sendbuf has {} elements, not {} x {}", send.size, p, count)
        require(name, not np.may_share_memory(send, recv), recv.dtype, "sendbuf and recvbuf overlap; pass MPI.IN_PLACE")
    return _run_reduce(comm, name, send, recv, [count] * p, op, algorithm or settings.reduce_scatter, levels, segments)


def try_reduce_scatter(
    comm: Any,
    sendbuf: Any,
    recvbuf: Any,
    recvcounts: Any = None,
    op: MPI.Op = MPI.SUM,
    algorithm: str | None = None,
    *,
    levels: int | None = None,
    segments: int | None = None,
) -> Any:
    """``Reduce_scatter`` (``recvcounts`` per rank) by the hierarchy and ``None``, or ``NotImplemented``."""
    if not isinstance(comm, MPI.Intracomm) or comm == MPI.COMM_NULL or not isinstance(op, MPI.Op):
        return NotImplemented
    if recvcounts is None:
        return NotImplemented
    if levels is None and _small_reduction(comm, recvbuf if sendbuf is MPI.IN_PLACE else sendbuf, op, algorithm):
        return NotImplemented
    name, p = "Reduce_scatter", comm.Get_size()
    recv = plain_array(recvbuf, "recvbuf", name, writable=True)
    send = recv if sendbuf is MPI.IN_PLACE else plain_array(sendbuf, "sendbuf", name, writable=False)
    if recv is None or send is None:
        return NotImplemented
    counts = [int(c) for c in recvcounts]
    require(name, len(counts) == p and min(counts) >= 0, recv.dtype, "recvcounts {} are not {} counts >= 0", counts, p)
    total, mine = sum(counts), counts[comm.Get_rank()]
    if sendbuf is MPI.IN_PLACE:
        require(name, recv.size >= total, recv.dtype, "in place, recvbuf has {} elements, not {}", recv.size, total)
        send = recv[:total].copy()
    else:
        require(name, send.dtype == recv.dtype, recv.dtype, "sendbuf holds {} but recvbuf", send.dtype)
        require(name, send.size >= total, recv.dtype, "sendbuf has {} elements, recvcounts sum to {}", send.size, total)
        require(name, recv.size >= mine, recv.dtype, "recvbuf has {} elements, not {}", recv.size, mine)
        require(name, not np.may_share_memory(send, recv), recv.dtype, "sendbuf and recvbuf overlap; pass MPI.IN_PLACE")
        send = send[:total]
    return _run_reduce(comm, name, send, recv, counts, op, algorithm or settings.reduce_scatter, levels, segments)


def reduce_scatter_block(
    comm: MPI.Intracomm,
    sendbuf: Any,
    recvbuf: Any,
    op: MPI.Op = MPI.SUM,
    algorithm: str | None = None,
    *,
    levels: int | None = None,
    segments: int | None = None,
) -> None:
    """``MPI_Reduce_scatter_block`` by the hierarchy where the model (or ``algorithm``) says so, else MPI's."""
    if (
        try_reduce_scatter_block(comm, sendbuf, recvbuf, op, algorithm, levels=levels, segments=segments)
        is NotImplemented
    ):
        MPI.Comm.Reduce_scatter_block(comm, sendbuf, recvbuf, op)


def reduce_scatter(
    comm: MPI.Intracomm,
    sendbuf: Any,
    recvbuf: Any,
    recvcounts: Any = None,
    op: MPI.Op = MPI.SUM,
    algorithm: str | None = None,
    *,
    levels: int | None = None,
    segments: int | None = None,
) -> None:
    """``MPI_Reduce_scatter`` by the hierarchy where the model (or ``algorithm``) says so, else MPI's."""
    if (
        try_reduce_scatter(comm, sendbuf, recvbuf, recvcounts, op, algorithm, levels=levels, segments=segments)
        is NotImplemented
    ):
        MPI.Comm.Reduce_scatter(comm, sendbuf, recvbuf, recvcounts, op)
