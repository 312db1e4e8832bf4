"""Two-level allreduce: inside each node with MPI's collectives, between nodes flat.

``node_root`` (MPICH's "smp" scheme): reduce to local rank 0, the node
leaders allreduce, local rank 0 broadcasts in its node. Fewest messages on
the network: good for small and medium sizes.

``shard_parallel`` (Horovod's): reduce-scatter inside the node, then every
local rank ``L`` allreduces shard ``L`` with local rank ``L`` of every other
node, all shards at once, then allgather inside the node. Each node's link
carries ``2 n (N-1)/N`` bytes split over ``ppn`` streams: good for large sizes.
With uneven nodes the vector is cut into ``min(ppn)`` shards; the ranks of a
larger node beyond that receive no shard and only take part inside the node.

Both take this rank's contribution from ``send`` (or from ``buf`` when
``send`` is ``None``) and leave the result in ``buf``. The step between nodes
runs one of the flat algorithms (``inner``). With ``segments > 1`` (and the
native inner step) the vector goes through the three steps in segments, as
Open MPI's HAN does: while segment ``s`` crosses the network, segment ``s+1``
is reduced and segment ``s-1`` distributed inside the nodes, with MPI's
nonblocking collectives issued in one fixed order on every rank. Every step
has a fixed reduction order (MPI's reduce and reduce-scatter follow fixed
trees for commutative operations; the flat algorithms are documented in their
module), and each element is finally reduced on one rank and copied, so all
ranks agree bitwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mpi4py import MPI

from .allreduce_flat import FLAT
from .reduction import Reducer
from .topology import Topology

__all__ = ["node_root", "shard_bounds", "shard_parallel"]

_Request = type(MPI.REQUEST_NULL)
Stage = Callable[[int], Any]  # issues one segment's step; returns a request, or None when done or not involved


def shard_bounds(n: int, shards: int) -> list[int]:
    """Element offsets of ``shards`` near-equal shards of ``n`` elements (``shards + 1`` values)."""
    return [k * n // shards for k in range(shards + 1)]


def _wait(request: Any) -> None:
    if request is not None:
        request.Wait()


def _pipeline(segments: int, first: Stage, middle: Stage, last: Stage) -> None:
    """Run ``first``, ``middle``, ``last`` on every segment, overlapping consecutive segments.

    Issue order (the same on every rank, as MPI requires of collectives on
    one communicator): first(0), first(1), last(0), first(2), last(1), ...;
    ``middle(s)`` starts when ``first(s)`` completes.
    """
    pending_first = first(0)
    pending_middle = None
    issued_last = []
    for s in range(segments):
        _wait(pending_first)
        started = middle(s)
        if s + 1 < segments:
            pending_first = first(s + 1)
        if s >= 1:
            _wait(pending_middle)
            issued_last.append(last(s - 1))
        pending_middle = started
    _wait(pending_middle)
    issued_last.append(last(segments - 1))
    _Request.Waitall([r for r in issued_last if r is not None])


def _flat_step(
    inner: str, comm: MPI.Intracomm | None, buf: Any, reduce: Reducer, datatype: MPI.Datatype, op: MPI.Op
) -> Any:
    """The step between nodes on ``buf``: a request for the native step, else run (blocking) and ``None``."""
    if comm is None or comm.Get_size() == 1 or buf.size == 0:
        return None
    if inner == "native":
        return MPI.Comm.Iallreduce(comm, MPI.IN_PLACE, [buf, datatype], op)
    FLAT[inner](comm, buf, reduce, datatype, op)
    return None


def node_root(
    topo: Topology,
    send: Any | None,
    buf: Any,
    reduce: Reducer,
    datatype: MPI.Datatype,
    op: MPI.Op,
    inner: str = "native",
    segments: int = 1,
) -> None:
    """Reduce to each node's local rank 0, allreduce among them (``inner``), broadcast in each node."""
    node = topo.node_comm
    q, local = node.Get_size(), node.Get_rank()
    segments = segments if inner == "native" else 1
    seg = shard_bounds(buf.size, segments)
    if q == 1 and send is not None:
        buf[...] = send

    def part(a: Any, s: int) -> Any:
        return a[seg[s] : seg[s + 1]]

    def reduce_in_node(s: int) -> Any:
        if q == 1:
            return None
        if local == 0:
            source = MPI.IN_PLACE if send is None else [part(send, s), datatype]
            return MPI.Comm.Ireduce(node, source, [part(buf, s), datatype], op, root=0)
        return MPI.Comm.Ireduce(node, [part(buf if send is None else send, s), datatype], None, op, root=0)

    def across(s: int) -> Any:
        return _flat_step(inner, topo.leader_comm, part(buf, s), reduce, datatype, op)

    def bcast_in_node(s: int) -> Any:
        return None if q == 1 else MPI.Comm.Ibcast(node, [part(buf, s), datatype], root=0)

    _pipeline(segments, reduce_in_node, across, bcast_in_node)


def shard_parallel(
    topo: Topology,
    send: Any | None,
    buf: Any,
    reduce: Reducer,
    datatype: MPI.Datatype,
    op: MPI.Op,
    inner: str = "native",
    segments: int = 1,
) -> None:
    """Reduce-scatter in the node, allreduce every shard across nodes at once (``inner``), allgather in the node."""
    node = topo.node_comm
    q, local = node.Get_size(), node.Get_rank()
    shards = min(topo.ppn)
    segments = segments if inner == "native" else 1
    seg = shard_bounds(buf.size, segments)
    if q == 1:
        source = None
        if send is not None:
            buf[...] = send
    else:
        source = buf.copy() if send is None else send

    def layout(s: int) -> tuple[int, list[int], list[int]]:
        """Offset of segment s, and the element counts and offsets of every local rank's shard in it."""
        bounds = shard_bounds(seg[s + 1] - seg[s], shards)
        counts = [bounds[k + 1] - bounds[k] for k in range(shards)] + [0] * (q - shards)
        displs = bounds[:shards] + [bounds[shards]] * (q - shards)
        return seg[s], counts, displs

    def mine(s: int) -> Any:
        base, counts, displs = layout(s)
        return buf[base + displs[local] : base + displs[local] + counts[local]]

    def reduce_scatter(s: int) -> Any:
        if q == 1:
            return None
        _, counts, _ = layout(s)
        whole = source[seg[s] : seg[s + 1]]
        return MPI.Comm.Ireduce_scatter(node, [whole, datatype], [mine(s), datatype], counts, op)

    def across(s: int) -> Any:
        return _flat_step(inner, topo.shard_comm, mine(s), reduce, datatype, op)

    def allgather(s: int) -> Any:
        if q == 1:
            return None
        base, counts, displs = layout(s)
        return MPI.Comm.Iallgatherv(node, MPI.IN_PLACE, [buf[base : seg[s + 1]], (counts, displs), datatype])

    _pipeline(segments, reduce_scatter, across, allgather)
