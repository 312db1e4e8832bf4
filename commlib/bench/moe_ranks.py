"""The per-rank programs of ``python -m commlib bench moe`` (run under mpiexec; rank 0 writes JSON).

``exchange``: one MoE layer's dispatch + identity experts + combine, timed
for commlib (``dedup``: the defaults), commlib with ``pack="mpi"``
(``typed``), commlib sending one row per pair (``replicated``) and the
straightforward mpi4py version (:mod:`commlib.bench.moe_mpi4py`), in
rotating order within every iteration, after two untimed rounds. Each
phase's time is the slowest rank's; the report gives medians over
iterations and the payload bytes that crossed between ranks. Every
method's output is checked against commlib's.

``chain``: tokens flow through the layers of an affinity trace the way
ExFlow runs them: after layer ``l`` a token's hidden state stays on the rank
of its layer-``l`` expert, and ``dispatch`` sends it from there to the rank
of its layer-``l + 1`` expert. Timed with the contiguous placement and with
:func:`~collectives.placement.place_experts`' placement, alternately.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
from mpi4py import MPI

from collectives.moe import combine, dispatch
from collectives.placement import Placement, place_experts
from collectives.traces import AffinityModel
from commlib.bench.moe_mpi4py import naive_combine, naive_dispatch

__all__ = ["main"]

EXCHANGE_METHODS = ("dedup", "typed", "replicated", "mpi4py")
_OPTIONS = {"dedup": {}, "typed": {"pack": "mpi"}, "replicated": {"dedup": False}}


def _routing(rng: np.random.Generator, n: int, experts: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniform top-``k`` routing over distinct experts, with softmax-like weights summing to one."""
    idx = np.argsort(rng.random((n, experts), dtype=np.float32), axis=1)[:, :k].astype(np.int64)
    w = rng.random((n, k), dtype=np.float32) + 0.5
    return idx, w / w.sum(axis=1, keepdims=True)


def _features(rng: np.random.Generator, n: int, m: int, dtype: np.dtype) -> np.ndarray:
    x = np.empty((n, m), dtype)
    step = max(1, (1 << 24) // max(m, 1))
    for lo in range(0, n, step):
        x[lo : lo + step] = rng.random((min(step, n - lo), m), dtype=np.float32) - 0.5
    return x


def _run(method: str, x: np.ndarray, idx: np.ndarray, w: np.ndarray, comm: MPI.Comm, experts: int):
    """``(output, dispatch s, combine s, dispatch bytes, combine bytes)`` of one layer with identity experts."""
    comm.Barrier()
    t0 = time.perf_counter()
    if method == "mpi4py":
        expert_x, _, handle = naive_dispatch(x, idx, w, comm, experts)
        t1 = time.perf_counter()
        out = naive_combine(expert_x, handle)
        t2 = time.perf_counter()
        others = np.arange(comm.Get_size()) != comm.Get_rank()
        row = x.shape[1] * x.itemsize
        return (
            out,
            t1 - t0,
            t2 - t1,
            int(handle.send_counts[others].sum()) * row,
            int(handle.recv_counts[others].sum()) * row,
        )
    recv_x, _, handle = dispatch(x, idx, w, comm, experts, **_OPTIONS[method])
    t1 = time.perf_counter()
    out = combine(recv_x, handle)
    t2 = time.perf_counter()
    return out, t1 - t0, t2 - t1, handle.dispatch_bytes, handle.combine_rows() * x.shape[1] * x.itemsize


def exchange(args: argparse.Namespace) -> None:
    comm = MPI.COMM_WORLD
    size, me = comm.Get_size(), comm.Get_rank()
    experts = args.experts_per_rank * size
    dtype = np.dtype(args.dtype)
    rng = np.random.default_rng([args.seed, me])
    x = _features(rng, args.tokens, args.features, dtype)
    idx, w = _routing(rng, args.tokens, experts, args.topk)
    reference, ok = None, True
    for method in EXCHANGE_METHODS * 2:  # warm-up, and the check that all agree
        out = _run(method, x, idx, w, comm, experts)[0]
        if reference is None:
            reference = out
        elif method != "mpi4py":
            ok &= bool(np.array_equal(out, reference))
        else:
            tol = 2e-2 if dtype.itemsize < 4 else 1e-5
            ok &= bool(np.allclose(out.astype(np.float32), reference.astype(np.float32), rtol=tol, atol=tol))
        del out
    ok = comm.allreduce(ok, op=MPI.LAND)
    samples = {m: {"dispatch": [], "combine": []} for m in EXCHANGE_METHODS}
    nbytes = {}
    for it in range(args.iters):
        shift = it % len(EXCHANGE_METHODS)
        order = EXCHANGE_METHODS[shift:] + EXCHANGE_METHODS[:shift]
        for method in order:
            _, td, tc, bd, bc = _run(method, x, idx, w, comm, experts)
            td, tc = comm.allreduce(td, op=MPI.MAX), comm.allreduce(tc, op=MPI.MAX)
            samples[method]["dispatch"].append(td)
            samples[method]["combine"].append(tc)
            nbytes[method] = {"dispatch": comm.allreduce(bd), "combine": comm.allreduce(bc)}
    if me == 0:
        result = {
            "ranks": size,
            "tokens_per_rank": args.tokens,
            "features": args.features,
            "topk": args.topk,
            "experts": experts,
            "dtype": dtype.name,
            "iters": args.iters,
            "ok": ok,
            "samples_s": samples,
            "median_s": {
                m: {phase: statistics.median(ts) for phase, ts in s.items()}
                | {"total": statistics.median(np.add(s["dispatch"], s["combine"]).tolist())}
                for m, s in samples.items()
            },
            "bytes": nbytes,
        }
        with open(args.json, "w") as f:
            json.dump(result, f)


def chain(args: argparse.Namespace) -> None:
    comm = MPI.COMM_WORLD
    size, me = comm.Get_size(), comm.Get_rank()
    experts, layers = args.experts_per_rank * size, args.layers
    model = AffinityModel.random(layers, experts, args.affinity, fanout=args.fanout, seed=args.seed)
    trace = model.sample(args.tokens, seed=args.seed + 1)
    placements = {"contiguous": Placement.contiguous(layers, experts, size, args.ranks_per_node)}
    optimized = None
    if me == 0:
        train = model.sample(args.tokens, seed=args.seed + 2)
        optimized = place_experts(train, size, args.ranks_per_node, num_experts=experts, time_limit=args.place_time)
    placements["placed"] = Placement(
        comm.bcast(None if optimized is None else optimized.owner), size, args.ranks_per_node
    )
    node_of = np.arange(size) // args.ranks_per_node
    samples: dict[str, list[float]] = {name: [] for name in placements}
    cross_node: dict[str, int] = {}
    ok = True
    for it in range(args.iters + 1):
        for name in sorted(placements, reverse=bool(it % 2)):
            placement = placements[name]
            mine = np.flatnonzero(placement[0][trace[:, 0]] == me)
            x = np.zeros((mine.size, args.features), np.float32)
            x[:, 0] = mine  # the token id travels in the row
            crossed = 0
            comm.Barrier()
            t0 = time.perf_counter()
            for layer in range(1, layers):
                ids = x[:, 0].astype(np.int64)
                idx = trace[ids, layer][:, None]
                x, _, handle = dispatch(x, idx, np.ones(idx.shape, np.float32), comm, experts, placement[layer])
                sent = handle.send.send_counts
                crossed += int(sent[node_of != node_of[me]].sum()) * args.features * 4
            elapsed = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
            final = x[:, 0].astype(np.int64)
            ok &= bool((placement[layers - 1][trace[final, layers - 1]] == me).all())
            ok &= comm.allreduce(final.size) == args.tokens
            if it:  # the first round is a warm-up
                samples[name].append(elapsed)
                cross_node[name] = comm.allreduce(crossed)
    ok = comm.allreduce(ok, op=MPI.LAND)
    if me == 0:
        result = {
            "ranks": size,
            "ranks_per_node": args.ranks_per_node,
            "tokens": args.tokens,
            "features": args.features,
            "layers": layers,
            "experts": experts,
            "affinity": args.affinity,
            "fanout": args.fanout,
            "ok": ok,
            "samples_s": samples,
            "median_s": {name: statistics.median(ts) for name, ts in samples.items()},
            "cross_node_bytes": cross_node,
        }
        with open(args.json, "w") as f:
            json.dump(result, f)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpi4py -m commlib.bench.moe_ranks")
    parser.add_argument("program", choices=["exchange", "chain"])
    parser.add_argument("--tokens", type=int, required=True)
    parser.add_argument("--features", type=int, required=True)
    parser.add_argument("--experts-per-rank", type=int, default=4)
    parser.add_argument("--topk", type=int, default=2)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--affinity", type=float, default=0.9)
    parser.add_argument("--fanout", type=int, default=1)
    parser.add_argument("--ranks-per-node", type=int, default=1)
    parser.add_argument("--place-time", type=float, default=5.0)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    {"exchange": exchange, "chain": chain}[args.program](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
