"""commlib's fault-detection monitor: names the rank, the operation and the probable cause of a hang.

A :class:`Monitor` is what a session's ``monitor`` hook calls (see
:mod:`commlib.tracing`): its ``enter``/``leave`` are the flight recorder's
(:mod:`transport.recorder`). Started, it also runs, per rank:

- a side-channel server (:mod:`transport.sidechannel`), found by the other
  ranks through the job's rendezvous directory (:mod:`transport.rendezvous`),
  which answers questions about this rank while its main thread is stuck in MPI;
- one daemon thread that polls the watchdog (:mod:`transport.watchdog`);
  when an operation runs past its limit it gathers the other members' states
  over the side channel, places them on the wavefront
  (:mod:`transport.wavefront`), reports, and warns, dumps or aborts
  (``COMMLIB_MONITOR_ACTION``). On the lowest monitored rank the same thread
  collects collective arrival times for straggler and slowdown detection
  (:mod:`transport.stragglers`) and runs link probes (:mod:`transport.linkprobe`).

Findings go to stderr, to the JSON-lines report file and to callbacks
(:mod:`transport.reports`). The monitor's threads are daemons, never call
MPI while the application runs (the ``mpi`` bootstrap aside, at start) and
swallow their own errors, so the monitor can neither keep a finishing job
alive nor raise into the application; a healthy run prints nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mpi4py import MPI

from . import flightdump, linkprobe, rendezvous
from .privatefiles import write_atomic
from .recorder import FlightRecorder, describe_comm, ranges
from .reports import Reporter
from .settings import settings
from .sidechannel import SideChannel, SideChannelError, ask
from .stragglers import Collector, StragglerDetector
from .watchdog import Stuck, Watchdog, is_waiting
from .wavefront import analyse, call_text

__all__ = ["ABORT_CODE", "Monitor", "start_monitor"]

ABORT_CODE = 70  # exit status of a job the monitor aborts
ACTIONS = ("warn", "dump", "abort")
PROBE_BYTES = 2 << 20
PROBE_ROUNDS = 5
ARRIVALS = 128  # collectives per rank per collection, the most recent
MAX_INFLIGHT = 65536  # nonblocking calls never completed beyond this are forgotten
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _ranks(ranks: list[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ranges(ranks) if ranks else "none"


def _boot() -> str:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return socket.gethostname()


class Monitor:
    """One rank's fault-detection monitor. Keyword arguments override ``commlib.config`` (``COMMLIB_MONITOR_*``)."""

    def __init__(
        self,
        *,
        action: str | None = None,
        floor: float | None = None,
        multiple: float | None = None,
        timeout: float | None = None,
        report: str | None = None,
        ring: int | None = None,
        interval: float | None = None,
        window: int | None = None,
        skew: float | None = None,
        probe: float | None = None,
        directory: str | None = None,
        address: str | None = None,
        bootstrap: str | None = None,
        job: str | None = None,
        on_report: Callable[[dict], Any] | None = None,
    ) -> None:
        def pick(value: Any, default: Any) -> Any:
            return default if value is None else value

        self.action = pick(action, settings.monitor_action)
        self.floor = float(pick(floor, settings.monitor_floor))
        self.multiple = float(pick(multiple, settings.monitor_multiple))
        self.timeout = float(pick(timeout, settings.monitor_timeout))
        self.interval = float(pick(interval, settings.monitor_interval))
        self.probe_every = float(pick(probe, settings.monitor_probe))
        self.bootstrap = pick(bootstrap, settings.monitor_bootstrap)
        self._directory = pick(directory, settings.monitor_dir)
        self._address = pick(address, settings.monitor_address)
        self._job = pick(job, settings.monitor_job)
        if self.action not in ACTIONS:
            raise ValueError(f"Monitor: action must be one of {', '.join(ACTIONS)}, got {self.action!r}")
        if self.bootstrap not in ("auto", "file", "mpi"):
            raise ValueError(f"Monitor: bootstrap must be auto, file or mpi, got {self.bootstrap!r}")
        for name in ("floor", "timeout", "interval"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Monitor: {name} must be a positive number of seconds, got {getattr(self, name)!r}")
        if not self.multiple > 0 or not self.probe_every >= 0:
            raise ValueError(
                f"Monitor: multiple must be > 0 and probe >= 0, got {self.multiple!r}, {self.probe_every!r}"
            )
        self.recorder = FlightRecorder(int(pick(ring, settings.monitor_ring)))
        self.enter = self.recorder.enter
        self.leave = self.recorder.leave
        self.core = self.recorder.core  # what the traced methods record into (transport.flight)
        world = MPI.COMM_WORLD
        self.rank, self.size = world.Get_rank(), world.Get_size()
        self.reporter = Reporter(self.rank, pick(report, settings.monitor_report))
        if on_report is not None:
            self.reporter.callbacks.append(on_report)
        self.watchdog = Watchdog(self.recorder, self.floor, self.multiple)
        self.detector = StragglerDetector(
            window=int(pick(window, settings.monitor_window)), skew=pick(skew, settings.monitor_skew)
        )
        self.boot = _boot()
        self.collector = Collector(self.detector, self.boot)
        node = settings.node_id
        self.node = (f"node{node}" if node.isdigit() else node) if node else MPI.Get_processor_name()
        self.job: str | None = None
        self.channel: SideChannel | None = None
        self.rendezvous: rendezvous.Rendezvous | None = None
        self._peers: dict[int, dict] = {}
        self._peers_read = 0.0
        self._fixed_peers = False
        self._record: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._abort_at: float | None = None
        self._next_probe = 0.0
        self._last_probe = -1e9
        self._errors = 0
        self._lock = threading.Lock()  # one probe at a time
        self._known_slow: set[tuple] = set()

    # -- lifecycle ----------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def add_callback(self, callback: Callable[[dict], Any]) -> None:
        """Call ``callback(record)`` with every alarm this rank reports (in the monitor's thread)."""
        self.reporter.callbacks.append(callback)

    def start(self) -> Monitor:
        """Open the side channel, publish it, start the watchdog thread (idempotent)."""
        if self._thread is not None:
            return self
        if self._stop.is_set():
            raise RuntimeError("Monitor.start: this monitor was stopped; a new Monitor is needed")
        note = "single rank: no side channel"
        if self.size > 1:
            try:
                note = self._open_side_channel()
            except BaseException:
                if self.channel is not None:
                    self.channel.stop()
                raise
        self._next_probe = time.perf_counter() + self.probe_every
        self._thread = threading.Thread(target=self._run, name="commlib-monitor", daemon=True)
        self._thread.start()
        self.reporter.emit(
            {
                "kind": "start",
                "lines": [f"monitor started: {note}"],
                "node": self.node,
                "world_size": self.size,
                "side_channel": note,
                "settings": {
                    "action": self.action,
                    "floor": self.floor,
                    "multiple": self.multiple,
                    "timeout": self.timeout,
                    "interval": self.interval,
                    "window": self.detector.window,
                    "skew": self.detector.skew,
                    "probe": self.probe_every,
                    "ring": self.recorder.capacity,
                },
            }
        )
        return self

    def _open_side_channel(self) -> str:
        self.channel = SideChannel(rendezvous.choose_address(self._address, self.size), rendezvous.new_token())
        self.channel.handle("state", self.state)
        self.channel.handle("arrivals", self.arrivals)
        self.channel.handle("dump", self.dump)
        self.channel.handle("probe", self._probe_request)
        self.channel.handle_stream("sink", linkprobe.sink)
        self.channel.start()
        self._record = {
            "rank": self.rank,
            "world_size": self.size,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "node": self.node,
            "address": self.channel.address,
            "port": self.channel.port,
            "token": self.channel.token,
            "boot": self.boot,
        }
        where = f"{self.channel.address}:{self.channel.port}"
        self.job = rendezvous.job_key(self._job)
        if self.bootstrap == "mpi" or (self.bootstrap == "auto" and self.job is None):
            self._peers = rendezvous.exchange_over_mpi(self._record)
            self._fixed_peers = True
            return f"side channel {where}, peers exchanged over MPI"
        if self.job is None:
            sys.stderr.write(
                f"[commlib monitor, rank {self.rank}] no job name for the rendezvous directory: set "
                "COMMLIB_MONITOR_JOB (same value on every rank) or COMMLIB_MONITOR_BOOTSTRAP=mpi; "
                "hangs are reported without the other ranks' states\n"
            )
            return f"side channel {where}, no rendezvous (no job name)"
        place = rendezvous.Rendezvous(self.job, self._directory)
        try:
            place.register(self._record)
        except OSError as exc:  # a rendezvous directory someone else planted: no peers, no listener
            self.channel.stop()
            self.channel = None
            sys.stderr.write(
                f"[commlib monitor, rank {self.rank}] {exc}; the monitor runs without its side channel "
                "(hangs are reported without the other ranks' states)\n"
            )
            return f"no side channel ({exc})"
        self.rendezvous = place
        return f"side channel {where}, rendezvous {place.path}"

    def stop(self) -> None:
        """Stop the thread and the side channel, withdraw from the rendezvous (idempotent, never raises)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        with contextlib.suppress(Exception):
            if thread is not threading.current_thread():
                thread.join(self.timeout + 1.0)
            self._watch(time.perf_counter(), finishing=True)  # tell what got unstuck since the last poll
            if self.rendezvous is not None:
                self.rendezvous.unregister()
            if self.channel is not None:
                self.channel.stop()
            self.reporter.emit(
                {
                    "kind": "stop",
                    "lines": ["monitor stopped"],
                    "calls": self.recorder.position,
                    "comms": len(self.recorder.comms()),
                    "alarms": self.reporter.alarms,
                }
            )
            self.recorder.close()

    # -- side-channel answers ----------------------------------------------------
    def state(self, request: dict | None = None) -> dict:
        """This rank now: communicators and their counters, in-flight and recent calls, Python stacks."""
        now = time.perf_counter()
        names = {t.ident: t.name for t in threading.enumerate()}
        threads = {}
        for ident, frame in sys._current_frames().items():
            name = names.get(ident, "")
            if name.startswith("commlib-"):
                continue
            stack = [[f.filename, f.lineno, f.name, f.line or ""] for f in traceback.extract_stack(frame, limit=40)]
            threads[str(ident)] = {"name": name, "stack": stack, "waiting": is_waiting(frame)}
        recent = []
        for record, end in self.recorder.completed(5):
            item = self.recorder.describe(record, now)
            item["duration"] = end - record[0]
            recent.append(item)
        return {
            "rank": self.rank,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "node": self.node,
            "now": now,
            "main": str(threading.main_thread().ident),
            "comms": {c.ident: describe_comm(c) for c in self.recorder.comms()},
            "inflight": [self.recorder.describe(record, now) for _, record in self.recorder.inflight()],
            "recent": recent,
            "threads": threads,
        }

    def arrivals(self, request: dict) -> dict:
        """Entry and exit times of this rank's latest collectives (multi-rank communicators only).

        At most ``limit`` of them, from the last ``4 * limit`` completed calls: the
        detector needs a recent window, not every call since the last question.
        """
        limit = int(request.get("limit", ARRIVALS))
        position, records = self.recorder.since(int(request.get("since", 0)), 4 * limit)
        out, comms = [], {}
        for record, end in records[::-1]:
            state = record[1]
            if record[6] and len(state.members) > 1:
                out.append([state.ident, record[3], record[0], end, record[2]])
                comms[state.ident] = list(state.members)
                if len(out) == limit:
                    break
        out.reverse()
        return {"pos": position, "now": time.perf_counter(), "boot": self.boot, "arrivals": out, "comms": comms}

    def dump(self, request: dict | None = None) -> dict:
        """This rank's flight record as a versioned dump document (:mod:`transport.flightdump`).

        Bounded for the side channel: at most ``request["limit"]`` completed
        calls, by default ``2**19 / world size`` (at least 64, at most 65536),
        so that every rank's dump fits in one combined document.
        """
        limit = max(64, min(flightdump.DUMP_ENTRIES, flightdump.COMBINED_ENTRIES // self.size))
        if request and type(request.get("limit")) is int:
            limit = max(0, min(request["limit"], flightdump.MAX_ENTRIES))
        return self._dump(limit)

    def _dump(self, limit: int | None) -> dict:
        return flightdump.build(
            self.recorder, rank=self.rank, world_size=self.size, host=socket.gethostname(), pid=os.getpid(),
            node=self.node, job=self.job, limit=limit,
        )  # fmt: skip

    def write_dump(self, path: str | None = None) -> str:
        """Write this rank's whole flight record (every call the ring holds) to ``path`` (default: beside the
        report file, :meth:`dump_path` with ``.rank<r>``), atomically and 0600; returns the path written."""
        path = path or self.dump_path(combined=False)
        write_atomic(path, json.dumps(self._dump(None)).encode())
        return path

    def _probe_request(self, request: dict) -> dict:
        return linkprobe.probe_request(request, self.peers(refresh=True), self._probe_timeout())

    def _probe_timeout(self) -> float:
        return self.timeout + PROBE_BYTES / 1.25e6  # down to 10 Mbit/s

    # -- peers -------------------------------------------------------------------
    def peers(self, refresh: bool = False) -> dict[int, dict]:
        """Side-channel records of the other monitored ranks, by world rank."""
        if self.rendezvous is not None and not self._fixed_peers:
            now = time.monotonic()
            if refresh or (len(self._peers) < self.size and now - self._peers_read > 1.0):
                self._peers = self.rendezvous.peers(self.size)
                self._peers_read = now
        return {r: p for r, p in self._peers.items() if r != self.rank}

    def _gather(self, ranks: list[int], query: str) -> tuple[dict[int, dict], dict[int, str]]:
        peers = self.peers(refresh=True)
        answers: dict[int, dict] = {}
        silent: dict[int, str] = {}
        threads = []

        def one(r: int) -> None:
            try:
                answers[r] = ask(peers[r], query, self.timeout)
            except SideChannelError:
                silent[r] = (
                    f"no answer on the side channel within {self.timeout:g} s (pid {peers[r].get('pid')} "
                    f"on {peers[r].get('host')}): stopped, dead or unreachable"
                )

        for r in ranks:
            if r == self.rank:
                answers[r] = self.state() if query == "state" else self.dump()
            elif r in peers:
                threads.append(threading.Thread(target=one, args=(r,), name="commlib-monitor-ask", daemon=True))
            else:
                silent[r] = "not monitored (no side channel registered for it)"
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.timeout + 1.0)
        for r in ranks:
            if r not in answers and r not in silent:
                silent[r] = f"no answer on the side channel within {self.timeout:g} s: stopped, dead or unreachable"
        return answers, silent

    def _coordinator(self) -> bool:
        return self.size > 1 and all(r > self.rank for r in self.peers())

    # -- the thread ----------------------------------------------------------------
    def _run(self) -> None:
        poll = max(0.02, min(1.0, self.floor / 4, self.interval))
        next_pull = time.perf_counter() + self.interval
        while not self._stop.wait(poll):
            try:
                now = time.perf_counter()
                self._watch(now)
                if self._abort_at is not None and now >= self._abort_at:
                    self._abort("the hang reported above did not resolve")
                if now >= next_pull and self._coordinator():
                    next_pull = now + self.interval
                    self._pull()
                if self.probe_every > 0 and now >= self._next_probe and self._coordinator():
                    self._next_probe = now + self.probe_every
                    self.probe_links()
                self.recorder.prune(MAX_INFLIGHT)
            except Exception as exc:
                self._internal_error(exc)

    def _internal_error(self, exc: BaseException) -> None:
        self._errors += 1
        if self._errors > 3:
            return
        with contextlib.suppress(Exception):
            lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
            self.reporter.emit(
                {"kind": "error", "lines": [f"internal error (the application is not affected): {exc!r}"]
                 + "".join(lines).rstrip().splitlines()[-6:]}
            )  # fmt: skip

    # -- hangs -------------------------------------------------------------------
    def _watch(self, now: float, finishing: bool = False) -> None:
        new, reminders, resolved = self.watchdog.poll(now)
        if finishing:
            new, reminders = [], []
        for stuck in new:
            self._report_hang(stuck)
        mine = [s for s in reminders + resolved if s.extra.get("leader", self.rank) == self.rank]
        reminders = [s for s in reminders if s in mine]  # the rank that reported a hang follows it up
        resolved = [s for s in resolved if s in mine]
        follow_ups = (
            ("hang-reminder", reminders, "still waiting: {call} for {waited:.1f} s"),
            ("hang-resolved", resolved, "resolved: {call} completed after {waited:.1f} s"),
        )
        for kind, stucks, line in follow_ups:
            for stuck in stucks:
                call = call_text(self.recorder.describe(stuck.record, now))
                text = line.format(call=call, waited=stuck.waited)
                self.reporter.emit({"kind": kind, "call": call, "waited": stuck.waited, "lines": [text]})
        if resolved and not self.watchdog.stuck:
            self._abort_at = None

    def _report_hang(self, stuck: Stuck) -> None:
        now = time.perf_counter()
        op = self.recorder.describe(stuck.record, now)
        op.update(waited=stuck.waited, limit=stuck.limit)
        state = stuck.record[1]
        members = list(state.members) or [self.rank]
        if op["kind"] == "collective":
            ask_ranks = members
        else:
            named = [op[k] for k in ("dest_world", "source_world") if k in op]
            wildcard = "source" in op and "source_world" not in op
            ask_ranks = sorted(set(members if wildcard else named) | {self.rank})
        states, silent = self._gather(ask_ranks, "state")
        finding = analyse(op, self.rank, members, states, silent)
        finding["states"] = {str(r): s for r, s in states.items()}
        leader = self.rank
        if op["kind"] == "collective":
            waiting = finding.get("arrived", []) + finding.get("mismatched", [])
            leader = min([*waiting, self.rank])
        finding["leader"] = stuck.extra["leader"] = leader
        if leader != self.rank:
            self.reporter.emit(
                {
                    "kind": "hang-wait",
                    "call": finding["call"],
                    "waited": stuck.waited,
                    "leader": leader,
                    "suspects": finding["suspects"],
                    "lines": [
                        f"waiting in {finding['call']} for {stuck.waited:.1f} s; "
                        f"suspects: {_ranks(finding['suspects'])}; rank {leader} reports the details"
                    ],
                }
            )
        else:
            if self.action == "dump":
                finding["lines"].append(self._dump_all(ask_ranks))
            self.reporter.emit(finding)
        if self.action == "abort":
            if leader == self.rank:
                self._abort(f"{finding['call']} hung")
            elif self._abort_at is None:
                self._abort_at = now + 2 * self.timeout + 2.0  # leave the leader time to report first

    def dump_path(self, combined: bool = True) -> str:
        """Where this rank writes flight records: beside its report file, in a name no other rank uses
        (``combined``: every rank's dump, as the dump action writes it; else this rank's own)."""
        suffix = ".dump.json" if combined else ".flight.json"
        if self.reporter.path and self.reporter.per_rank:
            return f"{self.reporter.path}{suffix}"
        base = self.reporter.path or f"commlib-monitor-{os.getpid()}"
        return f"{base}.rank{self.rank}{suffix}"

    def _dump_all(self, ranks: list[int]) -> str:
        records, silent = self._gather(sorted(set(ranks) | set(self.peers()) | {self.rank}), "dump")
        dumps = {}
        for r, record in records.items():  # an answer from the network is checked like a file
            try:
                flightdump.validate(record, f"the dump of rank {r}")
                dumps[r] = record
            except ValueError as exc:
                silent[r] = f"answered an invalid flight record ({exc})"
        document = flightdump.combine(dumps, silent, job=self.job, world_size=self.size)
        path = self.dump_path()
        try:
            write_atomic(path, json.dumps(document).encode())
        except OSError as exc:
            return f"  flight records: could not write {path}: {exc}"
        where = os.path.abspath(path)
        return f"  flight records of {_ranks(list(dumps))} written to {where} (analyse: python -m commlib monitor FILE)"

    def _abort(self, why: str) -> None:
        self.reporter.emit(
            {
                "kind": "error",
                "lines": [f"aborting the job with exit code {ABORT_CODE} ({why}; COMMLIB_MONITOR_ACTION=abort)"],
            }
        )
        with contextlib.suppress(Exception):
            sys.stderr.flush()
            sys.stdout.flush()
        try:
            MPI.COMM_WORLD.Abort(ABORT_CODE)
        finally:
            os._exit(ABORT_CODE)

    # -- stragglers and slowdowns ----------------------------------------------------
    def _pull(self) -> None:
        peers = self.peers()
        answers: dict[int, tuple[dict, float, float]] = {}

        def one(r: int, peer: dict | None) -> None:
            since = self.collector.cursor.get(r, 0)
            sent = time.perf_counter()
            try:
                answer = (
                    self.arrivals({"since": since})
                    if peer is None
                    else ask(peer, "arrivals", min(self.timeout, max(1.0, self.interval)), since=since)
                )
            except SideChannelError:
                return
            answers[r] = (answer, sent, time.perf_counter())

        one(self.rank, None)
        threads = [
            threading.Thread(target=one, args=(r, p), name="commlib-monitor-pull", daemon=True)
            for r, p in peers.items()
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.timeout + 1.0)
        for finding in self.collector.pull(dict(answers)):
            self._report_pattern(finding)

    def _label(self, ident: str) -> tuple[str, int]:
        for state in self.recorder.comms():
            if state.ident == ident:
                return state.label, state.coll_entered
        return f"communicator {ident}", 0

    def _report_pattern(self, finding: dict) -> None:
        label, at = self._label(finding["comm"])
        finding = {**finding, "label": label, "seen_at": at}
        if finding["kind"] == "straggler":
            r = finding["straggler"]
            peer = self._record if r == self.rank else self.peers().get(r, {})
            where = f" (pid {peer.get('pid')} on {peer.get('host')}, node {peer.get('node')})" if peer else ""
            finding["node"] = peer.get("node")
            why = {
                "compute": "a compute straggler (it spends longer between collectives than the others)",
                "communication": "it leaves each collective late: a slow link or node on its side; probing the links",
                "unknown": "a straggler",
            }[finding["cause"]]
            finding["lines"] = [
                f"STRAGGLER: rank {r}{where} arrived last at collectives on {label} in {finding['last']} of the "
                f"last {finding['window']} (#{finding['first_seq']}-#{finding['last_seq']}), a median "
                f"{finding['lateness'] * 1e3:.1f} ms after the others (threshold {finding['threshold'] * 1e3:.1f} ms, "
                f"period {finding['period'] * 1e3:.1f} ms): {why}"
            ]
            self.reporter.emit(finding)
            if finding["cause"] == "communication" and time.perf_counter() - self._last_probe > 30.0:
                self.probe_links()
            return
        finding["lines"] = [
            f"SLOWDOWN: {finding['op'] or 'collectives'} on {label} now spend{'s' if finding['op'] else ''} "
            f"{finding['now'] * 1e3:.2f} ms communicating, "
            f"{finding['now'] / finding['baseline']:.1f}x its baseline {finding['baseline'] * 1e3:.2f} ms "
            f"(#{finding['first_seq']}-#{finding['last_seq']}); probing the links"
        ]
        self.reporter.emit(finding)
        if time.perf_counter() - self._last_probe > 30.0:
            self.probe_links()

    # -- link probe ------------------------------------------------------------------
    def probe_links(self) -> dict:
        """Measure the node-to-node matrix now, report slow nodes and links; returns the localisation.

        Callable from any rank's application thread or the monitor's; needs the
        side channel (a one-rank or one-node job has nothing to compare).
        """
        with self._lock:
            self._last_probe = time.perf_counter()
            if self._stop.is_set():
                return {"nodes": [], "slow_nodes": [], "slow_links": [], "bad": [], "skipped": "monitor stopping"}
            everyone = {**self.peers(refresh=True), self.rank: self._record}
            reps: dict[str, dict] = {}
            for r in sorted(everyone):
                reps.setdefault(str(everyone[r].get("node")), everyone[r])
            if len(reps) < 2:
                return {"nodes": list(reps), "slow_nodes": [], "slow_links": [], "bad": [], "skipped": "one node"}
            cells, failed = linkprobe.matrix(reps, self.rank, PROBE_BYTES, PROBE_ROUNDS, self._probe_timeout())
            result = linkprobe.localise(cells)
            result["failed"] = failed
            if self._stop.is_set():  # the job ended under the probe: peers that left look like broken links
                result["skipped"] = "monitor stopping"
                return result
            records, self._known_slow = linkprobe.records(result, cells, len(reps), self._known_slow)
            for record in records:
                self.reporter.emit(record)
            return result


def start_monitor(monitor: Monitor | bool | None = None) -> Monitor | None:
    """The started monitor for ``commlib.interpose(monitor=...)``, or ``None``.

    ``None`` follows ``COMMLIB_MONITOR`` (on by default), ``False`` means no
    monitor, ``True`` a monitor configured from ``commlib.config``, and a
    :class:`Monitor` is started as given. A monitor that cannot start (no
    address to listen on, say) is reported on stderr and the job runs
    unmonitored: the monitor never stops an application from running.
    """
    if monitor is None:
        monitor = settings.monitor
    if monitor is False:
        return None
    chosen = Monitor() if monitor is True else monitor
    if not isinstance(chosen, Monitor):
        raise TypeError(f"interpose: monitor must be a bool or a Monitor, got {type(monitor).__name__}")
    try:
        return chosen.start()
    except Exception as exc:  # whatever the side channel or the rendezvous met, the application runs on
        rank = MPI.COMM_WORLD.Get_rank()
        sys.stderr.write(
            f"[commlib monitor, rank {rank}] not started: {type(exc).__name__}: {exc}; the job runs unmonitored\n"
        )
        return None
