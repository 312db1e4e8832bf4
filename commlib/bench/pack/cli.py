"""``python -m commlib bench pack``: its options, the run over the shapes, the JSON it writes."""

from __future__ import annotations

import argparse
import json
import platform
import socket
import sys
import time
from datetime import datetime
from pathlib import Path

import mpi4py
import numpy as np
from mpi4py import MPI

from commlib import __version__
from commlib.config import config

from .measure import BenchError, run_shape
from .report import format_summary, format_table, summarize
from .shapes import STRIDE_2D, shapes


class _Progress:
    """A one-line counter on stderr, rewritten in place on a terminal."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total = total
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.width = 0

    def show(self, i: int, label: str) -> None:
        if not self.enabled:
            return
        text = f"[{i}/{self.total}] {label}"
        if self.tty:
            sys.stderr.write("\r" + text.ljust(self.width))
            self.width = len(text)
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()


def _environment() -> dict:
    return {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "mpi4py": mpi4py.__version__,
        "commlib": __version__,
        "mpi_library": MPI.Get_library_version().strip().splitlines()[0].strip(),
    }


def _parser(prog: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Time MPI_Pack, commlib's strided and auto pack engines and memcpy on 2D and 3D strided shapes "
        "(one process, MPI.COMM_SELF); print a table and a summary and write JSON.",
    )
    p.add_argument("--quick", action="store_true", help="fewer repetitions and no 4 MiB 2D shapes (about 10-30 s)")
    p.add_argument(
        "--min-time",
        type=float,
        default=None,
        metavar="S",
        help="timed seconds per method and shape, at least (default 0.2, 0.05 with --quick)",
    )
    p.add_argument("--min-reps", type=int, default=5, metavar="N", help="samples per method and shape, at least (5)")
    p.add_argument("--seed", type=int, default=12345, help="random seed of the buffer contents (12345)")
    p.add_argument(
        "--json", default="results/pack.json", metavar="PATH", help="where to write the results (results/pack.json)"
    )
    p.add_argument("--no-json", action="store_true", help="do not write JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress counter on stderr")
    return p


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run the pack benchmark; returns the exit code."""
    args = _parser(prog).parse_args(argv)
    min_time = args.min_time if args.min_time is not None else (0.05 if args.quick else 0.2)
    if min_time < 0 or args.min_reps < 1:
        print("error: --min-time must be >= 0 and --min-reps >= 1", file=sys.stderr)
        return 2
    sample_time = max(min_time / 20, 1e-3)
    todo = shapes(args.quick)
    settings = {
        "quick": args.quick,
        "min_time_s": min_time,
        "min_reps": args.min_reps,
        "sample_time_s": sample_time,
        "seed": args.seed,
        "shapes": len(todo),
        "stride_2d": STRIDE_2D,
        "pack_engine": config.pack_engine,
        "pack_min_bytes": config.pack_min_bytes,
        "pack_min_block": config.pack_min_block,
    }
    env = _environment()
    rng = np.random.default_rng(args.seed)
    progress = _Progress(len(todo), enabled=not args.no_progress)
    rows = []
    t0 = time.perf_counter()
    try:
        for i, shape in enumerate(todo, 1):
            progress.show(i, shape.name)
            rows.append(run_shape(shape, rng, min_time, args.min_reps, sample_time))
    except BenchError as exc:
        progress.done()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    progress.done()
    elapsed = time.perf_counter() - t0
    summary = summarize(rows)
    print(f"Pack benchmark: {env['mpi_library']}; numpy {env['numpy']}, mpi4py {env['mpi4py']}; host {env['host']}")
    print(f"min time {min_time} s, min reps {args.min_reps} per method and shape; median times per call")
    print()
    print(format_table(rows))
    print()
    print(format_summary(summary))
    if not args.no_json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {**env, "settings": settings, "elapsed_s": elapsed, "rows": rows, "summary": summary}
        path.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nWrote {path} ({len(rows)} shapes, {elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
