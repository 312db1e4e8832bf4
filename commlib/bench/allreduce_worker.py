"""One job of the allreduce benchmark: every algorithm against ``MPI_Allreduce`` on the ranks it runs on.

Run under ``mpiexec ... python -m mpi4py -m commlib.bench.allreduce_worker``
(``python -m commlib bench allreduce`` does). For each size, every rank
reduces its own random float64 vector with every algorithm once and checks
that all ranks hold the same bytes and that they match MPI's result to
1e-12 relative; then the algorithms take turns, round after round, each
timing a batch of back-to-back calls (sized so that MPI's batch lasts about
``--sample`` seconds); ``native`` is mpi4py's ``Comm.Allreduce`` itself
(``mpi-again`` the same call again, a noise control), ``star-arrival`` a
star that adds in arrival order (to price the fixed order), the others go
through :func:`collectives.allreduce.allreduce`. A sample is the slowest
rank's batch time divided by
the batch; the reported time is the median sample (at most 3 rounds for sizes
where one MPI call takes over ``--long-call`` seconds). Rank 0 writes JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time

import numpy as np
from mpi4py import MPI

from collectives import allreduce_cost as cost
from collectives.allreduce import allreduce, plan
from collectives.allreduce_flat import star_rounds
from collectives.topology import topology

__all__ = ["main"]


def _max_over_ranks(comm: MPI.Intracomm, value: float) -> float:
    buf = np.array([value])
    MPI.Comm.Allreduce(comm, MPI.IN_PLACE, buf, MPI.MAX)
    return float(buf[0])


def _star_arrival(comm: MPI.Intracomm, x: np.ndarray, y: np.ndarray) -> None:
    """Star that adds contributions in arrival order (not reproducible): the price of star's fixed order."""
    p, topo_comm = comm.Get_size(), topology(comm).comm
    y[...] = x
    if p == 1:
        return
    if topo_comm.Get_rank() != 0:
        topo_comm.Send([y, MPI.BYTE], 0, 21)
        topo_comm.Recv([y, MPI.BYTE], 0, 22)
        return
    slots = np.empty((p - 1, y.size), y.dtype)
    requests = [topo_comm.Irecv([slots[i - 1], MPI.BYTE], i, 21) for i in range(1, p)]
    for _ in range(p - 1):
        np.add(y, slots[MPI.Request.Waitany(requests)], out=y)
    MPI.Request.Waitall([topo_comm.Isend([y, MPI.BYTE], i, 22) for i in range(1, p)])


def _call(comm: MPI.Intracomm, alg: str, x: np.ndarray, y: np.ndarray) -> None:
    if alg == "mpi-again":
        MPI.Comm.Allreduce(comm, x, y, MPI.SUM)
    elif alg == "star-arrival":
        _star_arrival(comm, x, y)
    else:
        allreduce(comm, x, y, MPI.SUM, alg)


def _check(comm: MPI.Intracomm, alg: str, x: np.ndarray, reference: np.ndarray) -> str:
    """'' when ``alg`` gives every rank the same bytes, close to ``reference``; else what is wrong."""
    y = np.empty_like(x)
    _call(comm, alg, x, y)
    digests = comm.allgather(hashlib.sha256(y.tobytes()).hexdigest())
    problems = []
    if len(set(digests)) != 1:
        problems.append("ranks differ")
    if not np.allclose(y, reference, rtol=1e-12, atol=0):
        problems.append(f"max rel. error {float(np.max(np.abs(y - reference) / np.abs(reference))):.2e}")
    bad = comm.allgather(problems)
    return "; ".join(f"rank {r}: {', '.join(p)}" for r, p in enumerate(bad) if p)


def _time_batch(comm: MPI.Intracomm, alg: str, x: np.ndarray, y: np.ndarray, batch: int) -> float:
    """Seconds per call of ``alg``; ``native`` is mpi4py's own ``Comm.Allreduce``, the baseline."""
    comm.Barrier()
    if alg in ("native", "mpi-again"):
        t0 = time.perf_counter()
        for _ in range(batch):
            comm.Allreduce(x, y, MPI.SUM)
    elif alg == "star-arrival":
        t0 = time.perf_counter()
        for _ in range(batch):
            _star_arrival(comm, x, y)
    else:  # the library call itself, as an application makes it
        t0 = time.perf_counter()
        for _ in range(batch):
            allreduce(comm, x, y, MPI.SUM, alg)
    return _max_over_ranks(comm, (time.perf_counter() - t0) / batch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="commlib.bench.allreduce_worker", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", required=True, help="message sizes in bytes")
    parser.add_argument("--algorithms", nargs="+", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sample", type=float, default=0.05, help="target seconds of one MPI batch")
    parser.add_argument("--max-batch", type=int, default=200)
    parser.add_argument("--long-call", type=float, default=0.25, help="MPI calls this long get at most 3 rounds")
    parser.add_argument("--json", required=True)
    parser.add_argument("--traffic-calls", type=int, default=-1, help="only run each algorithm this many times")
    args = parser.parse_args(argv)
    comm = MPI.COMM_WORLD
    topo = topology(comm)
    if args.traffic_calls >= 0:  # for counting bytes on the links: calls and nothing else
        for nbytes in args.sizes:
            x = np.ones(max(1, nbytes // 8))
            y = np.empty_like(x)
            for alg in args.algorithms:
                for _ in range(args.traffic_calls):
                    _call(comm, alg, x, y)
        comm.Barrier()
        return 0
    shape = cost.Shape(topo.node_of)
    costs = cost.default_costs()
    rows = []
    for nbytes in args.sizes:
        n = max(1, nbytes // 8)
        x = np.random.default_rng(1000 + comm.Get_rank()).random(n)
        y = np.empty_like(x)
        reference = np.empty_like(x)
        MPI.Comm.Allreduce(comm, x, reference, MPI.SUM)
        errors = {alg: _check(comm, alg, x, reference) for alg in args.algorithms}
        first = _time_batch(comm, "native", x, y, 1)
        batch = comm.bcast(int(min(args.max_batch, max(1, args.sample / max(first, 1e-7)))), root=0)
        rounds = args.rounds if first < args.long_call else min(args.rounds, 3)
        samples: dict[str, list[float]] = {alg: [] for alg in args.algorithms}
        for r in range(rounds):
            k = r % len(args.algorithms)
            for alg in args.algorithms[k:] + args.algorithms[:k]:
                samples[alg].append(_time_batch(comm, alg, x, y, batch))
        row = {
            "bytes": n * 8,
            "batch": batch,
            "rounds": rounds,
            "median_s": {alg: statistics.median(ts) for alg, ts in samples.items()},
            "samples_s": samples,
            "errors": errors,
            "plan": {alg: list(plan(comm, n * 8, alg)) for alg in ("auto", "hierarchical")},
            "predicted_s": cost.predict_all(n * 8, shape, costs),
        }
        rows.append(row)
        if comm.Get_rank() == 0:
            med = row["median_s"]
            print(
                f"{n * 8:>10} B  " + "  ".join(f"{a}={med[a] * 1e3:.3f}ms" for a in args.algorithms),
                file=sys.stderr,
                flush=True,
            )
    if comm.Get_rank() == 0:
        out = {
            "ranks": comm.Get_size(),
            "nodes": [list(m) for m in topo.nodes],
            "node_detection": topo.method,
            "star_rounds": star_rounds(comm.Get_size()),
            "default_costs": {
                "intra": vars(costs.intra),
                "inter": vars(costs.inter),
                "reduce": costs.reduce,
                "call": costs.call,
            },
            "rows": rows,
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
