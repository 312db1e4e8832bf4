"""Allreduce algorithms that see a communicator as a flat set of ranks: native, ring and star.

Each works in place on ``buf`` (a 1-D array holding this rank's
contribution, overwritten with the result) over a plain, private
intra-communicator, combining with a :class:`~collectives.reduction.Reducer`.
Every element of the result is reduced in one fixed order that does not
depend on timing, once, on one rank, and then copied to the others, so all
ranks hold the same bits, run after run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mpi4py import MPI

from . import allreduce_algorithms as algorithms
from .reduction import Reducer, array_module

__all__ = ["FLAT", "native", "ring", "star", "star_rounds"]

_Request = type(MPI.REQUEST_NULL)  # mpi4py's own class, even where an interposer rebinds MPI.Request
_TAG_UP, _TAG_DOWN, _TAG_RING = 11, 12, 13


def _bytes(a: Any) -> list:
    return [a, MPI.BYTE]


def native(comm: MPI.Intracomm, buf: Any, reduce: Reducer, datatype: MPI.Datatype, op: MPI.Op) -> None:
    """MPI's own ``Allreduce``, in place (deterministic in MPICH: its trees do not depend on arrival order)."""
    MPI.Comm.Allreduce(comm, MPI.IN_PLACE, [buf, datatype], op)


def ring(
    comm: MPI.Intracomm,
    buf: Any,
    reduce: Reducer,
    datatype: MPI.Datatype,
    op: MPI.Op,
    order: Sequence[int] | None = None,
) -> None:
    """Ring reduce-scatter then ring allgather, ``2(p-1)`` steps of ``n/p`` elements.

    ``order`` lists the ranks around the ring (default: rank order); ordered
    node by node, the ring crosses each node boundary once. Chunk ``c`` is
    reduced along the ring starting at position ``c``, a fixed order.
    """
    p = comm.Get_size()
    if p == 1:
        return
    order = list(range(p)) if order is None else list(order)
    pos = order.index(comm.Get_rank())
    right, left = order[(pos + 1) % p], order[(pos - 1) % p]
    n = buf.size
    bounds = [k * n // p for k in range(p + 1)]
    tmp = array_module(buf).empty(bounds[1] - bounds[0] + (1 if n % p else 0), dtype=buf.dtype)

    def chunk(c: int) -> Any:
        return buf[bounds[c] : bounds[c + 1]]

    for k in range(p - 1):
        out, into = chunk((pos - k) % p), chunk((pos - k - 1) % p)
        landing = tmp[: into.size]
        comm.Sendrecv(_bytes(out), right, _TAG_RING, _bytes(landing), left, _TAG_RING)
        reduce(into, landing)
    for k in range(p - 1):  # position pos now owns chunk pos+1
        comm.Sendrecv(_bytes(chunk((pos + 1 - k) % p)), right, _TAG_RING, _bytes(chunk((pos - k) % p)), left, _TAG_RING)


def star(comm: MPI.Intracomm, buf: Any, reduce: Reducer, datatype: MPI.Datatype, op: MPI.Op) -> None:
    """Rank 0 receives every contribution in arrival order, reduces in rank order, sends the result back.

    Two message rounds whatever the size of the communicator. Contributions
    land in one buffer per source as they arrive; the root folds the longest
    prefix ``x0 op x1 op ...`` that has arrived, so a late rank 1 delays the
    folding but never changes its order.
    """
    p = comm.Get_size()
    if p == 1:
        return
    if comm.Get_rank() != 0:
        comm.Send(_bytes(buf), 0, _TAG_UP)
        comm.Recv(_bytes(buf), 0, _TAG_DOWN)
        return
    slots = array_module(buf).empty((p - 1, buf.size), dtype=buf.dtype)
    requests = [comm.Irecv(_bytes(slots[i - 1]), i, _TAG_UP) for i in range(1, p)]
    arrived = [False] * p
    folded = 1
    while folded < p:
        arrived[_Request.Waitany(requests) + 1] = True
        while folded < p and arrived[folded]:
            reduce(buf, slots[folded - 1])
            folded += 1
    _Request.Waitall([comm.Isend(_bytes(buf), i, _TAG_DOWN) for i in range(1, p)])


def star_rounds(p: int) -> int:
    """Message rounds of :func:`star` on ``p`` ranks (for reports): one in, one out."""
    return 0 if p == 1 else 2


FLAT = dict(zip(algorithms.FLAT, (native, ring, star)))
