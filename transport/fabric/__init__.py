"""Flow placement in a leaf-spine fabric: random ECMP vs minimal splitting vs ideal packet spraying.

The flows of one collective step start together, have equal sizes, and the
step ends with its slowest flow. Routing each flow whole along a random spine
(ECMP hashing) lets flows collide on one uplink while others idle. Ideal
packet spraying spreads every flow evenly over all spines: its loads are the
fractional optimum, a lower bound for any routing. Minimal splitting cuts
each flow into ``k`` equal subflows, each pinned to one spine, chosen by a
planner: with equal sizes it reaches the spraying bound with the smallest
``k`` that can (:func:`minimal_split`, exact by equitable bipartite edge
colouring, see :mod:`transport.coloring`).

Metrics per policy: the maximum link congestion (bytes over capacity, the
seconds the busiest link needs; the step's completion time if every flow's
subflows are paced to finish together, and a lower bound for any transport)
and the completion time under max-min fair sharing (:mod:`transport.maxmin`).
``python -m commlib fabric`` runs the comparison at scale (:func:`main`).

The package: :mod:`.leafspine` (the fabric), :mod:`.traffic` (the flows of
a collective step), :mod:`.plans` (where a policy sends the bytes; ECMP and
spraying), :mod:`.splitting` (minimal splitting, splitting over given paths),
:mod:`.evaluation` (congestion and max-min completion time), :mod:`.cli`.
"""

from .cli import main
from .evaluation import evaluate, incidence
from .leafspine import LeafSpine
from .plans import LOCAL, SPRAYED, SpinePlan, ecmp, link_loads, max_congestion, spray
from .splitting import minimal_split, plan_paths
from .traffic import COLLECTIVES, Collective, alltoall, ring

__all__ = [
    "COLLECTIVES",
    "LOCAL",
    "SPRAYED",
    "Collective",
    "LeafSpine",
    "SpinePlan",
    "alltoall",
    "ecmp",
    "evaluate",
    "incidence",
    "link_loads",
    "main",
    "max_congestion",
    "minimal_split",
    "plan_paths",
    "ring",
    "spray",
]
