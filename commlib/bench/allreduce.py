"""Allreduce benchmark: every commlib algorithm against ``MPI_Allreduce`` in the same run.

Configurations: ``1node`` (``--ranks`` ranks on this machine, shared memory)
and ``2x2``, ``2x4`` (2 emulated nodes x 2 or 4 ranks, network namespaces
joined by ``--rate`` links, MPICH forced onto TCP; see
:mod:`commlib.cluster`; skipped with the reason where they cannot be built),
with ranks numbered node by node, and ``2x2rr``, ``2x4rr``, the same with
ranks alternating between the nodes (as ``mpiexec`` places them round-robin).
Each configuration is one ``mpiexec`` job (:mod:`commlib.bench.allreduce_worker`)
that, per size, checks every algorithm against MPI's result (same bytes on all
ranks, 1e-12 relative to MPI), then times them in turns: a sample is a batch
of back-to-back calls timed by the slowest rank; the table shows MPI's median
time per call and every algorithm's median as a multiple of it;
``star-arrival`` (a star adding in arrival order, not reproducible) prices
the fixed reduction order of ``star``; ``mpi-again`` (opt-in) times MPI's own
call a second time, which shows how far two identical calls differ in the run. With
``--traffic``, each emulated configuration also counts the bytes that cross a
node's link during calls of each algorithm at ``--traffic-size`` (one job per
algorithm, from the kernel's interface counters).
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from collectives import allreduce_algorithms as registry
from commlib.mpirun import MPIRunError, run

__all__ = ["main"]

# the library's algorithms (collectives.allreduce_algorithms), and star-arrival: star whose root
# reduces the contributions in arrival order, a variant timed here only (its result depends on timing)
ALGORITHMS = (*registry.FLAT, "star-arrival", "hierarchical", *registry.HIERARCHICAL, "auto")
CONTROL = "mpi-again"  # MPI's Allreduce timed a second time: the run's noise floor, opt-in
SHORT = {
    CONTROL: "MPI again",
    "hierarchical": "hier",
    "hierarchical-root": "h-root",
    "hierarchical-shard": "h-shard",
    "hierarchical-levels": "h-levels",
    "star-arrival": "star-arr",
}
FULL_SIZES = (8, 64, 512, 4096, 32768, 262144, 1 << 20, 4 << 20, 16 << 20, 64 << 20)
QUICK_SIZES = (8, 4096, 262144, 1 << 20, 4 << 20)
CONFIGS = ("1node", "2x2", "2x4", "2x2rr", "2x4rr")
WORKER = ["-m", "commlib.bench.allreduce_worker"]
HIER_TARGET, AUTO_TARGET, HIER_FROM = 0.6, 1.1, 1 << 20


def _size(n: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def _worker_args(args: argparse.Namespace, out: Path) -> list[str]:
    return [
        *WORKER,
        "--sizes",
        *map(str, args.sizes),
        "--algorithms",
        *args.algorithms,
        "--rounds",
        str(args.rounds),
        "--sample",
        str(args.sample),
        "--json",
        str(out),
    ]


def _launch(cl: Any, ppn: int, interleaved: bool, worker: list[str], timeout: float) -> None:
    """Run ``worker`` with ``ppn`` ranks on each of the two nodes: ranks node by node, or alternating."""
    placement = [(rank % 2, 1) for rank in range(2 * ppn)] if interleaved else [ppn, ppn]
    cl.mpirun(placement, worker, timeout=timeout)


def _run_config(name: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "allreduce.json"
        worker = _worker_args(args, out)
        start = time.monotonic()
        if name == "1node":
            run(args.ranks, worker, timeout=args.timeout)
            result = json.loads(out.read_text())
            result["description"] = f"{args.ranks} ranks on this machine (shared memory)"
        else:
            from commlib.cluster import EmulatedCluster

            interleaved = name.endswith("rr")
            ppn = int(name.removesuffix("rr").split("x")[1])
            with EmulatedCluster(nodes=2, rate=args.rate) as cl:
                _launch(cl, ppn, interleaved, worker, args.timeout)
                result = json.loads(out.read_text())
                if args.traffic:
                    result["traffic"] = _traffic(cl, ppn, interleaved, args)
            placement = "alternating between the nodes" if interleaved else "node by node"
            result["description"] = (
                f"2 emulated nodes x {ppn} ranks numbered {placement}, {args.rate} links, MPICH over TCP"
            )
        result["elapsed_s"] = time.monotonic() - start
        return result


def _traffic(cl: Any, ppn: int, interleaved: bool, args: argparse.Namespace) -> dict[str, float]:
    """Bytes per call leaving node 0 over its link, per algorithm (3 calls per job, minus a job of 0 calls)."""

    def sent(calls: int, alg: str) -> int:
        before = cl.link_bytes(0)[cl.device][1]
        worker = [*WORKER, "--sizes", str(args.traffic_size), "--algorithms", alg, "--traffic-calls", str(calls)]
        with tempfile.TemporaryDirectory() as tmp:
            _launch(cl, ppn, interleaved, [*worker, "--json", str(Path(tmp) / "t.json")], args.timeout)
        return cl.link_bytes(0)[cl.device][1] - before

    base = sent(0, "native")
    return {alg: (sent(3, alg) - base) / 3 for alg in args.algorithms}


def _ratio(row: dict[str, Any], alg: str) -> float:
    med = row["median_s"]
    return med[alg] / med["native"]


def _table(name: str, result: dict[str, Any], algorithms: list[str]) -> list[str]:
    others = [a for a in algorithms if a != "native"]
    lines = [
        f"\n{name}: {result['description']}; nodes {result['nodes']} (by {result['node_detection']})",
        f"{'size':>8} {'MPI':>10} " + " ".join(f"{SHORT.get(a, a):>8}" for a in others) + "  auto runs",
    ]
    for row in result["rows"]:
        auto, inner, segments = row["plan"]["auto"]
        runs = auto if auto in registry.FLAT else f"{auto} ({inner}, {segments} seg)"
        lines.append(
            f"{_size(row['bytes']):>8} {row['median_s']['native'] * 1e3:8.3f}ms "
            + " ".join(f"{_ratio(row, a):7.2f}x" for a in others)
            + f"  {runs}"
            + ("  WRONG: " + "; ".join(f"{a}: {e}" for a, e in row["errors"].items() if e) if _wrong(row) else "")
        )
    if "traffic" in result:
        lines.append(
            "bytes leaving node 0 per call at "
            + _size(result["traffic_size"])
            + ": "
            + ", ".join(f"{SHORT.get(a, a)} {b / (1 << 20):.2f} MiB" for a, b in result["traffic"].items())
        )
    return lines


def _wrong(row: dict[str, Any]) -> bool:
    return any(row["errors"].values())


def _targets(results: dict[str, dict[str, Any]], algorithms: list[str]) -> list[str]:
    lines = ["\ntargets:"]
    for name, result in results.items():
        rows = result["rows"]
        if "auto" in algorithms:
            worst = max(rows, key=lambda r: _ratio(r, "auto"))
            ok = _ratio(worst, "auto") <= AUTO_TARGET
            lines.append(
                f"  {name}: auto <= {AUTO_TARGET}x MPI at every size: worst {_ratio(worst, 'auto'):.2f}x "
                f"at {_size(worst['bytes'])}: {'MET' if ok else 'NOT MET'}"
            )
        if CONTROL in algorithms:
            worst = max(rows, key=lambda r: abs(math.log(_ratio(r, CONTROL))))
            lines.append(
                f"  {name}: noise floor: MPI against itself differs by up to {_ratio(worst, CONTROL):.2f}x "
                f"(at {_size(worst['bytes'])})"
            )
        big = [r for r in rows if r["bytes"] >= HIER_FROM]
        if name != "1node" and big and "hierarchical" in algorithms:
            worst = max(big, key=lambda r: _ratio(r, "hierarchical"))
            best = min(_ratio(r, a) for r in big for a in algorithms if a.startswith("hierarchical"))
            ok = _ratio(worst, "hierarchical") <= HIER_TARGET
            lines.append(
                f"  {name}: hierarchical <= {HIER_TARGET}x MPI at >= 1 MiB: worst {_ratio(worst, 'hierarchical'):.2f}x "
                f"at {_size(worst['bytes'])} (best of any variant and size {best:.2f}x): {'MET' if ok else 'NOT MET'}"
            )
        small = [r for r in rows if r["bytes"] <= 4096]
        if small and "star" in algorithms:
            p = result["ranks"]
            rd = math.ceil(math.log2(p)) + (2 if p & (p - 1) else 0) if p > 1 else 0
            lat = ", ".join(
                f"{_size(r['bytes'])}: star {r['median_s']['star'] * 1e6:.0f} us"
                + (
                    f" (in arrival order {r['median_s']['star-arrival'] * 1e6:.0f} us)"
                    if "star-arrival" in r["median_s"]
                    else ""
                )
                + f" vs MPI {r['median_s']['native'] * 1e6:.0f} us"
                for r in small
            )
            lines.append(
                f"  {name}: star takes {result['star_rounds']} message rounds (MPI's recursive doubling {rd}, "
                f"ring {2 * (p - 1)}); {lat}"
            )
    return lines


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--ranks", type=int, default=4, help="ranks of the 1node configuration (4)")
    parser.add_argument("--rate", default="1gbit", help="emulated link rate (1gbit)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(FULL_SIZES), help="bytes (8 B .. 64 MiB)")
    parser.add_argument(
        "--algorithms",
        nargs="+",
        choices=(*ALGORITHMS, CONTROL),
        default=list(ALGORITHMS),
        help=f"what to time against MPI (all but {CONTROL!r}, MPI's own call timed again as a noise control)",
    )
    parser.add_argument("--rounds", type=int, default=7, help="samples per algorithm and size (7)")
    parser.add_argument("--sample", type=float, default=0.05, help="target seconds of one MPI batch (0.05)")
    parser.add_argument("--traffic", action="store_true", help="count bytes on a node's link per algorithm")
    parser.add_argument("--traffic-size", type=int, default=8 << 20, help="bytes for --traffic (8 MiB)")
    parser.add_argument("--quick", action="store_true", help="5 sizes up to 4 MiB, 3 rounds, no traffic count")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per mpiexec job before it is killed")
    parser.add_argument("--json", default="results/allreduce.json")
    args = parser.parse_args(argv)
    if "native" not in args.algorithms:
        args.algorithms = ["native", *args.algorithms]
    if args.quick:
        args.sizes, args.rounds, args.sample, args.traffic = list(QUICK_SIZES), 3, 0.02, False
    results: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for name in args.configs:
        if name != "1node":
            from commlib.cluster import cluster_available

            ok, why = cluster_available()
            if not ok:
                skipped[name] = why
                print(f"\n{name}: skipped: {why}")
                continue
        try:
            results[name] = _run_config(name, args)
        except MPIRunError as exc:
            print(f"\n{name}: FAILED: {exc}", file=sys.stderr)
            return 1
        if args.traffic and name != "1node":
            results[name]["traffic_size"] = args.traffic_size
        print("\n".join(_table(name, results[name], args.algorithms)), flush=True)
    print("\n".join(_targets(results, args.algorithms)))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "allreduce",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "host": socket.gethostname(),
        "argv": sys.argv[1:] if argv is None else list(argv),
        "results": results,
        "skipped": skipped,
    }
    Path(args.json).write_text(json.dumps(document, indent=1))
    print(f"Wrote {args.json}")
    return 1 if any(_wrong(r) for res in results.values() for r in res["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
