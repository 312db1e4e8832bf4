"""Block attention kernels (forward and backward, tiled, float32 or float64 accumulation) and their merge."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .inputs import accumulation_dtype, array_namespace
from .layout import heads_major, sequence_major

Progress = Callable[[], Any] | None
TILE_BYTES = 2 << 20  # score-matrix bytes per query tile (a tile is also the unit between progress calls)


def _tile_rows(batch: int, heads: int, keys: int) -> int:
    return max(1, TILE_BYTES // (4 * batch * heads * max(keys, 1)))


def _causal_bias(xp: Any, first_row: int, rows: int, keys: int, group: int, dtype: np.dtype) -> Any:
    """0 where query row ``first_row + i`` may see key ``j`` (``j <= i``), ``-inf`` elsewhere, as ``[G*T, keys]``."""
    i = xp.arange(first_row, first_row + rows)[:, None]
    j = xp.arange(keys)[None, :]
    bias = xp.where(j > i, -xp.inf, 0.0).astype(dtype)
    return xp.tile(bias, (group, 1))


class KeyValues:
    """One shard's keys and values in the kernels' layout, ``[B, H_kv, L, D]`` in the accumulation dtype.

    Made once per key shard (TokenRing's never move, so once per call) and sliced by rows with
    ``kv[rows]`` (views). With ``grads=True`` it also holds zeroed key/value gradient accumulators
    in the same layout, which :func:`block_attention_backward` adds into.
    """

    def __init__(self, k: Any, v: Any, *, grads: bool = False) -> None:
        acc = accumulation_dtype(k.dtype)
        self.kt = heads_major(k, k.shape[2], acc)
        self.vt = heads_major(v, v.shape[2], acc)
        xp = array_namespace(self.kt)
        self.dkt = xp.zeros_like(self.kt) if grads else None
        self.dvt = xp.zeros_like(self.vt) if grads else None

    def __getitem__(self, rows: slice) -> KeyValues:
        part = object.__new__(KeyValues)
        part.kt, part.vt = self.kt[:, :, rows], self.vt[:, :, rows]
        part.dkt = None if self.dkt is None else self.dkt[:, :, rows]
        part.dvt = None if self.dvt is None else self.dvt[:, :, rows]
        return part

    @property
    def length(self) -> int:
        return self.kt.shape[2]

    def gradients(self) -> tuple[Any, Any]:
        """The accumulated ``(dk, dv)`` as sequence-major ``[L, B, H_kv, D]`` arrays."""
        kv_heads = self.kt.shape[1]
        return sequence_major(self.dkt, self.length, kv_heads), sequence_major(self.dvt, self.length, kv_heads)


def block_attention(
    q: Any, kv: KeyValues, scale: float, diagonal: bool = False, *, progress: Progress = None
) -> tuple[Any, Any]:
    """Attention of queries ``q [Lq, B, H, D]`` over the keys and values ``kv`` (``Lk`` rows).

    Returns ``(out [Lq, B, H, D], lse [Lq, B, H])`` in the accumulation dtype. ``diagonal``
    applies the causal mask of a block on the diagonal (``Lq == Lk``, query ``i`` sees keys ``<= i``).
    """
    xp = array_namespace(q, kv.kt)
    acc = accumulation_dtype(q.dtype)
    rows, batch, heads, dim = q.shape
    keys, kv_heads = kv.length, kv.kt.shape[1]
    group = heads // kv_heads
    if keys == 0:  # nothing to see: zero output, lse = -inf
        return xp.zeros((rows, batch, heads, dim), acc), xp.full((rows, batch, heads), -xp.inf, acc)
    out = xp.empty((rows, batch, heads, dim), acc)
    lse = xp.empty((rows, batch, heads), acc)
    step = _tile_rows(batch, heads, keys)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        seen = r1 if diagonal else keys  # keys past the tile's last row are all masked
        qt = heads_major(q[r0:r1], kv_heads, acc)  # [B, Hkv, G*T, D]
        s = qt @ kv.kt[:, :, :seen].swapaxes(-1, -2)
        s *= scale
        if diagonal:
            s += _causal_bias(xp, r0, r1 - r0, seen, group, acc)
        m = s.max(axis=-1)
        m = xp.where(xp.isfinite(m), m, 0.0)
        s -= m[..., None]
        xp.exp(s, out=s)
        total = s.sum(axis=-1)
        o = s @ kv.vt[:, :, :seen]
        o /= xp.where(total > 0, total, 1.0)[..., None]
        with np.errstate(divide="ignore"):
            tile_lse = xp.where(total > 0, m + xp.log(total), -xp.inf)
        out[r0:r1] = sequence_major(o, r1 - r0, heads)
        lse[r0:r1] = sequence_major(tile_lse, r1 - r0, heads)
        if progress is not None:
            progress()
    return out, lse


def block_attention_backward(
    dout: Any,
    q: Any,
    kv: KeyValues,
    lse: Any,
    delta: Any,
    scale: float,
    diagonal: bool,
    dq: Any,
    *,
    progress: Progress = None,
) -> None:
    """Add this block's gradient contributions into ``dq [Lq, B, H, D]`` and ``kv``'s key/value gradients.

    ``lse [Lq, B, H]`` is the log-sum-exp of the *whole* attention of each query row (from the
    forward pass) and ``delta = sum(dout * out, -1)``, so that blocks can be done in any order
    and anywhere. ``dq`` is an accumulator in the accumulation dtype (a view is fine); ``kv``
    must have been made with ``grads=True``.
    """
    xp = array_namespace(q, kv.kt)
    acc = accumulation_dtype(q.dtype)
    rows, batch, heads, _ = q.shape
    keys, kv_heads = kv.length, kv.kt.shape[1]
    group = heads // kv_heads
    kt, vt, dkt, dvt = kv.kt, kv.vt, kv.dkt, kv.dvt
    step = _tile_rows(batch, heads, keys)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        seen = r1 if diagonal else keys
        qt = heads_major(q[r0:r1], kv_heads, acc)
        dot = heads_major(dout[r0:r1], kv_heads, acc)
        lt = heads_major(lse[r0:r1], kv_heads, acc)
        lt = xp.where(xp.isfinite(lt), lt, xp.inf)  # a row that saw nothing has p = 0 everywhere
        dt = heads_major(delta[r0:r1], kv_heads, acc)
        p = qt @ kt[:, :, :seen].swapaxes(-1, -2)
        p *= scale
        if diagonal:
            p += _causal_bias(xp, r0, r1 - r0, seen, group, acc)
        p -= lt[..., None]
        xp.exp(p, out=p)
        dvt[:, :, :seen] += p.swapaxes(-1, -2) @ dot
        ds = dot @ vt[:, :, :seen].swapaxes(-1, -2)
        ds -= dt[..., None]
        ds *= p
        ds *= scale
        dq[r0:r1] += sequence_major(ds @ kt[:, :, :seen], r1 - r0, heads)
        dkt[:, :, :seen] += ds.swapaxes(-1, -2) @ qt
        if progress is not None:
            progress()


def merge_partial(out: Any, lse: Any, block_out: Any, block_lse: Any) -> None:
    """Fold a partial result into ``(out, lse)`` in place: the softmax over the union of both key sets.

    ``new = logaddexp(lse, block_lse)``, ``out = e^(lse-new) out + e^(block_lse-new) block_out``,
    computed in ``out``'s dtype; a side with ``lse = -inf`` (it saw no key) weighs nothing, and
    when both are ``-inf`` the row stays zero with ``lse = -inf``.
    """
    xp = array_namespace(out, block_out)
    block_lse = block_lse.astype(lse.dtype, copy=False)
    new = xp.logaddexp(lse, block_lse)
    ref = xp.where(xp.isfinite(new), new, 0.0)
    w_old = xp.exp(lse - ref)[..., None]
    w_new = xp.exp(block_lse - ref)[..., None]
    out *= w_old
    out += w_new * block_out.astype(out.dtype, copy=False)
    lse[...] = new


def blocks_attention(
    q: Any, kv: KeyValues, blocks: Sequence[Any], scale: float, *, q_start: int = 0, progress: Progress = None
) -> tuple[Any, Any]:
    """Attention of query rows ``[q_start, q_start + len(q))`` of a shard over the listed blocks of a key shard.

    ``blocks`` are :class:`collectives.sequence.AttentionBlock` (row slices of whole shards);
    their results are merged into one ``(out, lse)`` for the given rows.
    """
    if len(blocks) == 1 and blocks[0].q_rows.start == q_start and blocks[0].q_rows.stop == q_start + q.shape[0]:
        b = blocks[0]
        return block_attention(q, kv[b.kv_rows], scale, b.diagonal, progress=progress)
    xp = array_namespace(q, kv.kt)
    acc = accumulation_dtype(q.dtype)
    out = xp.zeros(q.shape, acc)
    lse = xp.full(q.shape[:-1], -xp.inf, acc)
    for b in blocks:
        rows = slice(b.q_rows.start - q_start, b.q_rows.stop - q_start)
        o, s = block_attention(q[rows], kv[b.kv_rows], scale, b.diagonal, progress=progress)
        merge_partial(out[rows], lse[rows], o, s)
    return out, lse


def blocks_attention_backward(
    dout: Any,
    q: Any,
    kv: KeyValues,
    lse: Any,
    delta: Any,
    blocks: Sequence[Any],
    scale: float,
    dq: Any,
    *,
    q_start: int = 0,
    progress: Progress = None,
) -> None:
    """Gradient contributions of the listed blocks, added into ``dq`` (rows from ``q_start``) and ``kv``'s gradients."""
    for b in blocks:
        rows = slice(b.q_rows.start - q_start, b.q_rows.stop - q_start)
        block_attention_backward(
            dout[rows], q[rows], kv[b.kv_rows], lse[rows], delta[rows], scale, b.diagonal, dq[rows], progress=progress
        )
