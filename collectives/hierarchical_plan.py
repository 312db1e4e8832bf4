"""What the hierarchical reduce-scatter and allgather decide before they run: levels, segments, layouts.

:func:`plan` asks the level cost model (:mod:`collectives.hierarchy_cost`) how
many levels and segments pay for an operation and size (or MPI's own call);
the helpers read the plain-array buffer specs the calls take and refuse sizes
that do not fit, naming the operation, the datatype and the sizes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mpi4py import MPI

from . import allreduce_cost as cost
from . import hierarchy_cost
from .allreduce_levels import costs_of
from .bufspec import datatype_of
from .hierarchical_blocks import Layout, piece_counts
from .hierarchy import Hierarchy, of_topology
from .settings import HIERARCHY_ALGORITHMS
from .topology import Topology, topology

__all__ = ["base_costs", "layouts", "plain_array", "plan", "require", "small"]


def base_costs(topo: Topology) -> cost.Costs:
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
        c = costs_of(h, base_costs(topo))
        if levels is not None:
            found = hierarchy_cost.best(op, nbytes, h, c, levels)
        elif algorithm == "auto":
            found = hierarchy_cost.choose(op, nbytes, h, c)
        else:
            found = hierarchy_cost.best(op, nbytes, h, c)
        h.plans[key] = found
    return found if segments is None or found[0] == 0 else (found[0], segments)


def layouts(h: Hierarchy, counts: list[int], segments: int) -> list[Layout]:
    """One layout per segment of blocks of ``counts`` (cached on ``h``)."""
    key = ("layouts", tuple(counts), segments)
    found = h.plans.get(key)
    if found is None:
        found = [Layout(h, c) for c in piece_counts(counts, segments)]
        h.plans[key] = found
    return found


def small(buf: Any, algorithm: str | None, setting: str) -> bool:
    """Whether ``auto`` keeps MPI's own for this whole-vector ``buf`` without looking further (the common case)."""
    return type(buf) is np.ndarray and buf.nbytes < cost.MIN_BYTES and (algorithm or setting) == "auto"


def plain_array(buf: Any, what: str, op: str, writable: bool) -> Any:
    """``buf`` as a 1-D view if it is a C-contiguous numpy array of a predefined type, else ``None``."""
    if type(buf) is not np.ndarray or not buf.flags.c_contiguous or datatype_of(buf.dtype) is None:
        return None
    if writable and not buf.flags.writeable:
        raise ValueError(f"{op}: {what} ({buf.dtype}, {buf.size} elements) is read-only")
    return buf.reshape(-1)


def require(op: str, cond: bool, dtype: np.dtype, text: str, *values: Any) -> None:
    """Raise ``ValueError`` naming ``op``, the sizes (``text`` formatted with ``values``) and ``dtype`` unless
    ``cond``; the message is only made when it is raised (these checks run on every call)."""
    if not cond:
        raise ValueError(f"{op}: {text.format(*values)} ({dtype} elements)")
