"""TokenRing: sequence-parallel attention that keeps keys/values in place and moves the queries.

Every rank holds one shard of the sequence (``q [(B,) L, H, D]``, ``k``/``v [(B,) L, H_kv, D]``).
At step ``t`` rank ``r`` holds the queries of rank ``r+t`` (they moved one rank down the ring per
step, on one communicator), attends them over its own keys, and sends the partial result
``(block_out, block_lse)`` straight back to their owner on a second communicator, which merges it
into its running result. Queries travel one way and results the other, so both directions of the
links carry traffic at once. Nonblocking transfers overlap the block computation: every message is
cut into row pieces, and a piece is passed on as soon as it arrives, then computed, and its result
sent back while the next piece is still on its way; the owner folds results in one step later.
The keys are laid out for the kernels once per call, since they never move.

Under a causal mask only what the mask lets through is computed and sent: in the zigzag layout a
foreign shard is met either by all queries against the first key chunk, or by the second query
chunk against all keys, so half the query rows (and half the partial result) travel once the
queries have passed rank 0, and in the contiguous layout queries stop travelling once they have
passed rank 0 (no later rank can see them).

The backward pass moves ``(q, dout, lse, delta)`` the same way; each rank adds the gradients of its
own keys and values locally (they never move) and returns the partial query gradient to its owner.

The two communicators are duplicates of ``comm`` created on first use and cached on it (freed
with it). All ranks must call with the same sizes, dtype, mask and layout; this is checked with one
small ``Allgather`` per call and every rank raises the same error otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from mpi4py import MPI

from .attention import (
    KeyValues,
    accumulation_dtype,
    attention_signature,
    blocks_attention,
    blocks_attention_backward,
    check_attention_inputs,
    from_sequence_major,
    merge_partial,
    softmax_scale_for,
    to_sequence_major,
)
from .ringexchange import RingExchange, RingStats, RowLayout, message_namespace, open_channels
from .sequence import AttentionBlock, attention_blocks, query_start

__all__ = ["auto_pieces", "token_ring_attention", "token_ring_attention_backward"]

# remote(views of the query rows held, their first row, blocks) -> result fields for those rows
Remote = Callable[[dict[str, Any], int, list], dict[str, Any]]
# fold(first row, views of a returned result piece): merge it into this rank's result
Fold = Callable[[int, dict[str, Any]], None]


def auto_pieces(length: int) -> int:
    """Pieces per message when the caller does not choose: at least 64 rows each, at most 8."""
    return min(8, max(1, length // 64))


def _check_pieces(op: str, pieces: int | None, length: int) -> int:
    if pieces is None:
        return auto_pieces(length)
    if not isinstance(pieces, int) or isinstance(pieces, bool) or not 1 <= pieces <= length:
        raise ValueError(f"{op}: pieces must be an int in 1..L={length} (or None), got {pieces!r}")
    return pieces


def _pieces(first: int, length: int, pieces: int) -> list[tuple[int, int, int]]:
    """``(index, start, stop)`` of rows ``[first, length)`` cut on the grid of ``pieces`` equal pieces of the shard.

    Sender and receiver cut any suffix of the shard the same way, so a forwarded suffix needs no re-cutting.
    """
    size = -(-length // pieces)
    cut = ((j, max(first, j * size), min(length, (j + 1) * size)) for j in range(pieces))
    return [(j, a, b) for j, a, b in cut if a < b]


def _restrict(blocks: list[AttentionBlock], lo: int, hi: int) -> list[AttentionBlock]:
    """The parts of ``blocks`` whose query rows fall in ``[lo, hi)``."""
    out = []
    for blk in blocks:
        a, b = max(blk.q_rows.start, lo), min(blk.q_rows.stop, hi)
        if a < b:
            out.append(AttentionBlock(slice(a, b), blk.kv_rows, blk.diagonal))
    return out


def _rotate_queries(
    ex: RingExchange,
    comm: MPI.Intracomm,
    length: int,
    layout: str,
    causal: bool,
    pieces: int,
    bundle: RowLayout,
    own: dict[str, Any],
    local: Callable[[], None],
    result: RowLayout,
    remote: Remote,
    fold: Fold,
) -> None:
    """Drive the TokenRing schedule: move query bundles down the ring, return partial results to their owners.

    ``own`` holds this rank's bundle fields (sequence-major arrays of ``length`` rows); ``local()``
    does the step on its own keys, once the first transfers are under way. ``remote(views, start,
    blocks)`` computes the result fields for the query rows of ``views`` (from row ``start``) over
    ``blocks``; ``fold(start, views)`` merges a returned result. Every message is cut into row
    pieces: a piece is forwarded as soon as it arrives, computed, and its result sent back while
    the next piece is still on its way.
    """
    world, me = comm.Get_size(), comm.Get_rank()
    prev, nxt = (me - 1) % world, (me + 1) % world
    ring = _Schedule(world, length, layout, causal, pieces)
    start, carried, tag = ring.start, ring.carried, ring.tag

    def post(channel: int, buf: np.ndarray, first: int, source: int, step: int) -> list[tuple[int, int, int, Any]]:
        """Receives of the pieces of rows ``[first, length)`` into ``buf``: ``(index, start, stop, request)``."""
        cut = _pieces(first, length, pieces)
        return [(j, a, b, ex.irecv(channel, buf[a - first : b - first], source, tag(step, j))) for j, a, b in cut]

    held, held_start, held_pieces = None, length, []
    incoming: tuple[Any, int, list] = (None, length, [])
    results: list[tuple[int, int, np.ndarray, list]] = []  # (step, first row, buffer, pieces)
    for t in range(world):
        ex.step = t
        owner = (me + t) % world
        if t > 0:
            held, held_start, held_pieces = incoming
        incoming = (None, length, [])
        if t + 1 < world:
            first = carried((owner + 1) % world, t + 1)  # what ``nxt`` holds now, from the row we need
            if first < length:
                buf = bundle.empty(length - first)
                incoming = (buf, first, post(0, buf, first, nxt, t + 1))
        if t > 0:
            source = (me - t) % world
            first = start(me, source)
            if first < length:
                buf = result.empty(length - first)
                results.append((t, first, buf, post(1, buf, first, source, t)))
        forward = carried(owner, t + 1) if t + 1 < world else length
        if t == 0:
            if forward < length:
                with ex.compute():
                    out_buf = bundle.fill(bundle.empty(length - forward), **{n: a[forward:] for n, a in own.items()})
                for j, a, b in _pieces(forward, length, pieces):
                    ex.isend(0, out_buf[a - forward : b - forward], prev, tag(t + 1, j))
            with ex.compute():
                local()
        else:
            _serve(ex, ring, t, me, (held, held_start, held_pieces), forward, bundle, result, remote)
        while results and results[0][0] < t:
            _fold(ex, results.pop(0), result, fold)
    while results:
        _fold(ex, results.pop(0), result, fold)


class _Schedule:
    """Who holds which query rows when on a ring of ``world`` ranks, and the tags of the pieces that move."""

    def __init__(self, world: int, length: int, layout: str, causal: bool, pieces: int) -> None:
        self.world, self.length, self.layout, self.causal, self.pieces = world, length, layout, causal, pieces

    def start(self, owner: int, holder: int) -> int:
        """First query row of ``owner`` that ``holder`` needs (``length``: none)."""
        return query_start(owner, holder, self.world, self.length, self.layout, self.causal)

    def carried(self, owner: int, step: int) -> int:
        """First query row of ``owner`` that its holders at ``step`` and after need (``length``: none)."""
        holders = ((owner - u) % self.world for u in range(step, self.world))
        return min((self.start(owner, h) for h in holders), default=self.length)

    def tag(self, step: int, piece: int) -> int:
        return step * self.pieces + piece


def _serve(
    ex: RingExchange,
    ring: _Schedule,
    t: int,
    me: int,
    held_bundle: tuple[Any, int, list],
    forward: int,
    bundle: RowLayout,
    result: RowLayout,
    remote: Remote,
) -> None:
    """Step ``t`` on a foreign bundle: forward each piece down the ring from row ``forward`` as it arrives,
    compute what this rank's keys give the rows its owner waits for, and send that result back."""
    held, held_start, held_pieces = held_bundle
    owner, prev = (me + t) % ring.world, (me - 1) % ring.world
    blocks = attention_blocks(owner, me, ring.world, ring.length, ring.layout, ring.causal)
    mine = ring.start(owner, me)
    for j, a, b, req in held_pieces:
        ex.wait(req)
        lo = max(a, forward)
        if lo < b:
            ex.isend(0, held[lo - held_start : b - held_start], prev, ring.tag(t + 1, j))
        lo = max(a, mine)
        if lo < b:  # the owner waits for exactly these rows (pieces of [mine, length))
            part = _restrict(blocks, lo, b)
            with ex.compute():
                rows = held[lo - held_start : b - held_start]
                fields = remote({n: bundle.view(rows, n) for n, _, _ in bundle.fields}, lo, part)
                reply = result.fill(result.empty(b - lo), **fields)
            ex.isend(1, reply, owner, ring.tag(t, j))


def _fold(ex: RingExchange, entry: tuple[int, int, np.ndarray, list], result: RowLayout, fold: Fold) -> None:
    _, first, buf, pieces = entry
    for _, a, b, req in pieces:
        ex.wait(req)
        with ex.compute():
            rows = buf[a - first : b - first]
            fold(a, {n: result.view(rows, n) for n, _, _ in result.fields})


def token_ring_attention(
    q: Any,
    k: Any,
    v: Any,
    comm: MPI.Intracomm,
    causal: bool = False,
    layout: str = "zigzag",
    softmax_scale: float | None = None,
    *,
    pieces: int | None = None,
    stats: RingStats | None = None,
) -> tuple[Any, Any]:
    """Attention of this rank's queries over the whole sequence, keys and values staying in place.

    ``q [(B,) L, H, D]`` and ``k``/``v [(B,) L, H_kv, D]`` are this rank's shard of the sequence in
    ``layout`` (see :func:`collectives.shard_sequence`); ``H_kv`` must divide ``H`` (grouped-query
    attention), and a zigzag shard must have even ``L``. ``causal`` masks keys after each query.
    Returns ``(out, lse)``: ``out`` like ``q`` in ``q``'s dtype, ``lse [(B,) L, H]`` (the log-sum-exp
    of the scaled scores) in float32 (float64 for float64 inputs), the accumulation dtype.
    Partial results travel in ``q``'s dtype (``lse`` in the accumulation dtype). Each step's
    messages are cut into ``pieces`` row pieces (default :func:`auto_pieces`), so that computing one
    piece overlaps receiving the next and returning the last. Pass a :class:`RingStats` as ``stats``
    to get bytes and compute/wait times per step.
    """
    op = "token_ring_attention"
    shape = check_attention_inputs(op, q, k, v, layout, softmax_scale)
    pieces = _check_pieces(op, pieces, shape.length)
    channels = open_channels(op, comm, {**attention_signature(op, shape, causal, layout), "pieces": pieces})
    xp, length, world, me = shape.xp, shape.length, comm.Get_size(), comm.Get_rank()
    scale = softmax_scale_for(shape.head_dim, softmax_scale)
    acc = accumulation_dtype(shape.dtype)
    wire = message_namespace(xp)
    qs, ks, vs = (to_sequence_major(x, shape.batched) for x in (q, k, v))
    b, h = shape.batch, shape.heads
    ex = RingExchange(channels, world, ("q", "out+lse"), stats)
    acc_out: list[Any] = []
    kv: KeyValues | None = None

    def local() -> None:
        nonlocal kv
        kv = KeyValues(ks, vs)  # in the kernels' layout once: the keys never move
        blocks = attention_blocks(me, me, world, length, layout, causal)
        acc_out.extend(blocks_attention(qs, kv, blocks, scale, progress=ex.progress))

    def remote(views: dict[str, Any], first: int, blocks: list) -> dict[str, Any]:
        o, s = blocks_attention(xp.asarray(views["q"]), kv, blocks, scale, q_start=first, progress=ex.progress)
        return {"out": o, "lse": s}

    def fold(first: int, views: dict[str, Any]) -> None:
        rows = slice(first, first + views["out"].shape[0])
        merge_partial(acc_out[0][rows], acc_out[1][rows], xp.asarray(views["out"]), xp.asarray(views["lse"]))

    _rotate_queries(
        ex,
        comm,
        length,
        layout,
        causal,
        pieces,
        RowLayout.of(("q", shape.dtype, (b, h, shape.head_dim)), xp=wire),
        {"q": qs},
        local,
        RowLayout.of(("out", shape.dtype, (b, h, shape.head_dim)), ("lse", acc, (b, h)), xp=wire),
        remote,
        fold,
    )
    ex.finish()
    out, lse = acc_out
    return from_sequence_major(out.astype(shape.dtype), shape.batched), from_sequence_major(lse, shape.batched)


def token_ring_attention_backward(
    dout: Any,
    q: Any,
    k: Any,
    v: Any,
    out: Any,
    lse: Any,
    comm: MPI.Intracomm,
    causal: bool = False,
    layout: str = "zigzag",
    softmax_scale: float | None = None,
    *,
    pieces: int | None = None,
    stats: RingStats | None = None,
) -> tuple[Any, Any, Any]:
    """Gradients ``(dq, dk, dv)`` of this rank's shard, given ``dout`` and the forward pass's ``out`` and ``lse``.

    Arguments as in :func:`token_ring_attention` (``dout`` and ``out`` like ``q``, ``lse [(B,) L, H]``).
    Query bundles ``(q, dout, lse, delta)`` move down the ring; key/value gradients accumulate where the
    keys live; partial query gradients go back to their owner in the accumulation dtype. Returns
    arrays in ``q``'s dtype, accumulated in float32 (float64 for float64 inputs).
    """
    op = "token_ring_attention_backward"
    shape = check_attention_inputs(op, q, k, v, layout, softmax_scale, dout=dout, out=out, lse=lse)
    pieces = _check_pieces(op, pieces, shape.length)
    channels = open_channels(op, comm, {**attention_signature(op, shape, causal, layout), "pieces": pieces})
    xp, length, world, me = shape.xp, shape.length, comm.Get_size(), comm.Get_rank()
    scale = softmax_scale_for(shape.head_dim, softmax_scale)
    acc = accumulation_dtype(shape.dtype)
    wire = message_namespace(xp)
    b, h, d = shape.batch, shape.heads, shape.head_dim
    qs, ks, vs, dos, outs, lses = (to_sequence_major(x, shape.batched) for x in (q, k, v, dout, out, lse))
    ex = RingExchange(channels, world, ("q+dout+lse+delta", "dq"), stats)
    with ex.compute():
        lses = lses.astype(acc)
        delta = (dos.astype(acc) * outs.astype(acc)).sum(axis=-1)
        dq = xp.zeros((length, b, h, d), acc)
    kv: KeyValues | None = None

    def local() -> None:
        nonlocal kv
        kv = KeyValues(ks, vs, grads=True)  # the keys and their gradients stay here for the whole call
        blocks = attention_blocks(me, me, world, length, layout, causal)
        blocks_attention_backward(dos, qs, kv, lses, delta, blocks, scale, dq, progress=ex.progress)

    def remote(views: dict[str, Any], first: int, blocks: list) -> dict[str, Any]:
        got = {n: xp.asarray(a) for n, a in views.items()}
        part = xp.zeros((got["q"].shape[0], b, h, d), acc)
        blocks_attention_backward(
            got["dout"],
            got["q"],
            kv,
            got["lse"],
            got["delta"],
            blocks,
            scale,
            part,
            q_start=first,
            progress=ex.progress,
        )
        return {"dq": part}

    def fold(first: int, views: dict[str, Any]) -> None:
        dq[first : first + views["dq"].shape[0]] += xp.asarray(views["dq"])

    fields = [("q", shape.dtype, (b, h, d)), ("dout", shape.dtype, (b, h, d)), ("lse", acc, (b, h))]
    bundle = RowLayout.of(*fields, ("delta", acc, (b, h)), xp=wire)
    own = {"q": qs, "dout": dos, "lse": lses, "delta": delta}
    dq_layout = RowLayout.of(("dq", acc, (b, h, d)), xp=wire)
    _rotate_queries(ex, comm, length, layout, causal, pieces, bundle, own, local, dq_layout, remote, fold)
    with ex.compute():
        dk, dv = kv.gradients()
    ex.finish()
    return tuple(from_sequence_major(g.astype(shape.dtype), shape.batched) for g in (dq, dk, dv))
