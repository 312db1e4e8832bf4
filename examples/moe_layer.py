"""A mixture-of-experts layer across ranks: a softmax router, top-k, numpy MLP experts, dispatch and combine.

Every rank holds its own tokens and the experts that the placement gives it
(contiguous groups, or a random balanced placement with ``--shuffle``). The
router picks each token's top-k experts; ``dispatch`` sends each token once
to every rank holding one of them; each local expert runs its two-layer MLP
on its contiguous slice; ``combine`` brings the outputs home and sums them
with the router's weights. Every rank then checks its output against the same
layer evaluated locally (all ranks can build every expert: their weights come
from the expert's id), and rank 0 prints what moved. Exits non-zero on a
mismatch.

    mpiexec -n 4 python -m mpi4py examples/moe_layer.py --tokens 2000 --experts 8 --topk 2
"""

import argparse
import sys

import numpy as np
from mpi4py import MPI

from collectives import combine, dispatch


def expert_weights(e, features, hidden):
    rng = np.random.default_rng(1000 + e)
    w1 = rng.standard_normal((features, hidden)).astype(np.float32) / np.sqrt(features)
    w2 = rng.standard_normal((hidden, features)).astype(np.float32) / np.sqrt(hidden)
    return w1, w2


def expert(weights, rows):
    w1, w2 = weights
    return np.maximum(rows @ w1, 0) @ w2


def route(x, router, k):
    """Top-k experts of each token and their softmax weights, renormalised over the k."""
    logits = x @ router
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    chosen = np.take_along_axis(logits, top, axis=1)
    w = np.exp(chosen - chosen.max(axis=1, keepdims=True))
    return top, (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1000, help="tokens on each rank (rank r has a few more)")
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--topk", type=int, default=2)
    parser.add_argument("--capacity-factor", type=float, default=None, help="drop pairs beyond capacity")
    parser.add_argument("--shuffle", action="store_true", help="a random balanced placement instead of contiguous")
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    size, me = comm.Get_size(), comm.Get_rank()

    rng = np.random.default_rng(me)
    n = args.tokens + 7 * me
    x = rng.standard_normal((n, args.features)).astype(np.float32)
    router = np.random.default_rng(0).standard_normal((args.features, args.experts)).astype(np.float32)
    idx, w = route(x, router, args.topk)
    placement = None
    if args.shuffle:
        placement = np.random.default_rng(1).permutation(np.arange(args.experts) % size)

    recv_x, info, handle = dispatch(x, idx, w, comm, args.experts, placement, args.capacity_factor)
    y = np.empty_like(recv_x)
    for local, e in enumerate(info.experts):
        rows = info.slice(local)
        y[rows] = expert(expert_weights(int(e), args.features, args.hidden), recv_x[rows])
    out = combine(y, handle)

    # The same layer on this rank alone, with the pairs dispatch kept.
    kept = handle.send.kept
    ref = np.zeros_like(out)
    for e in range(args.experts):
        for slot in range(args.topk):
            rows = kept[:, slot] & (idx[:, slot] == e)
            if rows.any():
                ref[rows] += w[rows, slot, None] * expert(expert_weights(e, args.features, args.hidden), x[rows])
    error = float(np.abs(out - ref).max()) if n else 0.0
    worst = comm.allreduce(error, op=MPI.MAX)
    moved = comm.allreduce(handle.dispatch_bytes)
    copied = comm.allreduce(handle.copied_rows)
    dropped = comm.allreduce(int(info.dropped.sum()))
    rows_total = comm.allreduce(info.num_rows)
    tokens = comm.allreduce(n)
    if me == 0:
        print(
            f"moe_layer: {size} ranks, {args.experts} experts, top-{args.topk}, {tokens} tokens: "
            f"{rows_total} expert rows, {moved / 1e6:.2f} MB dispatched across ranks, {copied} rows shared locally, "
            f"{dropped} pairs dropped; max error {worst:.2e} " + ("OK" if worst < 1e-4 else "WRONG")
        )
    return 0 if worst < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
