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

from .hierarchical_allgather import allgather, allgatherv, try_allgather, try_allgatherv
from .hierarchical_plan import plan
from .hierarchical_reduce_scatter import (
    reduce_scatter,
    reduce_scatter_block,
    try_reduce_scatter,
    try_reduce_scatter_block,
)

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
