"""``python -m commlib calibrate``: the command's options, the run, and what it prints."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mpi4py import MPI

from datatypes import model as cost_model

from .. import calibration
from .grid import FULL, QUICK, MeasurementGrid, Settings
from .run import calibrate


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v, 0) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values) or list(values) != sorted(set(values)):
        raise argparse.ArgumentTypeError(f"expected increasing positive integers, got {text!r}")
    return values


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Measure this machine for commlib's cost model and write the calibration file "
        "(run under 'mpiexec -n 2' or more; 1 rank measures the host parts only).",
    )
    parser.add_argument("--quick", action="store_true", help="a small grid and short samples (under a minute)")
    parser.add_argument("--output", type=Path, help="write here instead of the cache directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--nbytes", type=_ints, help="packed bytes of the measured shapes (comma-separated)")
    parser.add_argument("--blocks", type=_ints, help="block bytes of the measured shapes")
    parser.add_argument("--p2p-bytes", type=_ints, help="sizes of the contiguous ping-pongs")
    parser.add_argument("--sample-time", type=float, help="seconds per timed sample")
    parser.add_argument("--reps", type=int, help="samples per measurement")
    parser.add_argument(
        "--statistic",
        choices=("median", "min"),
        default="median",
        help="reduce the samples to their median (default; a quiet machine) or minimum (a shared one)",
    )
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m commlib calibrate") -> int:
    """Entry point of ``python -m commlib calibrate``; returns the exit code."""
    args = _parser(prog).parse_args(argv)
    plan = QUICK if args.quick else FULL
    settings = plan.settings
    if (args.sample_time is not None and args.sample_time <= 0) or (args.reps is not None and args.reps < 1):
        print(f"{prog}: error: --sample-time must be > 0 and --reps >= 1", file=sys.stderr)
        return 2
    settings = Settings(args.sample_time or settings.sample_time, args.reps or settings.reps, args.statistic)
    plan = MeasurementGrid(
        nbytes=args.nbytes or plan.nbytes,
        blocks=args.blocks or plan.blocks,
        p2p_bytes=args.p2p_bytes or plan.p2p_bytes,
        settings=settings,
        reduce_bytes=plan.reduce_bytes,
    )
    comm = MPI.COMM_WORLD
    start = time.perf_counter()
    doc = calibrate(comm, plan, progress=not args.no_progress)
    status = 0
    if comm.Get_rank() == 0 and doc is not None:
        key = calibration.CalibrationKey.from_json(doc["key"])
        path = calibration.save(doc, args.output or calibration.path_for(key))
        model = cost_model.Model.from_json(doc, source=str(path))
        print(f"calibrated {key.describe()} in {time.perf_counter() - start:.1f} s -> {path}")
        for level in ("intra", "inter"):
            if f"p2p.{level}" in model.tables:
                alpha, beta = model.alpha_beta(level)
                print(
                    f"  {level}: alpha {alpha * 1e6:.2f} us, beta {beta * 1e9:.3f} ns/B ({1 / beta / 1e9:.2f} GB/s)"
                    if beta > 0
                    else f"  {level}: alpha {alpha * 1e6:.2f} us"
                )
        for note in doc["not_measured"]:
            print(f"  not measured: {note}")
    return comm.bcast(status, root=0)
