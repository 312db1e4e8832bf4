"""Reduce-scatter and allgather of per-rank blocks over a hierarchy of any depth.

Blocks (rank ``r``'s: ``counts[r]`` elements) are put in *class order*: by
``index[k][r] mod shards[k]`` for every level ``k`` below the world, then by
``r``'s outermost domain, then by rank. Then the ranks of one level-k step
communicator hold one contiguous run, which splits into one contiguous part
per class: a reduce-scatter down the levels (the last one across the
outermost domains) leaves every rank that takes part in every level holding
the reduced blocks of its class - its own block, and on uneven levels those
of the ranks beyond a level's shard count, which it then sends them. The
allgather is the same in reverse: those ranks send their blocks to the rank
that holds their class, then allgathers from the outermost level in. Each
link carries each block once per direction. MPI reduces every step on a
fixed communicator, so the reduction order is fixed; each block is reduced
on one rank.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mpi4py import MPI

from .hierarchy import Hierarchy

__all__ = ["Layout", "allgather_blocks", "reduce_scatter_blocks"]

_Request = type(MPI.REQUEST_NULL)
_TAG = 23


class Layout:
    """Class order of the blocks of ``counts`` on ``h`` and this rank's run and parts at every level."""

    def __init__(self, h: Hierarchy, counts: list[int]) -> None:
        p, d = h.size, h.depth
        self.h, self.counts = h, counts

        def key(r: int) -> tuple[int, ...]:
            return (*(h.index[k][r] % h.shards[k] for k in range(d)), h.index[d][r])

        self.key = [key(r) for r in range(p)]
        self.order = sorted(range(p), key=lambda r: (self.key[r], r))
        self.offset = [0] * p
        at = 0
        for r in self.order:
            self.offset[r] = at
            at += counts[r]
        self.total = at
        me = h.rank
        holder_key = {self.key[r]: r for r in range(p) if h.participates(d + 1, r)}
        self.holder = [holder_key[self.key[r]] for r in range(p)]
        self.held = [r for r in self.order if self.holder[r] == me]  # the blocks this rank ends with

    def run(self, level: int) -> tuple[int, int]:
        """Element range of this rank's run at ``level`` (it takes part there)."""
        prefix = self.key[self.h.rank][:level]
        members = [r for r in self.order if self.key[r][:level] == prefix]
        return self.offset[members[0]], self.offset[members[-1]] + self.counts[members[-1]]

    def parts(self, level: int, group: int) -> tuple[list[int], list[int]]:
        """Counts and offsets (in the run) of each member's part at ``level``, for a communicator of ``group``."""
        h = self.h
        prefix = self.key[h.rank][:level]
        shards = h.shards[level]
        sizes = [0] * shards
        for r in self.order:
            if self.key[r][:level] == prefix:
                sizes[self.key[r][level]] += self.counts[r]
        displs, at = [], 0
        for s in sizes:
            displs.append(at)
            at += s
        return sizes + [0] * (group - shards), displs + [at] * (group - shards)


def reduce_scatter_blocks(lay: Layout, send: Any, recv: Any, datatype: MPI.Datatype, op: MPI.Op) -> None:
    """Reduce ``send`` (every rank's blocks in rank order) and leave this rank's block in ``recv``."""
    h = lay.h
    work = np.empty(lay.total, dtype=send.dtype)
    starts = np.cumsum([0, *lay.counts])
    for r in range(h.size):
        work[lay.offset[r] : lay.offset[r] + lay.counts[r]] = send[starts[r] : starts[r + 1]]
    steps = h.steps()
    for level in range(h.depth + 1):
        comm = steps[level]
        if comm is None:
            break
        lo, hi = lay.run(level)
        counts, displs = lay.parts(level, comm.Get_size())
        mine = comm.Get_rank()
        source = work[lo:hi].copy()
        into = work[lo + displs[mine] : lo + displs[mine] + counts[mine]]
        MPI.Comm.Reduce_scatter(comm, [source, datatype], [into, datatype], counts, op)
    _deliver(lay, work, recv, datatype)


def _deliver(lay: Layout, work: Any, recv: Any, datatype: MPI.Datatype) -> None:
    """Every held block to its rank; this rank's own into ``recv``."""
    h, me = lay.h, lay.h.rank
    requests = []
    if lay.holder[me] != me:
        requests.append(MPI.Comm.Irecv(h.comm, [recv, datatype], lay.holder[me], _TAG))
    for r in lay.held:
        block = work[lay.offset[r] : lay.offset[r] + lay.counts[r]]
        if r == me:
            recv[...] = block
        else:
            requests.append(MPI.Comm.Isend(h.comm, [block, datatype], r, _TAG))
    _Request.Waitall(requests)


def allgather_blocks(lay: Layout, send: Any, recv: Any, displs: list[int], datatype: MPI.Datatype) -> None:
    """Gather every rank's ``send`` block into ``recv`` (rank ``r``'s at ``displs[r]``)."""
    h, me = lay.h, lay.h.rank
    work = np.empty(lay.total, dtype=recv.dtype)
    requests = []
    if lay.holder[me] != me:
        requests.append(MPI.Comm.Isend(h.comm, [send, datatype], lay.holder[me], _TAG))
    for r in lay.held:
        block = work[lay.offset[r] : lay.offset[r] + lay.counts[r]]
        if r == me:
            block[...] = send
        else:
            requests.append(MPI.Comm.Irecv(h.comm, [block, datatype], r, _TAG))
    _Request.Waitall(requests)
    steps = h.steps()
    for level in range(h.depth, -1, -1):
        comm = steps[level]
        if comm is None:
            continue
        lo, hi = lay.run(level)
        counts, offsets = lay.parts(level, comm.Get_size())
        MPI.Comm.Allgatherv(comm, MPI.IN_PLACE, [work[lo:hi], (counts, offsets), datatype])
    for r in range(h.size):
        recv[displs[r] : displs[r] + lay.counts[r]] = work[lay.offset[r] : lay.offset[r] + lay.counts[r]]
