"""The straightforward mpi4py expert all-to-all: the baseline of ``python -m commlib bench moe``.

What a reasonable user writes with mpi4py and numpy: sort the (token, expert)
pairs by destination rank and gather a copy of ``x`` in that order (one row
per pair), send each destination its expert ids with the pickling
``alltoall`` (their lengths are the counts), move the rows with one
``Alltoallv``, and sort them by local expert on arrival. ``combine`` undoes
the sort, sends the outputs back with a second ``Alltoallv``, puts them back
in (token, slot) order and adds each slot's weighted outputs to its tokens'
rows (of ``np.add.at``, ``np.add.reduceat`` and this, this was the fastest
here). Experts live in contiguous groups (``E / P`` per rank).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from mpi4py import MPI
from mpi4py.util import dtlib

__all__ = ["NaiveHandle", "naive_combine", "naive_dispatch"]


@dataclass
class NaiveHandle:
    comm: MPI.Comm
    num_tokens: int
    topk: int
    pair_token: np.ndarray  # token of each pair, in (token, slot) order
    pair_slot: np.ndarray  # slot of each pair
    pair_weight: np.ndarray  # weight of each pair
    by_dest: np.ndarray  # pair order sorted by destination
    send_counts: np.ndarray
    recv_counts: np.ndarray
    by_expert: np.ndarray  # received rows sorted by local expert
    expert_counts: np.ndarray  # rows per local expert


def _displacements(counts: np.ndarray) -> np.ndarray:
    return np.cumsum(counts) - counts


def naive_dispatch(
    x: np.ndarray, topk_idx: np.ndarray, topk_weights: np.ndarray, comm: MPI.Comm, num_experts: int
) -> tuple[np.ndarray, np.ndarray, NaiveHandle]:
    """``(expert_x, rows per local expert, handle)``: expert ``l``'s rows are contiguous, in (source, token) order."""
    size = comm.Get_size()
    per_rank = num_experts // size
    token, slot = np.nonzero(topk_idx >= 0)
    expert = topk_idx[token, slot]
    dest = expert // per_rank
    by_dest = np.argsort(dest, kind="stable")
    send_x = x[token[by_dest]]
    send_counts = np.bincount(dest, minlength=size)
    bounds = np.cumsum(send_counts)
    sent_experts = np.split(expert[by_dest] - dest[by_dest] * per_rank, bounds[:-1])
    received = comm.alltoall(sent_experts)
    recv_counts = np.array([len(r) for r in received])
    local_expert = np.concatenate(received)
    width = x.shape[1]
    mpi_type = dtlib.from_numpy_dtype(x.dtype)
    recv_x = np.empty((recv_counts.sum(), width), x.dtype)
    comm.Alltoallv(
        [send_x, send_counts * width, _displacements(send_counts) * width, mpi_type],
        [recv_x, recv_counts * width, _displacements(recv_counts) * width, mpi_type],
    )
    by_expert = np.argsort(local_expert, kind="stable")
    expert_counts = np.bincount(local_expert, minlength=per_rank)
    handle = NaiveHandle(
        comm,
        x.shape[0],
        topk_idx.shape[1],
        token,
        slot,
        topk_weights[token, slot],
        by_dest,
        send_counts,
        recv_counts,
        by_expert,
        expert_counts,
    )
    return recv_x[by_expert], expert_counts, handle


def naive_combine(y: np.ndarray, handle: NaiveHandle) -> np.ndarray:
    """Each token's weighted sum of its experts' outputs ``y`` (laid out as ``naive_dispatch`` returned them)."""
    width = y.shape[1]
    back = np.empty_like(y)
    back[handle.by_expert] = y
    mpi_type = dtlib.from_numpy_dtype(y.dtype)
    returned = np.empty((handle.send_counts.sum(), width), y.dtype)
    handle.comm.Alltoallv(
        [back, handle.recv_counts * width, _displacements(handle.recv_counts) * width, mpi_type],
        [returned, handle.send_counts * width, _displacements(handle.send_counts) * width, mpi_type],
    )
    pair_out = np.empty_like(returned)
    pair_out[handle.by_dest] = returned
    out = np.zeros((handle.num_tokens, width), y.dtype)
    for slot in range(handle.topk):  # a token appears at most once per slot, so += on its rows is exact
        pairs = handle.pair_slot == slot
        out[handle.pair_token[pairs]] += handle.pair_weight[pairs, None].astype(y.dtype) * pair_out[pairs]
    return out
