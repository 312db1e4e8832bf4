"""Cost of the fault-detection monitor: an Allreduce loop with and without it.

Two measurements, each at every message size:

- **jobs**: the same program (an ``Allreduce`` loop on the interposed
  ``COMM_WORLD``) launched under ``python -m commlib`` alternately with the
  monitor on (``COMMLIB_MONITOR=1``: flight recorder on every call, watchdog
  thread, side channel, arrival collection on the lowest rank, all at their
  defaults) and off (``COMMLIB_MONITOR=0``). Each launch reports its median
  round (the slowest rank's time per call); the table gives the median over
  launches. This is the whole cost, threads included.
- **calls**: in one job with a started monitor, rounds alternate between a
  plain mpi4py communicator (``raw``), a commlib-wrapped one without the hook
  (``wrapped``) and one with it (``monitored``), in a rotating order: the
  per-call cost of ``enter``/``leave``, with machine noise hitting all three alike.

Targets: at most 5 us per call at 8 B, at most 3% at 1 MiB (jobs). The
worker also times ``enter`` + ``leave`` alone (no MPI).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

CALL_MODES = ("raw", "wrapped", "monitored")
TARGETS = {8: ("us", 5.0), 1 << 20: ("%", 3.0)}


def _calls_for(nbytes: int, iters: int) -> int:
    return max(20, int(iters / (1 + nbytes / 32768)))  # about the same time per round at every size


def _timed(comm, send, recv, iters: int, base) -> float:
    from mpi4py import MPI

    base.Barrier()
    t0 = time.perf_counter()
    for _ in range(iters):
        comm.Allreduce(send, recv)
    return base.allreduce((time.perf_counter() - t0) / iters, op=MPI.MAX)


def _job_worker(args: argparse.Namespace) -> None:
    """The program of the ``jobs`` measurement (run under ``python -m commlib``)."""
    import numpy as np
    from mpi4py import MPI

    world = MPI.COMM_WORLD  # interposed
    base = MPI.Intracomm(world).Dup()
    out = {}
    for nbytes in args.bytes:
        send = np.ones(max(1, nbytes // 8))
        recv = np.empty_like(send)
        iters = _calls_for(nbytes, args.iters)
        rounds = [_timed(world, send, recv, iters, base) for _ in range(args.rounds + 1)][1:]
        out[str(nbytes)] = {"iters": iters, "median_s": statistics.median(rounds), "rounds_s": rounds}
    if world.Get_rank() == 0:
        Path(args.job_worker).write_text(json.dumps(out))
    base.Free()


def _call_worker(args: argparse.Namespace) -> None:
    """The program of the ``calls`` measurement (run under plain mpi4py)."""
    import numpy as np
    from mpi4py import MPI

    from commlib.interposer.comm import wrap
    from commlib.interposer.session import Session
    from transport.monitor import Monitor

    world = MPI.COMM_WORLD
    base = world.Dup()
    monitor = Monitor(report="").start()
    hooked = Session()
    hooked.monitor = monitor
    comms = {
        "raw": MPI.Intracomm(base),
        "wrapped": wrap(MPI.Intracomm(base), Session()),
        "monitored": wrap(MPI.Intracomm(base), hooked),
    }
    rows = []
    for nbytes in args.bytes:
        send = np.ones(max(1, nbytes // 8))
        recv = np.empty_like(send)
        iters = _calls_for(nbytes, args.iters // 4)
        samples: dict[str, list[float]] = {m: [] for m in CALL_MODES}
        for r in range(4 * args.rounds + 1):  # round 0 warms up
            for mode in CALL_MODES[r % 3 :] + CALL_MODES[: r % 3]:
                elapsed = _timed(comms[mode], send, recv, iters, base)
                if r > 0:
                    samples[mode].append(elapsed)
        rows.append({"bytes": nbytes, "iters": iters, "samples_s": samples})
    monitor.stop()
    recorder = Monitor(report="")  # the hook alone, no MPI
    enter, leave = recorder.enter, recorder.leave
    buf = np.ones(1)
    hook = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(20000):
            leave(enter(base, "Allreduce", (buf, buf), {}))
        hook.append((time.perf_counter() - t0) / 20000)
    if world.Get_rank() == 0:
        Path(args.call_worker).write_text(json.dumps({"rows": rows, "hook_s": hook}))
    base.Free()


def _verdict(nbytes: int, cost_s: float, percent: float) -> str:
    unit, limit = TARGETS.get(nbytes, (None, None))
    if unit is None:
        return ""
    value = cost_s * 1e6 if unit == "us" else percent
    return f"<= {limit:g} {unit}: {'met' if value <= limit else 'MISSED'}"


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2, help="ranks per job (2)")
    parser.add_argument("--bytes", type=int, nargs="+", default=[8, 1 << 20], help="message sizes (8 1048576)")
    parser.add_argument("--launches", type=int, default=6, help="jobs per monitor setting, alternating (6)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per job and size (5)")
    parser.add_argument("--iters", type=int, default=20000, help="calls per round at 8 B, fewer for larger (20000)")
    parser.add_argument("--quick", action="store_true", help="2 launches, 2 rounds of 2000 calls: a smoke run")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per launch before it is killed")
    parser.add_argument("--json", default="results/monitor_overhead.json")
    parser.add_argument("--job-worker", help=argparse.SUPPRESS)
    parser.add_argument("--call-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.job_worker:
        _job_worker(args)
        return 0
    if args.call_worker:
        _call_worker(args)
        return 0
    if args.quick:
        args.launches, args.rounds, args.iters = 2, 2, 2000
    from commlib.mpirun import run

    sizes = ["--bytes", *map(str, args.bytes), "--rounds", str(args.rounds), "--iters", str(args.iters)]
    module = [sys.executable, "-m", "commlib.bench.monitor_overhead"]
    jobs: dict[str, list[dict]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        for launch in range(args.launches):
            for setting in ("off", "on") if launch % 2 == 0 else ("on", "off"):
                out = Path(tmp) / f"job-{setting}-{launch}.json"
                command = [sys.executable, "-m", "commlib", "-m", "commlib.bench.monitor_overhead"]
                command += ["--job-worker", str(out), *sizes]
                env = {"COMMLIB_MONITOR": "1" if setting == "on" else "0", "COMMLIB_MONITOR_REPORT": ""}
                run(args.ranks, command, python=False, timeout=args.timeout, env=env)
                jobs[setting].append(json.loads(out.read_text()))
        out = Path(tmp) / "calls.json"
        run(args.ranks, [*module, "--call-worker", str(out), *sizes], python=False, timeout=args.timeout)
        calls = json.loads(out.read_text())

    results: dict = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "ranks": args.ranks, "jobs": [], "calls": []}
    print(f"jobs: {args.ranks} ranks, {args.launches} launches per setting, python -m commlib, monitor off vs on")
    print(f"{'bytes':>8} {'calls':>6} {'off us':>10} {'on us':>10} {'monitor us':>11} {'monitor %':>10}  target")
    for nbytes in args.bytes:
        key = str(nbytes)
        per = {s: [j[key]["median_s"] for j in jobs[s]] for s in jobs}
        off, on = statistics.median(per["off"]), statistics.median(per["on"])
        cost, percent = on - off, 100 * (on - off) / off
        iters = jobs["off"][0][key]["iters"]
        results["jobs"].append({"bytes": nbytes, "iters": iters, "launches_s": per, "monitor_s": cost})
        print(
            f"{nbytes:8d} {iters:6d} {off * 1e6:10.2f} {on * 1e6:10.2f} {cost * 1e6:11.2f} {percent:9.2f}%  "
            + _verdict(nbytes, cost, percent)
        )
    print(f"calls: one job, monitor started, {4 * args.rounds} rounds per mode in rotating order")
    print(f"{'bytes':>8} {'calls':>6} {'raw us':>10} {'wrapped us':>11} {'monitored us':>13} {'hook us':>8}")
    for row in calls["rows"]:
        med = {m: statistics.median(row["samples_s"][m]) for m in CALL_MODES}
        results["calls"].append({**row, "median_s": med})
        print(
            f"{row['bytes']:8d} {row['iters']:6d} {med['raw'] * 1e6:10.2f} {med['wrapped'] * 1e6:11.2f} "
            f"{med['monitored'] * 1e6:13.2f} {(med['monitored'] - med['wrapped']) * 1e6:8.2f}"
        )
    hook = statistics.median(calls["hook_s"])
    results["hook_s"] = calls["hook_s"]
    print(f"recorder enter+leave alone: {hook * 1e6:.2f} us per call (median of 7 x 20000)")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"Wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
