"""TokenRing vs ring attention benchmark: bytes per direction, compute and waiting per step, end-to-end time.

Both algorithms run in the same ``mpiexec`` job on the same shards with the same block kernel
(``collectives.attention``), taking turns (the order alternates every repetition), after one
untimed warm-up call each. Per call every rank records what it handed to MPI on each of the
algorithm's two channels (``collectives.RingStats``: TokenRing sends queries one way and partial
results the other; ring attention sends ``(k, v)`` one way, and in the backward pass the running
``(dk, dv)`` the same way), and its time in kernels/merges (compute) and inside MPI calls (waiting).

Reported per case (medians over repetitions): bytes one rank sends per step in each direction,
compute and waiting per step (mean over ranks and steps), end-to-end time (the slowest rank's
call, barrier to return), the larger direction's bytes relative to ring attention's, the busiest
link's bytes over the call per step (a link = one direction of a node's connection to the switch,
or of a node pair; on one node each rank counts as a node), and the end-to-end time relative to
ring attention. The two algorithms' results are compared (exit code 1 if they differ).
``--emulated`` runs the job on emulated nodes (``commlib.cluster``, root only) whose links are rate
limited: ``star`` shapes each node's link to the switch, ``mesh`` leaves nodes unshaped and limits
every node pair separately (point-to-point links, as between GPUs joined by NVLink).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["main"]

ALGORITHMS = ("ring", "tokenring")
# Which way each channel's messages travel: ring attention sends both of its channels to rank+1;
# TokenRing sends queries to rank-1 (direction 0) and partial results to their owners (direction 1).
DIRECTION_OF_CHANNEL = {"ring": (0, 0), "tokenring": (0, 1)}
WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Case:
    length: int  # shard length per rank
    heads: int
    kv_heads: int
    head_dim: int
    causal: bool
    layout: str
    direction: str  # "forward" or "backward"
    pieces: int | None = None  # TokenRing's pieces per message (None: its default)

    @property
    def name(self) -> str:
        mask = "causal" if self.causal else "full"
        pieces = "" if self.pieces is None else f" p={self.pieces}"
        heads = f"H={self.heads}/{self.kv_heads} D={self.head_dim}"
        return f"L={self.length} {heads} {mask} {self.layout} {self.direction}{pieces}"


@dataclass(frozen=True)
class Topology:
    nodes: int  # 0: one node, shared memory
    ranks_per_node: int
    kind: str  # "local", "star" or "mesh"
    rate: str | None

    @property
    def ranks(self) -> int:
        return self.ranks_per_node * max(self.nodes, 1)

    @property
    def name(self) -> str:
        if self.kind == "local":
            return f"1 node, {self.ranks} ranks"
        return f"{self.nodes} nodes x {self.ranks_per_node} ranks, {self.kind} {self.rate}"


# ----------------------------------------------------------------------------------------- worker (under MPI)


def _call(comm: Any, algorithm: str, case: Case, data: dict[str, Any], stats: Any) -> tuple[Any, ...]:
    import collectives

    tokenring = algorithm == "tokenring"
    extra = {"stats": stats, **({"pieces": case.pieces} if tokenring else {})}
    q, k, v = data["q"], data["k"], data["v"]
    if case.direction == "forward":
        fwd = collectives.token_ring_attention if tokenring else collectives.ring_attention
        return fwd(q, k, v, comm, case.causal, case.layout, **extra)
    bwd = collectives.token_ring_attention_backward if tokenring else collectives.ring_attention_backward
    return bwd(data["dout"], q, k, v, data["out"], data["lse"], comm, case.causal, case.layout, **extra)


def _run_case(comm: Any, case: Case, reps: int, seed: int) -> dict[str, Any] | None:
    import numpy as np

    import collectives

    rank = comm.Get_rank()
    rng = np.random.default_rng(seed + 1000 * rank)
    shape_q = (case.length, case.heads, case.head_dim)
    shape_kv = (case.length, case.kv_heads, case.head_dim)
    data = {
        "q": rng.standard_normal(shape_q, np.float32),
        "k": rng.standard_normal(shape_kv, np.float32),
        "v": rng.standard_normal(shape_kv, np.float32),
        "dout": rng.standard_normal(shape_q, np.float32),
    }
    data["out"], data["lse"] = collectives.ring_attention(
        data["q"], data["k"], data["v"], comm, case.causal, case.layout
    )
    results = {a: _call(comm, a, case, data, None) for a in ALGORITHMS}  # warm-up, and the answers to compare
    diff = max(float(np.max(np.abs(x - y))) for x, y in zip(results["ring"], results["tokenring"]))
    samples: dict[str, list[dict[str, Any]]] = {a: [] for a in ALGORITHMS}
    for rep in range(reps):
        for algorithm in ALGORITHMS if rep % 2 == 0 else ALGORITHMS[::-1]:
            stats = collectives.RingStats()
            comm.Barrier()
            t0 = time.perf_counter()
            _call(comm, algorithm, case, data, stats)
            elapsed = time.perf_counter() - t0
            mine = {"elapsed": elapsed, **asdict(stats)}
            mine["sent_to"] = [{str(k): v for k, v in d.items()} for d in stats.sent_to]
            every = comm.gather(mine, root=0)
            if rank == 0:
                samples[algorithm].append({"ranks": every})
    diff = comm.allreduce(diff, op=_max_op())
    return {"case": asdict(case), "max_abs_diff": diff, "samples": samples} if rank == 0 else None


def _max_op() -> Any:
    from mpi4py import MPI

    return MPI.MAX


def _worker(argv: list[str]) -> int:
    from mpi4py import MPI

    parser = argparse.ArgumentParser(prog="tokenring-worker")
    parser.add_argument("--cases", required=True)
    parser.add_argument("--reps", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    comm = MPI.COMM_WORLD
    node = int(os.environ.get("COMMLIB_NODE_ID", comm.Get_rank()))
    nodes = comm.gather(node, root=0)
    rows = []
    for spec in json.loads(args.cases):
        row = _run_case(comm, Case(**spec), args.reps, args.seed)
        if row is not None:
            rows.append(row)
    if comm.Get_rank() == 0:
        Path(args.out).write_text(json.dumps({"nodes": nodes, "world": comm.Get_size(), "rows": rows}))
    return 0


# ------------------------------------------------------------------------------------- analysis (parent side)


def _link_bytes_per_step(sample: dict[str, Any], nodes: list[int], kind: str) -> float:
    """Bytes the busiest link carries over the whole call, per communication step (``W - 1`` of them).

    A link is one direction of a node's connection to the switch (``star``: its uplink or downlink)
    or of one node pair (``mesh``, and one node where every rank counts as a node).
    """
    ranks = sample["ranks"]
    load: dict[tuple, int] = {}
    for src, r in enumerate(ranks):
        for step in r["sent_to"]:
            for dst, nbytes in step.items():
                a, b = nodes[src], nodes[int(dst)]
                if a == b:
                    continue
                links = [("up", a), ("down", b)] if kind == "star" else [(a, b)]
                for link in links:
                    load[link] = load.get(link, 0) + nbytes
    return max(load.values(), default=0) / max(len(ranks) - 1, 1)


def summarize(raw: dict[str, Any], topology: Topology) -> list[dict[str, Any]]:
    """One summary row per case and algorithm, with ratios against ring attention."""
    world = raw["world"]
    nodes = raw["nodes"] if topology.kind != "local" else list(range(world))
    kind = topology.kind if topology.kind != "local" else "mesh"
    comm_steps = max(world - 1, 1)
    rows = []
    for entry in raw["rows"]:
        case = Case(**entry["case"])
        per: dict[str, dict[str, Any]] = {}
        for algorithm in ALGORITHMS:
            samples = entry["samples"][algorithm]
            first = samples[0]["ranks"]
            channel_bytes = [sum(sum(step[c] for step in r["sent"]) for r in first) for c in range(2)]
            direction_bytes = [0, 0]
            for c, d in enumerate(DIRECTION_OF_CHANNEL[algorithm]):
                direction_bytes[d] += channel_bytes[c]
            steps = len(first[0]["compute_s"])
            per[algorithm] = {
                "channels": list(first[0]["channels"]),
                "channel_bytes_total": channel_bytes,
                "direction_bytes_total": direction_bytes,
                "bytes_per_rank_step": [b / (world * comm_steps) for b in direction_bytes],
                "link_bytes_per_step": _link_bytes_per_step(samples[0], nodes, kind),
                "compute_s_per_step": statistics.median(
                    sum(sum(r["compute_s"]) for r in s["ranks"]) / (world * steps) for s in samples
                ),
                "wait_s_per_step": statistics.median(
                    sum(sum(r["wait_s"]) for r in s["ranks"]) / (world * steps) for s in samples
                ),
                "total_s": statistics.median(max(r["elapsed"] for r in s["ranks"]) for s in samples),
                "total_s_samples": [max(r["elapsed"] for r in s["ranks"]) for s in samples],
            }
        ring = per["ring"]
        for algorithm in ALGORITHMS:
            p = per[algorithm]
            p["max_direction_share"] = max(p["direction_bytes_total"]) / max(max(ring["direction_bytes_total"]), 1)
            p["link_share"] = (
                p["link_bytes_per_step"] / ring["link_bytes_per_step"] if ring["link_bytes_per_step"] else None
            )
            p["time_ratio"] = p["total_s"] / ring["total_s"]
            rows.append({"case": case.name, **asdict(case), "algorithm": algorithm, **p})
        rows[-1]["max_abs_diff"] = rows[-2]["max_abs_diff"] = entry["max_abs_diff"]
    return rows


def format_table(title: str, rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'case':<52} {'algorithm':<9} {'dir0 KiB/st':>11} {'dir1 KiB/st':>11} {'link KiB/st':>11} "
        f"{'comp ms/st':>10} {'wait ms/st':>10} {'total ms':>9} {'max-dir':>7} {'link':>5} {'time':>5}"
    )
    lines = [title, head, "-" * len(head)]
    for row in rows:
        ch = [*row["bytes_per_rank_step"], 0.0][:2]
        link = "-" if row["link_share"] is None else f"{row['link_share']:.2f}"
        lines.append(
            f"{row['case'] if row['algorithm'] == 'ring' else '':<52} {row['algorithm']:<9} "
            f"{ch[0] / 1024:11.1f} {ch[1] / 1024:11.1f} {row['link_bytes_per_step'] / 1024:11.1f} "
            f"{row['compute_s_per_step'] * 1e3:10.2f} {row['wait_s_per_step'] * 1e3:10.2f} "
            f"{row['total_s'] * 1e3:9.1f} {row['max_direction_share']:7.2f} {link:>5} {row['time_ratio']:5.2f}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ launching


def _launch(topology: Topology, cases: list[Case], reps: int, seed: int, timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tokenring.json"
        args = ["-m", "commlib.bench.tokenring", "--worker", "--cases", json.dumps([asdict(c) for c in cases])]
        args += ["--reps", str(reps), "--seed", str(seed), "--out", str(out)]
        if topology.kind == "local":
            from commlib.mpirun import run

            run(topology.ranks, args, timeout=timeout, env=WORKER_ENV)
        else:
            from commlib.cluster import EmulatedCluster

            star = topology.kind == "star"
            with EmulatedCluster(nodes=topology.nodes, rate=topology.rate if star else None) as cl:
                if not star:
                    for a in range(topology.nodes):
                        for b in range(a + 1, topology.nodes):
                            cl.set_link_rate(a, b, topology.rate)
                cl.mpirun(topology.ranks_per_node, args, timeout=timeout, env=WORKER_ENV)
        return json.loads(out.read_text())


def _topology(text: str, rate: str) -> Topology:
    """``NODESxRANKS:KIND`` (e.g. ``2x1:star``, ``4x1:mesh``)."""
    try:
        shape, kind = text.split(":")
        nodes, per = (int(x) for x in shape.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NODESxRANKS:star|mesh, e.g. 2x1:star, got {text!r}") from None
    if kind not in ("star", "mesh") or nodes < 1 or per < 1:
        raise argparse.ArgumentTypeError(f"expected NODESxRANKS:star|mesh with positive counts, got {text!r}")
    return Topology(nodes, per, kind, rate)


def _parser(prog: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[2, 4], help="rank counts on one node (2 4)")
    p.add_argument("--lengths", type=int, nargs="+", default=None, help="shard length per rank (1024; emulated 256)")
    p.add_argument("--heads", default=["8/8", "8/2"], nargs="+", help="H/H_kv pairs (8/8 8/2)")
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--masks", nargs="+", default=["full", "causal"], choices=["full", "causal"])
    p.add_argument("--layouts", nargs="+", default=["zigzag"], choices=["zigzag", "contiguous"])
    p.add_argument("--directions", nargs="+", default=["forward", "backward"], choices=["forward", "backward"])
    p.add_argument("--pieces", type=int, nargs="+", default=[None], help="TokenRing pieces per message (auto)")
    p.add_argument("--reps", type=int, default=5, help="timed calls per algorithm and case (5)")
    p.add_argument("--emulated", action="store_true", help="run on emulated nodes with rate-limited links (root)")
    p.add_argument(
        "--topologies",
        nargs="+",
        default=["2x1:star", "2x2:star", "4x1:mesh"],
        help="with --emulated: NODESxRANKS:star|mesh (2x1:star 2x2:star 4x1:mesh)",
    )
    p.add_argument("--rate", default="100mbit", help="with --emulated: link rate (100mbit)")
    p.add_argument("--quick", action="store_true", help="smoke run: small shards, 2 reps, forward only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=1800, help="seconds per mpiexec job before it is killed")
    p.add_argument("--json", default="results/tokenring.json")
    return p


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run the benchmark (or, with ``--worker`` first, one MPI job of it); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return _worker(argv[1:])
    parser = _parser(prog)
    args = parser.parse_args(argv)
    if args.emulated:
        from commlib.cluster import cluster_available

        ok, why = cluster_available()
        if not ok:
            print(f"{parser.prog}: --emulated: {why}", file=sys.stderr)
            return 1
        topologies = [_topology(t, args.rate) for t in args.topologies]
    else:
        topologies = [Topology(0, r, "local", None) for r in args.ranks]
    lengths = args.lengths or ([256] if args.emulated else [1024])
    directions = args.directions
    if args.quick:
        lengths, args.reps, directions = [min(lengths[0], 128)], 2, ["forward"]
        topologies = topologies[:1]
    heads = []
    for text in args.heads:
        h, _, hkv = text.partition("/")
        heads.append((int(h), int(hkv or h)))
    cases = [
        Case(n, h, hkv, args.head_dim, mask == "causal", layout, direction, pieces)
        for n in lengths
        for h, hkv in heads
        for mask in args.masks
        for layout in args.layouts
        for direction in directions
        for pieces in args.pieces
    ]
    report = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "settings": vars(args), "runs": []}
    failures = 0
    for topology in topologies:
        raw = _launch(topology, cases, args.reps, args.seed, args.timeout)
        rows = summarize(raw, topology)
        failures += sum(r["max_abs_diff"] > 1e-3 for r in rows)
        report["runs"].append({"topology": asdict(topology), "rows": rows, "raw": raw})
        print(format_table(f"\n{topology.name}: medians of {args.reps} calls per algorithm, fp32", rows))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(
        "\ndir0/dir1: bytes one rank sends per step each way (ring: k+v [+dk+dv] to rank+1; tokenring: queries"
        "\nto rank-1, partial results to their owners); link: busiest link's bytes per step; comp/wait: per step,"
        "\nmean over ranks; total: slowest rank's call; max-dir, link, time: the larger direction's bytes, the"
        "\nbusiest link's bytes and the total time relative to ring attention."
    )
    print(f"Wrote {args.json}")
    if failures:
        print(f"error: the two algorithms disagree on {failures} row(s)", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
