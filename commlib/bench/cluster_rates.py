"""Rate accuracy of the emulated cluster: measured TCP and MPI throughput against the configured link rate.

For each rate, on two emulated nodes, interleaved repetitions of: a single TCP
stream with the harness's token bucket (:func:`commlib.cluster.shaping.burst_for`), the
same with the fixed 64 KiB bucket of the first recipe, the same rate set as a
per-pair htb class (:meth:`EmulatedCluster.set_link_rate`), and an MPI
``Send`` between one rank per node (UCX over TCP, one launch per rate, best
transfer per launch). Medians in Mbit/s and as a fraction of the rate; the
unshaped row is the ceiling. With ``--paths``, also 1, 2 and 4 TCP streams over
two parallel paths at ``--paths-rate`` each (separate connections may hash onto
different paths). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from commlib.cluster import EmulatedCluster, cluster_available
from commlib.cluster.shaping import parse_rate

MPI_PROBE = (
    "import sys, time, numpy as np\n"
    "from mpi4py import MPI\n"
    "c = MPI.COMM_WORLD; n, reps = int(sys.argv[1]), int(sys.argv[2])\n"
    "buf = np.ones(n, np.uint8); times = []\n"
    "for _ in range(reps):\n"
    "    c.Barrier(); t = time.perf_counter()\n"
    "    if c.rank == 0: c.Send(buf, dest=1); c.Recv(buf[:1], source=1)\n"
    "    else: c.Recv(buf, source=0); c.Send(buf[:1], dest=0)\n"
    "    times.append(time.perf_counter() - t)\n"
    "if c.rank == 0: print('MPI_BITS_PER_S', n * 8 / min(times))\n"
)


def _size(bits: float | None, seconds: float) -> int:
    """Bytes that take about ``seconds`` at ``bits`` (unshaped: 64 MiB), at least 1 MiB."""
    if bits is None:
        return 64 << 20
    return max(1 << 20, min(256 << 20, int(bits / 8 * seconds)))


def _tcp(cl: EmulatedCluster, nbytes: int, streams: int = 1) -> float:
    return cl.measure_throughput(0, 1, nbytes, streams=streams) / 1e6


def _mpi(cl: EmulatedCluster, nbytes: int, reps: int, timeout: float) -> float:
    res = cl.mpirun(1, ["-c", MPI_PROBE, str(nbytes), str(reps)], timeout=timeout)
    line = next(w for w in map(str.split, res.stdout.splitlines()) if w and w[0] == "MPI_BITS_PER_S")
    return float(line[1]) / 1e6


def _row(rate: str | None, reps: int, seconds: float, timeout: float) -> dict:
    bits = parse_rate(rate, "cluster_rates")
    n = _size(bits, seconds)
    samples: dict[str, list[float]] = {"tcp": [], "tcp_64kb": [], "htb": [], "mpi": []}
    with (
        EmulatedCluster(nodes=2, rate=rate) as shaped,
        EmulatedCluster(nodes=2, rate=rate, burst="64kb") as fixed,
        EmulatedCluster(nodes=2, rate=None) as pair,
    ):
        if rate is not None:
            pair.set_link_rate(0, 1, rate)
        for _ in range(reps):  # interleaved, so that machine noise hits every variant alike
            samples["tcp"].append(_tcp(shaped, n))
            if rate is not None:
                samples["tcp_64kb"].append(_tcp(fixed, n))
                samples["htb"].append(_tcp(pair, n))
        samples["mpi"].append(_mpi(shaped, n, max(2, reps), timeout))
    med = {k: statistics.median(v) if v else None for k, v in samples.items()}
    return {"rate": rate or "unshaped", "bits": bits, "nbytes": n, "median_mbit": med, "samples_mbit": samples}


def _paths_rows(rate: str, reps: int, seconds: float) -> list[dict]:
    bits = parse_rate(rate, "cluster_rates")
    rows = []
    with EmulatedCluster(nodes=2, rate=rate, paths=2) as cl:
        for streams in (1, 2, 4):
            n = _size(bits * min(streams, 2), seconds)
            samples = [_tcp(cl, n, streams) for _ in range(reps)]
            rows.append(
                {"rate": rate, "streams": streams, "median_mbit": statistics.median(samples), "samples": samples}
            )
    return rows


def _fmt(value: float | None, bits: float | None) -> str:
    if value is None:
        return f"{'-':>9} {'':>6}"
    ratio = f"{value * 1e6 / bits:6.3f}" if bits else f"{'':>6}"
    return f"{value:9.1f} {ratio}"


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--rates", nargs="+", default=["10mbit", "100mbit", "1gbit", "unshaped"])
    parser.add_argument("--reps", type=int, default=5, help="TCP transfers per variant and rate (5)")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one transfer at the rate (1.0)")
    parser.add_argument("--paths", action="store_true", help="also 1/2/4 TCP streams over two shaped paths")
    parser.add_argument("--paths-rate", default="1gbit", help="rate of each path with --paths (1gbit)")
    parser.add_argument("--quick", action="store_true", help="100mbit and 1gbit, 2 reps of 0.3 s, with --paths")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per MPI launch before it is killed")
    parser.add_argument("--json", default="results/cluster_rates.json")
    args = parser.parse_args(argv)
    ok, why = cluster_available()
    if not ok:
        print(f"cluster_rates: skipped: {why}", file=sys.stderr)
        return 1
    if args.quick:
        args.rates, args.reps, args.seconds, args.paths = ["100mbit", "1gbit"], 2, 0.3, True
    rates = [None if r == "unshaped" else r for r in args.rates]
    print("Mbit/s (median) and fraction of the configured rate; 'unshaped' is the host's ceiling")
    print(f"{'rate':>9} | {'tbf adaptive':>16} | {'tbf 64kb':>16} | {'htb pair':>16} | {'MPI tbf':>16}")
    rows = []
    for rate in rates:
        row = _row(rate, args.reps, args.seconds, args.timeout)
        rows.append(row)
        m, bits = row["median_mbit"], row["bits"]
        cells = [_fmt(m[k], bits) for k in ("tcp", "tcp_64kb", "htb", "mpi")]
        print(f"{row['rate']:>9} | " + " | ".join(cells), flush=True)
    paths = []
    if args.paths:
        print(f"\ntwo paths at {args.paths_rate} each: TCP streams over the multipath route (Mbit/s, median)")
        for row in _paths_rows(args.paths_rate, args.reps, args.seconds):
            paths.append(row)
            print(f"  {row['streams']} stream(s): {row['median_mbit']:9.1f}", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    report = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": rows, "paths": paths}
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"Wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
