"""``hierarchical-levels``: the allreduce over every level of :mod:`collectives.hierarchy`, as allreduce runs it.

:func:`run` has the runners' signature (:mod:`collectives.allreduce_hierarchical`);
``segments`` and the number of levels come from :func:`plan`, which
:func:`collectives.allreduce.plan` consults whenever the communicator has more
levels than the node (``COMMLIB_TOPOLOGY``): the level cost model
(:mod:`collectives.hierarchy_cost`) then decides ``auto`` and
``hierarchical`` among MPI's own and every depth.
"""

from __future__ import annotations

from typing import Any

from mpi4py import MPI

from . import allreduce_cost as cost
from . import hierarchy_cost
from .hierarchical_allreduce import allreduce_levels
from .hierarchy import Hierarchy, of_topology
from .reduction import Reducer
from .settings import settings
from .topology import Topology

__all__ = ["NAME", "costs_of", "plan", "run"]

NAME = "hierarchical-levels"


def costs_of(h: Hierarchy, base: cost.Costs) -> hierarchy_cost.LevelCosts:
    """The level figures for ``h`` from ``base`` and ``COMMLIB_LEVEL_LINKS`` (cached on ``h``)."""
    key = ("costs", base, settings.level_links)
    found = h.plans.get(key)
    if found is None:
        found = hierarchy_cost.level_costs(h, base, hierarchy_cost.parse_links(settings.level_links))
        h.plans[key] = found
    return found


def _depth_and_segments(h: Hierarchy, base: cost.Costs, nbytes: int, forced: bool) -> tuple[int, int]:
    """Depth and segments for ``nbytes``: the model's pick, or with ``forced`` the best hierarchical one."""
    key = ("allreduce", nbytes, forced, base)
    found = h.plans.get(key)
    if found is None:
        c = costs_of(h, base)
        found = (
            hierarchy_cost.best("allreduce", nbytes, h, c)
            if forced
            else hierarchy_cost.choose("allreduce", nbytes, h, c)
        )
        h.plans[key] = found
    return found


def plan(topo: Topology, algorithm: str, nbytes: int, base: cost.Costs) -> tuple[str, str, int] | None:
    """The decision for ``algorithm`` when ``topo``'s communicator has levels above the node, else ``None``."""
    if algorithm not in ("auto", "hierarchical", NAME):
        return None
    h = of_topology(topo)
    if algorithm != NAME and h.depth < 2:
        return None
    depth, segments = _depth_and_segments(h, base, nbytes, forced=algorithm != "auto")
    if depth == 0:
        return "native", "native", 1
    h.plans[("depth", nbytes)] = depth  # what run() takes for this size (auto's pick is also the best one)
    return NAME, "native", segments


def run(
    topo: Topology,
    send: Any | None,
    buf: Any,
    reduce: Reducer,
    datatype: MPI.Datatype,
    op: MPI.Op,
    inner: str = "native",
    segments: int = 1,
) -> None:
    """The allreduce over the depth the model picks for ``buf``'s size, in ``segments`` segments."""
    h = of_topology(topo)
    depth = h.plans.get(("depth", int(buf.nbytes)), h.depth)
    allreduce_levels(h.view(depth), send, buf, datatype, op, segments)
