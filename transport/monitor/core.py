"""The :class:`Monitor`: its settings, start and stop, and its two daemon threads (watchdog and survey)."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from mpi4py import MPI

from .. import linkprobe, rendezvous
from ..recorder import FlightRecorder
from ..reports import Reporter
from ..settings import settings
from ..sidechannel import SideChannel
from ..stragglers import Collector, StragglerDetector
from ..watchdog import Watchdog
from .answers import Answers
from .dumps import Dumps
from .hangs import Hangs
from .patterns import Patterns
from .peers import Peers, boot_id
from .probes import LinkProbes

ACTIONS = ("warn", "dump", "abort")
MAX_INFLIGHT = 65536  # nonblocking calls never completed beyond this are forgotten
ERROR_QUIET = 60.0  # seconds between two messages about internal errors, after the first three
_LEVELS = {
    MPI.THREAD_SINGLE: "THREAD_SINGLE",
    MPI.THREAD_FUNNELED: "THREAD_FUNNELED",
    MPI.THREAD_SERIALIZED: "THREAD_SERIALIZED",
    MPI.THREAD_MULTIPLE: "THREAD_MULTIPLE",
}


class Monitor(Hangs, Patterns, LinkProbes, Dumps, Answers, Peers):
    """One rank's fault-detection monitor. Keyword arguments override ``commlib.config`` (``COMMLIB_MONITOR_*``).

    This class holds the settings, start and stop and the two threads; the rest comes from one base class
    per job (:mod:`transport.monitor`), all working on the state set up here.
    """

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
        self.boot = boot_id()
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
