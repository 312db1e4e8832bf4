"""Cost of the fault-detection monitor: an Allreduce loop with and without it, in one run.

For each rank count, one ``mpiexec`` job runs this module's worker, which
times rounds of ``Allreduce`` on three communicators sharing one
``COMM_WORLD`` duplicate's handle: plain mpi4py (``raw``), commlib-wrapped
without a monitor (``wrapped``), and commlib-wrapped with a freshly started
monitor (``monitored``: flight recorder on every call, watchdog thread,
side channel, straggler collection on the lowest rank, all at their default
settings). Modes alternate round by round in a rotating order, so machine
noise hits them alike; a round's time is the slowest rank's. The table gives
medians over rounds per call, the monitor's cost over ``wrapped`` in
microseconds and percent, and the targets (at most 5 us per call at 8 B, at
most 3% at 1 MiB). The worker also times ``enter``+``leave`` alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

MODES = ("raw", "wrapped", "monitored")
TARGETS = {8: ("us", 5.0), 1 << 20: ("%", 3.0)}


def _worker(args: argparse.Namespace) -> None:
    import numpy as np
    from mpi4py import MPI

    from commlib.comm import wrap
    from commlib.session import Session
    from transport.monitor import Monitor

    world = MPI.COMM_WORLD
    base = world.Dup()
    comms = {"raw": MPI.Intracomm(base), "wrapped": wrap(MPI.Intracomm(base), Session())}
    monitored_session = Session()
    comms["monitored"] = wrap(MPI.Intracomm(base), monitored_session)
    results = []
    for nbytes in args.bytes:
        iters = max(20, int(args.iters / (1 + nbytes / 32768)))  # about the same time per round at every size
        send = np.ones(max(1, nbytes // 8))
        recv = np.empty_like(send)
        samples: dict[str, list[float]] = {m: [] for m in MODES}
        for r in range(args.rounds + 1):  # round 0 warms up
            order = MODES[r % 3 :] + MODES[: r % 3]
            for mode in order:
                comm = comms[mode]
                monitor = None
                if mode == "monitored":
                    monitor = Monitor(report="").start()
                    monitored_session.monitor = monitor
                base.Barrier()
                t0 = time.perf_counter()
                for _ in range(iters):
                    comm.Allreduce(send, recv)
                elapsed = (time.perf_counter() - t0) / iters
                if monitor is not None:
                    monitored_session.monitor = None
                    monitor.stop()
                slowest = base.allreduce(elapsed, op=MPI.MAX)
                if r > 0:
                    samples[mode].append(slowest)
        results.append({"bytes": nbytes, "iters": iters, "samples_s": samples})
    # the recorder alone, no MPI: what each call pays on the application's path
    monitor = Monitor(report="")
    enter, leave = monitor.enter, monitor.leave
    buf = np.ones(1)
    n = 20000
    hook = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            leave(enter(base, "Allreduce", (buf, buf), {}))
        hook.append((time.perf_counter() - t0) / n)
    if world.Get_rank() == 0:
        Path(args.worker).write_text(json.dumps({"ranks": world.Get_size(), "rows": results, "hook_s": hook}))
    base.Free()


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[2], help="rank counts (2)")
    parser.add_argument("--bytes", type=int, nargs="+", default=[8, 1 << 20], help="message sizes (8 1048576)")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds per mode (15)")
    parser.add_argument("--iters", type=int, default=20000, help="calls per round at 8 B; fewer for larger (20000)")
    parser.add_argument("--quick", action="store_true", help="2 ranks, 3 rounds, 2000 calls: a smoke run")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per launch before it is killed")
    parser.add_argument("--json", default="results/monitor_overhead.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args)
        return 0
    if args.quick:
        args.ranks, args.rounds, args.iters = [2], 3, 2000
    from commlib.mpirun import run

    rows = []
    print(
        f"{'ranks':>5} {'bytes':>8} {'calls':>6} {'raw us':>9} {'wrapped us':>11} {'monitored us':>13} "
        f"{'monitor us':>11} {'monitor %':>10}  target"
    )
    hooks = {}
    for ranks in args.ranks:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "worker.json"
            command = [sys.executable, "-m", "commlib.bench.monitor_overhead", "--worker", str(out)]
            command += ["--bytes", *map(str, args.bytes), "--rounds", str(args.rounds), "--iters", str(args.iters)]
            run(ranks, command, python=False, timeout=args.timeout)
            data = json.loads(out.read_text())
        hooks[ranks] = statistics.median(data["hook_s"])
        for row in data["rows"]:
            med = {m: statistics.median(row["samples_s"][m]) for m in MODES}
            cost = med["monitored"] - med["wrapped"]
            percent = 100 * cost / med["wrapped"]
            unit, limit = TARGETS.get(row["bytes"], (None, None))
            met = "" if unit is None else ("met" if (cost * 1e6 if unit == "us" else percent) <= limit else "MISSED")
            target = "" if unit is None else f"<= {limit:g} {unit}: {met}"
            rows.append({"ranks": ranks, **row, "median_s": med, "monitor_s": cost, "monitor_percent": percent})
            print(
                f"{ranks:5d} {row['bytes']:8d} {row['iters']:6d} {med['raw'] * 1e6:9.2f} {med['wrapped'] * 1e6:11.2f} "
                f"{med['monitored'] * 1e6:13.2f} {cost * 1e6:11.2f} {percent:9.2f}%  {target}"
            )
    for ranks, hook in hooks.items():
        print(f"recorder enter+leave alone ({ranks} ranks): {hook * 1e6:.2f} us per call")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(
        json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": rows, "hook_s": hooks}, indent=1)
    )
    print(f"Wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
