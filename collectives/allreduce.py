"""``allreduce``: MPI_Allreduce by a chosen algorithm, the same bits on every rank.

``allreduce(comm, sendbuf, recvbuf, op=MPI.SUM, algorithm="auto")`` takes the
buffer specs mpi4py's ``Comm.Allreduce`` takes (an array, ``[buf, datatype]``,
``[buf, count, datatype]``, ``[buf, (count, displ), datatype]``, ``MPI.IN_PLACE``
as ``sendbuf``) and reduces every element in an order fixed by the algorithm
and the communicator's shape, never by message arrival, so every rank holds
bitwise the same result, run after run. Algorithms (:data:`ALGORITHMS`):

``native``
    MPI's own ``MPI_Allreduce``.
``ring``
    ring reduce-scatter + allgather, ranks ordered node by node.
``star``
    rank 0 gathers in arrival order, reduces in rank order, sends back: two
    rounds, for small, latency-bound messages.
``hierarchical``
    by nodes (see :mod:`collectives.topology`): ``hierarchical-root`` (reduce to
    a node leader, leaders allreduce, broadcast in the node) or
    ``hierarchical-shard`` (reduce-scatter in the node, every local rank
    allreduces its shard across nodes at once, allgather in the node),
    whichever the cost model predicts faster; the step between nodes runs the
    flat algorithm the model picks.
``auto``
    the cost model's pick for this size and shape (:mod:`collectives.allreduce_cost`),
    ``native`` unless another algorithm is predicted clearly faster.

``model`` (optional, the same on every rank) is any object with
``alpha_beta(level) -> (alpha, beta)`` for ``"intra"`` and ``"inter"``;
without it the documented defaults of :mod:`collectives.allreduce_cost` apply.
Rank 0's figures are used everywhere, so all ranks choose alike.

What commlib does not handle - intercommunicators, user-defined operations,
``MAXLOC``/``MINLOC``, datatypes other than a predefined reducible type or a
contiguous run of one - :func:`allreduce` passes to MPI untouched, and
:func:`try_allreduce` reports as ``NotImplemented`` (see :func:`handles`). Every
rank must pass the same kind of spec (all handled or none), as MPI requires
matching type signatures. Device (cupy) arrays go to MPI as they are when
``commlib.config.cuda_aware_mpi`` is set, else through host copies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from mpi4py import MPI

from . import allreduce_cost as cost
from .allreduce_flat import FLAT
from .allreduce_hierarchical import node_root, shard_parallel
from .bufspec import TypedBuffer, typed_buffer
from .reduction import Reducer, array_module, reducer
from .topology import Topology, topology

__all__ = ["ALGORITHMS", "allreduce", "handles", "plan", "try_allreduce"]

ALGORITHMS = ("auto", "native", "ring", "star", "hierarchical", "hierarchical-root", "hierarchical-shard")
_HIERARCHICAL = {"hierarchical-root": node_root, "hierarchical-shard": shard_parallel}
_PLAN_CACHE_LIMIT = 4096


@dataclass(frozen=True)
class _Call:
    """One allreduce, validated: ``send`` is ``None`` for ``MPI.IN_PLACE``."""

    send: Any | None
    recv: Any
    datatype: MPI.Datatype
    op: MPI.Op
    reduce: Reducer


def _check_algorithm(algorithm: str) -> str:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"allreduce: unknown algorithm {algorithm!r} (choose from {', '.join(ALGORITHMS)})")
    return algorithm


def _prepare(comm: Any, sendbuf: Any, recvbuf: Any, op: Any) -> _Call | None:
    """The validated call, or ``None`` for what goes to MPI untouched; bad specs raise here."""
    if not isinstance(comm, MPI.Intracomm) or comm == MPI.COMM_NULL:
        return None
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
    return _Call(None if send is None else send.array, recv.array, recv.datatype, op, red)


def handles(comm: Any, sendbuf: Any, recvbuf: Any, op: Any = MPI.SUM) -> bool:
    """Whether commlib runs this allreduce itself (else it belongs to MPI untouched); raises on bad specs."""
    return _prepare(comm, sendbuf, recvbuf, op) is not None


def _costs(topo: Topology, model: Any) -> tuple[Any, cost.Costs]:
    if model is None:
        return None, topo.agree(("costs", None), cost.default_costs())
    key = ("costs", id(model))
    topo.agreed.setdefault(("model", id(model)), model)  # keeps the id from being reused while the key lives
    return key, topo.agree(key, cost.costs_from_model(model))


def plan(comm: MPI.Intracomm, nbytes: int, algorithm: str = "auto", *, model: Any = None) -> tuple[str, str]:
    """What ``algorithm`` runs for ``nbytes`` bytes on ``comm``: ``(algorithm, inner)``.

    ``inner`` is the flat algorithm between nodes of a hierarchical variant
    (else equal to the algorithm). Collective the first time per
    communicator (it may build the topology and agree on the cost figures).
    """
    _check_algorithm(algorithm)
    if algorithm in ("native", "ring", "star"):
        return algorithm, algorithm
    topo = topology(comm)
    model_key, costs = _costs(topo, model)
    decisions = topo.agreed.setdefault("allreduce plans", {})
    key = (model_key, algorithm, nbytes)
    found = decisions.get(key)
    if found is not None:
        return found
    shape = cost.Shape(topo.node_of)
    chosen = algorithm
    if chosen == "auto":
        chosen = cost.choose(nbytes, shape, costs)
    if chosen == "hierarchical":
        chosen = cost.hierarchical_variant(nbytes, shape, costs)
    inner = chosen
    if chosen in _HIERARCHICAL:
        shards = min(topo.ppn) if chosen == "hierarchical-shard" else 1
        per_rank = nbytes // shards
        inner = cost.inner_algorithm(per_rank, topo.n_nodes, costs, shards) if topo.n_nodes > 1 else "native"
    if len(decisions) >= _PLAN_CACHE_LIMIT:
        decisions.clear()
    decisions[key] = (chosen, inner)
    return chosen, inner


def _run(comm: MPI.Intracomm, call: _Call, algorithm: str, model: Any) -> None:
    send, buf = call.send, call.recv
    if comm.Get_size() == 1 or buf.size == 0:
        if send is not None and buf.size:
            buf[...] = send
        return
    if algorithm == "native":
        source = MPI.IN_PLACE if send is None else [send, call.datatype]
        MPI.Comm.Allreduce(comm, source, [buf, call.datatype], call.op)
        return
    chosen, inner = plan(comm, int(buf.nbytes), algorithm, model=model)
    if chosen == "native":
        _run(comm, call, "native", model)
        return
    topo = topology(comm)
    if chosen in _HIERARCHICAL:
        _HIERARCHICAL[chosen](topo, send, buf, call.reduce, call.datatype, call.op, inner)
        return
    if send is not None:
        buf[...] = send
    if chosen == "ring":
        FLAT["ring"](topo.comm, buf, call.reduce, call.datatype, call.op, topo.ring_order)
    else:
        FLAT[chosen](topo.comm, buf, call.reduce, call.datatype, call.op)


def _staged(call: _Call) -> tuple[_Call, Any]:
    """The call on host copies of device arrays (for an MPI that cannot take device memory)."""
    xp = array_module(call.recv)
    host_recv = xp.asnumpy(call.recv)
    host_send = None if call.send is None else xp.asnumpy(call.send)
    return _Call(host_send, host_recv, call.datatype, call.op, call.reduce), host_recv


def try_allreduce(
    comm: Any,
    sendbuf: Any,
    recvbuf: Any,
    op: MPI.Op = MPI.SUM,
    algorithm: str | None = None,
    *,
    model: Any = None,
) -> Any:
    """Run the allreduce and return ``None``, or return ``NotImplemented`` without touching anything.

    ``NotImplemented`` means "give this call to MPI untouched" (see the module
    docstring). ``algorithm`` defaults to ``commlib.config.allreduce``.
    """
    if algorithm is None:
        from commlib.config import config

        algorithm = config.allreduce
    _check_algorithm(algorithm)
    call = _prepare(comm, sendbuf, recvbuf, op)
    if call is None:
        return NotImplemented
    if array_module(call.recv) is not np:
        from commlib.config import config

        if not config.cuda_aware_mpi:
            host_call, host_out = _staged(call)
            _run(comm, host_call, algorithm, model)
            call.recv.set(host_out)
            return None
    _run(comm, call, algorithm, model)
    return None


def allreduce(
    comm: MPI.Intracomm,
    sendbuf: Any,
    recvbuf: Any,
    op: MPI.Op = MPI.SUM,
    algorithm: str = "auto",
    *,
    model: Any = None,
) -> None:
    """``MPI_Allreduce`` of ``sendbuf`` (or ``MPI.IN_PLACE``) into ``recvbuf`` with ``algorithm``.

    Calls commlib does not handle go to MPI's own ``Allreduce`` unchanged.
    """
    if try_allreduce(comm, sendbuf, recvbuf, op, algorithm, model=model) is NotImplemented:
        MPI.Comm.Allreduce(comm, sendbuf, recvbuf, op)
