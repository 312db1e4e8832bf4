"""Strided numpy views sent as they are (commlib) vs copied to and from contiguous arrays (plain mpi4py).

``python -m commlib bench strided [--quick] [--json PATH]`` launches two
ranks (:mod:`commlib.bench.strided_worker`). A cell is a layout (blocks of
8, 64 or 512 bytes, every other block of a float64 array) and a size (the
view's bytes, 1 KiB to 16 MiB). Per cell, three ways take turns in every
round: ``commlib`` passes the views to a wrapped communicator's
``Send``/``Recv``; ``copy`` is what a user writes without commlib
(``np.ascontiguousarray`` + ``Send``, ``Recv`` into a contiguous array +
``np.copyto`` into the view); ``control`` is ``copy`` again, the yardstick for
ratios close to 1. Times are one message (half a ping-pong), medians over
rounds; ``commlib/copy`` below 1 means commlib is faster. ``route`` says how
commlib moved the view (packed, or a derived type handed to MPI).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from commlib.mpirun import run

__all__ = ["main"]

SIZES = [1 << 10, 1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 24]
QUICK = [1 << 10, 1 << 16, 1 << 20, 1 << 24]


def _cells(rounds: int, sizes: list[int], timeout: float) -> list[dict]:
    worker = str(Path(__file__).with_name("strided_worker.py"))
    result = run(2, [sys.executable, worker, str(rounds), *map(str, sizes)], python=False, timeout=timeout)
    return [json.loads(line[5:]) for line in result.stdout.splitlines() if line.startswith("CELL ")]


def _size(nbytes: int) -> str:
    return f"{nbytes >> 20} MiB" if nbytes >= 1 << 20 else f"{nbytes >> 10} KiB"


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"sizes {', '.join(map(_size, QUICK))}, 5 rounds")
    parser.add_argument("--rounds", type=int, help="rounds per cell (default 11; --quick 5)")
    parser.add_argument("--json", help="write the cells and their medians to this file")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else SIZES
    rounds = args.rounds or (5 if args.quick else 11)
    cells = _cells(rounds, sizes, timeout=1800)
    print(f"strided views, 2 ranks, {rounds} rounds: one message (half a ping-pong), medians")
    columns = ("copy us", "commlib us", "commlib/copy", "control/copy")
    print(f"{'layout':<13} {'size':>7} " + " ".join(f"{c:>13}" for c in columns) + "  route")
    for cell in cells:
        med = {name: statistics.median(v) for name, v in cell["samples_s"].items()}
        cell["medians_s"] = med
        cell["ratio"] = med["commlib"] / med["copy"]
        cell["control"] = med["control"] / med["copy"]
        route = ", ".join(sorted({k.split()[-1] for k in cell.get("routes", {})})) or "-"
        print(
            f"{cell['layout']:<13} {_size(cell['bytes']):>7} {med['copy'] * 1e6:13.1f} {med['commlib'] * 1e6:13.1f} "
            f"{cell['ratio']:13.2f} {cell['control']:13.2f}  {route}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": rounds, "cells": cells}, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
