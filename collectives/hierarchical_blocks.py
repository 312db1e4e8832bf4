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

__all__ = ["Layout", "allgather_blocks", "piece_counts", "reduce_scatter_blocks"]

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


def piece_counts(counts: list[int], segments: int) -> list[list[int]]:
    """Every block cut into ``segments`` near-equal pieces: the counts of segment ``s`` (one per rank)."""
    cuts = [[k * c // segments for k in range(segments + 1)] for c in counts]
    return [[cut[s + 1] - cut[s] for cut in cuts] for s in range(segments)]


def _piece_starts(lays: list[Layout]) -> list[list[int]]:
    """Where piece ``s`` of every rank's block starts in a rank-ordered vector of whole blocks."""
    p = len(lays[0].counts)
    whole = [sum(lay.counts[r] for lay in lays) for r in range(p)]
    at, starts = 0, []
    for r in range(p):
        starts.append(at)
        at += whole[r]
    out = []
    for lay in lays:
        out.append(list(starts))
        starts = [starts[r] + lay.counts[r] for r in range(p)]
    return out


def _wavefront(lays: list[Layout], levels: list[int], issue: Any) -> None:
    """``issue(s, level, comm) -> (request, scratch)`` for every segment and level where this rank takes part,
    segment ``s`` at ``levels[j]`` in tick ``s + j``; each tick's requests complete before the next tick's
    are issued (in the same order on every rank), its scratch buffers kept alive until then."""
    steps = lays[0].h.steps()
    for tick in range(len(lays) + len(levels) - 1):
        requests, keep = [], []
        for j, level in enumerate(levels):
            s = tick - j
            if 0 <= s < len(lays) and steps[level] is not None:
                request, scratch = issue(s, level, steps[level])
                requests.append(request)
                keep.append(scratch)
        _Request.Waitall(requests)


def reduce_scatter_blocks(lays: list[Layout], send: Any, recv: Any, datatype: MPI.Datatype, op: MPI.Op) -> None:
    """Reduce ``send`` (every rank's blocks in rank order) and leave this rank's block in ``recv``.

    ``lays``: one layout per segment (the counts of :func:`piece_counts`), pipelined level by level.
    """
    h = lays[0].h
    starts = _piece_starts(lays)
    works = []
    for lay, start in zip(lays, starts):
        work = np.empty(lay.total, dtype=send.dtype)
        for r in range(h.size):
            work[lay.offset[r] : lay.offset[r] + lay.counts[r]] = send[start[r] : start[r] + lay.counts[r]]
        works.append(work)

    def issue(s: int, level: int, comm: MPI.Intracomm) -> tuple[Any, Any]:
        lo, hi = lays[s].run(level)
        counts, displs = lays[s].parts(level, comm.Get_size())
        mine = comm.Get_rank()
        source = works[s][lo:hi].copy()
        into = works[s][lo + displs[mine] : lo + displs[mine] + counts[mine]]
        return MPI.Comm.Ireduce_scatter(comm, [source, datatype], [into, datatype], counts, op), source

    _wavefront(lays, list(range(h.depth + 1)), issue)
    _deliver(lays, works, recv, datatype)


def _assemble(lays: list[Layout], works: list[Any], r: int, out: Any) -> None:
    """Rank ``r``'s block from its pieces in every segment's work vector."""
    at = 0
    for lay, work in zip(lays, works):
        c = lay.counts[r]
        out[at : at + c] = work[lay.offset[r] : lay.offset[r] + c]
        at += c


def _deliver(lays: list[Layout], works: list[Any], recv: Any, datatype: MPI.Datatype) -> None:
    """Every held block to its rank; this rank's own into ``recv``."""
    lay = lays[0]
    h, me = lay.h, lay.h.rank
    requests, keep = [], []
    if lay.holder[me] != me:
        requests.append(MPI.Comm.Irecv(h.comm, [recv, datatype], lay.holder[me], _TAG))
    for r in lay.held:
        if r == me:
            _assemble(lays, works, r, recv)
            continue
        block = np.empty(sum(x.counts[r] for x in lays), dtype=recv.dtype)
        _assemble(lays, works, r, block)
        keep.append(block)
        requests.append(MPI.Comm.Isend(h.comm, [block, datatype], r, _TAG))
    _Request.Waitall(requests)


def allgather_blocks(lays: list[Layout], send: Any, recv: Any, displs: list[int], datatype: MPI.Datatype) -> None:
    """Gather every rank's ``send`` block into ``recv`` (rank ``r``'s at ``displs[r]``), in ``len(lays)`` segments."""
    lay = lays[0]
    h, me = lay.h, lay.h.rank
    works = [np.empty(x.total, dtype=recv.dtype) for x in lays]
    requests, blocks = [], {}
    if lay.holder[me] != me:
        requests.append(MPI.Comm.Isend(h.comm, [send, datatype], lay.holder[me], _TAG))
    for r in lay.held:
        blocks[r] = send if r == me else np.empty(sum(x.counts[r] for x in lays), dtype=recv.dtype)
        if r != me:
            requests.append(MPI.Comm.Irecv(h.comm, [blocks[r], datatype], r, _TAG))
    _Request.Waitall(requests)
    for r, block in blocks.items():
        at = 0
        for x, work in zip(lays, works):
            work[x.offset[r] : x.offset[r] + x.counts[r]] = block[at : at + x.counts[r]]
            at += x.counts[r]

    def issue(s: int, level: int, comm: MPI.Intracomm) -> tuple[Any, Any]:
        lo, hi = lays[s].run(level)
        counts, offsets = lays[s].parts(level, comm.Get_size())
        return MPI.Comm.Iallgatherv(comm, MPI.IN_PLACE, [works[s][lo:hi], (counts, offsets), datatype]), None

    _wavefront(lays, list(range(h.depth, -1, -1)), issue)
    for r in range(h.size):
        _assemble(lays, works, r, recv[displs[r] : displs[r] + sum(x.counts[r] for x in lays)])
