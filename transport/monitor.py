"""commlib's fault-detection monitor: names the rank, the operation and the probable cause of a hang.

A :class:`Monitor` is what a session's ``monitor`` hook calls (see
:mod:`commlib.interposer.tracing`): its ``enter``/``leave`` are the flight recorder's
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

from . import flightdump, linkprobe, rendezvous, wavefront
from .privatefiles import write_atomic
from .recorder import FlightRecorder, describe_comm
from .reports import Reporter
from .settings import settings
from .sidechannel import SideChannel, SideChannelError, ask, ask_many
from .stragglers import Collector, StragglerDetector
from .watchdog import Stuck, Watchdog, is_waiting
from .wavefront import analyse, call_text, ranks_text, straggler_lines

__all__ = ["ABORT_CODE", "Monitor", "start_monitor"]

ABORT_CODE = 70  # exit status of a job the monitor aborts
ACTIONS = ("warn", "dump", "abort")
PROBE_BYTES = 2 << 20
PROBE_ROUNDS = 5
ARRIVALS = 128  # collectives per rank per collection, the most recent
MAX_INFLIGHT = 65536  # nonblocking calls never completed beyond this are forgotten
PROBE_DEADLINE = 60.0  # seconds a whole link probe may take; pairs left then are reported as not measured
ERROR_QUIET = 60.0  # seconds between two messages about internal errors, after the first three
_LEVELS = {
    MPI.THREAD_SINGLE: "THREAD_SINGLE",
    MPI.THREAD_FUNNELED: "THREAD_FUNNELED",
    MPI.THREAD_SERIALIZED: "THREAD_SERIALIZED",
    MPI.THREAD_MULTIPLE: "THREAD_MULTIPLE",
}
_STATES = {"T": "stopped (SIGSTOP)", "t": "stopped by a debugger", "Z": "exited (a zombie)", "X": "exited"}
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


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
        suspect: float | None = None,
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
        self.suspect = float(pick(suspect, settings.monitor_suspect))
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
        for name in ("suspect", "floor", "timeout", "interval"):
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
        self.watchdog = Watchdog(self.recorder, self.suspect, self.multiple)
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
        self._survey: threading.Thread | None = None
        self._next_probe = 0.0
        self._last_probe = -1e9
        self.errors = 0  # internal errors, all counted; their messages are rate-limited
        self._error_told = (0.0, 0)  # when the last one was told, and the count then
        self.thread_level: int | None = None
        self.aborting: dict | None = None  # a peer's word that it aborts the job (see _abort)
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
        self.thread_level = MPI.Query_thread()  # here, in the application's thread, before any thread of ours runs
        if self.thread_level < MPI.THREAD_MULTIPLE:
            note += (
                f"; MPI gives {_LEVELS.get(self.thread_level, self.thread_level)}, not THREAD_MULTIPLE: the monitor "
                "never calls MPI from its threads (abort ends this process instead of calling MPI_Abort)"
            )
        self._next_probe = time.perf_counter() + self.probe_every
        self._thread = threading.Thread(target=self._run, name="commlib-monitor", daemon=True)
        self._thread.start()
        if self.size > 1:
            self._survey = threading.Thread(target=self._run_survey, name="commlib-monitor-survey", daemon=True)
            self._survey.start()
        self.reporter.emit(
            {
                "kind": "start",
                "lines": [f"monitor started: {note}"],
                "node": self.node,
                "world_size": self.size,
                "side_channel": note,
                "settings": {
                    "action": self.action,
                    "suspect": self.suspect,
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
        self.channel.handle("aborting", self._peer_aborting)
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
            survey = self._survey
            if survey is not None and survey is not threading.current_thread():
                survey.join(self.timeout + 1.0)
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

    def _peer_aborting(self, request: dict) -> dict:
        """A peer reported a hang and aborts the job: this rank reports no second, stale view of it."""
        rank, why = request.get("rank"), request.get("why")
        if isinstance(rank, int) and not isinstance(rank, bool) and isinstance(why, str):
            self.aborting = {"rank": rank, "why": why[:500]}
        return {}

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

        def silence(r: int) -> str:
            return (
                f"no answer on the side channel within {self.timeout:g} s (pid {peers[r].get('pid')} "
                f"on {peers[r].get('host')}): {self._process_state(peers[r])}"
            )

        def one(r: int) -> None:
            try:
                answers[r] = ask(peers[r], query, self.timeout)
            except SideChannelError:
                silent[r] = silence(r)

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
            if r not in answers and r not in silent:  # its asking thread is still waiting
                silent[r] = silence(r)
        return answers, silent

    def _process_state(self, peer: dict) -> str:
        """What a silent peer's process is, read from /proc where it runs on this machine."""
        pid = peer.get("pid")
        if peer.get("boot") != self.boot or not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            return "stopped (SIGSTOP), dead, or its host unreachable"
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return "exited (its process is gone)"
        state = stat.rpartition(")")[2].split()[:1]
        return _STATES.get(state[0] if state else "", "running but not answering (its side channel is stuck)")

    def _coordinator(self) -> bool:
        return self.size > 1 and all(r > self.rank for r in self.peers())

    # -- the threads ---------------------------------------------------------------
    def _run(self) -> None:
        """The watchdog thread: hangs only, so nothing else (probes, arrival collection) can delay a report."""
        poll = max(0.02, min(1.0, self.suspect / 4))
        while not self._stop.wait(poll):
            try:
                now = time.perf_counter()
                self._watch(now)
                self._act(now)
                self.recorder.prune(MAX_INFLIGHT)
            except Exception as exc:
                self._internal_error(exc)

    def _run_survey(self) -> None:
        """The survey thread: arrival collection (stragglers, slowdowns) and link probes, on the lowest rank."""
        next_pull = time.perf_counter() + self.interval
        while not self._stop.wait(min(self.interval, 1.0)):
            try:
                now = time.perf_counter()
                if now >= next_pull and self._coordinator():
                    next_pull = now + self.interval
                    self._pull()
                if self.probe_every > 0 and now >= self._next_probe and self._coordinator():
                    self._next_probe = now + self.probe_every
                    self.probe_links()
            except Exception as exc:
                self._internal_error(exc)

    def _internal_error(self, exc: BaseException) -> None:
        """Count every error; tell the first three, then at most one a minute with the count since."""
        self.errors += 1
        now = time.monotonic()
        told_at, told_count = self._error_told
        if self.errors > 3 and now - told_at < ERROR_QUIET:
            return
        self._error_told = (now, self.errors)
        more = self.errors - told_count - 1
        with contextlib.suppress(Exception):
            lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
            head = f"internal error (the application is not affected): {exc!r}"
            if more > 0:
                head += f" ({more} more since the last message; {self.errors} in all)"
            self.reporter.emit(
                {"kind": "error", "errors": self.errors, "lines": [head] + "".join(lines).rstrip().splitlines()[-6:]}
            )

    # -- hangs -------------------------------------------------------------------
    def _watch(self, now: float, finishing: bool = False) -> None:
        new, reminders, resolved = self.watchdog.poll(now)
        if finishing:
            new, reminders = [], []
        for stuck in new:
            self._examine(stuck, now)
        if not finishing:
            for stuck in list(self.watchdog.stuck.values()):
                if stuck not in new and stuck.extra.get("verdict") != "hang" and now >= stuck.extra["next_look"]:
                    self._examine(stuck, now)
        hangs = [s for s in reminders if s.extra.get("verdict") == "hang" and s.extra.get("told")]
        told = [s for s in resolved if s.extra.get("told")]  # what this rank reported gets its follow-up
        resolved_line = "resolved: {call} completed after {waited:.1f} s"
        follow_ups = (
            ("hang-reminder", hangs, "still waiting: {call} for {waited:.1f} s"),
            ("hang-resolved", [s for s in told if s.extra["verdict"] == "hang"], resolved_line),
            ("straggler-resolved", [s for s in told if s.extra["verdict"] != "hang"], resolved_line),
        )
        for kind, stucks, line in follow_ups:
            for stuck in stucks:
                call = call_text(self.recorder.describe(stuck.record, now))
                text = line.format(call=call, waited=stuck.waited)
                self.reporter.emit({"kind": kind, "call": call, "waited": stuck.waited, "lines": [text]})

    def _act(self, now: float) -> None:
        """Carry out the delayed abort of a hang another rank reports, if that hang is still there."""
        for stuck in list(self.watchdog.stuck.values()):
            due = stuck.extra.get("abort_at")
            if due is not None and now >= due:
                self._abort(f"{stuck.extra.get('call', 'an operation')} hung and did not resolve")

    def _examine(self, stuck: Stuck, now: float) -> None:
        """Ask the ranks ``stuck`` waits for what they do: a hang on evidence, a straggler while they run code.

        A rank silent, blocked in another operation or in another collective
        makes a hang at once. Ranks running code make a straggler warning, told
        once; the wait is looked at again every few seconds and becomes a hang
        when one of them is seen at the same place for ``floor`` seconds (or
        stops answering, or blocks). Ranks that cannot be observed make a hang
        after ``floor`` seconds, on the clock alone.
        """
        op = self.recorder.describe(stuck.record, now)
        op.update(waited=stuck.waited, limit=stuck.limit)
        members = list(stuck.record[1].members) or [self.rank]
        if op["kind"] == "collective":
            ask_ranks = members
        else:
            named = [op[k] for k in ("dest_world", "source_world") if k in op]
            wildcard = "source" in op and "source_world" not in op
            ask_ranks = sorted(set(members if wildcard else named) | {self.rank})
        states, silent = self._gather(ask_ranks, "state")
        stuck.extra["next_look"] = now + max(0.5, min(5.0, self.floor / 12))
        if self.aborting is not None:  # the job ends under another rank's report: its peers may be gone already
            if not stuck.extra.get("told_verdict"):
                stuck.extra["told_verdict"] = "aborting"
                call, leader = call_text(op), self.aborting["rank"]
                line = f"waiting in {call}; rank {leader} aborts the job ({self.aborting['why']})"
                self.reporter.emit({"kind": "hang-wait", "call": call, "leader": leader, "lines": [line]})
            return
        finding = analyse(op, self.rank, members, states, silent)
        finding["states"] = {str(r): s for r, s in states.items()}
        verdict = finding["verdict"]
        stuck.extra["call"] = finding["call"]
        if verdict == "straggler":
            verdict = self._still_moving(stuck, finding, now)
        elif verdict == "unknown" and stuck.waited >= self.floor:
            verdict = "hang"
        stuck.extra["verdict"] = verdict
        if verdict == "unknown" or verdict == stuck.extra.get("told_verdict"):
            return
        stuck.extra["told_verdict"] = verdict
        leader = self.rank
        if op["kind"] == "collective":
            leader = min([*finding.get("arrived", []), *finding.get("mismatched", []), self.rank])
        finding["leader"] = stuck.extra["leader"] = leader
        if leader != self.rank:
            self.reporter.emit(
                {
                    "kind": "hang-wait",
                    "verdict": verdict,
                    "call": finding["call"],
                    "waited": stuck.waited,
                    "leader": leader,
                    "suspects": finding["suspects"],
                    "lines": [
                        f"waiting in {finding['call']} for {stuck.waited:.1f} s ({verdict}); "
                        f"suspects: {ranks_text(finding['suspects'])}; rank {leader} reports the details"
                    ],
                }
            )
        elif verdict == "straggler":
            lines = straggler_lines(finding, self.rank)
            lines.append(
                f"  not a hang while it runs: a hang if it stays at the same place for {self.floor:g} s, "
                "stops answering or blocks in another operation"
            )
            stragglers = finding["suspects"]
            first = stragglers[0] if stragglers else None
            record = {"kind": "straggler", "source": "wait", "straggler": first, "stragglers": stragglers}
            self.reporter.emit({**finding, **record, "lines": lines})
            stuck.extra["told"] = True
        else:
            if self.action == "dump":
                finding["lines"].append(self._dump_all(ask_ranks))
            finding["reported_after"] = time.perf_counter() - stuck.record[0]  # since the operation began
            self.reporter.emit(finding)
            stuck.extra["told"] = True
        if verdict == "hang" and self.action == "abort":
            if leader == self.rank:
                self._abort(f"{finding['call']} hung")
            else:  # leave the leader time to report first; cancelled if the operation completes
                stuck.extra["abort_at"] = now + 2 * self.timeout + 2.0

    def _still_moving(self, stuck: Stuck, finding: dict, now: float) -> str:
        """``straggler`` while every rank waited for has moved within ``floor`` s; else ``hang`` (cause rewritten)."""
        places = stuck.extra.setdefault("places", {})
        for r in finding["suspects"]:
            stack = finding["ranks"].get(str(r), {}).get("stack", [])
            place = tuple((f[0], f[1], f[2]) for f in stack)
            if r not in places or places[r][0] != place:
                places[r] = (place, now - stuck.waited if r not in places else now)
        still = [r for r in finding["suspects"] if now - places[r][1] >= self.floor]
        if not still:
            return "straggler"
        where = [wavefront.where(finding["ranks"].get(str(r), {}).get("stack", [])) for r in still]
        finding["cause"] = (
            f"{finding['cause']}; {ranks_text(still)} ha{'s' if len(still) == 1 else 've'} stayed at the same place "
            f"for at least {self.floor:g} s ({'; '.join(where)}): a loop that makes no progress, or a wait outside MPI"
        )
        finding["lines"][-1] = f"  probable cause: {finding['cause']}"
        finding["verdict"] = "hang"
        return "hang"

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
        written = ranks_text(list(dumps))
        return f"  flight records of {written} written to {where} (analyse: python -m commlib monitor FILE)"

    def _abort(self, why: str) -> None:
        """End the job: MPI_Abort where MPI allows calls from this thread, else this process (mpiexec ends the rest)."""
        multiple = self.thread_level is not None and self.thread_level >= MPI.THREAD_MULTIPLE
        how = "" if multiple else "; MPI is not THREAD_MULTIPLE: ending this process, mpiexec ends the others"
        self.reporter.emit(
            {
                "kind": "error",
                "lines": [f"aborting the job with exit code {ABORT_CODE} ({why}; COMMLIB_MONITOR_ACTION=abort{how})"],
            }
        )
        with contextlib.suppress(Exception):
            sys.stderr.flush()
            sys.stdout.flush()
        with contextlib.suppress(Exception):  # so that no rank reports the peers this abort takes down as dead
            ask_many(self.peers().values(), "aborting", min(1.0, self.timeout), rank=self.rank, why=why)
        try:
            if multiple:
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
            cells, failed = linkprobe.matrix(
                reps, self.rank, PROBE_BYTES, PROBE_ROUNDS, self._probe_timeout(),
                deadline=time.monotonic() + PROBE_DEADLINE,
            )  # fmt: skip
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
