"""Ping-pong latency of a contiguous message: raw mpi4py vs a commlib-wrapped communicator.

Run with two ranks: ``mpiexec -n 2 python -m commlib bench pingpong [--bytes 8] [--json PATH]``.
Both communicators share one handle; rounds of raw and wrapped ping-pongs
alternate so that machine noise hits both alike. One-way latency = round
trip / 2; the table shows medians over rounds and the wrapped overhead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from mpi4py import MPI

from commlib.interposer.comm import wrap


def _round(comm, buf, peer, iters: int, first: bool) -> float:
    comm.Barrier()
    t = time.perf_counter()
    for _ in range(iters):
        if first:
            comm.Send(buf, peer, 0)
            comm.Recv(buf, peer, 0)
        else:
            comm.Recv(buf, peer, 0)
            comm.Send(buf, peer, 0)
    return (time.perf_counter() - t) / iters / 2


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run the ping-pong benchmark (two ranks); returns the exit code."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", type=int, default=8, help="message size (8)")
    parser.add_argument("--iters", type=int, default=2000, help="ping-pongs per round (2000)")
    parser.add_argument("--rounds", type=int, default=21, help="rounds per communicator (21)")
    parser.add_argument("--json", default="results/pingpong.json")
    args = parser.parse_args(argv)
    raw = MPI.COMM_WORLD
    if raw.Get_size() != 2:
        print("pingpong: run with exactly 2 ranks (mpiexec -n 2)", file=sys.stderr)
        return 2
    ours = wrap(raw)
    rank = raw.Get_rank()
    buf = np.zeros(args.bytes, np.uint8)
    times: dict[str, list[float]] = {"raw mpi4py": [], "commlib wrapped": []}
    _round(raw, buf, 1 - rank, 200, rank == 0)  # warm-up
    for _ in range(args.rounds):
        for name, comm in (("raw mpi4py", raw), ("commlib wrapped", ours)):
            times[name].append(_round(comm, buf, 1 - rank, args.iters, rank == 0))
    if rank == 0:
        med = {name: statistics.median(ts) for name, ts in times.items()}
        overhead = med["commlib wrapped"] - med["raw mpi4py"]
        print(f"ping-pong, {args.bytes} B contiguous, {args.rounds} rounds x {args.iters}, one-way latency")
        for name, t in med.items():
            print(f"  {name:16s} {t * 1e6:8.2f} us")
        print(f"  overhead         {overhead * 1e6:8.2f} us  ({med['commlib wrapped'] / med['raw mpi4py']:.2f}x)")
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps(
                {
                    "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "bytes": args.bytes,
                    "median_s": med,
                    "overhead_s": overhead,
                    "samples_s": times,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
