"""Packed exchanges of large derived-type messages: MPI's derived path vs commlib with fresh or reused staging.

Run with two ranks: ``mpiexec -n 2 python -m commlib bench staging [--json PATH]``.
Each rank sends ``k`` messages of one face of a 3D grid (``n^2 x 3`` cells of
8 doubles, one ``Create_subarray`` type) to the other and receives as many,
with Isend/Irecv/Waitall. Three ways, on one communicator handle, taking turns
round after round: ``MPI``: mpi4py with the derived type; ``fresh``: commlib
packing every message into a newly allocated buffer (``COMMLIB_STAGING_BYTES=0``);
``reused``: commlib packing into its session's staging pool (the default). A
sample is the slower rank's time for one exchange divided by ``k``; the table
shows medians and writes JSON.
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

from commlib.config import config
from commlib.interposer.comm import wrap
from commlib.interposer.session import Session
from commlib.interposer.staging import StagingPool

FACES = {"x": lambda n: [3, n, n, 8], "z": lambda n: [n, n, 3, 8]}  # 8n-double rows / 3-cell (192 B) rows


def _exchange(comm: MPI.Intracomm, spec: list, peer: int, k: int) -> None:
    reqs = [comm.Irecv(spec, peer, i) for i in range(k)] + [comm.Isend(spec, peer, i) for i in range(k)]
    MPI.Request.Waitall(reqs)


def _sample(comm: MPI.Intracomm, spec: list, peer: int, k: int, reps: int) -> float:
    comm.Barrier()
    t = time.perf_counter()
    for _ in range(reps):
        _exchange(comm, spec, peer, k)
    return MPI.COMM_WORLD.allreduce((time.perf_counter() - t) / reps / k, op=MPI.MAX)


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run the staging benchmark (two ranks); returns the exit code."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128], help="grid cells per side (32 64 128)")
    parser.add_argument("--concurrent", type=int, nargs="+", default=[1, 6], help="messages in flight each way")
    parser.add_argument("--rounds", type=int, default=9, help="samples per way (9)")
    parser.add_argument("--reps", type=int, default=10, help="exchanges per sample (10)")
    parser.add_argument("--json", default="results/staging.json")
    args = parser.parse_args(argv)
    world = MPI.COMM_WORLD
    if world.Get_size() != 2:
        print("staging: run with exactly 2 ranks (mpiexec -n 2)", file=sys.stderr)
        return 2
    peer = 1 - world.Get_rank()
    fresh = Session(lambda op, message: "pack")
    fresh.staging = StagingPool(0)
    reused = Session(lambda op, message: "pack")
    reused.staging = StagingPool(max(config.staging_bytes, 64 << 20))
    ways = {"MPI": world, "fresh": wrap(MPI.Intracomm(world), fresh), "reused": wrap(MPI.Intracomm(world), reused)}
    rows = []
    if world.Get_rank() == 0:
        print("per message, one way, 2 ranks; fresh and reused: commlib packs (unpacks) every message")
        print(
            f"{'face':>4} {'n':>4} {'KiB':>6} {'k':>2} {'MPI us':>8} {'fresh us':>9} {'reused us':>10} "
            f"{'reused/fresh':>12} {'reused/MPI':>10}"
        )
    for n in args.sizes:
        full = [n + 6, n + 6, n + 6, 8]
        grid = np.random.default_rng(world.Get_rank()).random(full)
        for face, sizes in FACES.items():
            dt = MPI.DOUBLE.Create_subarray(full, sizes(n), [0, 0, 0, 0]).Commit()
            spec = [grid, 1, dt]
            for k in args.concurrent:
                for comm in ways.values():
                    _exchange(comm, spec, peer, k)  # warm-up: staging buffers, MPI's connections
                samples: dict[str, list[float]] = {name: [] for name in ways}
                for r in range(args.rounds):
                    order = list(ways)[r % 3 :] + list(ways)[: r % 3]
                    for name in order:
                        samples[name].append(_sample(ways[name], spec, peer, k, args.reps))
                med = {name: statistics.median(ts) for name, ts in samples.items()}
                rows.append(
                    {"face": face, "n": n, "bytes": dt.Get_size(), "concurrent": k}
                    | {"median_s": med, "samples_s": samples}
                )
                if world.Get_rank() == 0:
                    print(
                        f"{face:>4} {n:4d} {dt.Get_size() / 1024:6.0f} {k:2d} {med['MPI'] * 1e6:8.1f} "
                        f"{med['fresh'] * 1e6:9.1f} {med['reused'] * 1e6:10.1f} {med['reused'] / med['fresh']:11.2f}x "
                        f"{med['reused'] / med['MPI']:9.2f}x"
                    )
            dt.Free()
    if world.Get_rank() == 0:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": rows}, indent=1))
        print(f"Wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
