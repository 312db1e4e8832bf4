"""Attention inputs: numpy or cupy arrays, their checks, the shape they agree on, and its signature."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..sequence import LAYOUTS, check_layout

SUPPORTED_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


_cupy: Any = None


def array_namespace(*arrays: Any) -> Any:
    """``cupy`` when any of ``arrays`` is a cupy array, else ``numpy`` (cupy is imported only if installed)."""
    global _cupy
    if _cupy is None:
        try:
            import cupy
        except ImportError:
            _cupy = False
        else:
            _cupy = cupy
    if _cupy is False:
        return np
    return _cupy.get_array_module(*arrays)


def to_host(x: Any) -> np.ndarray:
    """``x`` as a numpy array (a copy from the device for cupy arrays, ``x`` itself for numpy)."""
    return x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else np.asarray(x)


def accumulation_dtype(dtype: Any) -> np.dtype:
    """float64 for float64 inputs, float32 for anything narrower."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


@dataclass(frozen=True)
class AttentionShape:
    """The checked sizes of one rank's attention inputs."""

    batch: int  # B (1 when the inputs have no batch axis)
    length: int  # L, this rank's shard length
    heads: int  # H
    kv_heads: int  # H_kv
    head_dim: int  # D
    batched: bool  # the inputs had a leading batch axis
    dtype: np.dtype
    xp: Any

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads


def _describe(x: Any) -> str:
    return f"{type(x).__name__} of shape {tuple(x.shape)} and dtype {x.dtype}"


def check_attention_inputs(
    op: str, q: Any, k: Any, v: Any, layout: str, softmax_scale: float | None, **extra: Any
) -> AttentionShape:
    """Check one rank's ``q [(B,) L, H, D]``, ``k``/``v [(B,) L, H_kv, D]`` and return their sizes.

    ``extra`` arrays must have ``q``'s shape (``dout``, ``out``) or ``q``'s shape without its
    last axis (a name starting with ``lse``). Raises ``TypeError``/``ValueError`` naming ``op``.
    """
    check_layout(op, layout)
    arrays = {"q": q, "k": k, "v": v, **extra}
    for name, x in arrays.items():
        if not (hasattr(x, "shape") and hasattr(x, "dtype") and hasattr(x, "ndim")):
            raise TypeError(f"{op}: {name} must be a numpy or cupy array, got {type(x).__name__}")
    modules = {array_namespace(x).__name__ for x in arrays.values()}
    if len(modules) != 1:
        raise TypeError(f"{op}: mixed array types ({', '.join(sorted(modules))}); pass all numpy or all cupy arrays")
    if q.ndim not in (3, 4):
        raise ValueError(f"{op}: q must be [L, H, D] or [B, L, H, D], got {_describe(q)}")
    for name in ("k", "v"):
        if arrays[name].ndim != q.ndim:
            raise ValueError(f"{op}: {name} must have q's number of axes ({q.ndim}), got {_describe(arrays[name])}")
    for name, x in arrays.items():
        if np.dtype(x.dtype) not in SUPPORTED_DTYPES:
            raise TypeError(f"{op}: {name} must be float16, float32 or float64, got {_describe(x)}")
    for name in ("k", "v"):
        if arrays[name].dtype != q.dtype:
            raise TypeError(f"{op}: {name} must have q's dtype {q.dtype}, got {_describe(arrays[name])}")
    if k.shape != v.shape:
        raise ValueError(f"{op}: k and v must have the same shape, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    *qb, length, heads, dim = q.shape
    *kb, kv_length, kv_heads, kv_dim = k.shape
    if qb != kb:
        raise ValueError(f"{op}: q and k must have the same batch size, got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if kv_length != length:
        raise ValueError(
            f"{op}: q and k must hold the same tokens (shard length L), got q {tuple(q.shape)} and k {tuple(k.shape)}"
        )
    if kv_dim != dim:
        raise ValueError(f"{op}: q and k must have the same head size D, got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if min(q.shape) < 1 or min(k.shape) < 1:
        raise ValueError(f"{op}: empty inputs: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if heads % kv_heads:
        raise ValueError(
            f"{op}: the number of query heads H={heads} must be a multiple of the number of key/value heads "
            f"H_kv={kv_heads} (q {tuple(q.shape)}, k {tuple(k.shape)})"
        )
    if layout == "zigzag" and length % 2:
        raise ValueError(
            f"{op}: a zigzag shard holds two equal chunks, so its length must be even, got L={length} "
            f"(q {tuple(q.shape)}); shard the sequence with collectives.shard_sequence"
        )
    for name, x in extra.items():
        want = tuple(q.shape[:-1]) if name.startswith("lse") else tuple(q.shape)
        if tuple(x.shape) != want:
            raise ValueError(f"{op}: {name} must have shape {want}, got {_describe(x)}")
    if softmax_scale is not None and not (isinstance(softmax_scale, (int, float)) and math.isfinite(softmax_scale)):
        raise ValueError(f"{op}: softmax_scale must be a finite number or None, got {softmax_scale!r}")
    batch = qb[0] if qb else 1
    return AttentionShape(
        batch, length, heads, kv_heads, dim, bool(qb), np.dtype(q.dtype), array_namespace(*arrays.values())
    )


def attention_signature(op: str, shape: AttentionShape, causal: bool, layout: str) -> dict[str, int]:
    """What every rank of one distributed attention call must agree on, as named integers."""
    return {
        "operation": zlib.crc32(op.encode()),
        "batch B": shape.batch,
        "shard length L": shape.length,
        "heads H": shape.heads,
        "kv heads H_kv": shape.kv_heads,
        "head size D": shape.head_dim,
        "batch axis": int(shape.batched),
        "dtype": shape.dtype.num,
        "causal": int(bool(causal)),
        "layout": LAYOUTS.index(layout),
    }


def softmax_scale_for(head_dim: int, softmax_scale: float | None) -> float:
    """The scale of the scores: ``softmax_scale``, or ``1/sqrt(D)`` when it is ``None``."""
    return 1.0 / math.sqrt(head_dim) if softmax_scale is None else float(softmax_scale)
