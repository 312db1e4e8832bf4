"""Cost-model accuracy: calibrate on one set of shapes, predict and choose on another, measure both.

Run under ``mpiexec -n 2`` (1 rank: the pack-engine half only). In one run:

1. calibration: ``commlib.calibrate`` measures its grid of shapes (packed
   bytes x block bytes x 2-3 levels, ping-pongs, point-to-point), or
   ``--calibration FILE`` reads a calibration made earlier (its grid is read
   from the file);
2. evaluation: shapes the calibration never measured (packed bytes at the
   geometric middle between its grid points, blocks likewise, 2 and 3
   levels) are measured for real, every shape twice (two
   passes, one after the other): both pack engines (pack and unpack,
   interleaved), and, between two ranks, a ping-pong of the native
   derived-type send against the interposer's pack path (pack into a
   staging buffer, contiguous send, receive, unpack), interleaved, and from
   the calibration's exchange size up, the same two in a nonblocking
   exchange with several messages in flight each way (``xchg``);
3. for each evaluated shape the model predicts every quantity and makes up
   to three choices: the engine (least pack + unpack), the send strategy
   and the strategy of a nonblocking exchange (``Isend``).

Reported: median relative error |predicted - measured| / measured (measured
= mean of the two passes), overall and per quantity, and the same for the
tables interpolated in log-log space instead; the noise floor (median
relative difference between the two passes); for each choice its regret,
measured time of the choice / best measured time - 1, and the share of
choices within 10% of the best, for the calibrated model and, as baselines,
the uncalibrated model (analytic defaults: the rule it replaced) and the
fixed choices (always MPI, always commlib). ``--statistic min`` reduces each
measurement's samples to their minimum instead of the median, for a shared
machine.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from mpi4py import MPI

from commlib import calibrate as cal
from commlib import calibration
from datatypes import model as cost_model

__all__ = ["evaluation_shapes", "main"]

QUANTITIES = (
    "pack.strided",
    "pack.mpi",
    "unpack.strided",
    "unpack.mpi",
    "send.native",
    "send.pack",
    "xchg.native",
    "xchg.pack",
)


def _between(values: tuple[int, ...]) -> list[int]:
    return [int(round(math.sqrt(a * b))) for a, b in zip(values, values[1:])]


def evaluation_shapes(plan: cal.MeasurementGrid) -> list[cal.StridedShape]:
    """Shapes the calibration of ``plan`` did not measure: byte counts and blocks between its grid points."""
    blocks = _between(plan.blocks)
    measured = {(s.nbytes, s.block, s.levels) for s in plan.shapes()}
    out = []
    for levels in (2, 3):
        for target in _between(plan.nbytes):
            for b in blocks:
                n = max(round(target / b), 1) * b
                shape = cal.StridedShape.of(n, b, levels)
                if shape is not None and (shape.nbytes, shape.block, shape.levels) not in measured:
                    out.append(shape)
    return out


def _measure(
    shape: cal.StridedShape, pair: MPI.Intracomm | None, plan: cal.MeasurementGrid, lead: bool
) -> dict[str, float]:
    times: dict[str, float] = {}
    if lead:
        times.update(cal.host_times(shape, plan.settings))
    if pair is not None:
        dt = shape.make()
        try:
            buf = np.random.default_rng(3).integers(0, 256, dt.Get_extent()[1], dtype=np.uint8)
            exchanges = {
                "send.native": cal.native_exchange(pair, dt, buf),
                "send.pack": cal.pack_exchange(pair, dt, buf),
            }
            times.update(cal.ping(pair, exchanges, plan.settings))
            exchanged = [s.row for s in plan.exchange_shapes()]
            if exchanged and shape.nbytes >= min(exchanged):  # where the calibration's exchange tables reach
                k = plan.exchange_messages
                concurrent = {f"xchg.{s}": cal.concurrent_exchange(pair, dt, buf, s, k) for s in ("native", "pack")}
                times.update(cal.ping(pair, concurrent, plan.settings, messages=k))
        finally:
            dt.Free()
    return times


def _predict(model: cost_model.Model, f: cost_model.Features, measured: dict[str, float]) -> dict[str, float]:
    predicted = {f"{k}.{e}": getattr(model, f"{k}_time")(e, f) for k in ("pack", "unpack") for e in cost_model.ENGINES}
    if "send.native" in measured:
        predicted["send.native"] = model.base("native", f, "intra")
        predicted["send.pack"] = model.base("pack", f, "intra")
    if "xchg.native" in measured:
        for s in ("native", "pack"):
            t = model.exchange_time(s, f, "intra")
            if t is not None:
                predicted[f"xchg.{s}"] = t
    return predicted


def _row(
    shape: cal.StridedShape,
    first: dict[str, float],
    second: dict[str, float],
    model: cost_model.Model,
    log_model: cost_model.Model,
    prior: cost_model.Model,
) -> dict[str, Any]:
    measured = {q: 0.5 * (first[q] + second[q]) for q in first}
    f = shape.features
    sends = "send.native" in measured
    row: dict[str, Any] = {"shape": shape.name(), "nbytes": f.nbytes, "block": f.block, "levels": f.levels}
    engine_cost = {e: measured[f"pack.{e}"] + measured[f"unpack.{e}"] for e in cost_model.ENGINES}
    row["engine"] = _choice_row(
        engine_cost,
        {
            "model": model.engine_for(*f),
            "model, log interpolation": log_model.engine_for(*f),
            "analytic (uncalibrated)": prior.engine_for(*f),
            "always mpi": "mpi",
            "always strided": "strided",
        },
    )
    models = (model, log_model, prior)
    if sends:
        row["send"] = _strategy_choice(measured, "send", "Send", f, models)
    if "xchg.native" in measured:
        ping_pong = {"model, ping-pong tables only": model.choose("Send", f, level="intra")}
        row["exchange"] = _strategy_choice(measured, "xchg", "Isend", f, models, ping_pong)
    predicted, predicted_log = _predict(model, f, measured), _predict(log_model, f, measured)
    row["measured_s"] = measured
    row["predicted_s"] = predicted
    row["predicted_log_s"] = predicted_log
    row["rel_error"] = {q: abs(predicted[q] - measured[q]) / measured[q] for q in predicted}
    row["rel_error_log"] = {q: abs(predicted_log[q] - measured[q]) / measured[q] for q in predicted_log}
    row["noise"] = {q: abs(first[q] - second[q]) / measured[q] for q in measured}
    return row


def _strategy_choice(
    measured: dict[str, float],
    quantity: str,
    op: str,
    f: cost_model.Features,
    models: tuple[cost_model.Model, cost_model.Model, cost_model.Model],
    more: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The native-or-pack choice of ``op``, by every chooser, against the measured ``quantity`` times."""
    model, log_model, prior = models
    choices = {
        "model": model.choose(op, f, level="intra"),
        "model, log interpolation": log_model.choose(op, f, level="intra"),
        **(more or {}),
        "analytic (uncalibrated)": prior.choose(op, f, level="intra"),
        "always native": "native",
        "always pack": "pack",
    }
    return _choice_row({s: measured[f"{quantity}.{s}"] for s in ("native", "pack")}, choices)


def _choice_row(cost: dict[str, float], choices: dict[str, str]) -> dict[str, Any]:
    best = min(cost.values())
    return {
        "measured_s": cost,
        "best": min(cost, key=cost.__getitem__),
        "choice": choices,
        "regret": {who: cost[c] / best - 1 for who, c in choices.items()},
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median relative errors and regret statistics over the evaluated shapes."""
    errors = [e for r in rows for e in r["rel_error"].values()]
    per_quantity = {q: [r["rel_error"][q] for r in rows if q in r["rel_error"]] for q in QUANTITIES}
    noise = [e for r in rows for e in r["noise"].values()]
    log_errors = [e for r in rows for e in r["rel_error_log"].values()]
    summary: dict[str, Any] = {
        "shapes": len(rows),
        "median_rel_error": statistics.median(errors) if errors else None,
        "median_rel_error_log_interpolation": statistics.median(log_errors) if log_errors else None,
        "median_noise": statistics.median(noise) if noise else None,
        "median_rel_error_by_quantity": {q: statistics.median(v) for q, v in per_quantity.items() if v},
        "decisions": {},
    }
    for decision in ("engine", "send", "exchange", "both"):
        picked = [r[d] for r in rows for d in (("engine", "send") if decision == "both" else (decision,)) if d in r]
        if not picked:
            continue
        who_all = [w for w in picked[0]["regret"] if all(w in p["regret"] for p in picked)]
        summary["decisions"][decision] = {
            who: {
                "cases": len(picked),
                "within_10pct": sum(p["regret"][who] <= 0.10 for p in picked) / len(picked),
                "median_regret": statistics.median(p["regret"][who] for p in picked),
                "mean_regret": statistics.fmean(p["regret"][who] for p in picked),
                "max_regret": max(p["regret"][who] for p in picked),
            }
            for who in who_all
        }
    return summary


def format_rows(rows: list[dict[str, Any]]) -> str:
    head = "| shape | quantity | measured us | predicted us | rel. error |"
    lines = [head, "|---|---|---:|---:|---:|"]
    for r in rows:
        for q in QUANTITIES:
            if q in r["rel_error"]:
                lines.append(
                    f"| {r['shape']} | {q} | {r['measured_s'][q] * 1e6:.1f} | {r['predicted_s'][q] * 1e6:.1f} "
                    f"| {r['rel_error'][q] * 100:.0f}% |"
                )
    return "\n".join(lines)


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"evaluated shapes: {summary['shapes']}"]
    if summary["median_rel_error"] is not None:
        lines.append(f"median relative error: {summary['median_rel_error'] * 100:.1f}% (target <= 25%)")
        by = summary["median_rel_error_by_quantity"]
        lines.append("  by quantity: " + ", ".join(f"{q} {v * 100:.0f}%" for q, v in by.items()))
        log = summary["median_rel_error_log_interpolation"] * 100
        lines.append(f"  the same tables interpolated in log-log space: {log:.1f}%")
        noise = summary["median_noise"] * 100
        lines.append(f"noise floor: median relative difference between two measurements of a shape {noise:.1f}%")
    lines += ["", "| decision | chooser | cases | within 10% of best | median regret | mean regret | max regret |"]
    lines.append("|---|---|---:|---:|---:|---:|---:|")
    for decision, table in summary["decisions"].items():
        for who, s in table.items():
            lines.append(
                f"| {decision} | {who} | {s['cases']} | {s['within_10pct'] * 100:.0f}% "
                f"| {s['median_regret'] * 100:.1f}% | {s['mean_regret'] * 100:.1f}% | {s['max_regret'] * 100:.0f}% |"
            )
    return "\n".join(lines)


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Calibrate the cost model on one set of shapes, evaluate its predictions and choices on "
        "another (run under mpiexec -n 2 for the send strategies).",
    )
    p.add_argument("--quick", action="store_true", help="the quick calibration grid and short samples (~1 min)")
    p.add_argument("--calibration", type=Path, help="use this calibration file instead of calibrating first")
    p.add_argument("--json", default="results/model_accuracy.json", metavar="PATH", help="where to write results")
    p.add_argument("--no-json", action="store_true", help="do not write JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--statistic",
        choices=("median", "min"),
        default="median",
        help="per measurement, the median of its samples (default; a quiet machine) or the minimum (a shared one)",
    )
    return p


def main(argv: list[str] | None = None, prog: str = "python -m commlib bench model-accuracy") -> int:
    """Run the model-accuracy benchmark; returns the exit code."""
    args = _parser(prog).parse_args(argv)
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    plan = cal.QUICK if args.quick else cal.FULL
    plan = replace(plan, settings=replace(plan.settings, statistic=args.statistic))
    t0 = time.perf_counter()
    if args.calibration is not None:
        doc, where = calibration.load(args.calibration) if rank == 0 else (None, "")
        doc, where = comm.bcast((doc, where), root=0)
        if doc is None:
            if rank == 0:
                print(f"{prog}: error: {where}", file=sys.stderr)
            return 2
        grid = doc.get("plan", {})
        if grid.get("nbytes") and grid.get("blocks"):
            plan = replace(plan, nbytes=tuple(grid["nbytes"]), blocks=tuple(grid["blocks"]))
    else:
        doc = comm.bcast(cal.calibrate(comm, plan, progress=not args.no_progress), root=0)
    calibrated_s = time.perf_counter() - t0
    model = cost_model.Model.from_json(doc, source="this run's calibration")
    log_model = cost_model.Model.from_json(doc, source="this run's calibration", interpolation="log")
    prior = cost_model.Model()
    previous = cost_model.current()
    cost_model.set_current(model)  # the interposer's pack path uses the evaluated model's engine
    shapes = evaluation_shapes(plan)
    pair = comm.Split(0 if rank < 2 and size >= 2 else MPI.UNDEFINED, rank)
    pair = None if pair == MPI.COMM_NULL else pair
    bar = None
    if rank == 0 and not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=2 * len(shapes), desc="evaluate", unit="shape", file=sys.stderr, disable=None)
    passes: list[list[dict[str, float]]] = [[], []]
    try:
        for runs in passes:  # every shape twice, the second pass after the first: the noise floor
            for shape in shapes:
                runs.append(_measure(shape, pair, plan, rank == 0))
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        cost_model.set_current(previous)
        if pair is not None:
            pair.Free()
    cal.sleeping_barrier(comm)
    if rank != 0:
        return 0
    rows = [_row(shape, a, b, model, log_model, prior) for shape, a, b in zip(shapes, *passes)]
    summary = summarize(rows)
    print(format_rows(rows))
    print()
    print(format_summary(summary))
    elapsed = time.perf_counter() - t0
    print(f"\ncalibration {calibrated_s:.0f} s, total {elapsed:.0f} s, {size} rank(s)")
    if not args.no_json:
        out = {
            "benchmark": "model_accuracy",
            "quick": args.quick,
            "statistic": args.statistic,
            "ranks": size,
            "calibration_key": doc.get("key"),
            "calibration_plan": doc.get("plan"),
            "calibration": doc,
            "seconds": {"calibration": calibrated_s, "total": elapsed},
            "rows": rows,
            "summary": summary,
        }
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
        print(f"results written to {path}")
    return 0
