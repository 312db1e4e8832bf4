"""Which ranks of a communicator share a node, and the communicators the hierarchical collectives use.

:func:`topology` returns the :class:`Topology` of an intra-communicator,
built collectively on first use and cached on the communicator as an MPI
attribute: when the communicator is freed, the attribute's delete callback
frees the communicators the topology holds. :func:`release` drops it
earlier.

How nodes are found (``commlib.config.node_detect``, ``COMMLIB_NODE_DETECT``):

``shared``
    ``Split_type(COMM_TYPE_SHARED)``: the ranks MPI can share memory with.
``name``
    ``MPI.Get_processor_name()``: the ranks on hosts of the same name.
``env``
    ``COMMLIB_NODE_ID`` (a name per rank: a host, a scheduler's node, a number): for launches where shared
    memory does not mark the node, such as emulated nodes in network
    namespaces, or MPI forced onto its network module (``MPIR_CVAR_NOLOCAL``).
``auto`` (default)
    ``env`` when every rank has ``COMMLIB_NODE_ID``, else ``shared``. Some
    ranks with and some without it is an error, raised on every rank.

Every rank learns every rank's node, so all ranks agree on the shape and on
every decision derived from it. Nodes are numbered in the order of their
lowest rank; local ranks follow the rank order within a node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mpi4py import MPI

from datatypes.bounded import BoundedDict
from transport.settings import settings as transport_settings

from .settings import settings

__all__ = ["Topology", "cached_topology", "release", "topology"]


@dataclass(eq=False)
class Topology:
    """The node structure of one communicator and the communicators built on it.

    All communicators here are plain ``mpi4py`` objects private to commlib,
    so commlib's traffic never matches the application's messages and never
    goes through the interposer.
    """

    comm: MPI.Intracomm  # duplicate of the parent
    method: str  # "shared", "name" or "env"
    node_of: tuple[int, ...]  # node number of every rank
    node_comm: MPI.Intracomm  # the ranks of this rank's node, in rank order
    leader_comm: MPI.Intracomm | None  # local rank 0 of every node (None elsewhere)
    shard_comm: MPI.Intracomm | None  # local rank L of every node, for L < min_ppn (None elsewhere)
    agreed: dict[Any, Any] = field(default_factory=dict)  # values every rank took from rank 0, by key
    # decisions of the collectives, by their own keys
    plans: BoundedDict[Any, Any] = field(default_factory=lambda: BoundedDict(4096))
    extras: list[Any] = field(default_factory=list)  # objects with free() built on ``comm``, freed first

    def __post_init__(self) -> None:
        self._n_nodes = max(self.node_of) + 1
        members: list[list[int]] = [[] for _ in range(self._n_nodes)]
        for r, node in enumerate(self.node_of):
            members[node].append(r)
        self._nodes = tuple(tuple(m) for m in members)

    @property
    def rank(self) -> int:
        return self.comm.Get_rank()

    @property
    def size(self) -> int:
        return len(self.node_of)

    @property
    def nodes(self) -> tuple[tuple[int, ...], ...]:
        """The ranks of every node."""
        return self._nodes

    @property
    def n_nodes(self) -> int:
        return self._n_nodes

    @property
    def node(self) -> int:
        return self.node_of[self.rank]

    @property
    def local_rank(self) -> int:
        return self.node_comm.Get_rank()

    @property
    def ppn(self) -> tuple[int, ...]:
        """Ranks per node, by node."""
        return tuple(len(m) for m in self.nodes)

    @property
    def uneven(self) -> bool:
        return len(set(self.ppn)) > 1

    @property
    def ring_order(self) -> tuple[int, ...]:
        """All ranks, node by node: a ring in this order crosses each node boundary once."""
        return tuple(r for members in self.nodes for r in members)

    def agree(self, key: Any, local: Any) -> Any:
        """Rank 0's ``local`` for ``key``, the same on every rank; collective the first time a key is seen."""
        if key not in self.agreed:
            self.agreed[key] = self.comm.bcast(local, root=0)
        return self.agreed[key]

    def free(self) -> None:
        """Free the communicators this topology holds (idempotent; a no-op once MPI is finalized)."""
        if MPI.Is_finalized():
            return
        for extra in self.extras:
            extra.free()
        self.extras.clear()
        for name in ("shard_comm", "leader_comm", "node_comm", "comm"):
            c = getattr(self, name)
            if c is not None and c != MPI.COMM_NULL:
                c.Free()
            setattr(self, name, None)


def _node_key(node_id: str | int | None) -> str | None:
    """A node id as given (``COMMLIB_NODE_ID`` or the ``node_id`` argument); ``None``: unset ("" or negative)."""
    if node_id is None or (isinstance(node_id, int) and node_id < 0):
        return None
    return str(node_id) or None


def _node_colors(comm: MPI.Intracomm, method: str, node_id: str | int | None) -> tuple[str, list]:
    """The detection method used and a node key per rank (equal keys = same node)."""
    info = comm.allgather((_node_key(node_id), MPI.Get_processor_name()))
    env_ids = [i for i, _ in info]
    with_id = [r for r, i in enumerate(env_ids) if i is not None]
    if method == "auto":
        if len(with_id) == len(info):
            method = "env"
        elif with_id:
            raise ValueError(
                f"node detection: COMMLIB_NODE_ID is set on ranks {with_id} but not on the other "
                f"{len(info) - len(with_id)} of {len(info)}: set it on every rank or on none"
            )
        else:
            method = "shared"
    if method == "env":
        if len(with_id) != len(info):
            missing = [r for r, i in enumerate(env_ids) if i is None]
            raise ValueError(f"node detection 'env': COMMLIB_NODE_ID is not set on ranks {missing}")
        return method, env_ids
    if method == "name":
        names = {name: k for k, name in enumerate(dict.fromkeys(name for _, name in info))}
        return method, [names[name] for _, name in info]
    if method == "shared":
        shm = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
        try:
            leader = shm.bcast(comm.Get_rank(), root=0)
        finally:
            shm.Free()
        return method, comm.allgather(leader)
    raise ValueError(f"node detection: unknown method {method!r} (choose auto, shared, name or env)")


def _build(parent: MPI.Intracomm, method: str, node_id: str | int | None) -> Topology:
    # mpi4py's Dup returns the parent's class (possibly commlib's wrapper): keep a plain object on the handle
    comm = MPI.Intracomm(MPI.Intracomm.Dup(parent))
    method, keys = _node_colors(comm, method, node_id)
    number = {k: n for n, k in enumerate(dict.fromkeys(keys))}
    node_of = tuple(number[k] for k in keys)
    rank = comm.Get_rank()
    node_comm = comm.Split(node_of[rank], rank)
    local = node_comm.Get_rank()
    min_ppn = min(node_of.count(n) for n in range(len(number)))
    leader_comm = comm.Split(0 if local == 0 else MPI.UNDEFINED, rank)
    shard_comm = comm.Split(local if local < min_ppn else MPI.UNDEFINED, node_of[rank])
    none = MPI.COMM_NULL
    return Topology(
        comm,
        method,
        node_of,
        node_comm,
        None if leader_comm == none else leader_comm,
        None if shard_comm == none else shard_comm,
    )


_keyval: int | None = None
_by_handle: dict[int, Topology] = {}  # the attribute's value by communicator handle: a cheaper lookup


def _delete(comm: MPI.Comm, keyval: int, topo: Topology) -> None:
    _by_handle.pop(comm.handle, None)
    topo.free()


def cached_topology(comm: Any) -> Topology | None:
    """``comm``'s topology if it was built already, else ``None`` (never communicates)."""
    try:
        return _by_handle.get(comm.handle)
    except AttributeError:
        return None


def topology(comm: MPI.Intracomm, *, method: str | None = None, node_id: str | int | None = None) -> Topology:
    """The cached :class:`Topology` of ``comm`` (collective on first use).

    ``method`` and ``node_id`` default to the ``node_detect`` setting (:mod:`collectives.settings`)
    and the ``node_id`` one (:mod:`transport.settings`); they only matter when the topology is built.
    """
    global _keyval
    topo = cached_topology(comm)
    if topo is not None:
        return topo
    if not isinstance(comm, MPI.Intracomm) or comm == MPI.COMM_NULL:
        raise TypeError(f"topology: expected an intra-communicator, got {type(comm).__name__}")
    if _keyval is None:
        _keyval = MPI.Comm.Create_keyval(delete_fn=_delete)
    topo = _build(
        comm,
        settings.node_detect if method is None else method,
        transport_settings.node_id if node_id is None else node_id,
    )
    comm.Set_attr(_keyval, topo)
    _by_handle[comm.handle] = topo
    return topo


def release(comm: MPI.Intracomm) -> None:
    """Drop ``comm``'s cached topology and free its communicators (collective, like ``Comm.Free``)."""
    if cached_topology(comm) is not None:
        comm.Delete_attr(_keyval)
