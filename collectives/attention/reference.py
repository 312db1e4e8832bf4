"""Float64 reference attention over the whole sequence in one process, dense formulas sharing no kernel code."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .inputs import check_attention_inputs, to_host


def _reference_inputs(q: Any, k: Any, v: Any, softmax_scale: float | None) -> tuple[np.ndarray, ...]:
    check_attention_inputs("reference_attention", q, k, v, "contiguous", softmax_scale)
    arrays = [to_host(x).astype(np.float64) for x in (q, k, v)]
    if q.ndim == 3:
        arrays = [a[None] for a in arrays]
    qf, kf, vf = arrays
    group = qf.shape[2] // kf.shape[2]
    scale = 1.0 / math.sqrt(qf.shape[-1]) if softmax_scale is None else float(softmax_scale)
    return qf, np.repeat(kf, group, axis=2), np.repeat(vf, group, axis=2), np.float64(scale)


def _reference_probabilities(qf: np.ndarray, kf: np.ndarray, scale: np.float64, causal: bool) -> np.ndarray:
    s = np.einsum("bqhd,bkhd->bhqk", qf, kf) * scale
    if causal:
        n = s.shape[-1]
        s = np.where(np.tril(np.ones((n, n), bool)), s, -np.inf)
    return s


def reference_attention(
    q: Any, k: Any, v: Any, causal: bool = False, softmax_scale: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Attention over the whole sequence in float64: ``(out [(B,) S, H, D], lse [(B,) S, H])`` (numpy)."""
    qf, kf, vf, scale = _reference_inputs(q, k, v, softmax_scale)
    s = _reference_probabilities(qf, kf, scale, causal)
    top = s.max(axis=-1, keepdims=True)
    lse = top + np.log(np.exp(s - top).sum(axis=-1, keepdims=True))
    out = np.einsum("bhqk,bkhd->bqhd", np.exp(s - lse), vf)
    lse = lse[..., 0].transpose(0, 2, 1)
    return (out[0], lse[0]) if q.ndim == 3 else (out, lse)


def reference_attention_backward(
    dout: Any, q: Any, k: Any, v: Any, causal: bool = False, softmax_scale: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients ``(dq, dk, dv)`` of :func:`reference_attention`'s ``out`` against ``dout``, in float64."""
    qf, kf, vf, scale = _reference_inputs(q, k, v, softmax_scale)
    do = to_host(dout).astype(np.float64)
    if q.ndim == 3:
        do = do[None]
    kv_heads = k.shape[-2]
    s = _reference_probabilities(qf, kf, scale, causal)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    dp = np.einsum("bqhd,bkhd->bhqk", do, vf)
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True)) * scale
    dq = np.einsum("bhqk,bkhd->bqhd", ds, kf)
    dk = np.einsum("bhqk,bqhd->bkhd", ds, qf)
    dv = np.einsum("bhqk,bqhd->bkhd", p, do)
    b, n, h, d = dk.shape
    dk = dk.reshape(b, n, kv_heads, h // kv_heads, d).sum(axis=3)
    dv = dv.reshape(b, n, kv_heads, h // kv_heads, d).sum(axis=3)
    return (dq[0], dk[0], dv[0]) if q.ndim == 3 else (dq, dk, dv)
