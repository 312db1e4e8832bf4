"""The allreduce algorithms, named once.

The setting's choices (``COMMLIB_ALLREDUCE``), the runners
(:data:`collectives.allreduce_flat.FLAT` and the hierarchical ones), the
cost model (:mod:`collectives.allreduce_cost`), ``plan()`` and the benchmark
all read these tuples; ``tests/test_allreduce.py`` checks that every runner
and every cost prediction has a name here and every name has both.
"""

from __future__ import annotations

__all__ = ["ALGORITHMS", "CHOOSERS", "FLAT", "HIERARCHICAL"]

FLAT = ("native", "ring", "star")  # over the whole communicator at once
# within nodes first, then between them; -levels: every level of collectives.hierarchy (COMMLIB_TOPOLOGY)
HIERARCHICAL = ("hierarchical-root", "hierarchical-shard", "hierarchical-levels")
CHOOSERS = ("auto", "hierarchical")  # choose per call: among all, or the better hierarchical one
ALGORITHMS = ("auto", *FLAT, "hierarchical", *HIERARCHICAL)
