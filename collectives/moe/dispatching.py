"""The dispatch leg: every token to the ranks of its top-k experts, each expert's input one contiguous slice."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from mpi4py import MPI

from ..routing import ReceivePlan, SendPlan, plan_receive, plan_send, row_runs
from ..settings import settings
from .arguments import HEADER, check_agreement, check_routing, expert_map, fail, pack_mode
from .handles import MoEHandle, RecvInfo
from .rows import alltoallw, array_namespace, displacements, host, scratch, take


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
    idx, weights = host(topk_idx), host(topk_weights)
    check_routing(x, idx, weights, num_experts)
    if capacity_factor is not None and not capacity_factor > 0:
        fail(op, f"capacity_factor must be > 0 or None, got {capacity_factor}")
    num_ranks, me = comm.Get_size(), comm.Get_rank()
    experts = expert_map(placement, num_experts, num_ranks)
    n, k = idx.shape
    width = x.shape[1]
    dtype = np.dtype(x.dtype)
    row_bytes = width * dtype.itemsize
    pack = pack_mode(op, pack)
    staged = xp is not np and not settings.cuda_aware_mpi
    source = _source(x, xp, staged, pack)
    capacity = _agree_capacity(comm, n * k, capacity_factor, num_experts)
    plan = plan_send(idx, experts, capacity=capacity, dedup=dedup)
    header = [width, dtype.itemsize, ord(dtype.kind), num_experts, experts.digest(), int(dedup)]
    in_primaries, in_extras = _exchange_counts(comm, plan, header)
    request, extra_in = _post_extras(comm, plan, in_extras) if dedup else (None, np.zeros(0, np.int64))
    try:
        layout = plan_receive(in_primaries, in_extras)
        space = np if staged else xp
        recv_x = _exchange_rows(comm, plan, layout, space, source, in_primaries, pack)
    finally:
        if request is not None:  # a collective request cannot be cancelled; every rank posted it, so it completes
            request.Wait()
    copy_from, copy_to = layout.copies(extra_in)
    if copy_to.size:
        recv_x[space.asarray(copy_to)] = recv_x[space.asarray(copy_from)]
    if staged:
        recv_x = xp.asarray(recv_x)

    kept_weights = np.where(plan.kept, weights.astype(np.float64, copy=False), 0.0)
    info = RecvInfo(experts.experts_of(me), layout.expert_bounds, layout.counts, capacity, plan.dropped)
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
        dispatch_bytes=int(plan.send_counts[others].sum()) * row_bytes,
        copied_rows=int(copy_to.size),
    )
    return recv_x, info, handle


def _agree_capacity(comm: MPI.Comm, pairs: int, capacity_factor: float | None, num_experts: int) -> int | None:
    """The capacity per (source rank, expert), from the most (token, expert) pairs on any rank; ``None``: dropless.

    One small Allreduce agrees on the capacity, and on whether there is one: ranks that disagreed would
    otherwise compute different counts, or call different collectives and hang.
    """
    code = -1 if capacity_factor is None else int(np.float64(capacity_factor).view(np.int64))
    agreed = np.array([pairs, code, -code], np.int64)
    comm.Allreduce(MPI.IN_PLACE, agreed, op=MPI.MAX)
    if agreed[1] != -agreed[2]:
        fail("dispatch", f"ranks disagree on the capacity_factor (this rank: {capacity_factor})")
    if capacity_factor is None:
        return None
    return math.ceil(capacity_factor * int(agreed[0]) / num_experts)


def _exchange_counts(comm: MPI.Comm, plan: SendPlan, header: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Counts first, behind a header every rank checks against every other's: the primary and extra rows
    each source sends this rank, per local expert (``[P, L]`` each)."""
    local_width = plan.primaries.shape[1]
    sendcounts = np.empty((comm.Get_size(), len(header) + 2 * local_width), np.int64)
    sendcounts[:, : len(header)] = header
    sendcounts[:, len(header) : len(header) + local_width] = plan.primaries
    sendcounts[:, len(header) + local_width :] = plan.extras
    recvcounts = np.empty_like(sendcounts)
    comm.Alltoall(sendcounts, recvcounts)
    check_agreement("dispatch", recvcounts[:, : len(header)], HEADER)
    return recvcounts[:, len(header) : len(header) + local_width], recvcounts[:, len(header) + local_width :]


def _post_extras(comm: MPI.Comm, plan: SendPlan, in_extras: np.ndarray) -> tuple[MPI.Request, np.ndarray]:
    """Post the exchange of the extras' row indices (it overlaps the payload); the request and where they land."""
    out_counts, in_counts = plan.extra_counts, in_extras.sum(axis=1)
    extra_in = np.empty(int(in_counts.sum()), np.int64)
    extra_out = np.ascontiguousarray(plan.extra_index)
    request = comm.Ialltoallv(
        [extra_out, out_counts, displacements(out_counts), MPI.INT64_T],
        [extra_in, in_counts, displacements(in_counts), MPI.INT64_T],
    )
    return request, extra_in


def _send_blocks(space: Any, source: Any, plan: SendPlan, pack: str) -> tuple[Any, list]:
    """The send buffer and, per destination, its ``(starts, lengths)`` of rows: ``gather`` copies the rows into one
    reused buffer (one block per destination), ``mpi`` lets MPI pick them from ``source`` (runs of rows)."""
    sent = plan.send_counts
    starts = displacements(sent)
    if pack == "gather":
        sendbuf = scratch(space, "send", plan.send_rows.size, source.shape[1], np.dtype(source.dtype))
        take(space, source, plan.send_rows, sendbuf)
        return sendbuf, [(starts[d : d + 1], sent[d : d + 1]) for d in range(len(sent))]
    return source, [row_runs(plan.send_rows[starts[d] : starts[d] + sent[d]]) for d in range(len(sent))]


def _source(x: Any, xp: Any, staged: bool, pack: str) -> Any:
    """The rows as MPI will read them: on the host when staged, contiguous for ``mpi`` packing (datatypes address
    rows by byte offsets from the start)."""
    source = host(x) if staged else x
    if pack == "mpi":
        source = np.ascontiguousarray(source) if staged else xp.ascontiguousarray(source)
    return source


def _exchange_rows(
    comm: MPI.Comm, plan: SendPlan, layout: ReceivePlan, space: Any, source: Any, in_primaries: np.ndarray, pack: str
) -> Any:
    """The payload in one ``Alltoallw``: each source's primary rows straight into their experts' sub-blocks."""
    width, dtype = source.shape[1], np.dtype(source.dtype)
    recv_x = space.empty((layout.num_rows, width), dtype)
    sendbuf, sends = _send_blocks(space, source, plan, pack)
    recvs = [(layout.offsets[:, s], in_primaries[s]) for s in range(comm.Get_size())]
    alltoallw(comm, sendbuf, sends, recv_x, recvs, width * dtype.itemsize)
    return recv_x
