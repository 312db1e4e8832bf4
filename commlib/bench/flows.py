"""Flow-splitting benchmark: one large transfer over two emulated 1 Gbit/s paths, unsplit vs split.

Builds an :class:`commlib.cluster.EmulatedCluster` of two nodes joined by two
parallel paths (and a multipath route between their loopback addresses,
hashed on ports), then launches :mod:`commlib.bench.flows_worker` (one rank
per node) once per MPI configuration, in turns, ``--launches`` times. Every
launch times all modes interleaved (see the worker), so each MPI
configuration is compared with the project's own transport in the same run.

MPI configurations: ``ucx`` (the harness's: UCX over TCP on path 0's
device), ``ucx-2rails`` (UCX given both path devices, so its rendezvous
protocol may stripe one message over both), ``ofi-vcis`` (MPICH's OFI/TCP
netmod with 4 virtual communication interfaces, so duplicated communicators
may get their own connections; UCX with several VCIs does not start here).

Table: median throughput per mode (Gbit/s) over all samples of all launches,
the worst sample, ``x tcp-1`` (median and worst over samples of the ratio to
the ``tcp-1`` sample of the same round: the one-connection baseline) and
the share of the sent bytes each path device carried (per launch, where
launches differ: the kernel may hash connections differently each time).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["MPI_CONFIGS", "main"]

MPI_CONFIGS: dict[str, dict[str, str]] = {
    "ucx": {},
    "ucx-2rails": {"UCX_MAX_RNDV_RAILS": "2"},  # and every path device (cl.mpi_env(devices=...))
    "ofi-vcis": {"MPIR_CVAR_CH4_NETMOD": "ofi", "MPIR_CVAR_CH4_NUM_VCIS": "4"},
}
MODES = ("mpi", "mpi-split", "tcp-1", "tcp-split", "tcp-ecmp")


def _launch(cl, config: str, args, paths, ecmp) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "flows.json"
        worker = [
            "-m", "commlib.bench.flows_worker", "--bytes", str(args.bytes), "--rounds", str(args.rounds),
            "--paths", json.dumps(paths), "--ecmp", json.dumps(ecmp), "--modes", ",".join(args.modes),
            "--devices", ",".join(cl.devices), "--json", str(out),
        ]  # fmt: skip
        rails = cl.mpi_env(devices=cl.devices) if config == "ucx-2rails" else {}  # Open MPI's TCP transport too
        env = {**rails, **MPI_CONFIGS[config]}
        res = cl.mpirun([1, 1], worker, timeout=args.timeout, env=env, check=False)
        if res.returncode != 0 or not out.exists():
            why = "timed out" if res.timed_out else f"exit code {res.returncode}"
            tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
            return {"error": f"{why}: " + " | ".join(tail)}
        return json.loads(out.read_text())


def _summary(results: list[dict], modes: list[str]) -> dict:
    out = {}
    for mode in modes:
        gbps = [g for r in results for g in r["gbps"].get(mode, [])]
        base = [g for r in results for g in r["gbps"].get("tcp-1", [])]
        ratios = [a / b for r in results for a, b in zip(r["gbps"].get(mode, []), r["gbps"].get("tcp-1", []))]
        per_launch = []  # each launch's median share per path: hashing may pick other paths in another launch
        for r in results:
            sent = [[max(x, 0) for x in s] for s in r["tx_bytes"].get(mode, [])]
            shares = [[x / sum(s) for x in s] for s in sent if sum(s) > 0]
            if shares:
                per_launch.append([statistics.median(col) for col in zip(*shares)])
        out[mode] = {
            "median_gbps": statistics.median(gbps) if gbps else None,
            "worst_gbps": min(gbps) if gbps else None,
            "vs_tcp1": statistics.median(ratios) if ratios and base else None,
            "vs_tcp1_worst": min(ratios) if ratios and base else None,
            "path_share": per_launch,
            "samples_gbps": gbps,
        }
    return out


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", type=int, default=128 << 20, help="transfer size in bytes (128 MiB)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per launch, all modes in turn (7)")
    parser.add_argument("--launches", type=int, default=3, help="launches per MPI configuration (3)")
    parser.add_argument("--rate", default="1gbit", help="rate of each path (1gbit)")
    parser.add_argument("--configs", nargs="+", default=list(MPI_CONFIGS), choices=list(MPI_CONFIGS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--quick", action="store_true", help="32 MiB, 3 rounds, 1 launch, configs ucx and ucx-2rails")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per launch before it is killed")
    parser.add_argument("--json", default="results/flows.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.bytes, args.rounds, args.launches, args.configs = 32 << 20, 3, 1, ["ucx", "ucx-2rails"]
    if "tcp-1" not in args.modes:
        args.modes.append("tcp-1")
    from commlib.cluster import EmulatedCluster, cluster_available

    ok, why = cluster_available()
    if not ok:
        print(f"flows benchmark: {why}", file=sys.stderr)
        return 1
    results: dict[str, list[dict]] = {c: [] for c in args.configs}
    errors: dict[str, list[str]] = {c: [] for c in args.configs}
    with EmulatedCluster(nodes=2, paths=2, rate=args.rate) as cl:
        paths = [cl.path_addresses(i) for i in range(2)]
        ecmp = cl.addresses
        print(
            f"flows: {cl!r}; {args.bytes / 2**20:g} MiB per transfer; {args.rounds} rounds x {args.launches} launches"
        )
        for launch in range(args.launches):
            for config in args.configs:  # alternate configurations, so that machine noise hits all alike
                t = time.perf_counter()
                res = _launch(cl, config, args, paths, ecmp)
                if "error" in res:
                    errors[config].append(res["error"])
                    print(f"  launch {launch + 1} {config}: FAILED ({res['error']})")
                else:
                    results[config].append(res)
                    print(f"  launch {launch + 1} {config}: {time.perf_counter() - t:.1f} s")
    rows = []
    print(f"{'config':<11} {'mode':<10} {'Gbit/s':>7} {'worst':>7} {'x tcp-1':>8} {'worst x':>8}  path shares")
    for config in args.configs:
        if not results[config]:
            print(f"{config:<11} (no launch succeeded: {errors[config][0] if errors[config] else '?'})")
            rows.append({"config": config, "env": MPI_CONFIGS[config], "errors": errors[config]})
            continue
        summary = _summary(results[config], args.modes)
        for mode in args.modes:
            s = summary[mode]
            if s["median_gbps"] is None:
                continue
            texts = [" / ".join(f"{x:.0%}" for x in launch) for launch in s["path_share"]]
            shares = " | ".join(dict.fromkeys(texts))  # distinct launches only
            print(
                f"{config:<11} {mode:<10} {s['median_gbps']:7.3f} {s['worst_gbps']:7.3f} {s['vs_tcp1']:7.2f}x "
                f"{s['vs_tcp1_worst']:7.2f}x  {shares}"
            )
            rows.append({"config": config, "env": MPI_CONFIGS[config], "mode": mode, **s, "errors": errors[config]})
    print(
        "Gbit/s: median (worst) sample over all rounds and launches; x tcp-1: per round, relative to one pinned "
        "connection (median, worst); path shares: bytes each path device sent (cl0 / cl1), per launch where they differ"
    )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "bytes": args.bytes,
        "rate": args.rate,
        "rounds": args.rounds,
        "launches": args.launches,
        "rows": rows,
        "raw": results,
    }
    Path(args.json).write_text(json.dumps(doc, indent=1))
    print(f"Wrote {args.json}")
    return 0 if all(results[c] for c in args.configs) else 1


if __name__ == "__main__":
    sys.exit(main())
