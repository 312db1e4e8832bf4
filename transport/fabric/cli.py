"""Flow placement in a leaf-spine fabric: random ECMP vs minimal splitting vs ideal packet spraying.

``python -m commlib fabric`` runs the comparison at scale.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from .evaluation import evaluate
from .leafspine import LeafSpine
from .plans import ecmp, spray
from .splitting import minimal_split
from .traffic import COLLECTIVES


def _size(text: str) -> float:
    units = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "kb": 1e3, "mb": 1e6}
    t = text.strip().lower()
    num = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    try:
        return float(num) * units[t[len(num) :]]
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a size such as 64MiB or 1e6, got {text!r}") from None


def _run_case(topo, name, message, placement, seeds, k, maxmin_limit, bar, inner) -> dict:
    """Every policy on ``seeds`` placements of collective ``name``; ``bar`` counts evaluations."""
    rows: dict[str, list[dict]] = {"ecmp": [], "split": [], "spray": []}
    for seed in range(seeds):
        bar.set_description(f"{name} seed {seed}")
        coll = COLLECTIVES[name](topo, message, placement=placement, seed=seed)
        plans = (ecmp(topo, coll, seed=1000 + seed), minimal_split(topo, coll, k), spray(topo, coll))
        for policy, plan in zip(("ecmp", "split", "spray"), plans):
            res = evaluate(topo, coll, plan, maxmin_limit=maxmin_limit, progress=inner)
            res["steps"] = coll.steps
            rows[policy].append(res)
            bar.update(1)
    return rows


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _parser(prog: str) -> argparse.ArgumentParser:
    """The command's options: the fabric, the collectives and their placement, seeds, k, max-min, output."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=128, help="leaf switches (128)")
    parser.add_argument("--hosts-per-leaf", type=int, default=32, help="hosts per leaf (32)")
    parser.add_argument("--spines", type=int, default=32, help="spine switches (32)")
    parser.add_argument("--host-gbps", type=float, default=400.0, help="host link capacity, Gbit/s (400)")
    parser.add_argument("--spine-gbps", type=float, default=400.0, help="leaf-spine link capacity, Gbit/s (400)")
    parser.add_argument("--collectives", nargs="+", default=["ring", "alltoall"], choices=sorted(COLLECTIVES))
    parser.add_argument("--bytes", type=_size, default=_size("256MiB"), help="message bytes per rank (256MiB)")
    parser.add_argument("--placement", default="random", choices=["random", "linear"], help="rank placement (random)")
    parser.add_argument("--seeds", type=int, default=5, help="placements x ECMP hash draws (5)")
    parser.add_argument("--k", type=int, default=None, help="subflows per flow (default: the minimal k)")
    parser.add_argument(
        "--maxmin-limit",
        type=int,
        default=None,
        help="also simulate max-min fair sharing for cases of at most this many flow-link incidences "
        "(default 0 = never; 100000 with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="a small fabric (256 hosts), 2 seeds")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--json", default="results/fabric.json", help="where to write the results")
    return parser


def _summary(name: str, policy: str, rows: dict[str, list[dict]]) -> dict:
    """One policy's medians over the seeds, relative to spraying on the same placements, and its runs."""
    rs = rows[policy]
    ratios = [r["step_fluid_s"] / sp["step_fluid_s"] for r, sp in zip(rs, rows["spray"])]
    cong = _median([r["step_fluid_s"] for r in rs])
    mm = _median([r["step_maxmin_s"] for r in rs])
    steps = rs[0]["steps"]
    total = cong * steps
    return {
        "collective": name,
        "policy": policy,
        "k": _median([r["k"] for r in rs]),
        "subflows": _median([r["subflows"] for r in rs]),
        "max_congestion_s": cong,
        "vs_spray": _median(ratios),
        "vs_spray_worst": max(ratios),
        "step_maxmin_s": mm,
        "collective_s": total,
        "collective_maxmin_s": mm * steps if mm is not None else None,
        "steps": steps,
        "runs": rs,
    }


def main(argv: list[str] | None = None, prog: str = "python -m commlib fabric") -> int:
    """``python -m commlib fabric``: max congestion and completion time of ECMP, minimal splitting, spraying."""
    parser = _parser(prog)
    args = parser.parse_args(argv)
    if args.quick:
        args.leaves, args.hosts_per_leaf, args.spines, args.seeds = 16, 16, 8, 2
    if args.maxmin_limit is None:
        args.maxmin_limit = 100_000 if args.quick else 0
    try:
        topo = LeafSpine(args.leaves, args.hosts_per_leaf, args.spines, args.host_gbps, args.spine_gbps)
    except ValueError as exc:
        parser.error(str(exc))
    from tqdm import tqdm

    print(
        f"fabric: {topo.describe()}; {args.bytes / 2**20:g} MiB per rank; "
        f"placement {args.placement}; {args.seeds} seeds"
    )
    header = (
        f"{'collective':<10} {'policy':<6} {'k':>3} {'subflows':>10} {'max cong ms':>12} {'x spray':>8} "
        f"{'worst x':>8} {'step max-min ms':>16} {'collective ms':>14}"
    )
    results = []
    lines = []
    total = len(args.collectives) * args.seeds * 3
    quiet = args.no_progress
    with (
        tqdm(total=total, unit="plan", disable=True if quiet else None, leave=False, file=sys.stderr) as bar,
        tqdm(total=0, unit="flow", disable=quiet or not args.maxmin_limit, leave=False, file=sys.stderr) as inner,
    ):
        for name in args.collectives:
            rows = _run_case(topo, name, args.bytes, args.placement, args.seeds, args.k, args.maxmin_limit, bar, inner)
            for policy in ("ecmp", "split", "spray"):
                summary = _summary(name, policy, rows)
                results.append(summary)
                mm, cong, total = summary["step_maxmin_s"], summary["max_congestion_s"], summary["collective_s"]
                mm_text = f"{mm * 1e3:16.4f}" if mm is not None else f"{'-':>16}"
                lines.append(
                    f"{name:<10} {policy:<6} {summary['k']:>3g} {summary['subflows']:>10.0f} {cong * 1e3:12.3f} "
                    f"{summary['vs_spray']:7.3f}x {summary['vs_spray_worst']:7.3f}x {mm_text} {total * 1e3:13.1f}"
                )
    print(header)
    print("\n".join(lines))
    print(
        "max cong = seconds the busiest link needs for its bytes (median over seeds); x spray / worst x = that, "
        "relative to ideal spraying on the same placement (median / worst seed); step max-min = slowest flow under "
        "max-min fair sharing (-: not simulated, see --maxmin-limit); collective = steps x max cong (subflows paced "
        "to finish together)"
    )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    meta = {"topology": topo.describe(), "bytes": args.bytes, "placement": args.placement, "seeds": args.seeds}
    Path(args.json).write_text(
        json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%S"), **meta, "rows": results}, indent=1)
    )
    print(f"Wrote {args.json}")
    return 0
