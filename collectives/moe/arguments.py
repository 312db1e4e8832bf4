"""What ``dispatch`` and ``combine`` accept, and what every rank must agree on (checked on every rank alike)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..routing import ExpertMap
from ..settings import settings

HEADER = ("row width", "item size", "dtype kind", "number of experts", "placement", "dedup")
_PACK_MODES = ("gather", "mpi")
_ROW_KINDS = "biufcV"  # numbers, and opaque fixed-size records without objects (bfloat16 and the like)


def fail(op: str, message: str) -> None:
    """Raise the ``ValueError`` of a bad argument, naming the operation."""
    raise ValueError(f"{op}: {message}")


def expert_map(placement: Any, num_experts: int, num_ranks: int) -> ExpertMap:
    """The :class:`ExpertMap` of ``placement``: ``None`` (contiguous), owner ranks, a one-layer placement or a map."""
    if placement is None:
        return ExpertMap.contiguous(num_experts, num_ranks)
    if hasattr(placement, "owner") and not isinstance(placement, ExpertMap):
        owner = np.asarray(placement.owner)
        if owner.ndim == 2:
            if owner.shape[0] != 1:
                fail("dispatch", f"a placement of {owner.shape[0]} layers: pass one layer, placement[layer]")
            owner = owner[0]
        placement = owner
    if isinstance(placement, ExpertMap):
        experts = placement
        if experts.num_ranks != num_ranks:
            fail("dispatch", f"placement is for {experts.num_ranks} ranks, the communicator has {num_ranks}")
    else:
        experts = ExpertMap.from_owner(placement, num_ranks)
    if experts.num_experts != num_experts:
        fail("dispatch", f"placement has {experts.num_experts} experts, num_experts={num_experts}")
    return experts


def check_routing(x: Any, topk_idx: np.ndarray, topk_weights: np.ndarray, num_experts: int) -> None:
    """Check ``x``, ``topk_idx`` and ``topk_weights`` for ``dispatch`` before anything is sent."""
    op = "dispatch"
    if getattr(x, "ndim", None) != 2 or x.shape[1] < 1:
        fail(op, f"x must be a [tokens, features] array with features >= 1, got shape {getattr(x, 'shape', None)}")
    dtype = np.dtype(x.dtype)
    if dtype.hasobject or dtype.kind not in _ROW_KINDS:
        raise TypeError(
            f"{op}: x must hold numbers (its rows travel as raw bytes), got dtype {dtype} "
            f"({x.shape[0]} x {x.shape[1]}): a row of Python objects is pointers into this process"
        )
    if topk_idx.ndim != 2 or topk_idx.shape[0] != x.shape[0]:
        fail(op, f"topk_idx must be [tokens, k] with tokens = {x.shape[0]}, got shape {topk_idx.shape}")
    if not np.issubdtype(topk_idx.dtype, np.integer):
        fail(op, f"topk_idx must hold integer expert ids, got dtype {topk_idx.dtype}")
    if topk_weights.shape != topk_idx.shape:
        fail(op, f"topk_weights has shape {topk_weights.shape}, topk_idx {topk_idx.shape}")
    if not np.issubdtype(topk_weights.dtype, np.floating):
        fail(op, f"topk_weights must be floating point, got dtype {topk_weights.dtype}")
    if num_experts < 1:
        fail(op, f"num_experts must be >= 1, got {num_experts}")
    if topk_idx.size:
        low, high = int(topk_idx.min()), int(topk_idx.max())
        if low < -1 or high >= num_experts:
            fail(op, f"topk_idx holds ids {low}..{high}; valid are 0..{num_experts - 1} and -1 (none)")
    if topk_idx.shape[1] > 1 and topk_idx.size:
        ordered = np.sort(topk_idx, axis=1)
        repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
        if repeated.any():
            row = int(np.flatnonzero(repeated.any(axis=1))[0])
            fail(op, f"topk_idx row {row} names an expert twice: {topk_idx[row].tolist()}")


def check_agreement(op: str, headers: np.ndarray, names: tuple[str, ...]) -> None:
    """Raise (on every rank alike: all see the same headers) when the ranks disagree."""
    for column, name in enumerate(names):
        values = headers[:, column]
        if (values != values[0]).any():
            fail(op, f"ranks disagree on the {name}: {values.tolist()} (one value per rank)")


def pack_mode(op: str, pack: str | None) -> str:
    """``pack``, or ``config.moe_pack`` when it is ``None``; an unknown mode raises."""
    pack = settings.moe_pack if pack is None else pack
    if pack not in _PACK_MODES:
        fail(op, f"pack must be one of {', '.join(_PACK_MODES)}, got {pack!r}")
    return pack
