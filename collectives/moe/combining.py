"""The combine leg: expert outputs back to their tokens' ranks, summed by the top-k weights."""

from __future__ import annotations

from typing import Any

import numpy as np
from mpi4py import MPI

from ..routing import row_runs
from ..settings import settings
from .arguments import fail
from .handles import MoEHandle
from .rows import alltoallw, array_namespace, displacements, host, scratch, take

_CHUNK_BYTES = 1 << 21  # rows of the weighted sum processed together (stays in cache)


def _accumulation_dtype(dtype: np.dtype) -> np.dtype:
    acc = np.result_type(dtype, np.float32) if dtype.itemsize < 4 else dtype
    if acc.kind not in "fc":
        fail("combine", f"expert outputs must be floating point, got dtype {dtype}")
    return acc


def _weighted_sum(xp: Any, rows: Any, positions: Any, weights: Any, out_dtype: np.dtype) -> Any:
    """``out[t] = sum_k weights[t, k] * rows[positions[t, k]]``, in slot order, in cache-sized chunks of tokens.

    ``positions`` ``None`` means ``rows`` holds pair ``(t, k)`` at row ``t * K + k``.
    """
    n, k = weights.shape
    width = rows.shape[1]
    acc_dtype = _accumulation_dtype(out_dtype)
    out = xp.empty((n, width), out_dtype)
    if n == 0:
        return out
    if k == 0:
        out[...] = 0
        return out
    weights = weights.astype(acc_dtype)
    step = min(n, max(1, _CHUNK_BYTES // max(1, width * max(acc_dtype.itemsize, rows.dtype.itemsize))))
    term = xp.empty((step, width), acc_dtype)
    total = out if acc_dtype == out_dtype else xp.empty((step, width), acc_dtype)
    gathered = xp.empty((step, width), rows.dtype) if positions is not None else None
    by_slot = rows.reshape(n, k, width) if positions is None else None
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        acc = total[lo:hi] if total is out else total[: hi - lo]
        for slot in range(k):
            if by_slot is not None:
                part = by_slot[lo:hi, slot]
            else:
                part = gathered[: hi - lo]
                take(xp, rows, positions[lo:hi, slot], part)
            xp.multiply(part, weights[lo:hi, slot, None], out=acc if slot == 0 else term[: hi - lo])
            if slot:
                acc += term[: hi - lo]
        if total is not out:
            out[lo:hi] = acc
    return out


def combine(y: Any, handle: MoEHandle) -> Any:
    """Send the expert outputs back and return ``[N, M_out]``, each token's top-k outputs summed by weight.

    ``y`` holds one output row per row of the ``recv_x`` that ``dispatch``
    returned, in the same layout (``recv_info.slice(l)`` for local expert
    ``l``). Collective over the dispatch's communicator; the output width
    and dtype must be the same on all ranks.
    """
    op = "combine"
    if not isinstance(handle, MoEHandle):
        fail(op, f"handle must be the MoEHandle returned by dispatch, got {type(handle).__name__}")
    xp = array_namespace(y)
    if xp is not handle.xp:
        fail(op, f"y is a {xp.__name__} array but dispatch was given {handle.xp.__name__} arrays")
    rows = handle.recv.num_rows
    if getattr(y, "ndim", None) != 2 or y.shape[0] != rows or y.shape[1] < 1:
        fail(op, f"y must be [{rows}, features >= 1] (one row per dispatched row), got {getattr(y, 'shape', None)}")
    dtype = np.dtype(y.dtype)
    _accumulation_dtype(dtype)
    comm, n, k = handle.comm, handle.num_tokens, handle.topk
    width = y.shape[1]
    row_bytes = width * dtype.itemsize
    agreement = np.array([row_bytes, -row_bytes, ord(dtype.kind), -ord(dtype.kind)], np.int64)
    comm.Allreduce(MPI.IN_PLACE, agreement, op=MPI.MAX)
    if agreement[0] != -agreement[1] or agreement[2] != -agreement[3]:
        fail(op, f"ranks disagree on the output row ({width} x {dtype}, {row_bytes} bytes on this rank)")

    staged = xp is not np and not settings.cuda_aware_mpi
    space = np if staged else xp
    source = np.ascontiguousarray(host(y)) if staged else xp.ascontiguousarray(y)
    layout, plan = handle.recv, handle.send
    size = comm.Get_size()
    sends = [(layout.offsets[:, s], layout.counts[:, s]) for s in range(size)]
    counts = plan.return_counts
    starts = displacements(counts)
    kept = plan.return_slots.size
    if handle.pack == "gather":
        # Rows arrive in blocks per destination; the weighted sum reads them by position (missing: a zero row).
        returned = scratch(space, "return", kept + 1, width, dtype)
        returned[kept] = 0
        recvs = [(starts[d : d + 1], counts[d : d + 1]) for d in range(size)]
        positions = np.full(n * k, kept, np.int64)
        positions[plan.return_slots] = np.arange(kept)
        positions = space.asarray(positions.reshape(n, k))
    else:
        # MPI drops every row at its pair's position (token * K + slot).
        returned = space.empty((n * k, width), dtype)
        recvs = [row_runs(plan.return_slots[starts[d] : starts[d] + counts[d]]) for d in range(size)]
        positions = None
    alltoallw(comm, source, sends, returned, recvs, row_bytes)
    if positions is None:
        missing = np.flatnonzero(~plan.kept.reshape(-1))
        if missing.size:
            returned[space.asarray(missing)] = 0
    out = _weighted_sum(space, returned, positions, space.asarray(handle.weights), dtype)
    return xp.asarray(out) if staged else out
