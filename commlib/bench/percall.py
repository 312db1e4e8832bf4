"""The interposer's per-call cost: the same loops on mpi4py's communicator and on commlib's, in one process.

One rank talks to itself (``COMM_WORLD`` of a singleton, or any rank on its
own), with the interposer installed as ``python -m commlib`` installs it
(the fault monitor on, unless ``--no-monitor``). Each loop runs on the plain
communicator, on the interposed one and on the plain one again (the noise
control), taking turns in every round; the table gives medians and the cost
per call: (interposed - plain) / calls in the loop.

Loops: ``Isend+Irecv+Waitall`` of 8 bytes; the same with a derived datatype
(a vector of 4 doubles) while it is cold (not analysed) and once it is hot
(analysed: its outcome, ``native``, known); ``Sendrecv`` of 8 bytes;
``Allreduce`` of 8 bytes; ``Barrier``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from mpi4py import MPI

__all__ = ["main"]


def _loops(comm: MPI.Comm, waitall: Callable, rank: int) -> dict[str, tuple[int, Callable[[], None]]]:
    """name -> (communication calls per iteration, one iteration)."""
    a, b = np.zeros(1), np.zeros(1)
    src, dst = np.zeros(8), np.zeros(8)
    hot = MPI.DOUBLE.Create_vector(4, 1, 2).Commit()

    def isend() -> None:
        waitall([comm.Irecv(b, rank, 1), comm.Isend(a, rank, 1)])

    def derived_hot() -> None:
        waitall([comm.Irecv([dst, 1, hot], rank, 2), comm.Isend([src, 1, hot], rank, 2)])

    cold = MPI.DOUBLE.Create_vector(4, 1, 2).Create_resized(0, 64).Commit()

    def derived_cold() -> None:
        waitall([comm.Irecv([dst, 1, cold], rank, 3), comm.Isend([src, 1, cold], rank, 3)])

    def sendrecv() -> None:
        comm.Sendrecv(a, rank, 4, b, rank, 4)

    def allreduce() -> None:
        comm.Allreduce(a, b)

    def barrier() -> None:
        comm.Barrier()

    return {
        "Isend+Irecv+Waitall 8 B": (2, isend),
        "same, derived type (hot)": (2, derived_hot),
        "same, derived type (cold)": (2, derived_cold),
        "Sendrecv 8 B": (1, sendrecv),
        "Allreduce 8 B": (1, allreduce),
        "Barrier": (1, barrier),
    }


def _timed(step: Callable[[], None], iterations: int) -> float:
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    return (time.perf_counter() - start) / iterations


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000, help="iterations per sample (2000)")
    parser.add_argument("--rounds", type=int, default=21, help="samples per loop and communicator (21)")
    parser.add_argument("--no-monitor", action="store_true", help="interpose without the fault monitor")
    parser.add_argument("--json", default="results/percall.json")
    args = parser.parse_args(argv)
    import commlib
    from commlib.config import config

    plain = MPI.COMM_WORLD
    rank = plain.Get_rank()
    waitall = MPI.Request.Waitall
    commlib.interpose(monitor=not args.no_monitor)
    ours = MPI.COMM_WORLD
    try:
        loops = {"plain": _loops(plain, waitall, rank), "commlib": _loops(ours, MPI.Request.Waitall, rank)}
        loops["control"] = _loops(plain, waitall, rank)
        rows = []
        print(f"{'loop':<28} {'plain us':>9} {'commlib us':>11} {'control us':>11} {'cost/call us':>13}")
        for name in loops["plain"]:
            calls = loops["plain"][name][0]
            # a derived type is analysed at once (hot) or never (cold), whatever the model's threshold
            config.analyse_bytes = 0 if "(hot)" in name else 1 << 60 if "(cold)" in name else -1
            samples: dict[str, list[float]] = {mode: [] for mode in loops}
            for mode in loops:
                _timed(loops[mode][name][1], args.iterations // 4)  # warm-up
            for _ in range(args.rounds):
                for mode in loops:
                    samples[mode].append(_timed(loops[mode][name][1], args.iterations))
            med = {mode: statistics.median(v) for mode, v in samples.items()}
            cost = (med["commlib"] - med["plain"]) / calls
            rows.append({"loop": name, "calls": calls, "median_s": med, "samples_s": samples, "cost_per_call_s": cost})
            print(
                f"{name:<28} {med['plain'] * 1e6:9.2f} {med['commlib'] * 1e6:11.2f} {med['control'] * 1e6:11.2f}"
                f" {cost * 1e6:13.2f}"
            )
    finally:
        config.analyse_bytes = -1
        commlib.uninterpose()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    doc = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "monitor": not args.no_monitor, "rows": rows}
    Path(args.json).write_text(json.dumps(doc, indent=1))
    print(f"Wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
