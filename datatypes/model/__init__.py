"""Cost model of commlib's strategies: measured tables, log-space interpolation, online refinement.

What it predicts. For a message of ``count`` objects of a strided datatype
(its :class:`Features`: packed bytes, block bytes, levels) the model gives the
one-way time of each *strategy*: ``native`` (MPI sends the derived type
itself), ``pack`` (commlib packs, sends contiguous bytes, unpacks), and the
GPU strategies ``DEVICE``, ``ONESHOT``, ``STAGED``, which have a prediction
only when a calibration measured their parts (never chosen otherwise).
Nonblocking sends and receives (``Isend``, ``Irecv``) are predicted from the
calibration's exchange tables (``xchg.*``: both ranks with several messages
in flight at once) where they were measured, and like blocking ones
elsewhere. It also picks the host pack engine (``strided`` numpy copy or ``mpi``
``MPI_Pack``), and gives collectives their ``alpha_beta(level)`` and
``reduce_beta(dtype)``.

Where the numbers come from, in order. (1) Tables measured by ``python -m
commlib calibrate``: seconds on a grid of (bytes, block) per level count,
interpolated bilinearly in (log2 bytes, log2 block, log2 seconds), clamped
along the block axis and extrapolated along the bytes axis with a log-log
slope between 0 and 1 (:mod:`datatypes.cost_table`). (2) Analytic defaults
(:class:`Prior`), used for any part the calibration lacks: fixed cost plus
per-byte and per-block costs,
whose engine crossover sits at ``COMMLIB_PACK_MIN_BYTES`` and
``COMMLIB_PACK_MIN_BLOCK``, and textbook alpha-beta costs of the links.
(3) Online refinement: every time the interposer observes is compared with
the prediction; per bucket (operation, strategy, level, levels, log2 bytes,
log2 block) the model keeps the last ``window`` log ratios, and scales the
prediction by their 25th percentile, shrunk toward 1 while samples are few
(:mod:`datatypes.refinement`). Memory is bounded (least recently used buckets
are dropped); waiting for a late peer only adds time, so it does not move a
low quantile; each ratio is clipped. The refinements can be saved back
into the calibration file.

:func:`current` is the model of this process: loaded once, lazily, from the
file ``COMMLIB_MODEL`` names (``auto``: this host's calibration in the cache
directory), falling back to the analytic defaults: silently where there is
no calibration yet (the normal state; ``describe()`` says so in ``--report``
and ``explain``), with a one-line warning when a named file is missing or a
file is corrupt, stale or from another MPI or host. It is the one cached model; the
packer's engine choice, the interposer's default decision (a session may
hold its own model instead) and the collectives' cost figures all read it.
"""

from ..cost_table import Table
from ..refinement import Refinement
from .costs import Model, fit_alpha_beta
from .features import (
    ENGINES,
    EXCHANGED,
    GPU_STRATEGIES,
    HOST_STRATEGIES,
    LEVELS,
    MAX_LEVELS,
    WORDS,
    Features,
    features,
    op_class,
)
from .generation import generation, on_change, set_store
from .predictors import STRATEGIES, register_strategy
from .prior import Prior, node_local_over_network
from .process import current, load, set_current

__all__ = [
    "ENGINES",
    "EXCHANGED",
    "GPU_STRATEGIES",
    "HOST_STRATEGIES",
    "LEVELS",
    "MAX_LEVELS",
    "STRATEGIES",
    "WORDS",
    "Features",
    "Model",
    "Prior",
    "Refinement",
    "Table",
    "current",
    "features",
    "fit_alpha_beta",
    "generation",
    "load",
    "node_local_over_network",
    "on_change",
    "op_class",
    "register_strategy",
    "set_current",
    "set_store",
]
