"""Block attention kernels for sequence-parallel attention, their merge, and a float64 reference.

The kernels work on *sequence-major* arrays, ``[L, B, H, D]`` for queries and ``[L, B, H_kv, D]``
for keys and values (``H_kv`` divides ``H``; query head ``h`` uses key head ``h // (H / H_kv)``),
so that any run of rows is one contiguous piece of memory that can travel as one message.
They accumulate in float32, or float64 for float64 inputs, tile the queries so that the score
matrix stays small, and call a ``progress`` function between tiles (ring algorithms use it to
keep their nonblocking transfers moving while the block is computed). Rows that see no key get
``lse = -inf`` and a zero output; merging handles ``-inf`` on either side.

``reference_attention`` and ``reference_attention_backward`` compute the whole sequence in one
process in float64 with dense formulas that share no code with the kernels; tests use them.
The same code runs on numpy and cupy arrays.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .sequence import LAYOUTS, check_layout

__all__ = [
    "AttentionShape",
    "KeyValues",
    "accumulation_dtype",
    "array_namespace",
    "attention_signature",
    "block_attention",
    "block_attention_backward",
    "blocks_attention",
    "blocks_attention_backward",
    "check_attention_inputs",
    "from_sequence_major",
    "merge_partial",
    "reference_attention",
    "reference_attention_backward",
    "softmax_scale_for",
    "to_host",
    "to_sequence_major",
]

Progress = Callable[[], Any] | None
SUPPORTED_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
TILE_BYTES = 2 << 20  # score-matrix bytes per query tile (a tile is also the unit between progress calls)

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


def to_sequence_major(x: Any, batched: bool) -> Any:
    """``[L, H, D]`` -> ``[L, 1, H, D]`` and ``[B, L, ...]`` -> ``[L, B, ...]`` (views)."""
    if not batched:
        return x[:, None]
    return x.swapaxes(0, 1)


def from_sequence_major(x: Any, batched: bool) -> Any:
    """Inverse of :func:`to_sequence_major` (a contiguous array)."""
    xp = array_namespace(x)
    return xp.ascontiguousarray(x.swapaxes(0, 1) if batched else x[:, 0])


def _heads_major(x: Any, kv_heads: int, dtype: np.dtype) -> Any:
    """``[T, B, H, ...]`` -> ``[B, H_kv, G*T, ...]`` in ``dtype`` (query head h = kv head h // G, index g)."""
    xp = array_namespace(x)
    t, b, h = x.shape[:3]
    rest = x.shape[3:]
    g = h // kv_heads
    y = x.reshape(t, b, kv_heads, g, *rest)
    y = y.transpose(1, 2, 3, 0, *range(4, 4 + len(rest)))
    return xp.ascontiguousarray(y, dtype=dtype).reshape(b, kv_heads, g * t, *rest)


def _sequence_major(y: Any, rows: int, heads: int) -> Any:
    """Inverse of :func:`_heads_major`: ``[B, H_kv, G*T, ...]`` -> ``[T, B, H, ...]`` (a view when it can)."""
    b, kv_heads = y.shape[:2]
    rest = y.shape[3:]
    g = heads // kv_heads
    z = y.reshape(b, kv_heads, g, rows, *rest).transpose(3, 0, 1, 2, *range(4, 4 + len(rest)))
    return z.reshape(rows, b, heads, *rest)


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
        self.kt = _heads_major(k, k.shape[2], acc)
        self.vt = _heads_major(v, v.shape[2], acc)
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
        return _sequence_major(self.dkt, self.length, kv_heads), _sequence_major(self.dvt, self.length, kv_heads)


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
        qt = _heads_major(q[r0:r1], kv_heads, acc)  # [B, Hkv, G*T, D]
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
        out[r0:r1] = _sequence_major(o, r1 - r0, heads)
        lse[r0:r1] = _sequence_major(tile_lse, r1 - r0, heads)
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
        qt = _heads_major(q[r0:r1], kv_heads, acc)
        dot = _heads_major(dout[r0:r1], kv_heads, acc)
        lt = _heads_major(lse[r0:r1], kv_heads, acc)
        lt = xp.where(xp.isfinite(lt), lt, xp.inf)  # a row that saw nothing has p = 0 everywhere
        dt = _heads_major(delta[r0:r1], kv_heads, acc)
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
        dq[r0:r1] += _sequence_major(ds @ kt[:, :, :seen], r1 - r0, heads)
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


def softmax_scale_for(head_dim: int, softmax_scale: float | None) -> float:
    """The scale of the scores: ``softmax_scale``, or ``1/sqrt(D)`` when it is ``None``."""
    return 1.0 / math.sqrt(head_dim) if softmax_scale is None else float(softmax_scale)


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
