"""Allreduce over a hierarchy of any depth: reduce-scatter down the levels, allreduce at the top, allgather up.

With levels node, rack (then the world): every rank reduce-scatters the
vector inside its node, keeping ``1/shards[0]`` of it; the ranks of one rack
that hold the same part reduce-scatter it among the rack's nodes; the ranks
that hold the same ``1/(shards[0] shards[1])`` allreduce it across racks; then
allgathers give the parts back, rack first, node last. Each link carries each
byte once per direction, the slowest (outermost) links only the last part.
Ranks beyond a level's shard count (uneven levels) take part in that level
only, receiving no part. With ``segments > 1`` the vector goes through the
steps in segments, as a wavefront: at tick ``t`` every rank issues step ``j``
of segment ``t - j`` for every ``j`` (nonblocking, in one fixed order on
every rank), then waits for the tick's requests, so the links of every level
work at once. Every step is one of MPI's collectives on a fixed communicator,
so the reduction order is fixed, and each element is reduced on one rank and
copied to the others: all ranks hold the same bits, run after run.
"""

from __future__ import annotations

from typing import Any

from mpi4py import MPI

from .hierarchy import Hierarchy

__all__ = ["allreduce_levels", "part_bounds"]

_Request = type(MPI.REQUEST_NULL)


def part_bounds(n: int, parts: int) -> list[int]:
    """Offsets of ``parts`` near-equal parts of ``n`` elements (``parts + 1`` values)."""
    return [k * n // parts for k in range(parts + 1)]


def _ranges(h: Hierarchy, lo: int, hi: int) -> list[tuple[int, int]]:
    """This rank's range at every level it takes part in, from the whole segment ``[lo, hi)`` down."""
    out = [(lo, hi)]
    for level in range(h.depth):
        if not h.participates(level + 1):
            break
        b = part_bounds(hi - lo, h.shards[level])
        i = h.index[level][h.rank]
        lo, hi = lo + b[i], lo + b[i + 1]
        out.append((lo, hi))
    return out


def _layout(h: Hierarchy, comm: MPI.Intracomm, level: int, n: int) -> tuple[list[int], list[int]]:
    """Counts and offsets of every member's part at ``level`` of a range of ``n`` elements."""
    shards, g = h.shards[level], comm.Get_size()
    b = part_bounds(n, shards)
    counts = [b[i + 1] - b[i] for i in range(shards)] + [0] * (g - shards)
    return counts, b[:shards] + [n] * (g - shards)


class _Segment:
    """Issues the steps of one segment: ``2 depth + 1`` of them, the top allreduce in the middle."""

    def __init__(self, h: Hierarchy, send: Any | None, buf: Any, datatype: MPI.Datatype, op: MPI.Op, lo: int, hi: int):
        self.h, self.send, self.buf, self.datatype, self.op = h, send, buf, datatype, op
        self.ranges = _ranges(h, lo, hi)
        self.keep: list[Any] = []  # scratch copies, alive until the tick's requests complete

    def issue(self, j: int) -> Any:
        """Step ``j``'s request, or ``None`` where this rank takes no part in it."""
        h, depth = self.h, self.h.depth
        level = j if j <= depth else 2 * depth - j
        if level >= len(self.ranges) or (j == depth and len(self.ranges) <= depth):
            return None
        comm = h.steps()[level]
        lo, hi = self.ranges[level]
        if comm is None or comm.Get_size() == 1 and j != 0:
            return None
        if j == depth:
            return MPI.Comm.Iallreduce(comm, MPI.IN_PLACE, [self.buf[lo:hi], self.datatype], self.op)
        counts, displs = _layout(h, comm, level, hi - lo)
        if j > depth:
            return MPI.Comm.Iallgatherv(comm, MPI.IN_PLACE, [self.buf[lo:hi], (counts, displs), self.datatype])
        mine = comm.Get_rank()
        source = self.send[lo:hi] if (level == 0 and self.send is not None) else self.buf[lo:hi].copy()
        self.keep.append(source)
        recv = self.buf[lo + displs[mine] : lo + displs[mine] + counts[mine]]
        return MPI.Comm.Ireduce_scatter(comm, [source, self.datatype], [recv, self.datatype], counts, self.op)


def allreduce_levels(
    h: Hierarchy, send: Any | None, buf: Any, datatype: MPI.Datatype, op: MPI.Op, segments: int = 1
) -> None:
    """Allreduce this rank's contribution (``send``, or ``buf`` when ``None``) into ``buf`` over ``h``'s levels.

    ``buf`` is a 1-D array of ``datatype`` elements; ``op`` a predefined
    operation MPI reduces correctly on them. Collective over ``h.comm``.
    """
    if h.depth == 0:
        if send is not None:
            buf[...] = send
        if h.size > 1:
            MPI.Comm.Allreduce(h.comm, MPI.IN_PLACE, [buf, datatype], op)
        return
    segments = max(1, min(segments, buf.size))
    seg = part_bounds(buf.size, segments)
    parts = [_Segment(h, send, buf, datatype, op, seg[s], seg[s + 1]) for s in range(segments)]
    stages = 2 * h.depth + 1
    for tick in range(segments + stages - 1):
        requests = []
        for j in range(stages):
            s = tick - j
            if 0 <= s < segments:
                request = parts[s].issue(j)
                if request is not None:
                    requests.append(request)
        _Request.Waitall(requests)
        for part in parts:
            part.keep.clear()
