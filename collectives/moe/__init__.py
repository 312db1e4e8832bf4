"""Expert all-to-all of a mixture-of-experts layer: dispatch tokens to their experts' ranks, combine the outputs.

``dispatch`` sends every token to the ranks holding its top-k experts and
returns the rows each local expert must process, one contiguous slice per
expert; ``combine`` sends the experts' outputs back and sums each token's
outputs weighted by its top-k weights, on the token's own rank.

Design.

* Counts first: one ``Alltoall`` of per (destination, local expert) counts,
  with a small header by which every rank checks that all agree on the row
  width, dtype, number of experts, placement and mode (a mismatch raises on
  every rank alike instead of corrupting memory or hanging). Then the payload
  in one ``Alltoallw``.
* A token travels once per destination rank, however many of its top-k
  experts live there, and the receiver still gets each expert's input as one
  contiguous slice in (local expert, source rank) order. Both hold because
  the payload is not received as it is sent: each source's rows, ordered by
  the token's lowest local expert at the destination ("primary"), land
  through per-source MPI datatypes (one block per local expert) directly in
  their expert's sub-block, leaving room after them for the tokens that
  expert shares with a lower one ("extras"); the extras are then filled by
  one local row copy, whose indices travel in a small ``Ialltoallv`` that
  overlaps the payload. So the network carries no duplicate rows, the
  receiver makes no permuted copy of the buffer, and only the duplicated rows
  are copied locally (what a replicating design would send over the wire).
  The alternatives were to send a row per (token, expert) pair (``dedup=False``,
  same layout, more bytes; measured in ``python -m commlib bench moe``), or
  to send tokens once and hand experts index lists into an unordered buffer
  (experts would then gather their input themselves, a full extra copy).
* How rows reach MPI (``pack``, default ``config.moe_pack``): ``"gather"``
  gathers the rows for all destinations into one reused send buffer with
  ``numpy.take`` (MPI then moves one contiguous block per peer, which shared
  memory transports copy once), and ``combine`` receives one contiguous block
  per peer and reads each pair's row by position inside the weighted sum,
  in cache-sized chunks (no separate permutation pass). ``"mpi"`` builds
  indexed datatypes instead: MPI picks the rows straight from ``x`` and drops
  returned rows straight at their (token, slot) positions, with no numpy copy
  at all; MPICH moves such scattered rows through its pipelined pack path,
  which measured slower here, so ``gather`` is the default.
* Weights never travel: the return leg carries one row per (token, expert)
  pair and the source computes ``out[t] = sum_k w[t, k] * y(t, k)`` in slot
  order (accumulated in float32 for 16-bit payloads), so results are
  deterministic and do not depend on arrival order or rank count.
* Dropless by default. With ``capacity_factor`` the capacity per (source rank,
  expert) is ``ceil(capacity_factor * max_r(N_r * K) / num_experts)``, agreed
  through an ``Allreduce(MAX)`` that also checks that every rank passed the
  same ``capacity_factor`` (or none); which pairs drop is defined in
  :mod:`collectives.routing` (per expert, by slot then token index). A dropped
  pair contributes nothing to its token's output (weights are not renormalized);
  ``RecvInfo.dropped`` counts them per expert.

Arrays may be numpy or cupy. Device arrays go to MPI as they are when
``config.cuda_aware_mpi`` is set, and are staged through host memory otherwise.

The package: :mod:`.dispatching` and :mod:`.combining` (the two legs),
:mod:`.handles` (what dispatch returns), :mod:`.arguments` (what the calls
accept and what every rank must agree on), :mod:`.rows` (arrays, scratch
buffers, and the ``Alltoallw`` of row blocks).
"""

from .combining import combine
from .dispatching import dispatch
from .handles import MoEHandle, RecvInfo
from .rows import array_namespace, release_buffers

__all__ = ["MoEHandle", "RecvInfo", "array_namespace", "combine", "dispatch", "release_buffers"]
