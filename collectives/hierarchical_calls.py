"""``Reduce_scatter_block``, ``Reduce_scatter``, ``Allgather`` and ``Allgatherv`` over the hierarchy, or MPI's own.

Each ``try_*`` function takes mpi4py's arguments, decides with the level
cost model (:mod:`collectives.hierarchy_cost`) whether commlib's hierarchical
algorithm (:mod:`collectives.hierarchical_blocks`) or MPI's own call is
faster, and either runs it and returns ``None`` or returns ``NotImplemented``
having touched nothing ("give this call to MPI as it is"). The plain
functions (:func:`reduce_scatter_block` ...) fall back to MPI themselves.

``algorithm``: ``auto`` (default: the ``reduce_scatter`` / ``allgather``
settings), ``native`` or ``hierarchical``; ``levels`` forces how many levels
below the world the hierarchical algorithm uses (0: MPI's own) and
``segments`` in how many pipelined segments (every block cut in as many
pieces); the model picks what is not forced. Handled: C-contiguous numpy
arrays of a predefined type (for the reductions, one the operation is
defined on; predefined operations only), ``MPI.IN_PLACE``, and for
``Allgatherv`` the receive specs ``[buf, counts(, datatype)]``,
``[buf, (counts, displs)(, datatype)]`` and ``[buf, counts, displs, datatype]``;
everything else goes to MPI. Sizes
that do not fit raise ``ValueError`` naming the operation, the datatype and
the sizes, before anything is sent. ``MAX``/``MIN`` of floating point whose
contributions hold a NaN or zeros of both signs go to MPI's own call, so that
the result never depends on the algorithm (:mod:`collectives.extrema`). A pair
MPI reduces wrongly (:mod:`collectives.reduction_check`: Open MPI's saturating
8- and 16-bit ``SUM``) never reaches MPI's reduction: the reduce-scatter runs
as commlib's exact allreduce, of which each rank keeps its block.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mpi4py import MPI

from . import allreduce_cost as cost
from . import extrema, hierarchy_cost, reduction_check
from .allreduce import allreduce
from .allreduce_levels import costs_of
from .bufspec import datatype_of
from .hierarchical_blocks import Layout, allgather_blocks, piece_counts, reduce_scatter_blocks
from .hierarchy import Hierarchy, of_topology
from .reduction import reducer
from .settings import HIERARCHY_ALGORITHMS, settings
from .topology import Topology, topology

__all__ = [
    "allgather",
    "allgatherv",
    "plan",
    "reduce_scatter",
    "reduce_scatter_block",
    "try_allgather",
    "try_allgatherv",
    "try_reduce_scatter",
    "try_reduce_scatter_block",
]


def _base(topo: Topology) -> cost.Costs:
    """The node and network figures, rank 0's (the key allreduce agrees them under)."""
    key = ("costs", None)
    if key in topo.agreed:
        return topo.agreed[key]
    try:
        from datatypes import model as models

        local = cost.costs_from_model(models.current())
    except (ImportError, AttributeError):
        local = cost.default_costs()
    return topo.agree(key, local)


def plan(
    comm: MPI.Intracomm,
    op: str,
    nbytes: int,
    algorithm: str = "auto",
    levels: int | None = None,
    segments: int | None = None,
) -> tuple[int, int]:
    """``(levels, segments)``: how many levels below the world the hierarchical ``op`` (``reduce_scatter`` or
    ``allgather``) uses for ``nbytes`` (the whole vector), in how many pipelined segments; ``(0, 1)`` is MPI's
    own call. ``levels`` and ``segments`` force either. Collective the first time per communicator."""
    if segments is not None and segments < 1:
        raise ValueError(f"{op}: segments must be at least 1, got {segments}")
    if algorithm not in HIERARCHY_ALGORITHMS:
        raise ValueError(f"{op}: unknown algorithm {algorithm!r} (choose from {', '.join(HIERARCHY_ALGORITHMS)})")
    if algorithm == "native" or comm.Get_size() == 1 or levels == 0:
        return 0, 1
    if algorithm == "auto" and levels is None and nbytes < cost.MIN_BYTES:
        return 0, 1
    topo = topology(comm)
    h = of_topology(topo)
    key = (op, nbytes, algorithm, levels)
    found = h.plans.get(key)
    if found is None:
        c = costs_of(h, _base(topo))
        if levels is not None:
            found = hierarchy_cost.best(op, nbytes, h, c, levels)
        elif algorithm == "auto":
            found = hierarchy_cost.choose(op, nbytes, h, c)
        else:
            found = hierarchy_cost.best(op, nbytes, h, c)
        h.plans[key] = found
    return found if segments is None or found[0] == 0 else (found[0], segments)


def _layouts(h: Hierarchy, counts: list[int], segments: int) -> list[Layout]:
    """One layout per segment of blocks of ``counts`` (cached on ``h``)."""
    key = ("layouts", tuple(counts), segments)
    found = h.plans.get(key)
    if found is None:
        found = [Layout(h, c) for c in piece_counts(counts, segments)]
        h.plans[key] = found
    return found


def _small(buf: Any, algorithm: str | None, setting: str) -> bool:
    """Whether ``auto`` keeps MPI's own for this whole-vector ``buf`` without looking further (the common case)."""
    return type(buf) is np.ndarray and buf.nbytes < cost.MIN_BYTES and (algorithm or setting) == "auto"


def _array(buf: Any, what: str, op: str, writable: bool) -> Any:
    """``buf`` as a 1-D view if it is a C-contiguous numpy array of a predefined type, else ``None``."""
    if type(buf) is not np.ndarray or not buf.flags.c_contiguous or datatype_of(buf.dtype) is None:
        return None
    if writable and not buf.flags.writeable:
        raise ValueError(f"{op}: {what} ({buf.dtype}, {buf.size} elements) is read-only")
    return buf.reshape(-1)


def _check(op: str, cond: bool, text: str, dtype: np.dtype) -> None:
    if not cond:
        raise ValueError(f"{op}: {text} ({dtype} elements)")


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
    if not _small(buf, algorithm, settings.reduce_scatter):
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
    lays = _layouts(h.view(depth), counts, segments)
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
    recv = _array(recvbuf, "recvbuf", name, writable=True)
    send = recv if sendbuf is MPI.IN_PLACE else _array(sendbuf, "sendbuf", name, writable=False)
    if recv is None or send is None:
        return NotImplemented
    if sendbuf is MPI.IN_PLACE:
        _check(
            name,
            recv.size % p == 0,
            f"in place, recvbuf's {recv.size} elements do not split into {p} blocks",
            recv.dtype,
        )
        count = recv.size // p
        send = recv.copy()
    else:
        count = recv.size
        _check(name, send.dtype == recv.dtype, f"sendbuf holds {send.dtype} but recvbuf", recv.dtype)
        _check(name, send.size == p * count, f"sendbuf has {send.size} elements, not {p} x {count}", recv.dtype)
        _check(name, not np.may_share_memory(send, recv), "sendbuf and recvbuf overlap; pass MPI.IN_PLACE", recv.dtype)
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
    recv = _array(recvbuf, "recvbuf", name, writable=True)
    send = recv if sendbuf is MPI.IN_PLACE else _array(sendbuf, "sendbuf", name, writable=False)
    if recv is None or send is None:
        return NotImplemented
    counts = [int(c) for c in recvcounts]
    _check(name, len(counts) == p and min(counts) >= 0, f"recvcounts {counts} are not {p} counts >= 0", recv.dtype)
    total, mine = sum(counts), counts[comm.Get_rank()]
    if sendbuf is MPI.IN_PLACE:
        _check(name, recv.size >= total, f"in place, recvbuf has {recv.size} elements, not {total}", recv.dtype)
        send = recv[:total].copy()
    else:
        _check(name, send.dtype == recv.dtype, f"sendbuf holds {send.dtype} but recvbuf", recv.dtype)
        _check(name, send.size >= total, f"sendbuf has {send.size} elements, recvcounts sum to {total}", recv.dtype)
        _check(name, recv.size >= mine, f"recvbuf has {recv.size} elements, not {mine}", recv.dtype)
        _check(name, not np.may_share_memory(send, recv), "sendbuf and recvbuf overlap; pass MPI.IN_PLACE", recv.dtype)
        send = send[:total]
    return _run_reduce(comm, name, send, recv, counts, op, algorithm or settings.reduce_scatter, levels, segments)


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
    lays = _layouts(h, [c * size for c in counts], segments)
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
    if _small(recvbuf, algorithm, settings.allgather) and levels is None:
        return NotImplemented
    name, p, rank = "Allgather", comm.Get_size(), comm.Get_rank()
    recv = _array(recvbuf, "recvbuf", name, writable=True)
    if recv is None:
        return NotImplemented
    if sendbuf is MPI.IN_PLACE:
        _check(name, recv.size % p == 0, f"recvbuf's {recv.size} elements do not split into {p} blocks", recv.dtype)
        count = recv.size // p
        send = recv[rank * count : (rank + 1) * count].copy()
    else:
        send = _array(sendbuf, "sendbuf", name, writable=False)
        if send is None:
            return NotImplemented
        count = send.size
        _check(name, send.dtype == recv.dtype, f"sendbuf holds {send.dtype} but recvbuf", recv.dtype)
        _check(name, recv.size == p * count, f"recvbuf has {recv.size} elements, not {p} x {count}", recv.dtype)
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
    name, p, rank = "Allgatherv", comm.Get_size(), comm.Get_rank()
    spec = _vector_spec(recvbuf)
    if spec is None:
        return NotImplemented
    arr, counts, displs = spec
    recv = _array(arr, "recvbuf", name, writable=True)
    if recv is None:
        return NotImplemented
    if displs is None:
        displs = [int(x) for x in np.cumsum([0, *counts[:-1]])] if counts else []
    _check(
        name,
        len(counts) == p == len(displs),
        f"{len(counts)} counts and {len(displs)} displs for {p} ranks",
        recv.dtype,
    )
    _check(name, min(counts) >= 0 and min(displs) >= 0, f"negative counts {counts} or displs {displs}", recv.dtype)
    end = max(d + c for d, c in zip(displs, counts))
    _check(name, recv.size >= end, f"recvbuf has {recv.size} elements, counts and displs need {end}", recv.dtype)
    if sendbuf is MPI.IN_PLACE:
        send = recv[displs[rank] : displs[rank] + counts[rank]].copy()
    else:
        send = _array(sendbuf, "sendbuf", name, writable=False)
        if send is None:
            return NotImplemented
        _check(name, send.dtype == recv.dtype, f"sendbuf holds {send.dtype} but recvbuf", recv.dtype)
        _check(
            name,
            send.size == counts[rank],
            f"sendbuf has {send.size} elements, counts[{rank}] is {counts[rank]}",
            recv.dtype,
        )
    return _run_gather(comm, send, recv, counts, displs, algorithm or settings.allgather, levels, segments)


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
