"""Sequence-parallel attention with TokenRing: forward and backward over a sequence split across ranks.

Every rank draws the same random sequence (so that it can check its results), keeps only its
shard (zigzag layout by default: chunks r and 2W-1-r of 2W, which balances a causal mask),
and calls ``token_ring_attention`` and its backward pass. Queries travel around the ring and the
partial results come straight back; keys and values never move. The same shards go through ring
attention (keys and values rotate) for comparison, and rank 0 prints what each algorithm sent
and how far both are from a float64 single-process attention. Exits non-zero on a mismatch.

    mpiexec -n 4 python -m mpi4py examples/tokenring_attention.py --tokens 512 --causal
"""

import argparse
import sys
import time

import numpy as np
from mpi4py import MPI

from collectives import (
    RingStats,
    reference_attention,
    reference_attention_backward,
    ring_attention,
    ring_attention_backward,
    shard_positions,
    shard_sequence,
    token_ring_attention,
    token_ring_attention_backward,
)


def ranges(positions):
    """``[0, 1, 2, 7, 8]`` -> ``"0-2, 7-8"``."""
    breaks = np.flatnonzero(np.diff(positions) != 1)
    starts = [positions[0], *positions[breaks + 1]]
    stops = [*positions[breaks], positions[-1]]
    return ", ".join(f"{a}-{b}" for a, b in zip(starts, stops))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=384, help="global sequence length")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=8, help="fewer than --heads: grouped-query attention")
    parser.add_argument("--dim", type=int, default=32, help="head size")
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--layout", choices=["zigzag", "contiguous"], default="zigzag")
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()

    rng = np.random.default_rng(42)
    q, dout = (rng.standard_normal((args.tokens, args.heads, args.dim)) for _ in range(2))
    k, v = (rng.standard_normal((args.tokens, args.kv_heads, args.dim)) for _ in range(2))
    shard = {
        name: shard_sequence(x, rank, world, args.layout).astype(np.float32) for name, x in zip("qkvd", (q, k, v, dout))
    }
    ref_out, ref_lse = reference_attention(q, k, v, args.causal)
    ref_grads = reference_attention_backward(dout, q, k, v, args.causal)

    report = {}
    for name, forward, backward in (
        ("TokenRing", token_ring_attention, token_ring_attention_backward),
        ("ring attention", ring_attention, ring_attention_backward),
    ):
        fstats, bstats = RingStats(), RingStats()
        comm.Barrier()
        t0 = time.perf_counter()
        out, lse = forward(shard["q"], shard["k"], shard["v"], comm, args.causal, args.layout, stats=fstats)
        grads = backward(
            shard["d"], shard["q"], shard["k"], shard["v"], out, lse, comm, args.causal, args.layout, stats=bstats
        )
        elapsed = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
        pairs = [
            (got, shard_sequence(want, rank, world, args.layout))
            for got, want in zip((out, *grads), (ref_out, *ref_grads))
        ]
        pairs.append((lse, shard_sequence(ref_lse, rank, world, args.layout, axis=-2)))
        error = max(np.max(np.abs(got - want)) / np.max(np.abs(want)) for got, want in pairs)
        report[name] = {
            "error": comm.allreduce(float(error), op=MPI.MAX),
            "time": elapsed,
            "forward": [comm.allreduce(sum(step[c] for step in fstats.sent)) for c in range(2)],
            "backward": [comm.allreduce(sum(step[c] for step in bstats.sent)) for c in range(2)],
            "channels": (fstats.channels, bstats.channels),
        }

    held = comm.gather(ranges(shard_positions(args.tokens, rank, world, args.layout)), root=0)
    if rank == 0:
        mask = "causal" if args.causal else "no mask"
        print(f"TokenRing attention: {args.tokens} tokens over {world} ranks ({args.layout} layout, {mask}), ", end="")
        print(f"H={args.heads}, H_kv={args.kv_heads}, D={args.dim}, float32")
        for r, text in enumerate(held):
            print(f"  rank {r} holds tokens {text}")
        for name, rep in report.items():
            print(f"{name}: {rep['time'] * 1e3:.1f} ms forward+backward, max relative error {rep['error']:.1e}")
            for pass_name, channels in zip(("forward", "backward"), rep["channels"]):
                sent = ", ".join(f"{c}: {b / 1024:.0f} KiB" for c, b in zip(channels, rep[pass_name]) if b)
                print(f"  {pass_name:8s} sent {sent or 'nothing (one rank)'}")
        ok = all(rep["error"] < 1e-4 for rep in report.values())
        verdict = "matches the single-process float64 reference" if ok else "DOES NOT match the reference"
        print(f"Each algorithm's out, lse and gradients: {verdict} (relative error < 1e-4).")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
