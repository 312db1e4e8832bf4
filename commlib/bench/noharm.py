"""Do-no-harm sweeps: unchanged programs under plain mpi4py and under ``python -m commlib``, cell by cell.

Each program runs a list of sizes in one launch and writes one median time
per size (the slowest rank's). Launches rotate through three modes - plain
``python -m mpi4py``, ``python -m commlib`` and plain again (the control) -
with the order shifted each round, so that machine noise hits every mode
alike. Per cell (program, ranks, size) the table gives the median over
launches of each mode, ``commlib/plain`` (below 1: commlib is faster) and
``control/plain``, the same ratio between two plain launches: how far apart
identical runs land, the yardstick for ratios close to 1.

Programs: ``halo`` (:file:`examples/halo3d.py`, 26 neighbours, subarray
types built once), ``pencil-reuse`` and ``pencil-rebuild``
(:file:`examples/pencil_fft.py` transposes: ``Alltoallw`` of subarray types
built once, or built for every call), and the loops of
:mod:`commlib.bench.micro`: ``pingpong``, ``allreduce`` and ``oneshot``
(a derived type built, used in one ``Alltoallw`` and freed); and
``mpi4py-suite``, mpi4py's own test suite (:mod:`commlib.bench.mpi4py_suite`),
timed as a whole launch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from commlib.mpirun import run

from . import mpi4py_suite

__all__ = ["PROGRAMS", "main"]

_ROOTS = (Path.cwd(), Path(__file__).resolve().parents[2])
MODES = {"plain": ["-m", "mpi4py"], "commlib": ["-m", "commlib"], "control": ["-m", "mpi4py"]}


def _example(name: str) -> str:
    for root in _ROOTS:
        path = root / "examples" / name
        if path.exists():
            return str(path)
    raise FileNotFoundError(f"examples/{name} not found: run from a checkout of the commlib repository")


# program -> (how to run it: a script or -m module and its arguments, the sizes of a full and a quick sweep)
PROGRAMS: dict[str, tuple] = {
    "halo": (lambda sizes: [_example("halo3d.py"), "--n", *sizes], [8, 16, 32, 64, 96], [16, 64]),
    "pencil-reuse": (
        lambda sizes: [_example("pencil_fft.py"), "--mode", "transpose", "--types", "reuse", "--n", *sizes],
        [16, 32, 64, 128],
        [32, 64],
    ),
    "pencil-rebuild": (
        lambda sizes: [_example("pencil_fft.py"), "--mode", "transpose", "--types", "rebuild", "--n", *sizes],
        [16, 32, 64, 128],
        [32, 64],
    ),
    "pingpong": (
        lambda sizes: ["-m", "commlib.bench.micro", "pingpong", "--sizes", *sizes],
        [8, 512, 32768, 1 << 20, 4 << 20],
        [8, 1 << 20],
    ),
    "allreduce": (
        lambda sizes: ["-m", "commlib.bench.micro", "allreduce", "--sizes", *sizes],
        [8, 512, 32768, 1 << 20, 4 << 20],
        [8, 1 << 20],
    ),
    "oneshot": (
        lambda sizes: ["-m", "commlib.bench.micro", "oneshot", "--sizes", *sizes],
        [1024, 65536, 1 << 20],
        [65536],
    ),
    "mpi4py-suite": (None, [0], [0]),  # the whole launch's wall time (size 0); fetched from the package index
}


def _suite(mode: str, ranks: int, timeout: float) -> dict[int, tuple[float, bool]]:
    """mpi4py's own test suite: the wall time of the whole launch, and whether it passed."""
    global _SUITE
    if _SUITE is None:
        _SUITE = mpi4py_suite.fetch(Path(tempfile.mkdtemp(prefix="commlib-mpi4py-suite-")))
    result = run(ranks, mpi4py_suite.command(MODES[mode][1]), python=False, cwd=str(_SUITE), timeout=timeout)
    return {0: (result.elapsed, "FAILED" not in result.stderr)}


_SUITE: Path | None = None
DEFAULT = [name for name in PROGRAMS if name != "mpi4py-suite"]  # the suite takes minutes a launch: asked for by name


def _launch(program: str, mode: str, ranks: int, sizes: list[int], timeout: float) -> dict[int, tuple[float, bool]]:
    """One launch: size -> (median seconds, checked right)."""
    if program == "mpi4py-suite":
        return _suite(mode, ranks, timeout)
    build = PROGRAMS[program][0]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        args = [sys.executable, *MODES[mode], *build([str(s) for s in sizes]), "--json", str(out)]
        run(ranks, args, python=False, timeout=timeout)
        rows = json.loads(out.read_text())["rows"]
    return {
        row.get("n", row.get("bytes")): (row.get("median_s", row.get("median_exchange_s")), row["ok"]) for row in rows
    }


def sweep(program: str, ranks: int, sizes: list[int], launches: int, timeout: float) -> list[dict]:
    """The cells of one program at one rank count: per size, every mode's samples and the ratios."""
    samples: dict[str, dict[int, list[float]]] = {mode: {s: [] for s in sizes} for mode in MODES}
    ok = {s: True for s in sizes}
    order = list(MODES)
    for k in range(launches):
        for mode in order[k % 3 :] + order[: k % 3]:  # rotate which mode goes first
            for size, (seconds, right) in _launch(program, mode, ranks, sizes, timeout).items():
                samples[mode][size].append(seconds)
                ok[size] = ok[size] and right
    cells = []
    for size in sizes:
        med = {mode: statistics.median(samples[mode][size]) for mode in MODES}
        cells.append(
            {
                "program": program,
                "ranks": ranks,
                "size": size,
                "median_s": med,
                "samples_s": {mode: samples[mode][size] for mode in MODES},
                "ratio": med["commlib"] / med["plain"],
                "control": med["control"] / med["plain"],
                "ok": ok[size],
            }
        )
    return cells


def _row(cell: dict) -> str:
    med = cell["median_s"]
    return (
        f"{cell['program']:>15} {cell['ranks']:5d} {cell['size']:>9} {med['plain'] * 1e3:11.3f} "
        f"{med['commlib'] * 1e3:11.3f} {cell['ratio']:8.2f} {cell['control']:8.2f}  "
        + ("OK" if cell["ok"] else "WRONG")
    )


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument(
        "--programs", nargs="+", choices=sorted(PROGRAMS), default=[p for p in PROGRAMS if p != "mpi4py-suite"]
    )
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 3, 4], help="rank counts (2 3 4)")
    parser.add_argument("--launches", type=int, default=3, help="launches per mode, program and rank count (3)")
    parser.add_argument("--quick", action="store_true", help="two sizes per program, one launch per mode")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per launch before it is killed")
    parser.add_argument("--json", default="results/noharm.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.launches = 1
    print(f"{'program':>15} {'ranks':>5} {'size':>9} {'plain ms':>11} {'commlib ms':>11} {'ratio':>8} {'control':>8}")
    cells = []
    for program in args.programs:
        _, full, quick = PROGRAMS[program]
        for ranks in args.ranks:
            for cell in sweep(program, ranks, quick if args.quick else full, args.launches, args.timeout):
                cells.append(cell)
                print(_row(cell), flush=True)
    worst = max(cells, key=lambda c: c["ratio"])
    print(f"worst cell: {worst['program']} at {worst['ranks']} ranks, size {worst['size']}: {worst['ratio']:.2f}x")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "cells": cells}, indent=1))
    print(f"Wrote {args.json}")
    return 0 if all(c["ok"] for c in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
