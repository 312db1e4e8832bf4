"""Sequence-major ``[L, B, H, D]`` arrays and the heads-major views the kernels compute on."""

from __future__ import annotations

from typing import Any

import numpy as np

from .inputs import array_namespace


def to_sequence_major(x: Any, batched: bool) -> Any:
    """``[L, H, D]`` -> ``[L, 1, H, D]`` and ``[B, L, ...]`` -> ``[L, B, ...]`` (views)."""
    if not batched:
        return x[:, None]
    return x.swapaxes(0, 1)


def from_sequence_major(x: Any, batched: bool) -> Any:
    """Inverse of :func:`to_sequence_major` (a contiguous array)."""
    xp = array_namespace(x)
    return xp.ascontiguousarray(x.swapaxes(0, 1) if batched else x[:, 0])


def heads_major(x: Any, kv_heads: int, dtype: np.dtype) -> Any:
    """``[T, B, H, ...]`` -> ``[B, H_kv, G*T, ...]`` in ``dtype`` (query head h = kv head h // G, index g)."""
    xp = array_namespace(x)
    t, b, h = x.shape[:3]
    rest = x.shape[3:]
    g = h // kv_heads
    y = x.reshape(t, b, kv_heads, g, *rest)
    y = y.transpose(1, 2, 3, 0, *range(4, 4 + len(rest)))
    return xp.ascontiguousarray(y, dtype=dtype).reshape(b, kv_heads, g * t, *rest)


def sequence_major(y: Any, rows: int, heads: int) -> Any:
    """Inverse of :func:`heads_major`: ``[B, H_kv, G*T, ...]`` -> ``[T, B, H, ...]`` (a view when it can)."""
    b, kv_heads = y.shape[:2]
    rest = y.shape[3:]
    g = heads // kv_heads
    z = y.reshape(b, kv_heads, g, rows, *rest).transpose(3, 0, 1, 2, *range(4, 4 + len(rest)))
    return z.reshape(rows, b, heads, *rest)
