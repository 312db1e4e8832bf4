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
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from mpi4py import MPI

from .routing import ExpertMap, ReceivePlan, SendPlan, plan_receive, plan_send, row_runs
from .settings import settings

__all__ = ["MoEHandle", "RecvInfo", "array_namespace", "combine", "dispatch", "release_buffers"]

_HEADER = ("row width", "item size", "dtype kind", "number of experts", "placement", "dedup")
_CHUNK_BYTES = 1 << 21  # rows of the weighted sum processed together (stays in cache)
_PACK_MODES = ("gather", "mpi")
_ROW_KINDS = "biufcV"  # numbers, and opaque fixed-size records without objects (bfloat16 and the like)


def array_namespace(x: Any) -> Any:
    """``numpy`` for numpy arrays, else cupy's module for ``x`` (numpy when cupy is missing)."""
    if isinstance(x, np.ndarray):
        return np
    try:
        import cupy
    except ImportError:
        return np
    return cupy.get_array_module(x)


def _host(a: Any) -> np.ndarray:
    return a if isinstance(a, np.ndarray) else (a.get() if hasattr(a, "get") else np.asarray(a))


@dataclass(frozen=True)
class RecvInfo:
    """What ``dispatch`` delivered to this rank: local expert ``l`` reads ``recv_x[info.slice(l)]``."""

    experts: np.ndarray  # [L] global ids of this rank's experts, in local order
    bounds: np.ndarray  # [L + 1] first row of each local expert, then the row count
    counts: np.ndarray  # [L, P] rows per (local expert, source rank)
    capacity: int | None  # pairs kept per (source rank, expert), or None when dropless
    dropped: np.ndarray  # [E] pairs this rank dropped as a source, per global expert

    def __len__(self) -> int:
        return int(self.experts.size)

    def slice(self, local_expert: int) -> slice:
        """Rows of ``recv_x`` (and of the expert outputs) belonging to ``local_expert``."""
        return slice(int(self.bounds[local_expert]), int(self.bounds[local_expert + 1]))

    @property
    def num_rows(self) -> int:
        return int(self.bounds[-1])


@dataclass(frozen=True)
class MoEHandle:
    """Everything ``combine`` needs from its ``dispatch``; opaque to users apart from the byte counts."""

    comm: MPI.Comm
    num_tokens: int
    topk: int
    send: SendPlan
    recv: ReceivePlan
    weights: np.ndarray  # [N, K] float64 on the host: kept pairs' weights, 0 elsewhere
    xp: Any
    pack: str  # "gather" or "mpi"
    dispatch_bytes: int  # payload bytes this rank sent to other ranks in dispatch
    copied_rows: int  # rows duplicated locally after the exchange (extras)

    def combine_rows(self) -> int:
        """Rows this rank sends to other ranks in ``combine``."""
        counts = self.recv.counts.copy()
        counts[:, self.comm.Get_rank()] = 0
        return int(counts.sum())


def _fail(op: str, message: str) -> None:
    raise ValueError(f"{op}: {message}")


def _expert_map(placement: Any, num_experts: int, num_ranks: int) -> ExpertMap:
    if placement is None:
        return ExpertMap.contiguous(num_experts, num_ranks)
    if hasattr(placement, "owner") and not isinstance(placement, ExpertMap):
        owner = np.asarray(placement.owner)
        if owner.ndim == 2:
            if owner.shape[0] != 1:
                _fail("dispatch", f"a placement of {owner.shape[0]} layers: pass one layer, placement[layer]")
            owner = owner[0]
        placement = owner
    if isinstance(placement, ExpertMap):
        experts = placement
        if experts.num_ranks != num_ranks:
            _fail("dispatch", f"placement is for {experts.num_ranks} ranks, the communicator has {num_ranks}")
    else:
        experts = ExpertMap.from_owner(placement, num_ranks)
    if experts.num_experts != num_experts:
        _fail("dispatch", f"placement has {experts.num_experts} experts, num_experts={num_experts}")
    return experts


def _check_routing(x: Any, topk_idx: np.ndarray, topk_weights: np.ndarray, num_experts: int) -> None:
    op = "dispatch"
    if getattr(x, "ndim", None) != 2 or x.shape[1] < 1:
        _fail(op, f"x must be a [tokens, features] array with features >= 1, got shape {getattr(x, 'shape', None)}")
    dtype = np.dtype(x.dtype)
    if dtype.hasobject or dtype.kind not in _ROW_KINDS:
        raise TypeError(
            f"{op}: x must hold numbers (its rows travel as raw bytes), got dtype {dtype} "
            f"({x.shape[0]} x {x.shape[1]}): a row of Python objects is pointers into this process"
        )
    if topk_idx.ndim != 2 or topk_idx.shape[0] != x.shape[0]:
        _fail(op, f"topk_idx must be [tokens, k] with tokens = {x.shape[0]}, got shape {topk_idx.shape}")
    if not np.issubdtype(topk_idx.dtype, np.integer):
        _fail(op, f"topk_idx must hold integer expert ids, got dtype {topk_idx.dtype}")
    if topk_weights.shape != topk_idx.shape:
        _fail(op, f"topk_weights has shape {topk_weights.shape}, topk_idx {topk_idx.shape}")
    if not np.issubdtype(topk_weights.dtype, np.floating):
        _fail(op, f"topk_weights must be floating point, got dtype {topk_weights.dtype}")
    if num_experts < 1:
        _fail(op, f"num_experts must be >= 1, got {num_experts}")
    if topk_idx.size:
        low, high = int(topk_idx.min()), int(topk_idx.max())
        if low < -1 or high >= num_experts:
            _fail(op, f"topk_idx holds ids {low}..{high}; valid are 0..{num_experts - 1} and -1 (none)")
    if topk_idx.shape[1] > 1 and topk_idx.size:
        ordered = np.sort(topk_idx, axis=1)
        repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
        if repeated.any():
            row = int(np.flatnonzero(repeated.any(axis=1))[0])
            _fail(op, f"topk_idx row {row} names an expert twice: {topk_idx[row].tolist()}")


def _check_agreement(op: str, headers: np.ndarray, names: tuple[str, ...]) -> None:
    """Raise (on every rank alike: all see the same headers) when the ranks disagree."""
    for column, name in enumerate(names):
        values = headers[:, column]
        if (values != values[0]).any():
            _fail(op, f"ranks disagree on the {name}: {values.tolist()} (one value per rank)")


def _row_type(row_bytes: int) -> MPI.Datatype:
    return MPI.BYTE.Create_contiguous(row_bytes).Commit()


def _blocks(row: MPI.Datatype, row_bytes: int, starts: np.ndarray, lengths: np.ndarray) -> tuple[int, MPI.Datatype]:
    """``(count, datatype)`` of rows ``starts[i] : starts[i] + lengths[i]``, in that order (a new type, or ``row``)."""
    nonempty = lengths > 0
    starts, lengths = starts[nonempty], lengths[nonempty]
    if starts.size == 0:
        return 0, row
    return 1, row.Create_hindexed(lengths.tolist(), (starts * row_bytes).tolist()).Commit()


def _alltoallw(comm: MPI.Comm, sendbuf: Any, sends: list, recvbuf: Any, recvs: list, row_bytes: int) -> None:
    """One ``Alltoallw`` moving rows: ``sends[p]`` and ``recvs[p]`` are ``(starts, lengths)`` of rows per peer."""
    row = _row_type(row_bytes)
    made: list[MPI.Datatype] = []
    try:
        specs = []
        for blocks in (sends, recvs):
            counts, types = [], []
            for starts, lengths in blocks:
                count, datatype = _blocks(row, row_bytes, starts, lengths)
                if datatype is not row:
                    made.append(datatype)
                counts.append(count)
                types.append(datatype)
            specs.append((counts, types))
        zeros = [0] * len(sends)
        comm.Alltoallw([sendbuf, specs[0][0], zeros, specs[0][1]], [recvbuf, specs[1][0], zeros, specs[1][1]])
    finally:
        for datatype in made:
            datatype.Free()
        row.Free()


def _pack_mode(op: str, pack: str | None) -> str:
    pack = settings.moe_pack if pack is None else pack
    if pack not in _PACK_MODES:
        _fail(op, f"pack must be one of {', '.join(_PACK_MODES)}, got {pack!r}")
    return pack


class _Workspace(threading.local):
    """Host buffers kept between calls, per thread: a fresh large buffer costs a page fault per page, every call."""

    def __init__(self) -> None:
        self.buffers: dict[str, np.ndarray] = {}


_workspace = _Workspace()


def _buffer(xp: Any, name: str, rows: int, width: int, dtype: np.dtype) -> Any:
    """A ``[rows, width]`` scratch array: numpy's reused from the last call (grown as needed), else a new one."""
    if xp is not np:
        return xp.empty((rows, width), dtype)
    nbytes = rows * width * dtype.itemsize
    buf = _workspace.buffers.get(name)
    if buf is None or buf.nbytes < nbytes:
        buf = _workspace.buffers[name] = np.empty(max(nbytes, 1), np.uint8)
    return buf[:nbytes].view(dtype).reshape(rows, width)


def release_buffers() -> None:
    """Free the scratch buffers that ``dispatch`` and ``combine`` keep between calls (this thread's)."""
    _workspace.buffers.clear()


def _take(xp: Any, rows: Any, index: Any, out: Any) -> None:
    """``out[:] = rows[index]`` without a temporary (numpy's ``take`` buffers ``out`` unless told not to check)."""
    if xp is np:
        np.take(rows, index, axis=0, out=out, mode="clip")
    else:
        xp.take(rows, xp.asarray(index), axis=0, out=out)


def _displacements(counts: np.ndarray) -> np.ndarray:
    return np.cumsum(counts) - counts


def dispatch(
    x: Any,
    topk_idx: Any,
    topk_weights: Any,
    comm: MPI.Comm,
    num_experts: int,
    placement: Any = None,
    capacity_factor: float | None = None,
    *,
    dedup: bool = True,
    pack: str | None = None,
) -> tuple[Any, RecvInfo, MoEHandle]:
    """Send each token to the ranks of its top-k experts; collective over ``comm``.

    ``x`` is ``[N, M]`` (any dtype; N may be 0), ``topk_idx`` ``[N, K]`` global
    expert ids (``-1`` = no expert), ``topk_weights`` ``[N, K]``, kept on this
    rank for ``combine``. ``placement`` gives each expert's rank: ``None``
    (contiguous groups), a 1-D array of owner ranks, or a one-layer
    :class:`~collectives.placement.Placement` (``placement[layer]`` for one
    layer of a larger one). A rank's local experts are its experts in
    ascending global id. Returns ``(recv_x, recv_info, handle)``: ``recv_x``
    holds local expert ``l``'s input rows at ``recv_info.slice(l)``, ordered by
    source rank; from each source first the tokens whose lowest local expert
    on this rank ``l`` is, then (with ``dedup``) those that also go to a lower
    one, each group in token order. Expert outputs in the same layout go to
    :func:`combine` with ``handle``. All ranks must pass the same
    ``num_experts``, placement, ``capacity_factor``, ``dedup``, row width and dtype.
    ``pack`` (default ``config.moe_pack``) picks how rows reach MPI, here and
    in the matching ``combine``: ``"gather"`` or ``"mpi"`` (module docstring).
    """
    op = "dispatch"
    xp = array_namespace(x)
    idx, weights = _host(topk_idx), _host(topk_weights)
    _check_routing(x, idx, weights, num_experts)
    if capacity_factor is not None and not capacity_factor > 0:
        _fail(op, f"capacity_factor must be > 0 or None, got {capacity_factor}")
    num_ranks, me = comm.Get_size(), comm.Get_rank()
    experts = _expert_map(placement, num_experts, num_ranks)
    n, k = idx.shape
    width = x.shape[1]
    dtype = np.dtype(x.dtype)
    row_bytes = width * dtype.itemsize
    pack = _pack_mode(op, pack)
    staged = xp is not np and not settings.cuda_aware_mpi
    source = _host(x) if staged else x
    if pack == "mpi":  # datatypes address rows by byte offsets from the start
        source = np.ascontiguousarray(source) if staged else xp.ascontiguousarray(source)

    # One small Allreduce agrees on the capacity, and on whether there is one: ranks that disagreed would
    # otherwise compute different counts, or call different collectives and hang.
    code = -1 if capacity_factor is None else int(np.float64(capacity_factor).view(np.int64))
    agreed = np.array([n * k, code, -code], np.int64)
    comm.Allreduce(MPI.IN_PLACE, agreed, op=MPI.MAX)
    if agreed[1] != -agreed[2]:
        _fail(op, f"ranks disagree on the capacity_factor (this rank: {capacity_factor})")
    capacity = None
    if capacity_factor is not None:
        capacity = math.ceil(capacity_factor * int(agreed[0]) / num_experts)
    plan = plan_send(idx, experts, capacity=capacity, dedup=dedup)

    # Counts first, behind a header every rank checks against every other's.
    local_width = plan.primaries.shape[1]
    header = [width, dtype.itemsize, ord(dtype.kind), num_experts, experts.digest(), int(dedup)]
    sendcounts = np.empty((num_ranks, len(header) + 2 * local_width), np.int64)
    sendcounts[:, : len(header)] = header
    sendcounts[:, len(header) : len(header) + local_width] = plan.primaries
    sendcounts[:, len(header) + local_width :] = plan.extras
    recvcounts = np.empty_like(sendcounts)
    comm.Alltoall(sendcounts, recvcounts)
    _check_agreement(op, recvcounts[:, : len(header)], _HEADER)
    in_primaries = recvcounts[:, len(header) : len(header) + local_width]
    in_extras = recvcounts[:, len(header) + local_width :]

    request, extra_in = None, np.zeros(0, np.int64)
    if dedup:
        out_counts, in_counts = plan.extra_counts, in_extras.sum(axis=1)
        extra_in = np.empty(int(in_counts.sum()), np.int64)
        extra_out = np.ascontiguousarray(plan.extra_index)
        request = comm.Ialltoallv(
            [extra_out, out_counts, _displacements(out_counts), MPI.INT64_T],
            [extra_in, in_counts, _displacements(in_counts), MPI.INT64_T],
        )
    try:
        layout = plan_receive(in_primaries, in_extras)
        space = np if staged else xp
        recv_x = space.empty((layout.num_rows, width), dtype)

        sent = plan.send_counts
        starts = _displacements(sent)
        if pack == "gather":
            sendbuf = _buffer(space, "send", plan.send_rows.size, width, dtype)
            _take(space, source, plan.send_rows, sendbuf)
            sends = [(starts[d : d + 1], sent[d : d + 1]) for d in range(num_ranks)]
        else:
            sendbuf = source
            sends = [row_runs(plan.send_rows[starts[d] : starts[d] + sent[d]]) for d in range(num_ranks)]
        recvs = [(layout.offsets[:, s], in_primaries[s]) for s in range(num_ranks)]
        _alltoallw(comm, sendbuf, sends, recv_x, recvs, row_bytes)
    finally:
        if request is not None:  # a collective request cannot be cancelled; every rank posted it, so it completes
            request.Wait()
    copy_from, copy_to = layout.copies(extra_in)
    if copy_to.size:
        recv_x[space.asarray(copy_to)] = recv_x[space.asarray(copy_from)]
    if staged:
        recv_x = xp.asarray(recv_x)

    kept_weights = np.where(plan.kept, weights.astype(np.float64, copy=False), 0.0)
    info = RecvInfo(
        experts=experts.experts_of(me),
        bounds=layout.expert_bounds,
        counts=layout.counts,
        capacity=capacity,
        dropped=plan.dropped,
    )
    others = np.arange(num_ranks) != me
    handle = MoEHandle(
        comm=comm,
        num_tokens=n,
        topk=k,
        send=plan,
        recv=layout,
        weights=kept_weights,
        xp=xp,
        pack=pack,
        dispatch_bytes=int(sent[others].sum()) * row_bytes,
        copied_rows=int(copy_to.size),
    )
    return recv_x, info, handle


def _accumulation_dtype(dtype: np.dtype) -> np.dtype:
    acc = np.result_type(dtype, np.float32) if dtype.itemsize < 4 else dtype
    if acc.kind not in "fc":
        _fail("combine", f"expert outputs must be floating point, got dtype {dtype}")
    return acc


def _weighted_sum(xp: Any, rows: Any, positions: Any, weights: Any, out_dtype: np.dtype) -> Any:
    """``out[t] = sum_k weights[t, k] * rows[positions[t, k]]``, in slot order, in cache-sized chunks of tokens.

    ``positions`` ``None`` means ``rows`` holds pair ``(t, k)`` at row ``t * K + k``.
    """
    n, k = weights.shape
    width = rows.shape[1]
    acc_dtype = _accumulation_dtype(out_dtype)
    out = xp.empty((n, width), out_dtype)
    if n == 0:
        return out
    if k == 0:
        out[...] = 0
        return out
    weights = weights.astype(acc_dtype)
    step = min(n, max(1, _CHUNK_BYTES // max(1, width * max(acc_dtype.itemsize, rows.dtype.itemsize))))
    term = xp.empty((step, width), acc_dtype)
    total = out if acc_dtype == out_dtype else xp.empty((step, width), acc_dtype)
    gathered = xp.empty((step, width), rows.dtype) if positions is not None else None
    by_slot = rows.reshape(n, k, width) if positions is None else None
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        acc = total[lo:hi] if total is out else total[: hi - lo]
        for slot in range(k):
            if by_slot is not None:
                part = by_slot[lo:hi, slot]
            else:
                part = gathered[: hi - lo]
                _take(xp, rows, positions[lo:hi, slot], part)
            xp.multiply(part, weights[lo:hi, slot, None], out=acc if slot == 0 else term[: hi - lo])
            if slot:
                acc += term[: hi - lo]
        if total is not out:
            out[lo:hi] = acc
    return out


def combine(y: Any, handle: MoEHandle) -> Any:
    """Send the expert outputs back and return ``[N, M_out]``, each token's top-k outputs summed by weight.

    ``y`` holds one output row per row of the ``recv_x`` that ``dispatch``
    returned, in the same layout (``recv_info.slice(l)`` for local expert
    ``l``). Collective over the dispatch's communicator; the output width
    and dtype must be the same on all ranks.
    """
    op = "combine"
    if not isinstance(handle, MoEHandle):
        _fail(op, f"handle must be the MoEHandle returned by dispatch, got {type(handle).__name__}")
    xp = array_namespace(y)
    if xp is not handle.xp:
        _fail(op, f"y is a {xp.__name__} array but dispatch was given {handle.xp.__name__} arrays")
    rows = handle.recv.num_rows
    if getattr(y, "ndim", None) != 2 or y.shape[0] != rows or y.shape[1] < 1:
        _fail(op, f"y must be [{rows}, features >= 1] (one row per dispatched row), got {getattr(y, 'shape', None)}")
    dtype = np.dtype(y.dtype)
    _accumulation_dtype(dtype)
    comm, n, k = handle.comm, handle.num_tokens, handle.topk
    width = y.shape[1]
    row_bytes = width * dtype.itemsize
    agreement = np.array([row_bytes, -row_bytes, ord(dtype.kind), -ord(dtype.kind)], np.int64)
    comm.Allreduce(MPI.IN_PLACE, agreement, op=MPI.MAX)
    if agreement[0] != -agreement[1] or agreement[2] != -agreement[3]:
        _fail(op, f"ranks disagree on the output row ({width} x {dtype}, {row_bytes} bytes on this rank)")

    staged = xp is not np and not settings.cuda_aware_mpi
    space = np if staged else xp
    source = np.ascontiguousarray(_host(y)) if staged else xp.ascontiguousarray(y)
    layout, plan = handle.recv, handle.send
    size = comm.Get_size()
    sends = [(layout.offsets[:, s], layout.counts[:, s]) for s in range(size)]
    counts = plan.return_counts
    starts = _displacements(counts)
    kept = plan.return_slots.size
    if handle.pack == "gather":
        # Rows arrive in blocks per destination; the weighted sum reads them by position (missing: a zero row).
        returned = _buffer(space, "return", kept + 1, width, dtype)
        returned[kept] = 0
        recvs = [(starts[d : d + 1], counts[d : d + 1]) for d in range(size)]
        positions = np.full(n * k, kept, np.int64)
        positions[plan.return_slots] = np.arange(kept)
        positions = space.asarray(positions.reshape(n, k))
    else:
        # MPI drops every row at its pair's position (token * K + slot).
        returned = space.empty((n * k, width), dtype)
        recvs = [row_runs(plan.return_slots[starts[d] : starts[d] + counts[d]]) for d in range(size)]
        positions = None
    _alltoallw(comm, source, sends, returned, recvs, row_bytes)
    if positions is None:
        missing = np.flatnonzero(~plan.kept.reshape(-1))
        if missing.size:
            returned[space.asarray(missing)] = 0
    out = _weighted_sum(space, returned, positions, space.asarray(handle.weights), dtype)
    return xp.asarray(out) if staged else out
