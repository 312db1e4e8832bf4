"""Hierarchy benchmark: three-level allreduce and reduce-scatter + allgather vs two levels vs MPI, on emulated racks.

Builds :class:`commlib.cluster.racks.EmulatedRacks` (default: 2 racks x 2 nodes x 2
ranks; ``--local-rate`` on each node's loopback, ``--rate`` node to rack
switch, ``--uplink-rate`` rack uplinks), runs one ``mpiexec`` job of
:mod:`commlib.bench.hierarchy_worker` with MPICH forced onto TCP, and prints
per operation and size MPI's median time per call and each method's median as
a multiple of it, then the targets: three levels at >= 1 MiB at most 0.8x two
levels and 0.5x MPI, ``auto`` never above 1.1x MPI. The cost model gets the
configured rates as its link figures (``COMMLIB_LEVEL_LINKS``). Skips with
the reason where emulated nodes cannot be built.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from commlib.bench.hierarchy_worker import METHODS, OPS

__all__ = ["main"]

SIZES = (65536, 262144, 1 << 20, 4 << 20)
THREE_VS_TWO, THREE_VS_MPI, AUTO_VS_MPI, FROM = 0.8, 0.5, 1.1, 1 << 20


def _size(n: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def _links(args: argparse.Namespace) -> str:
    """The cost model's figures for the emulated levels: TCP's per-message cost, the configured rates."""
    return f"node=20e-6/{args.local_rate},rack=30e-6/{args.rate},world=30e-6/{args.uplink_rate}"


def _run(args: argparse.Namespace) -> dict[str, Any]:
    from commlib.cluster.racks import EmulatedRacks

    worker = ["-m", "commlib.bench.hierarchy_worker", "--sizes", *map(str, args.sizes), "--rounds", str(args.rounds)]
    worker += ["--methods", *args.methods, "--ops", *args.ops]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "hierarchy.json"
        start = time.monotonic()
        nodes = args.racks * args.nodes_per_rack
        with EmulatedRacks(nodes, args.racks, args.rate, args.uplink_rate, local_rate=args.local_rate) as cl:
            cl.mpirun(
                args.ranks_per_node,
                [*worker, "--json", str(out)],
                timeout=args.timeout,
                env={"COMMLIB_LEVEL_LINKS": _links(args)},
            )
            result = json.loads(out.read_text())
            result["cluster"] = repr(cl)
        result["elapsed_s"] = time.monotonic() - start
    result["description"] = (
        f"{args.racks} racks x {args.nodes_per_rack} nodes x {args.ranks_per_node} ranks; node loopback "
        f"{args.local_rate}, node to rack switch {args.rate}, rack uplinks {args.uplink_rate}; MPICH over TCP"
    )
    return result


def _table(result: dict[str, Any]) -> list[str]:
    methods = list(result["rows"][0]["median_s"])
    lines = [result["description"], f"levels {result['shape']['levels']} shards {result['shape']['shards']}", ""]
    lines.append("| op | size | MPI | " + " | ".join(m for m in methods if m != "mpi") + " | auto's pick |")
    lines.append("|---" * (len(methods) + 3) + "|")
    for row in result["rows"]:
        med = row["median_s"]
        cells = [
            f"{med[m] / med['mpi']:.2f}x" + (" (WRONG)" if row["errors"][m] else "") for m in methods if m != "mpi"
        ]
        lines.append(
            f"| {row['op']} | {_size(row['bytes'])} | {med['mpi'] * 1e3:.2f} ms | {' | '.join(cells)} | "
            f"{row['auto_plan']} |"
        )
    return lines


def _targets(result: dict[str, Any]) -> list[str]:
    lines = []
    for op in OPS:
        rows = [r for r in result["rows"] if r["op"] == op]
        big = [r for r in rows if r["bytes"] >= FROM]
        if big and all(m in rows[0]["median_s"] for m in ("mpi", "2-level", "3-level")):
            vs_two = max(r["median_s"]["3-level"] / r["median_s"]["2-level"] for r in big)
            vs_mpi = max(r["median_s"]["3-level"] / r["median_s"]["mpi"] for r in big)
            lines.append(
                f"{op}: 3-level at >= 1 MiB: worst {vs_two:.2f}x 2-level (target <= {THREE_VS_TWO}: "
                f"{'met' if vs_two <= THREE_VS_TWO else 'NOT met'}), worst {vs_mpi:.2f}x MPI (target <= "
                f"{THREE_VS_MPI}: {'met' if vs_mpi <= THREE_VS_MPI else 'NOT met'})"
            )
        if rows and "auto" in rows[0]["median_s"]:
            worst = max(r["median_s"]["auto"] / r["median_s"]["mpi"] for r in rows)
            lines.append(
                f"{op}: auto worst {worst:.2f}x MPI (target <= {AUTO_VS_MPI}: "
                f"{'met' if worst <= AUTO_VS_MPI else 'NOT met'})"
            )
    return lines


def main(argv: list[str] | None = None, prog: str = "python -m commlib bench hierarchy") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="vector sizes in bytes")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--racks", type=int, default=2)
    parser.add_argument("--nodes-per-rack", type=int, default=2)
    parser.add_argument("--ranks-per-node", type=int, default=2)
    parser.add_argument("--local-rate", default="10gbit", help="each node's loopback (default 10gbit)")
    parser.add_argument("--rate", default="1gbit", help="node to rack switch (default 1gbit)")
    parser.add_argument("--uplink-rate", default="200mbit", help="rack uplinks (default 200mbit)")
    parser.add_argument("--timeout", type=float, default=1200.0)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if "mpi" not in args.methods:
        parser.error("--methods must include mpi (the baseline)")
    from commlib.cluster import cluster_available

    ok, why = cluster_available()
    if not ok:
        print(f"{prog}: skipped: {why}")
        return 0
    result = _run(args)
    print("\n".join(_table(result)))
    print("\n".join(["", *_targets(result), f"({result['elapsed_s']:.0f} s)"]))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
