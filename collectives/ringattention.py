"""Ring attention, the baseline TokenRing is measured against: queries stay, keys and values rotate.

At step ``t`` rank ``r`` holds the keys and values of rank ``r-t`` (they moved one rank up the
ring per step), attends its own queries over them and merges the result locally. This is the
algorithm of the public ring-attention implementations, zigzag variant included: under a causal
mask it computes only the unmasked half of each block, but always passes the whole ``(k, v)``
shard on, so every step sends ``2 L H_kv D`` elements one way around the ring.

The backward pass rotates ``(k, v)`` the same way plus, one step behind on a second channel, the
running ``(dk, dv)`` of the shard being passed (in the accumulation dtype), which arrives back at
its owner after a full turn.

Same arguments, results, communicator caching and cross-rank checks as
:func:`collectives.token_ring_attention`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

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
from .sequence import attention_blocks

__all__ = ["ring_attention", "ring_attention_backward"]


def ring_attention(
    q: Any,
    k: Any,
    v: Any,
    comm: MPI.Intracomm,
    causal: bool = False,
    layout: str = "zigzag",
    softmax_scale: float | None = None,
    *,
    stats: RingStats | None = None,
) -> tuple[Any, Any]:
    """Attention of this rank's queries over the whole sequence by rotating keys and values.

    Arguments and results as in :func:`collectives.token_ring_attention`.
    """
    op = "ring_attention"
    shape = check_attention_inputs(op, q, k, v, layout, softmax_scale)
    channels = open_channels(op, comm, attention_signature(op, shape, causal, layout))
    xp, length, world, me = shape.xp, shape.length, comm.Get_size(), comm.Get_rank()
    scale = softmax_scale_for(shape.head_dim, softmax_scale)
    qs, ks, vs = (to_sequence_major(x, shape.batched) for x in (q, k, v))
    wire = message_namespace(xp)
    kv = RowLayout.of(*((n, shape.dtype, (shape.batch, shape.kv_heads, shape.head_dim)) for n in "kv"), xp=wire)
    ex = RingExchange(channels, world, ("k+v", "unused"), stats)
    out = lse = None
    for t, held in _rotate_shards(ex, kv, ks, vs, length, world, me):
        owner = (me - t) % world
        blocks = attention_blocks(me, owner, world, length, layout, causal)
        with ex.compute():
            if t == 0:
                out, lse = blocks_attention(qs, KeyValues(ks, vs), blocks, scale, progress=ex.progress)
            elif blocks:
                keys = KeyValues(xp.asarray(kv.view(held, "k")), xp.asarray(kv.view(held, "v")))
                first = min(b.q_rows.start for b in blocks)
                o, s = blocks_attention(qs[first:], keys, blocks, scale, q_start=first, progress=ex.progress)
                merge_partial(out[first:], lse[first:], o, s)
    ex.finish()
    return from_sequence_major(out.astype(shape.dtype), shape.batched), from_sequence_major(lse, shape.batched)


def ring_attention_backward(
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
    stats: RingStats | None = None,
) -> tuple[Any, Any, Any]:
    """Gradients ``(dq, dk, dv)`` by rotating keys/values and their running gradients.

    Arguments and results as in :func:`collectives.token_ring_attention_backward`.
    """
    op = "ring_attention_backward"
    shape = check_attention_inputs(op, q, k, v, layout, softmax_scale, dout=dout, out=out, lse=lse)
    channels = open_channels(op, comm, attention_signature(op, shape, causal, layout))
    xp, length, world, me = shape.xp, shape.length, comm.Get_size(), comm.Get_rank()
    prev, nxt = (me - 1) % world, (me + 1) % world
    scale = softmax_scale_for(shape.head_dim, softmax_scale)
    acc = accumulation_dtype(shape.dtype)
    wire = message_namespace(xp)
    b, h, hkv, d = shape.batch, shape.heads, shape.kv_heads, shape.head_dim
    qs, ks, vs, dos, outs, lses = (to_sequence_major(x, shape.batched) for x in (q, k, v, dout, out, lse))
    kv = RowLayout.of(("k", shape.dtype, (b, hkv, d)), ("v", shape.dtype, (b, hkv, d)), xp=wire)
    grads = RowLayout.of(("dk", acc, (b, hkv, d)), ("dv", acc, (b, hkv, d)), xp=wire)
    ex = RingExchange(channels, world, ("k+v", "dk+dv"), stats)
    with ex.compute():
        lses = lses.astype(acc)
        delta = (dos.astype(acc) * outs.astype(acc)).sum(axis=-1)
        dq = xp.zeros((length, b, h, d), acc)
    running = None
    for t, held in _rotate_shards(ex, kv, ks, vs, length, world, me):
        if t > 0:  # the running gradients of the shard held now, from the rank that held it before
            g_buf = grads.empty(length)
            running = (ex.irecv(1, g_buf, prev, t), g_buf)
        owner = (me - t) % world
        blocks = attention_blocks(me, owner, world, length, layout, causal)
        with ex.compute():
            k_in = ks if t == 0 else xp.asarray(kv.view(held, "k"))
            v_in = vs if t == 0 else xp.asarray(kv.view(held, "v"))
            keys = KeyValues(k_in, v_in, grads=True)
            blocks_attention_backward(dos, qs, keys, lses, delta, blocks, scale, dq, progress=ex.progress)
            dk, dv = keys.gradients()
        if t > 0:
            ex.wait(running[0])
            with ex.compute():
                dk += xp.asarray(grads.view(running[1], "dk"))
                dv += xp.asarray(grads.view(running[1], "dv"))
        if world > 1:
            with ex.compute():
                g_out = grads.fill(grads.empty(length), dk=dk, dv=dv)
            ex.isend(1, g_out, nxt, t + 1)
    if world > 1:  # after a full turn our own shard's gradients come back
        g_buf = grads.empty(length)
        ex.wait(ex.irecv(1, g_buf, prev, world))
        with ex.compute():
            dk, dv = xp.asarray(grads.view(g_buf, "dk")), xp.asarray(grads.view(g_buf, "dv"))
    ex.finish()
    return tuple(from_sequence_major(g.astype(shape.dtype), shape.batched) for g in (dq, dk, dv))


def _rotate_shards(
    ex: RingExchange, kv: RowLayout, ks: Any, vs: Any, length: int, world: int, me: int
) -> Iterator[tuple[int, Any]]:
    """The ``(k, v)`` rotation on channel 0: yields ``(t, held)`` for every step ``t``.

    ``held`` is the packed shard of rank ``me - t`` (the own shard, packed, at ``t = 0`` when it is
    sent on; ``None`` when nothing moves). The next shard's receive and this one's send are posted
    before the caller computes on it.
    """
    prev, nxt = (me - 1) % world, (me + 1) % world
    held = incoming = None
    for t in range(world):
        ex.step = t
        if t > 0:
            ex.wait(incoming[0])
            held = incoming[1]
        if t + 1 < world:
            buf = kv.empty(length)
            incoming = (ex.irecv(0, buf, prev, t + 1), buf)
            if t == 0:
                with ex.compute():
                    held = kv.fill(kv.empty(length), k=ks, v=vs)
            ex.isend(0, held, nxt, t + 1)
        yield t, held
