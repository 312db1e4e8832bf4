"""Two-level allreduce: inside each node with MPI's shared-memory collectives, between nodes flat.

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
runs one of the flat algorithms (``inner``). Every step has a fixed reduction
order (MPI's reduce and reduce-scatter follow fixed trees for commutative
operations; the flat algorithms are documented in their module), and each
element is finally reduced on one rank and copied, so all ranks agree bitwise.
"""

from __future__ import annotations

from typing import Any

from mpi4py import MPI

from .allreduce_flat import FLAT
from .reduction import Reducer
from .topology import Topology

__all__ = ["node_root", "shard_bounds", "shard_parallel"]


def _inner(inner: str, comm: MPI.Intracomm, buf: Any, reduce: Reducer, datatype: MPI.Datatype, op: MPI.Op) -> None:
    if comm.Get_size() > 1 and buf.size:
        FLAT[inner](comm, buf, reduce, datatype, op)


def node_root(
    topo: Topology,
    send: Any | None,
    buf: Any,
    reduce: Reducer,
    datatype: MPI.Datatype,
    op: MPI.Op,
    inner: str = "native",
) -> None:
    """Reduce to each node's local rank 0, allreduce among them (``inner``), broadcast in each node."""
    node = topo.node_comm
    if node.Get_size() == 1:
        if send is not None:
            buf[...] = send
    elif node.Get_rank() == 0:
        source = MPI.IN_PLACE if send is None else [send, datatype]
        MPI.Comm.Reduce(node, source, [buf, datatype], op, root=0)
    else:
        MPI.Comm.Reduce(node, [buf if send is None else send, datatype], None, op, root=0)
    if topo.leader_comm is not None:
        _inner(inner, topo.leader_comm, buf, reduce, datatype, op)
    if node.Get_size() > 1:
        MPI.Comm.Bcast(node, [buf, datatype], root=0)


def shard_bounds(n: int, shards: int) -> list[int]:
    """Element offsets of ``shards`` near-equal shards of ``n`` elements (``shards + 1`` values)."""
    return [k * n // shards for k in range(shards + 1)]


def shard_parallel(
    topo: Topology,
    send: Any | None,
    buf: Any,
    reduce: Reducer,
    datatype: MPI.Datatype,
    op: MPI.Op,
    inner: str = "native",
) -> None:
    """Reduce-scatter in the node, allreduce every shard across nodes at once (``inner``), allgather in the node."""
    node = topo.node_comm
    q, local = node.Get_size(), node.Get_rank()
    shards = min(topo.ppn)
    bounds = shard_bounds(buf.size, shards)
    counts = [bounds[k + 1] - bounds[k] for k in range(shards)] + [0] * (q - shards)
    displs = bounds[:shards] + [bounds[shards]] * (q - shards)
    if q == 1:
        if send is not None:
            buf[...] = send
    else:
        source = buf.copy() if send is None else send
        mine = buf[displs[local] : displs[local] + counts[local]]
        MPI.Comm.Reduce_scatter(node, [source, datatype], [mine, datatype], counts, op)
    if topo.shard_comm is not None:
        _inner(inner, topo.shard_comm, buf[bounds[local] : bounds[local + 1]], reduce, datatype, op)
    if q > 1:
        MPI.Comm.Allgatherv(node, MPI.IN_PLACE, [buf, (counts, displs), datatype])
