"""Small communication loops timed inside one job: what the do-no-harm sweeps run plain and interposed.

``python -m mpi4py -m commlib.bench.micro pingpong --json out.json`` (or
under ``python -m commlib``) times, per message size, the median over rounds
of the loop's time per iteration on the slowest rank:

- ``pingpong``: contiguous ``Send``/``Recv`` round trips between rank pairs
  (0-1, 2-3, ...; with an odd number of ranks the last one ping-pongs with
  rank 0's partner in turns, so every rank communicates); one-way time.
- ``allreduce``: ``Allreduce`` of float64 arrays on ``COMM_WORLD``.
- ``oneshot``: a derived datatype used once: build the subarray types of an
  ``Alltoallw`` (one per peer), call it, free them, as the tests of parallel
  FFT libraries do.

The program is the same plain and interposed: the sweep (:mod:`commlib.bench.noharm`)
compares launches.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
from mpi4py import MPI

__all__ = ["main"]

SIZES = {
    "pingpong": [8, 64, 512, 4096, 32768, 262144, 1 << 20, 4 << 20],
    "allreduce": [8, 64, 512, 4096, 32768, 262144, 1 << 20, 4 << 20],
    "oneshot": [1024, 16384, 262144, 1 << 20],
}


def _iterations(nbytes: int) -> int:
    """Iterations per round: about 1 ms of small messages, fewer of large ones."""
    return max(4, min(200, (1 << 22) // max(nbytes, 1) // 4))


def _pingpong(comm: MPI.Intracomm, nbytes: int) -> Callable[[int], None]:
    rank, size = comm.Get_rank(), comm.Get_size()
    buf = np.zeros(nbytes, np.uint8)
    if size % 2 and rank == size - 1:
        peer, first = 1, True  # the odd one out pairs with rank 1, which serves it after rank 0
    else:
        peer, first = rank ^ 1, rank % 2 == 0
    extra = size % 2 and rank == 1

    def loop(k: int) -> None:
        for _ in range(k):
            if first:
                comm.Send(buf, peer, 0)
                comm.Recv(buf, peer, 0)
            else:
                comm.Recv(buf, peer, 0)
                comm.Send(buf, peer, 0)
            if extra:
                comm.Recv(buf, size - 1, 0)
                comm.Send(buf, size - 1, 0)

    return loop


def _allreduce(comm: MPI.Intracomm, nbytes: int) -> Callable[[int], None]:
    a = np.ones(max(nbytes // 8, 1))
    b = np.empty_like(a)

    def loop(k: int) -> None:
        for _ in range(k):
            comm.Allreduce(a, b)

    return loop


def _oneshot(comm: MPI.Intracomm, nbytes: int) -> Callable[[int], None]:
    """One ``Alltoallw`` with subarray types made for the call: each rank's ``nbytes`` split among the peers."""
    size = comm.Get_size()
    cols = max(size, nbytes // 8 // 64 // size * size)  # 64 rows of float64, columns split among the ranks
    a = np.ones((64, cols))
    b = np.empty((64 * size, cols // size))
    counts, displs = [1] * size, [0] * size

    def loop(k: int) -> None:
        for _ in range(k):
            step, rows = cols // size, 64 * size
            send = [MPI.DOUBLE.Create_subarray([64, cols], [64, step], [0, i * step]).Commit() for i in range(size)]
            recv = [MPI.DOUBLE.Create_subarray([rows, step], [64, step], [i * 64, 0]).Commit() for i in range(size)]
            comm.Alltoallw([a, (counts, displs), send], [b, (counts, displs), recv])
            for t in send + recv:
                t.Free()

    return loop


LOOPS = {"pingpong": _pingpong, "allreduce": _allreduce, "oneshot": _oneshot}


def time_loop(comm: MPI.Intracomm, loop: Callable[[int], None], iterations: int, rounds: int) -> float:
    """Median over ``rounds`` of the slowest rank's time per iteration."""
    loop(max(1, iterations // 4))  # warm-up
    samples = []
    for _ in range(rounds):
        comm.Barrier()
        start = time.perf_counter()
        loop(iterations)
        samples.append(comm.allreduce((time.perf_counter() - start) / iterations, op=MPI.MAX))
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("loop", choices=sorted(LOOPS))
    parser.add_argument("--sizes", type=int, nargs="+", help="message bytes (default: the loop's sweep)")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds per size (15)")
    parser.add_argument("--json", default=None, help="write the timings here")
    args = parser.parse_args(argv)
    comm = MPI.COMM_WORLD
    rows = []
    for nbytes in args.sizes or SIZES[args.loop]:
        seconds = time_loop(comm, LOOPS[args.loop](comm, nbytes), _iterations(nbytes), args.rounds)
        if args.loop == "pingpong":
            seconds /= 2  # one way
        rows.append({"bytes": nbytes, "median_s": seconds, "ok": True})
        if comm.Get_rank() == 0:
            print(f"{args.loop} {nbytes:>9} B: {seconds * 1e6:10.2f} us")
    if comm.Get_rank() == 0 and args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"loop": args.loop, "ranks": comm.Get_size(), "rows": rows}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
