"""``Allgather`` and ``Allgatherv`` over the hierarchy (:mod:`collectives.hierarchical_calls`)."""

from __future__ import annotations

from typing import Any

import numpy as np
from mpi4py import MPI

from .bufspec import datatype_of
from .hierarchical_blocks import allgather_blocks
from .hierarchical_plan import layouts, plain_array, plan, require, small
from .hierarchy import of_topology
from .settings import settings
from .topology import topology

__all__ = ["allgather", "allgatherv", "try_allgather", "try_allgatherv"]


def _run_gather(
    comm: Any,
    send: Any,
    recv: Any,
    counts: list[int],
    displs: list[int],
    algorithm: str,
    levels: int | None,
    segments: int | None,
) -> Any:
    nbytes = sum(counts) * recv.dtype.itemsize
    depth, segments = plan(comm, "allgather", nbytes, algorithm, levels, segments)
    if depth == 0 or sum(counts) == 0:
        return NotImplemented
    h = of_topology(topology(comm)).view(depth)
    raw_recv, raw_send = recv.view(np.uint8), send.view(np.uint8)
    size = recv.dtype.itemsize
    lays = layouts(h, [c * size for c in counts], segments)
    allgather_blocks(lays, raw_send, raw_recv, [d * size for d in displs], MPI.BYTE)
    return None


def try_allgather(
    comm: Any,
    sendbuf: Any,
    recvbuf: Any,
    algorithm: str | None = None,
    *,
    levels: int | None = None,
    segments: int | None = None,
) -> Any:
    """``Allgather`` by the hierarchy and ``None``, or ``NotImplemented`` (nothing touched)."""
    if not isinstance(comm, MPI.Intracomm) or comm == MPI.COMM_NULL:
        return NotImplemented
    if small(recvbuf, algorithm, settings.allgather) and levels is None:
        return NotImplemented
    name, p, rank = "Allgather", comm.Get_size(), comm.Get_rank()
    recv = plain_array(recvbuf, "recvbuf", name, writable=True)
    if recv is None:
        return NotImplemented
    if sendbuf is MPI.IN_PLACE:
        require(name, recv.size % p == 0, recv.dtype, "recvbuf's {} elements do not split into {} blocks", recv.size, p)
        count = recv.size // p
        send = recv[rank * count : (rank + 1) * count].copy()
    else:
        send = plain_array(sendbuf, "sendbuf", name, writable=False)
        if send is None:
            return NotImplemented
        count = send.size
        require(name, send.dtype == recv.dtype, recv.dtype, "sendbuf holds {} but recvbuf", send.dtype)
        require(name, recv.size == p * count, recv.dtype, "recvbuf has {} elements, not {} x {}", recv.size, p, count)
    return _run_gather(
        comm, send, recv, [count] * p, [k * count for k in range(p)], algorithm or settings.allgather, levels, segments
    )


def _vector_spec(spec: Any) -> tuple[Any, list[int], list[int] | None] | None:
    """``(array, counts, displs or None)`` of the Allgatherv receive specs commlib reads (as mpi4py reads them:
    ``[buf, counts(, datatype)]``, ``[buf, (counts, displs)(, datatype)]``, ``[buf, counts, displs, datatype]``),
    else ``None``."""
    if not isinstance(spec, (list, tuple)) or len(spec) not in (2, 3, 4) or type(spec[0]) is not np.ndarray:
        return None
    arr, rest = spec[0], list(spec[1:])
    if len(rest) > 1:
        if not isinstance(rest[-1], MPI.Datatype) or rest.pop() != datatype_of(arr.dtype):
            return None
    if len(rest) == 1:
        first = rest[0]
        is_pair = isinstance(first, tuple) and len(first) == 2 and not np.isscalar(first[0])
        rest = list(first) if is_pair else [first, None]
    counts, displs = rest
    if np.isscalar(counts) or not (displs is None or not np.isscalar(displs)):
        return None
    return arr, [int(c) for c in counts], None if displs is None else [int(d) for d in displs]


def try_allgatherv(
    comm: Any,
    sendbuf: Any,
    recvbuf: Any,
    algorithm: str | None = None,
    *,
    levels: int | None = None,
    segments: int | None = None,
) -> Any:
    """``Allgatherv`` by the hierarchy and ``None``, or ``NotImplemented`` (nothing touched)."""
    if not isinstance(comm, MPI.Intracomm) or comm == MPI.COMM_NULL:
        return NotImplemented
    if (
        levels is None
        and isinstance(recvbuf, (list, tuple))
        and recvbuf
        and small(recvbuf[0], algorithm, settings.allgather)
    ):
        return NotImplemented
    name, p, rank = "Allgatherv", comm.Get_size(), comm.Get_rank()
    spec = _vector_spec(recvbuf)
    if spec is None:
        return NotImplemented
    arr, counts, displs = spec
    recv = plain_array(arr, "recvbuf", name, writable=True)
    if recv is None:
        return NotImplemented
    if displs is None:
        displs = [int(x) for x in np.cumsum([0, *counts[:-1]])] if counts else []
    require(
        name,
        len(counts) == p == len(displs),
        recv.dtype,
        "{} counts and {} displs for {} ranks",
        len(counts),
        len(displs),
        p,
    )
    require(name, min(counts) >= 0 and min(displs) >= 0, recv.dtype, "negative counts {} or displs {}", counts, displs)
    end = max(d + c for d, c in zip(displs, counts))
    require(name, recv.size >= end, recv.dtype, "recvbuf has {} elements, counts and displs need {}", recv.size, end)
    if sendbuf is MPI.IN_PLACE:
        send = recv[displs[rank] : displs[rank] + counts[rank]].copy()
    else:
        send = plain_array(sendbuf, "sendbuf", name, writable=False)
        if send is None:
            return NotImplemented
        require(name, send.dtype == recv.dtype, recv.dtype, "sendbuf holds {} but recvbuf", send.dtype)
        require(
            name,
            send.size == counts[rank],
            recv.dtype,
            "sendbuf has {} elements, counts[{}] is {}",
            send.size,
            rank,
            counts[rank],
        )
    return _run_gather(comm, send, recv, counts, displs, algorithm or settings.allgather, levels, segments)


def allgather(
    comm: MPI.Intracomm,
    sendbuf: Any,
    recvbuf: Any,
    algorithm: str | None = None,
    *,
    levels: int | None = None,
    segments: int | None = None,
) -> None:
    """``MPI_Allgather`` by the hierarchy where the model (or ``algorithm``) says so, else MPI's."""
    if try_allgather(comm, sendbuf, recvbuf, algorithm, levels=levels, segments=segments) is NotImplemented:
        MPI.Comm.Allgather(comm, sendbuf, recvbuf)


def allgatherv(
    comm: MPI.Intracomm,
    sendbuf: Any,
    recvbuf: Any,
    algorithm: str | None = None,
    *,
    levels: int | None = None,
    segments: int | None = None,
) -> None:
    """``MPI_Allgatherv`` by the hierarchy where the model (or ``algorithm``) says so, else MPI's."""
    if try_allgatherv(comm, sendbuf, recvbuf, algorithm, levels=levels, segments=segments) is NotImplemented:
        MPI.Comm.Allgatherv(comm, sendbuf, recvbuf)
