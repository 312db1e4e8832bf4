"""Routing plans of the expert all-to-all: which rows travel where, in which order, and where outputs return.

Everything here is host-side index arithmetic on the routing table (``[N, K]``
expert ids), with no communication, so that it can be tested in one process.

Terms. A *pair* is one valid (token, slot) entry of the routing table, i.e.
one token routed to one expert. Expert ``e`` lives on rank ``owner[e]`` as its
local expert ``local[e]`` (local experts of a rank are numbered in ascending
global id). For one destination rank a token's *primary* pair is the one with
the lowest local expert there; its other pairs to that rank are *extras*.

Send order. The rows sent to a destination are the tokens of its primary
pairs, ordered by (local expert, token index). With ``dedup`` each token
therefore travels once per destination however many of its experts live
there; without it every pair is primary and the token travels once per pair.

Receive layout. The receiver places the rows in (local expert, source rank)
order, and within each (expert, source) sub-block the primaries first, then
the extras, each in token order. The extras are copies of rows that arrived
once (under a lower local expert) and are duplicated locally. Each expert's
input is therefore one contiguous slice. The outputs go back in the same
layout, so a source knows where each of its pairs' outputs lands.

Capacity. With a capacity ``C``, each source keeps at most ``C`` pairs per
expert: for every expert its pairs are ranked by (slot, token index), so that
first choices win over second choices and earlier tokens over later ones,
and the pairs ranked ``C`` or later are dropped. The rule uses only the source's
own routing table, so it is deterministic and needs no extra exchange.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ExpertMap", "ReceivePlan", "SendPlan", "plan_receive", "plan_send", "row_runs"]


@dataclass(frozen=True)
class ExpertMap:
    """Where each of ``num_experts`` experts lives among ``num_ranks`` ranks (one MoE layer)."""

    owner: np.ndarray  # [E] rank holding each expert
    local: np.ndarray  # [E] index of each expert among its owner's experts
    num_ranks: int

    @classmethod
    def from_owner(cls, owner: Any, num_ranks: int, *, op: str = "dispatch") -> ExpertMap:
        """The map of a 1-D array of owner ranks; an owner outside ``[0, num_ranks)`` is an error."""
        owner = np.asarray(owner)
        if owner.ndim != 1 or owner.size == 0 or not np.issubdtype(owner.dtype, np.integer):
            raise ValueError(
                f"{op}: a placement must be a non-empty 1-D integer array of owner ranks, "
                f"got shape {owner.shape} and dtype {owner.dtype}"
            )
        if owner.min() < 0 or owner.max() >= num_ranks:
            raise ValueError(f"{op}: placement names ranks {owner.min()}..{owner.max()} on {num_ranks} ranks")
        owner = owner.astype(np.int64)
        order = np.argsort(owner, kind="stable")
        counts = np.bincount(owner, minlength=num_ranks)
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        local = np.empty_like(owner)
        local[order] = np.arange(owner.size) - np.repeat(starts, counts)
        owner.flags.writeable = False
        local.flags.writeable = False
        return cls(owner, local, num_ranks)

    @classmethod
    def contiguous(cls, num_experts: int, num_ranks: int) -> ExpertMap:
        """Experts in ``num_ranks`` contiguous groups (sizes differ by at most one, larger groups first)."""
        sizes = np.full(num_ranks, num_experts // num_ranks)
        sizes[: num_experts % num_ranks] += 1
        return cls.from_owner(np.repeat(np.arange(num_ranks), sizes), num_ranks)

    @property
    def num_experts(self) -> int:
        return int(self.owner.size)

    @property
    def num_local(self) -> np.ndarray:
        """Experts per rank, ``[P]``."""
        return np.bincount(self.owner, minlength=self.num_ranks)

    def experts_of(self, rank: int) -> np.ndarray:
        """Global ids of ``rank``'s local experts, in local order."""
        return np.flatnonzero(self.owner == rank)

    def digest(self) -> int:
        """A 62-bit fingerprint of the map, to check that all ranks use the same one."""
        data = np.concatenate(([self.num_ranks], self.owner)).astype("<i8").tobytes()
        return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 2


@dataclass(frozen=True)
class SendPlan:
    """What one source rank sends and where the outputs of its pairs come back."""

    send_rows: np.ndarray  # [S] token index of each row sent, grouped by destination
    primaries: np.ndarray  # [P, L] rows sent per (destination, local expert)
    extras: np.ndarray  # [P, L] extra pairs per (destination, local expert)
    extra_index: np.ndarray  # [X] per extra pair (by destination, local expert, token): its row within the block sent
    return_slots: np.ndarray  # [R] flat pair index (token * K + slot) of each returned row, in arrival order
    kept: np.ndarray  # [N, K] bool: the pair is sent (valid and not dropped)
    dropped: np.ndarray  # [E] pairs dropped per expert by the capacity

    @property
    def send_counts(self) -> np.ndarray:
        """Rows sent per destination."""
        return self.primaries.sum(axis=1)

    @property
    def return_counts(self) -> np.ndarray:
        """Rows returned per destination (one per kept pair)."""
        return self.primaries.sum(axis=1) + self.extras.sum(axis=1)

    @property
    def extra_counts(self) -> np.ndarray:
        return self.extras.sum(axis=1)


def _stable_order(keys: np.ndarray, num_keys: int) -> np.ndarray:
    """Stable argsort of small non-negative integer keys (a radix sort when they fit in 16 bits)."""
    if num_keys <= 1 << 16:
        return np.argsort(keys.astype(np.uint16), kind="stable")
    return np.argsort(keys, kind="stable")


def _exclusive_cumsum(counts: np.ndarray) -> np.ndarray:
    flat = counts.reshape(-1)
    return (np.cumsum(flat) - flat).reshape(counts.shape)


def _capacity_keep(topk_idx: np.ndarray, valid: np.ndarray, num_experts: int, capacity: int) -> np.ndarray:
    """``[N, K]`` bool: the pair is within its expert's first ``capacity`` by (slot, token)."""
    by_slot = topk_idx.T.reshape(-1)  # slot-major, so a stable sort by expert ranks by (slot, token)
    chosen = np.flatnonzero(valid.T.reshape(-1))
    expert = by_slot[chosen]
    order = _stable_order(expert, num_experts)
    starts = _exclusive_cumsum(np.bincount(expert, minlength=num_experts))
    rank = np.empty(chosen.size, np.int64)
    rank[order] = np.arange(chosen.size) - starts[expert[order]]
    keep = np.zeros(by_slot.size, bool)
    keep[chosen[rank < capacity]] = True
    return keep.reshape(topk_idx.shape[::-1]).T


def _primary_slots(dest: np.ndarray, local: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """``[N, K]``: for each kept pair, the slot of its token's pair with the lowest local expert on the same rank."""
    k = dest.shape[1]
    best = np.tile(np.arange(k), (dest.shape[0], 1))
    best_local = local.copy()
    for slot in range(k):
        for other in range(k):
            if other == slot:
                continue
            better = kept[:, other] & (dest[:, other] == dest[:, slot]) & (local[:, other] < best_local[:, slot])
            best[better, slot] = other
            best_local[better, slot] = local[better, other]
    return best


def plan_send(topk_idx: np.ndarray, experts: ExpertMap, *, capacity: int | None = None, dedup: bool = True) -> SendPlan:
    """The send plan of a checked routing table ``topk_idx`` (``[N, K]``, ``-1`` = none)."""
    n, k = topk_idx.shape
    num_ranks, width = experts.num_ranks, max(int(experts.num_local.max()), 1)
    num_cells = num_ranks * width
    topk_idx = topk_idx.astype(np.int64, copy=False)
    valid = topk_idx >= 0
    dropped = np.zeros(experts.num_experts, np.int64)
    kept = valid
    if capacity is not None:
        kept = valid & _capacity_keep(topk_idx, valid, experts.num_experts, capacity)
        dropped = np.bincount(topk_idx[valid & ~kept], minlength=experts.num_experts)
    safe = np.where(kept, topk_idx, 0)
    dest = np.where(kept, experts.owner[safe], -1)
    local = experts.local[safe]
    if dedup and k > 1:
        primary_slot = _primary_slots(dest, local, kept)
        is_primary = kept & (primary_slot == np.arange(k))
    else:
        primary_slot = np.tile(np.arange(k), (n, 1))
        is_primary = kept
    cell = (dest * width + local).reshape(-1)  # (destination, local expert) of every pair

    # Primaries in (destination, local expert, token) order: pairs are in token order, the sort is stable.
    prim = np.flatnonzero(is_primary.reshape(-1))
    prim = prim[_stable_order(cell[prim], num_cells)]
    primaries = np.bincount(cell[prim], minlength=num_cells).reshape(num_ranks, width)
    dest_start = _exclusive_cumsum(primaries.sum(axis=1))
    row_in_block = np.zeros(n * k, np.int64)
    row_in_block[prim] = np.arange(prim.size) - dest_start[cell[prim] // width]

    extra = np.flatnonzero((kept & ~is_primary).reshape(-1))
    extra = extra[_stable_order(cell[extra], num_cells)]
    extras = np.bincount(cell[extra], minlength=num_cells).reshape(num_ranks, width)
    extra_primary = (extra // k) * k + primary_slot.reshape(-1)[extra]
    extra_index = row_in_block[extra_primary]

    # Returned rows arrive per destination in (local expert, primaries then extras, token) order.
    cell_start = _exclusive_cumsum(primaries + extras).reshape(-1)
    return_slots = np.empty(prim.size + extra.size, np.int64)
    prim_rank = np.arange(prim.size) - _exclusive_cumsum(primaries).reshape(-1)[cell[prim]]
    return_slots[cell_start[cell[prim]] + prim_rank] = prim
    extra_rank = np.arange(extra.size) - _exclusive_cumsum(extras).reshape(-1)[cell[extra]]
    return_slots[cell_start[cell[extra]] + primaries.reshape(-1)[cell[extra]] + extra_rank] = extra
    return SendPlan(
        send_rows=prim // k,
        primaries=primaries,
        extras=extras,
        extra_index=extra_index,
        return_slots=return_slots,
        kept=kept,
        dropped=dropped,
    )


@dataclass(frozen=True)
class ReceivePlan:
    """Where rows from each source land on the receiving rank."""

    counts: np.ndarray  # [L, P] rows per (local expert, source), extras included
    offsets: np.ndarray  # [L, P] first row of each (local expert, source) sub-block
    primaries: np.ndarray  # [P, L] rows that travel, per (source, local expert)
    extras: np.ndarray  # [P, L] rows copied locally, per (source, local expert)

    @property
    def num_rows(self) -> int:
        return int(self.counts.sum())

    @property
    def expert_bounds(self) -> np.ndarray:
        """``[L + 1]``: local expert ``l`` reads rows ``bounds[l]:bounds[l + 1]``."""
        return np.concatenate(([0], np.cumsum(self.counts.sum(axis=1))))

    def copies(self, extra_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(copy_from, copy_to)`` rows that fill the extras, from the sources' extra indices.

        ``extra_index`` holds, source after source, each source's extras in
        (local expert, token) order as the row within the block that source
        sent at which the token arrived.
        """
        num_sources, width = self.primaries.shape
        per_source = self.extras.sum(axis=1)
        if extra_index.size != per_source.sum():
            raise ValueError(f"expected {per_source.sum()} extra indices, got {extra_index.size}")
        source = np.repeat(np.arange(num_sources), per_source)
        cells = self.extras.reshape(-1)
        cell = np.repeat(np.arange(num_sources * width), cells)  # source * width + target expert
        target = cell % width
        rank_in_cell = np.arange(extra_index.size) - np.repeat(_exclusive_cumsum(cells), cells)
        # The token arrived in the segment of its primary expert within the source's block.
        segment_end = np.cumsum(self.primaries, axis=1)
        first = np.empty(extra_index.size, np.int64)
        for s in np.flatnonzero(per_source):
            mine = source == s
            first[mine] = np.searchsorted(segment_end[s], extra_index[mine], side="right")
        segment_start = segment_end - self.primaries
        copy_from = self.offsets[first, source] + extra_index - segment_start[source, first]
        copy_to = self.offsets[target, source] + self.primaries[source, target] + rank_in_cell
        return copy_from, copy_to


def plan_receive(primaries: np.ndarray, extras: np.ndarray) -> ReceivePlan:
    """The receive layout from per-(source, local expert) counts of rows that travel and of extras."""
    counts = (primaries + extras).T  # [L, P]
    offsets = _exclusive_cumsum(counts)
    return ReceivePlan(counts=counts, offsets=offsets, primaries=primaries, extras=extras)


def row_runs(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a row list into runs of consecutive rows: ``(first row, length)`` of each run, in order."""
    rows = np.asarray(rows, np.int64)
    if rows.size == 0:
        return rows, rows
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate(([0], breaks))
    lengths = np.diff(np.concatenate((starts, [rows.size])))
    return rows[starts], lengths
