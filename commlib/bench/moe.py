"""MoE expert all-to-all benchmark: commlib's dispatch/combine vs the straightforward mpi4py version, and placement.

Three parts, each skippable:

* ``exchange``: per rank count and payload dtype, one mpiexec launch of
  :mod:`commlib.bench.moe_ranks` ``exchange``: a layer with uniform top-k
  routing over ``experts_per_rank * ranks`` experts, identity experts,
  dispatch + combine by commlib with its defaults (tokens once per
  destination rank, rows gathered with numpy), with ``pack="mpi"`` (MPI
  datatypes pick and place the rows: ``typed``), with one row per pair
  (``replicated``), and the straightforward mpi4py version
  (:mod:`commlib.bench.moe_mpi4py`), in rotating order within every
  iteration. Times are the slowest rank's, medians over iterations; bytes are
  the payload that crossed between ranks (all ranks, both directions).
  Outputs are checked against each other. Each shape runs twice: with
  glibc's default allocator (large buffers get fresh pages, so page faults
  count, and they favour code that allocates less) and with freed memory
  kept for reuse (steady state without page faults). The default shape is scaled down
  from the target (1M tokens x 1024 features per rank, 4 GiB of fp32 per rank
  for ``x`` alone); ``--full`` runs the target shape where memory permits.
* ``placement`` (one process): fractions of layer-to-layer token transitions
  that cross ranks and nodes on synthetic affinity traces, for the contiguous
  placement, the assignment sweeps alone, and sweeps + MILP refinement; the
  placement is computed on one sample of the router and judged on another.
* ``emulated`` (root only, :mod:`commlib.cluster`): on 2 emulated nodes x 2
  ranks joined by shaped links, the exchange above, and an ExFlow-style
  chain (tokens stay on their expert's rank between layers) with the
  contiguous vs the computed placement.

Prints tables and writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from collectives.placement import Placement, place_experts, transition_fractions
from collectives.traces import AffinityModel
from commlib.mpirun import run

__all__ = ["main"]

FULL_TOKENS, FULL_FEATURES = 1 << 20, 1024


def _program(name: str, **options: object) -> list[str]:
    args = ["-m", "commlib.bench.moe_ranks", name]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


# glibc returns every large block to the kernel on free and maps fresh zeroed pages on the next
# allocation; "reuse" keeps freed memory in the heap instead, so that steady-state timings do not
# include page faults (which some virtual machines make very expensive).
ALLOCATORS = {"system": {}, "reuse": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}}


def _launch(launcher, ranks, name: str, timeout: float, env: dict | None = None, **options: object) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "moe.json"
        launcher(ranks, _program(name, json=out, **options), timeout=timeout, env=env or {})
        return json.loads(out.read_text())


def _bytes_per_rank(tokens: int, features: int, topk: int, itemsize: int) -> int:
    """Peak payload memory of one rank: the baseline's buffers (the largest) plus x and commlib's output."""
    row = features * itemsize
    return tokens * row * (2 + 6 * topk)


def _exchange_rows(results: list[dict]) -> None:
    print(
        f"{'ranks':>5} {'tokens':>8} {'feat':>5} {'dtype':>7} {'alloc':>6} | "
        f"{'commlib':>8} {'typed':>8} {'replic.':>8} {'mpi4py':>8} ms | "
        f"{'speedup':>7} {'typed':>6} {'replic.':>7} | {'bytes':>5} {'replic.':>7}  check"
    )
    for r in results:
        med = {m: t["total"] for m, t in r["median_s"].items()}
        base = med["mpi4py"]
        moved = {m: b["dispatch"] + b["combine"] for m, b in r["bytes"].items()}
        print(
            f"{r['ranks']:5d} {r['tokens_per_rank']:8d} {r['features']:5d} {r['dtype']:>7} {r['allocator']:>6} | "
            + " ".join(f"{med[m] * 1e3:8.1f}" for m in ("dedup", "typed", "replicated", "mpi4py"))
            + f"    | {base / med['dedup']:6.2f}x {base / med['typed']:5.2f}x {base / med['replicated']:6.2f}x | "
            f"{moved['dedup'] / max(1, moved['mpi4py']):5.3f} {moved['replicated'] / max(1, moved['mpi4py']):7.3f}  "
            + ("OK" if r["ok"] else "WRONG")
        )


def exchange_part(args: argparse.Namespace, launcher=run, ranks_list=None, label: str = "") -> list[dict]:
    results = []
    print(f"\n== dispatch + combine{label}: commlib (default, typed, replicated) vs straightforward mpi4py ==")
    for ranks in ranks_list or args.ranks:
        for dtype in args.dtypes:
            need = _bytes_per_rank(args.tokens, args.features, args.topk, np.dtype(dtype).itemsize)
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            count = ranks if isinstance(ranks, int) else sum(ranks)
            if need * count > 0.9 * total and not args.force:
                print(
                    f"skip {count} ranks {dtype}: needs about {need * count / 2**30:.0f} GiB, have {total / 2**30:.0f}"
                )
                continue
            options = dict(
                tokens=args.tokens,
                features=args.features,
                topk=args.topk,
                experts_per_rank=args.experts_per_rank,
                dtype=dtype,
                iters=args.iters,
            )
            for allocator in args.allocators:
                result = _launch(launcher, ranks, "exchange", args.timeout, ALLOCATORS[allocator], **options)
                results.append(result | {"allocator": allocator})
    _exchange_rows(results)
    return results


def placement_part(args: argparse.Namespace) -> list[dict]:
    print(
        f"\n== placement: {args.place_experts} experts, {args.place_layers} layers, {args.place_ranks} ranks, "
        f"{args.place_rpn} per node; fractions of transitions crossing ranks / nodes (held-out sample) =="
    )
    print(
        f"{'affin.':>6} {'fan':>3} | {'rank: contig':>12} {'sweeps':>7} {'+milp':>7} | "
        f"{'node: contig':>12} {'sweeps':>7} {'+milp':>7} | {'node cut':>8} {'sweep s':>7} {'milp s':>7}"
    )
    rows = []
    for affinity in args.affinities:
        for fanout in args.fanouts:
            model = AffinityModel.random(
                args.place_layers, args.place_experts, affinity, fanout=fanout, skew=args.skew, seed=args.seed
            )
            train = model.sample(args.place_tokens, seed=args.seed + 1)
            test = model.sample(args.place_tokens, seed=args.seed + 2)
            contiguous = Placement.contiguous(args.place_layers, args.place_experts, args.place_ranks, args.place_rpn)
            t0 = time.perf_counter()
            swept = place_experts(train, args.place_ranks, args.place_rpn, num_experts=args.place_experts, refine=False)
            t1 = time.perf_counter()
            refined = place_experts(
                train, args.place_ranks, args.place_rpn, num_experts=args.place_experts, time_limit=args.place_time
            )
            t2 = time.perf_counter()
            frac = {name: transition_fractions(p, test) for name, p in (("contiguous", contiguous), ("sweeps", swept))}
            frac["milp"] = transition_fractions(refined, test)
            cut = 1 - frac["milp"]["cross_node"] / frac["contiguous"]["cross_node"]
            rows.append(
                {"affinity": affinity, "fanout": fanout, "fractions": frac, "node_cut": cut}
                | {"sweep_s": t1 - t0, "milp_s": t2 - t1}
            )
            f = {k: v["cross_rank"] for k, v in frac.items()}
            g = {k: v["cross_node"] for k, v in frac.items()}
            print(
                f"{affinity:6.2f} {fanout:3d} | {f['contiguous']:12.3f} {f['sweeps']:7.3f} {f['milp']:7.3f} | "
                f"{g['contiguous']:12.3f} {g['sweeps']:7.3f} {g['milp']:7.3f} | "
                f"{cut:7.0%} {t1 - t0:7.2f} {t2 - t1:7.2f}"
            )
    return rows


def emulated_part(args: argparse.Namespace) -> dict:
    from commlib.cluster import EmulatedCluster, cluster_available

    ok, why = cluster_available()
    if not ok:
        print(f"\n== emulated nodes: skipped ({why}) ==")
        return {"skipped": why}
    out: dict = {"rate": args.rate}
    with EmulatedCluster(nodes=2, rate=args.rate) as cl:
        small = argparse.Namespace(**{**vars(args), "tokens": args.emulated_tokens, "features": args.emulated_features})
        out["exchange"] = exchange_part(small, cl.mpirun, [[2, 2]], f" on 2 emulated nodes x 2 ranks at {args.rate}")
        print(f"\n== ExFlow-style chain on 2 emulated nodes x 2 ranks at {args.rate}: contiguous vs placed ==")
        print(
            f"{'affin.':>6} {'fan':>3} | {'contig ms':>9} {'placed ms':>9} {'speedup':>7} | "
            f"{'cross-node MB':>19}  check"
        )
        chains = []
        for affinity in args.affinities:
            for fanout in args.fanouts:
                r = _launch(
                    cl.mpirun,
                    [2, 2],
                    "chain",
                    args.timeout,
                    tokens=4 * args.emulated_tokens,
                    features=args.emulated_features,
                    layers=args.place_layers,
                    affinity=affinity,
                    fanout=fanout,
                    ranks_per_node=2,
                    experts_per_rank=args.experts_per_rank,
                    place_time=args.place_time,
                    iters=args.iters,
                )
                chains.append(r)
                m, b = r["median_s"], r["cross_node_bytes"]
                print(
                    f"{affinity:6.2f} {fanout:3d} | {m['contiguous'] * 1e3:9.1f} {m['placed'] * 1e3:9.1f} "
                    f"{m['contiguous'] / m['placed']:6.2f}x | {b['contiguous'] / 1e6:9.1f} {b['placed'] / 1e6:9.1f}  "
                    + ("OK" if r["ok"] else "WRONG")
                )
        out["chain"] = chains
    return out


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["exchange", "placement", "emulated"])
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4], help="rank counts (2 4)")
    parser.add_argument("--tokens", type=int, default=65536, help="tokens per rank (65536)")
    parser.add_argument("--features", type=int, default=1024, help="features per token (1024)")
    parser.add_argument("--full", action="store_true", help=f"the target shape: {FULL_TOKENS} tokens x 1024 features")
    parser.add_argument("--force", action="store_true", help="run shapes even when they look too large for memory")
    parser.add_argument("--topk", type=int, default=2)
    parser.add_argument("--experts-per-rank", type=int, default=4)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float16"])
    parser.add_argument("--iters", type=int, default=10, help="timed iterations per method (10)")
    parser.add_argument(
        "--allocators",
        nargs="+",
        choices=list(ALLOCATORS),
        default=list(ALLOCATORS),
        help="glibc settings of the exchange ranks: system (default malloc), reuse (freed memory stays mapped)",
    )
    parser.add_argument("--affinities", type=float, nargs="+", default=[0.5, 0.8, 0.9, 0.95])
    parser.add_argument("--fanouts", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--skew", type=float, default=0.0, help="popularity skew of the traces (0: uniform)")
    parser.add_argument("--place-experts", type=int, default=64)
    parser.add_argument("--place-layers", type=int, default=8)
    parser.add_argument("--place-ranks", type=int, default=16)
    parser.add_argument("--place-rpn", type=int, default=4, help="ranks per node in the placement study (4)")
    parser.add_argument("--place-tokens", type=int, default=50000)
    parser.add_argument("--place-time", type=float, default=10.0, help="seconds for each place_experts call (10)")
    parser.add_argument("--rate", default="1gbit", help="emulated link rate (1gbit)")
    parser.add_argument("--emulated-tokens", type=int, default=8192)
    parser.add_argument("--emulated-features", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600, help="seconds per launch before it is killed")
    parser.add_argument("--quick", action="store_true", help="a smoke run: small shapes, few iterations")
    parser.add_argument("--json", default="results/moe.json")
    args = parser.parse_args(argv)
    if args.full:
        args.tokens, args.features = FULL_TOKENS, FULL_FEATURES
    if args.quick:
        args.ranks, args.tokens, args.features, args.iters, args.allocators = [2], 4096, 256, 3, ["system"]
        args.affinities, args.fanouts, args.place_experts, args.place_ranks = [0.9], [1, 2], 32, 8
        args.place_layers, args.place_tokens, args.place_time = 4, 5000, 1.0
        args.emulated_tokens, args.emulated_features = 2048, 256
    unknown = set(args.parts) - {"exchange", "placement", "emulated"}
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)} (choose from exchange, placement, emulated)")
    report: dict = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "args": vars(args)}
    if "exchange" in args.parts:
        report["exchange"] = exchange_part(args)
    if "placement" in args.parts:
        report["placement"] = placement_part(args)
    if "emulated" in args.parts:
        report["emulated"] = emulated_part(args)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"Wrote {args.json}")
    runs = report.get("exchange", []) + report.get("emulated", {}).get("exchange", [])
    runs += report.get("emulated", {}).get("chain", [])
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
