"""Sequence layouts for sequence parallelism: which tokens a rank holds, and which of them can attend.

Two layouts split a sequence of ``S`` tokens over ``W`` ranks:

* ``contiguous``: rank ``r`` holds tokens ``[r S/W, (r+1) S/W)``; ``S`` must be a multiple of ``W``.
* ``zigzag``: the sequence is cut into ``2W`` equal chunks and rank ``r`` holds chunks ``r`` and
  ``2W-1-r`` (in that order), so that under a causal mask every rank has the same amount of work;
  ``S`` must be a multiple of ``2W``.

:func:`attention_blocks` says, for the queries of one rank and the keys of another, which rows of
each shard meet and whether the causal mask cuts through the block, so that algorithms compute
(and send) only what the mask lets through.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "LAYOUTS",
    "AttentionBlock",
    "attention_blocks",
    "check_layout",
    "shard_positions",
    "shard_sequence",
    "unshard_sequence",
]

LAYOUTS = ("zigzag", "contiguous")


def check_layout(op: str, layout: str) -> None:
    """Raise ``ValueError`` naming ``op`` unless ``layout`` is one of :data:`LAYOUTS`."""
    if layout not in LAYOUTS:
        raise ValueError(f"{op}: layout must be one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}")


def _chunks(op: str, seq_len: int, world: int, layout: str) -> int:
    """The number of equal chunks the layout cuts the sequence into, after checking it can."""
    check_layout(op, layout)
    if world < 1:
        raise ValueError(f"{op}: the number of ranks must be >= 1, got {world}")
    chunks = 2 * world if layout == "zigzag" else world
    if seq_len < chunks or seq_len % chunks:
        raise ValueError(
            f"{op}: a sequence of {seq_len} tokens cannot be split over {world} ranks in the {layout} layout: "
            f"its length must be a positive multiple of {chunks} ({'2 x ' if layout == 'zigzag' else ''}ranks)"
        )
    return chunks


def shard_positions(seq_len: int, rank: int, world: int, layout: str = "zigzag") -> np.ndarray:
    """Global token indices (int64, in shard order) of the shard rank ``rank`` of ``world`` holds."""
    chunks = _chunks("shard_positions", seq_len, world, layout)
    if not 0 <= rank < world:
        raise ValueError(f"shard_positions: rank {rank} is outside 0..{world - 1}")
    size = seq_len // chunks
    owned = [rank] if layout == "contiguous" else [rank, 2 * world - 1 - rank]
    return np.concatenate([np.arange(c * size, (c + 1) * size, dtype=np.int64) for c in owned])


def _axis(op: str, x: Any, axis: int) -> int:
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"{op}: axis {axis} is out of range for an array of shape {tuple(x.shape)}")
    return axis % x.ndim


def shard_sequence(x: Any, rank: int, world: int, layout: str = "zigzag", *, axis: int = -3) -> Any:
    """The shard of the full sequence ``x`` that rank ``rank`` of ``world`` holds (a new array).

    ``axis`` is the sequence axis: the default ``-3`` fits ``[S, H, D]`` and ``[B, S, H, D]``;
    use ``-2`` for a log-sum-exp of shape ``[S, H]`` / ``[B, S, H]``. Works on numpy and cupy arrays.
    """
    ax = _axis("shard_sequence", x, axis)
    index = shard_positions(x.shape[ax], rank, world, layout)
    if layout == "contiguous":
        return x[(slice(None),) * ax + (slice(int(index[0]), int(index[-1]) + 1),)].copy()
    half = len(index) // 2
    first = x[(slice(None),) * ax + (slice(int(index[0]), int(index[0]) + half),)]
    second = x[(slice(None),) * ax + (slice(int(index[half]), int(index[half]) + half),)]
    return _concatenate([first, second], ax)


def unshard_sequence(shards: Sequence[Any], layout: str = "zigzag", *, axis: int = -3) -> Any:
    """The full sequence from the shards of every rank, in rank order (inverse of :func:`shard_sequence`)."""
    world = len(shards)
    if world < 1:
        raise ValueError("unshard_sequence: no shards given")
    check_layout("unshard_sequence", layout)
    ax = _axis("unshard_sequence", shards[0], axis)
    shapes = {tuple(s.shape) for s in shards}
    if len(shapes) != 1:
        raise ValueError(f"unshard_sequence: shards must all have the same shape, got {sorted(shapes)}")
    if layout == "contiguous":
        return _concatenate(list(shards), ax)
    length = shards[0].shape[ax]
    if length % 2:
        raise ValueError(f"unshard_sequence: zigzag shards hold two equal chunks, but their length is {length}")
    half = length // 2
    lo = (slice(None),) * ax + (slice(0, half),)
    hi = (slice(None),) * ax + (slice(half, length),)
    return _concatenate([s[lo] for s in shards] + [s[hi] for s in reversed(shards)], ax)


def _concatenate(parts: list[Any], axis: int) -> Any:
    from .attention import array_namespace

    return array_namespace(*parts).concatenate(parts, axis=axis)


class AttentionBlock(NamedTuple):
    """Queries ``q_rows`` of one shard against keys ``kv_rows`` of another (row slices of the shards).

    ``diagonal`` means both slices cover the same chunk of the sequence, so the causal mask is the
    lower triangle of the block; otherwise every query in the block sees every key.
    """

    q_rows: slice
    kv_rows: slice
    diagonal: bool


def attention_blocks(
    q_rank: int, kv_rank: int, world: int, length: int, layout: str, causal: bool
) -> list[AttentionBlock]:
    """The blocks in which rank ``q_rank``'s queries attend rank ``kv_rank``'s keys (shards of ``length``).

    Without a mask it is the whole shard against the whole shard. Under a causal mask, in the
    contiguous layout a later rank's queries see all of an earlier rank's keys and none of a later
    one's; in the zigzag layout (chunks ``a = rank``, ``b = 2W-1-rank``) a foreign shard is met
    either by all queries against the first key chunk, or by the second query chunk against all
    keys, which halves both the work and what has to travel.
    """
    whole = slice(0, length)
    if not causal:
        return [AttentionBlock(whole, whole, False)]
    if layout == "contiguous":
        if q_rank == kv_rank:
            return [AttentionBlock(whole, whole, True)]
        return [AttentionBlock(whole, whole, False)] if q_rank > kv_rank else []
    half = length // 2
    first, second = slice(0, half), slice(half, length)
    if q_rank == kv_rank:
        return [
            AttentionBlock(first, first, True),
            AttentionBlock(second, first, False),
            AttentionBlock(second, second, True),
        ]
    if q_rank > kv_rank:
        return [AttentionBlock(whole, first, False)]
    return [AttentionBlock(second, whole, False)]


def query_start(q_rank: int, kv_rank: int, world: int, length: int, layout: str, causal: bool) -> int:
    """First row of ``q_rank``'s shard that rank ``kv_rank``'s keys need (``length`` when none).

    The rows needed are always a suffix of the shard, which is what lets them travel as one
    contiguous message.
    """
    blocks = attention_blocks(q_rank, kv_rank, world, length, layout, causal)
    return min((b.q_rows.start for b in blocks), default=length)
