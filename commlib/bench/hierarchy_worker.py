"""One rank of the hierarchy benchmark: allreduce and reduce-scatter + allgather by every method, interleaved.

Methods (``--methods``): ``mpi`` (MPI's own calls), ``2-level`` (commlib's
two-level allreduce, ``hierarchical-shard``; for reduce-scatter + allgather
the hierarchy's algorithm with the node level only), ``3-level`` (every
level of :mod:`collectives.hierarchy`), ``auto`` (what the library picks:
``allreduce(..., "auto")``, ``reduce_scatter_block``/``allgather`` with
``auto``). Per size, every method's result is first checked against MPI's
(1e-12 relative); then in each round every method runs a batch of calls
(methods rotated round to round), a sample being the slowest rank's time
per call. Rank 0 writes the medians as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np
from mpi4py import MPI

from collectives import hierarchical_calls as hc
from collectives.allreduce import allreduce, plan
from collectives.hierarchy import hierarchy

__all__ = ["main"]

METHODS = ("mpi", "2-level", "3-level", "auto")
OPS = ("allreduce", "rs+ag")


def _calls(comm: MPI.Intracomm, op: str, method: str, x: np.ndarray, y: np.ndarray, part: np.ndarray) -> Callable:
    """The call ``method`` makes for ``op`` (for rs+ag: ``x`` -> ``part`` -> ``y``)."""
    if op == "allreduce":
        if method == "mpi":
            return lambda: MPI.Comm.Allreduce(comm, x, y, MPI.SUM)
        alg = {"2-level": "hierarchical-shard", "3-level": "hierarchical-levels", "auto": "auto"}[method]
        return lambda: allreduce(comm, x, y, MPI.SUM, alg)
    if method == "mpi":

        def native() -> None:
            MPI.Comm.Reduce_scatter_block(comm, x, part, MPI.SUM)
            MPI.Comm.Allgather(comm, part, y)

        return native
    algorithm, levels = {"2-level": ("hierarchical", 1), "3-level": ("hierarchical", 2), "auto": ("auto", None)}[method]

    def ours() -> None:
        hc.reduce_scatter_block(comm, x, part, MPI.SUM, algorithm, levels=levels)
        hc.allgather(comm, part, y, algorithm, levels=levels)

    return ours


def _slowest(comm: MPI.Intracomm, seconds: float) -> float:
    return comm.allreduce(seconds, op=MPI.MAX)


def _time(comm: MPI.Intracomm, call: Callable, batch: int) -> float:
    comm.Barrier()
    t0 = time.perf_counter()
    for _ in range(batch):
        call()
    return _slowest(comm, (time.perf_counter() - t0) / batch)


def _size_row(comm: MPI.Intracomm, op: str, nbytes: int, methods: list[str], rounds: int, sample: float) -> dict:
    p, rank = comm.Get_size(), comm.Get_rank()
    n = max(p, nbytes // 8 // p * p)
    x = np.random.default_rng(7 + rank).random(n)
    y, part, reference = np.empty(n), np.empty(n // p), np.empty(n)
    MPI.Comm.Allreduce(comm, x, reference, MPI.SUM)
    errors = {}
    for method in methods:
        y[...] = np.nan
        _calls(comm, op, method, x, y, part)()
        bad = not np.allclose(y, reference, rtol=1e-12, atol=0)
        errors[method] = bool(comm.allreduce(bad, op=MPI.LOR))
    first = _time(comm, _calls(comm, op, "mpi", x, y, part), 1)
    batch = comm.bcast(int(min(50, max(1, sample / max(first, 1e-7)))), root=0)
    samples: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(rounds):
        k = r % len(methods)
        for method in methods[k:] + methods[:k]:
            samples[method].append(_time(comm, _calls(comm, op, method, x, y, part), batch))
    row = {"op": op, "bytes": n * 8, "batch": batch, "errors": errors}
    row["median_s"] = {m: statistics.median(s) for m, s in samples.items()}
    row["samples_s"] = samples
    if op == "allreduce":
        row["auto_plan"] = list(plan(comm, n * 8, "auto"))
    else:
        row["auto_plan"] = [list(hc.plan(comm, "reduce_scatter", n * 8)), list(hc.plan(comm, "allgather", n * 8))]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="commlib.bench.hierarchy_worker", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", required=True, help="vector sizes in bytes")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sample", type=float, default=0.05, help="target seconds of one MPI batch")
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    comm = MPI.COMM_WORLD
    h = hierarchy(comm)
    rows = [_size_row(comm, op, n, args.methods, args.rounds, args.sample) for n in args.sizes for op in args.ops]
    if comm.Get_rank() == 0:
        shape = {"levels": list(h.names), "shards": list(h.shards), "ranks": comm.Get_size()}
        with open(args.json, "w") as f:
            json.dump({"shape": shape, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
