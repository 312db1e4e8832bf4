"""Halo-exchange benchmark: examples/halo3d.py under plain mpi4py and under ``python -m commlib``.

For each rank count and grid size, runs the same program both ways (several
alternating launches), takes each launch's median exchange time (the slowest
rank's) and reports the median over launches, the speedup, and whether every
run checked its halos correctly. Prints a table and writes JSON.
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

_CANDIDATES = (Path.cwd() / "examples" / "halo3d.py", Path(__file__).resolve().parents[2] / "examples" / "halo3d.py")
APP = next((p for p in _CANDIDATES if p.exists()), _CANDIDATES[0])
MODES = {"mpi4py": ["-m", "mpi4py"], "commlib": ["-m", "commlib"]}


def _launch(mode: str, ranks: int, sizes: list[int], iters: int, timeout: float) -> dict[int, dict]:
    """One launch of every size: n -> its row (median exchange time, whether the halos were right)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "halo.json"
        args = [sys.executable, *MODES[mode], str(APP), "--n", *map(str, sizes), "--iters", str(iters)]
        run(ranks, [*args, "--json", str(out)], python=False, timeout=timeout)
        return {row["n"]: row for row in json.loads(out.read_text())["rows"]}


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 8], help="rank counts (4 8)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64], help="cells per side per rank")
    parser.add_argument("--launches", type=int, default=3, help="launches per mode and shape (3)")
    parser.add_argument("--iters", type=int, default=20, help="timed exchanges per launch (20)")
    parser.add_argument("--quick", action="store_true", help="4 ranks, a small and a large grid (16, 96), 2 launches")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per launch before it is killed")
    parser.add_argument("--json", default="results/halo3d.json")
    args = parser.parse_args(argv)
    if not APP.exists():
        parser.error(f"{APP} not found: run from a checkout of the commlib repository")
    if args.quick:
        args.ranks, args.sizes, args.launches = [4], [16, 96], 2
    rows = []
    print(f"{'ranks':>5} {'n':>4} {'mpi4py ms':>10} {'commlib ms':>11} {'speedup':>8}  halos")
    for ranks in args.ranks:
        samples: dict[str, dict[int, list[float]]] = {mode: {n: [] for n in args.sizes} for mode in MODES}
        ok = dict.fromkeys(args.sizes, True)
        for k in range(args.launches):
            for mode in list(MODES)[k % 2 :] + list(MODES)[: k % 2]:  # alternate which goes first
                for n, row in _launch(mode, ranks, args.sizes, args.iters, args.timeout).items():
                    samples[mode][n].append(row["median_exchange_s"])
                    ok[n] = ok[n] and row["ok"]
        for n in args.sizes:
            med = {mode: statistics.median(samples[mode][n]) for mode in MODES}
            speedup = med["mpi4py"] / med["commlib"]
            rows.append(
                {"ranks": ranks, "n": n, "median_s": med, "samples_s": {m: samples[m][n] for m in MODES},
                 "speedup": speedup, "ok": ok[n]}
            )  # fmt: skip
            print(
                f"{ranks:5d} {n:4d} {med['mpi4py'] * 1e3:10.3f} {med['commlib'] * 1e3:11.3f} {speedup:7.2f}x  "
                + ("OK" if ok[n] else "WRONG")
            )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": rows}, indent=1))
    print(f"Wrote {args.json}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
