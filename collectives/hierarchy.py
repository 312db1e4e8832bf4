"""A topology of any depth: the node, then the levels the user names (socket, rack, ...), innermost first.

The node level comes from :mod:`collectives.topology` (shared memory or
``COMMLIB_NODE_ID``). Further levels are named per rank, innermost first,
with ``COMMLIB_TOPOLOGY="socket=<id>,node=<id>,rack=<id>"`` (or the
``levels`` argument of :func:`hierarchy`): every rank names the same levels
in the same order, each with the id of its domain at that level. A level
named ``node`` replaces the detected node; without it the detected node is
the innermost level. Domains nest by construction (two ranks share a level-k
domain when their ids agree at level k and at every level above it). Levels
that group no differently from the level inside them are dropped, so every
level left splits its domains.

For the hierarchical collectives each rank has a *path*: ``index[k]`` is the
position of its level-k domain among the level-k domains of its level-(k+1)
domain (level 0 domains are single ranks; the last level's domains sit in
the world). Level ``k`` has ``shards[k]`` classes: the fewest sub-domains of
any of its domains (all of them for the world), so uneven shapes keep one
layout everywhere. The step communicator of level ``k`` joins the ranks of
one level-k domain (the world for the last) that share the path below ``k``;
ranks whose path leaves the classes below ``k`` take no part in it. Domains
and sub-domains are numbered by their lowest rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mpi4py import MPI

from datatypes.bounded import BoundedDict

from .settings import settings
from .topology import Topology, topology

__all__ = ["Hierarchy", "hierarchy", "of_topology", "parse_levels"]

LevelSpec = Sequence[tuple[str, str]]


def parse_levels(text: str) -> list[tuple[str, str]]:
    """``"socket=0,node=n3,rack=1"`` as ``[(name, id), ...]``, innermost first; ``""`` is no level."""
    out: list[tuple[str, str]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, ident = item.partition("=")
        name, ident = name.strip(), ident.strip()
        if not sep or not name.isidentifier() or not ident:
            raise ValueError(f"COMMLIB_TOPOLOGY: expected name=id items (e.g. 'node=3,rack=1'), got {item!r}")
        if name in (n for n, _ in out):
            raise ValueError(f"COMMLIB_TOPOLOGY: level {name!r} is named twice in {text!r}")
        if name == "world":
            raise ValueError("COMMLIB_TOPOLOGY: 'world' is the implicit outermost level; name the others")
        out.append((name, ident))
    return out


def _partition(keys: Sequence[Any]) -> tuple[int, ...]:
    """Domain number per rank, domains numbered by their lowest rank."""
    number: dict[Any, int] = {}
    return tuple(number.setdefault(k, len(number)) for k in keys)


@dataclass(eq=False)
class Hierarchy:
    """The levels of one communicator (innermost first, ending with ``"world"``) and their step communicators."""

    comm: MPI.Intracomm  # the topology's private duplicate
    names: tuple[str, ...]  # level names, the last is "world"
    domain_of: tuple[tuple[int, ...], ...]  # domain_of[k][r]: rank r's level-k domain (below the world)
    index: tuple[tuple[int, ...], ...]  # index[k][r]: r's position at level k (see the module docstring)
    shards: tuple[int, ...]  # classes per level
    _steps: dict[int, list[MPI.Intracomm | None]] = field(default_factory=dict)
    _views: dict[int, Hierarchy] = field(default_factory=dict)
    plans: BoundedDict[Any, Any] = field(default_factory=lambda: BoundedDict(4096))  # the collectives' decisions

    @property
    def depth(self) -> int:
        """Levels below the world (0: the ranks are one flat set)."""
        return len(self.names) - 1

    @property
    def size(self) -> int:
        return len(self.index[0])

    @property
    def rank(self) -> int:
        return self.comm.Get_rank()

    def view(self, depth: int) -> Hierarchy:
        """The hierarchy that keeps the innermost ``depth`` levels and joins everything above into the world."""
        if not 0 <= depth <= self.depth:
            raise ValueError(f"hierarchy: depth {depth} out of range 0..{self.depth}")
        if depth == self.depth:
            return self
        found = self._views.get(depth)
        if found is None:
            found = _levels(self.comm, self.names[:depth], self.domain_of[:depth])
            self._views[depth] = found
        return found

    def participates(self, level: int, rank: int | None = None) -> bool:
        """Whether ``rank`` (default: this one) takes part in the step of ``level``."""
        r = self.rank if rank is None else rank
        return all(self.index[k][r] < self.shards[k] for k in range(level))

    def steps(self) -> list[MPI.Intracomm | None]:
        """This rank's step communicator per level (``None`` where it takes no part); collective when first built."""
        found = self._steps.get(0)
        if found is None:
            found = _split_steps(self)
            self._steps[0] = found
        return found

    def free(self) -> None:
        """Free the step communicators of this hierarchy and its views (idempotent)."""
        if MPI.Is_finalized():
            return
        for comms in self._steps.values():
            for c in comms:
                if c is not None and c != MPI.COMM_NULL:
                    c.Free()
        self._steps.clear()
        for view in self._views.values():
            view.free()
        self._views.clear()


def _levels(comm: MPI.Intracomm, names: Sequence[str], keys: Sequence[Sequence[Any]]) -> Hierarchy:
    """The hierarchy of levels ``names`` whose per-rank ids are ``keys[k]`` (composite keys make them nest)."""
    p = comm.Get_size()
    domains: list[tuple[int, ...]] = []
    kept: list[str] = []
    previous = tuple(range(p))
    for k in range(len(names)):
        composite = [tuple(keys[j][r] for j in range(k, len(names))) for r in range(p)]
        part = _partition(composite)
        if len(set(part)) in (len(set(previous)), 1):
            continue  # groups no differently from the level inside it, or is the whole world
        domains.append(part)
        kept.append(names[k])
        previous = part
    index: list[tuple[int, ...]] = []
    shards: list[int] = []
    inner = tuple(range(p))
    for outer in [*domains, (0,) * p]:
        subs: dict[int, list[int]] = {}
        for r in range(p):
            members = subs.setdefault(outer[r], [])
            if inner[r] not in members:
                members.append(inner[r])
        index.append(tuple(subs[outer[r]].index(inner[r]) for r in range(p)))
        shards.append(min(len(m) for m in subs.values()))
        inner = outer
    return Hierarchy(comm, (*kept, "world"), tuple(domains), tuple(index), tuple(shards))


def _split_steps(h: Hierarchy) -> list[MPI.Intracomm | None]:
    """One ``Split`` per level: the ranks of one domain sharing the path below it, ranked by their index."""
    p, rank = h.size, h.rank
    out: list[MPI.Intracomm | None] = []
    for level in range(h.depth + 1):
        domain = h.domain_of[level] if level < h.depth else (0,) * p
        colors = _partition(
            [
                (domain[r], *(h.index[k][r] for k in range(level))) if h.participates(level, r) else None
                for r in range(p)
            ]
        )
        mine = MPI.UNDEFINED if not h.participates(level) else colors[rank]
        c = h.comm.Split(mine, h.index[level][rank])
        out.append(None if c == MPI.COMM_NULL else c)
    return out


def _gather_levels(topo: Topology, levels: LevelSpec) -> tuple[list[str], list[list[Any]]]:
    """Every rank's level names and ids; the same names on every rank or an error on every rank."""
    seen = topo.comm.allgather([(str(n), str(i)) for n, i in levels])
    names = [n for n, _ in seen[0]]
    differ = [r for r, mine in enumerate(seen) if [n for n, _ in mine] != names]
    if differ:
        raise ValueError(
            f"hierarchy: rank 0 names the levels {names} but ranks {differ} name others "
            f"(rank {differ[0]}: {[n for n, _ in seen[differ[0]]]}): set COMMLIB_TOPOLOGY alike on every rank"
        )
    ids = [[seen[r][k][1] for r in range(len(seen))] for k in range(len(names))]
    if "node" not in names:
        names.insert(0, "node")
        ids.insert(0, list(topo.node_of))
    return names, ids


def hierarchy(comm: MPI.Intracomm, *, levels: LevelSpec | str | None = None) -> Hierarchy:
    """The cached :class:`Hierarchy` of ``comm`` (collective on first use).

    ``levels`` (default: the ``topology`` setting, ``COMMLIB_TOPOLOGY``) names
    this rank's domains outside (or inside, before ``node=``) the node,
    innermost first, as ``[(name, id), ...]`` or ``"name=id,..."``. It matters
    when the hierarchy is first built for ``comm``; another value later is an error.
    """
    return of_topology(topology(comm), levels)


def of_topology(topo: Topology, levels: LevelSpec | str | None = None) -> Hierarchy:
    """The hierarchy built on ``topo``'s communicator, cached in ``topo`` (collective on first use).

    Once built, ``levels=None`` returns it whatever levels built it; other explicit levels are an error.
    """
    found = topo.agreed.get("hierarchy")
    spec = settings.topology if levels is None else levels
    parsed = tuple(parse_levels(spec) if isinstance(spec, str) else [(str(n), str(i)) for n, i in spec])
    if found is not None:
        built, given = found
        if levels is not None and parsed != given:
            raise ValueError(f"hierarchy: levels {list(parsed)} differ from those it was built with, {list(given)}")
        return built
    names, ids = _gather_levels(topo, parsed)
    built = _levels(topo.comm, names, ids)
    topo.agreed["hierarchy"] = (built, parsed)
    topo.extras.append(built)
    return built
