"""The settings of the collectives package: allreduce algorithm, reduction check, device buffers, nodes, MoE.

Each read from its own ``COMMLIB_*`` variable once at import (``settings.reload()`` re-reads them);
:mod:`commlib.config` shows them beside every other package's. The parsing and the base class are
:mod:`datatypes.settings`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

from datatypes.settings import Settings, env_bool, env_choice, env_text

from .allreduce_algorithms import ALGORITHMS

__all__ = [
    "ALLREDUCE_ALGORITHMS",
    "HIERARCHY_ALGORITHMS",
    "MOE_PACKS",
    "NODE_DETECT",
    "CollectivesSettings",
    "settings",
]

ALLREDUCE_ALGORITHMS = ALGORITHMS
MOE_PACKS = ("gather", "mpi")
NODE_DETECT = ("auto", "shared", "name", "env")
HIERARCHY_ALGORITHMS = ("auto", "native", "hierarchical")


@dataclass
class CollectivesSettings(Settings):
    """Settings of commlib's collectives (environment variable and default in brackets).

    cuda_aware_mpi [COMMLIB_CUDA_AWARE_MPI=0]
        MPI accepts device (cupy) buffers; when 0, collectives that take device
        arrays stage them through host memory around each exchange.
    moe_pack [COMMLIB_MOE_PACK=gather]
        how the expert all-to-all hands rows to MPI: ``gather`` copies them into
        contiguous blocks with numpy (MPI moves large contiguous messages),
        ``mpi`` lets MPI datatypes pick rows from the input and drop returned
        rows at their (token, slot) positions (no numpy copies).
    node_detect [COMMLIB_NODE_DETECT=auto]
        how collectives find the ranks of one node: ``shared`` by
        ``Split_type(COMM_TYPE_SHARED)``, ``name`` by ``MPI.Get_processor_name()``,
        ``env`` by ``COMMLIB_NODE_ID`` (:mod:`transport.settings`); ``auto`` uses
        ``COMMLIB_NODE_ID`` when every rank has it, else shared memory.
    allreduce [COMMLIB_ALLREDUCE=auto]
        algorithm of the interposed ``Allreduce``: ``auto`` (cost model),
        ``native``, ``ring``, ``star``, ``hierarchical`` (its two variants by
        cost), ``hierarchical-root`` or ``hierarchical-shard``.
    reduction_check [COMMLIB_REDUCTION_CHECK=1]
        at the first allreduce on a communicator, check MPI's reduction of
        every (operation, datatype) pair commlib reduces against exact
        arithmetic (:mod:`collectives.reduction_check`) and run the pairs MPI
        gets wrong with commlib's ring or star; 0 trusts MPI. Set it alike on
        every rank.
    topology [COMMLIB_TOPOLOGY=""]
        this rank's domains at the levels around (or inside) its node, innermost
        first, e.g. ``socket=0,node=n3,rack=r1`` (:mod:`collectives.hierarchy`):
        the hierarchical collectives reduce-scatter down these levels and
        allgather back up. Every rank names the same levels.
    level_links [COMMLIB_LEVEL_LINKS=""]
        the cost model's link figures per level, ``name=alpha/beta`` (seconds per
        message / per byte) or ``name=alpha/RATE`` (``30e-6/200mbit``), e.g.
        ``rack=30e-6/1gbit,world=30e-6/200mbit``: the link between the
        sub-domains of one domain of that level (``world``: between the
        outermost domains); levels not named take the node-to-node figure.
    reduce_scatter [COMMLIB_REDUCE_SCATTER=auto]
        algorithm of the interposed ``Reduce_scatter`` and ``Reduce_scatter_block``:
        ``auto`` (cost model), ``native`` or ``hierarchical`` (every level).
    allgather [COMMLIB_ALLGATHER=auto]
        algorithm of the interposed ``Allgather`` and ``Allgatherv`` (as above).
    """

    cuda_aware_mpi: bool = False
    moe_pack: str = "gather"
    node_detect: str = "auto"
    allreduce: str = "auto"
    reduction_check: bool = True
    topology: str = ""
    level_links: str = ""
    reduce_scatter: str = "auto"
    allgather: str = "auto"

    @classmethod
    def from_env(cls) -> CollectivesSettings:
        return cls(
            cuda_aware_mpi=env_bool("COMMLIB_CUDA_AWARE_MPI", cls.cuda_aware_mpi),
            moe_pack=env_choice("COMMLIB_MOE_PACK", cls.moe_pack, MOE_PACKS),
            node_detect=env_choice("COMMLIB_NODE_DETECT", cls.node_detect, NODE_DETECT),
            allreduce=env_choice("COMMLIB_ALLREDUCE", cls.allreduce, ALLREDUCE_ALGORITHMS),
            reduction_check=env_bool("COMMLIB_REDUCTION_CHECK", cls.reduction_check),
            topology=env_text("COMMLIB_TOPOLOGY"),
            level_links=env_text("COMMLIB_LEVEL_LINKS"),
            reduce_scatter=env_choice("COMMLIB_REDUCE_SCATTER", cls.reduce_scatter, HIERARCHY_ALGORITHMS),
            allgather=env_choice("COMMLIB_ALLGATHER", cls.allgather, HIERARCHY_ALGORITHMS),
        )


settings = CollectivesSettings.from_env()
