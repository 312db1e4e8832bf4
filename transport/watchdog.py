"""Hang detection: which operation of this rank has been stuck for longer than it should.

A blocking call is stuck while it stays in the flight recorder's in-flight
table: the thread that made it is inside it. A nonblocking call is in flight
from the moment it is posted until its request completes, which may
legitimately be long (a receive posted early); it counts as stuck only
while a thread (the one that posted it, else any) waits for requests
(:func:`is_waiting`) and no operation of the rank completes at all; the
oldest such operation then stands for that wait.

The limit of an operation is ``multiple`` times its usual duration (the
90th percentile of its recent calls on the same communicator, from the
flight recorder), and never less than ``floor`` seconds; a communicator given
a deadline (:meth:`~transport.recorder.FlightRecorder.set_deadline`) uses
that instead. What a call over its limit means is for the monitor to find
out (:meth:`transport.monitor.Monitor._examine`). A signal cannot
interrupt a rank blocked inside MPI, so this runs in the monitor's own
thread: :meth:`Watchdog.poll` returns what became stuck since the last poll,
what stays stuck (for reminders at 2x, 4x, ... the limit) and what got
unstuck after having been reported.
"""

from __future__ import annotations

import dis
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from types import CodeType
from typing import Any

from .recorder import FlightRecorder, Record

__all__ = ["WAIT_NAMES", "Stuck", "Watchdog", "is_waiting", "register_waits"]


_WAITS: set[CodeType] = set()
WAIT_NAMES = frozenset({"Wait", "Waitall", "Waitany", "Waitsome", "wait", "waitall", "waitany", "waitsome"})
_CALLS = frozenset({"CALL", "CALL_FUNCTION", "CALL_METHOD", "CALL_FUNCTION_EX", "CALL_KW", "PRECALL"})
_LOADS = frozenset({"LOAD_ATTR", "LOAD_METHOD"})


def register_waits(*functions: Any) -> None:
    """Declare ``functions`` as request waits: a thread inside one of them counts as waiting.

    The interposer registers its own ``Wait``/``Waitall``/... (commlib's
    request classes); mpi4py's run in C and are recognised by their call site.
    """
    for function in functions:
        code = getattr(getattr(function, "__func__", function), "__code__", None)
        if code is None:
            raise TypeError(f"register_waits: {function!r} is not a Python function")
        _WAITS.add(code)


def is_waiting(frame: Any) -> bool:
    """Whether a thread whose innermost Python frame is ``frame`` is blocked waiting for requests.

    So it is inside a registered wait (:func:`register_waits`), or in a call,
    on its current line, of a method named ``Wait``, ``Waitall``, ``Waitany``
    or ``Waitsome`` (mpi4py's, which run in C and leave no frame).
    """
    return frame.f_code in _WAITS or _calls_wait(frame.f_code, frame.f_lasti)


@lru_cache(maxsize=4096)
def _calls_wait(code: CodeType, lasti: int) -> bool:
    names = []
    for instruction in _instructions(code):
        if instruction.offset > lasti:
            break
        if instruction.starts_line:
            names.clear()  # a new line: only the current line's calls count
        if instruction.opname in _LOADS:
            names.append(instruction.argval)
        elif instruction.offset == lasti:
            return instruction.opname in _CALLS and any(name in WAIT_NAMES for name in names)
    return False


@lru_cache(maxsize=256)
def _instructions(code: CodeType) -> tuple:
    return tuple(dis.get_instructions(code))


@dataclass
class Stuck:
    """One operation over its limit."""

    token: int
    record: Record
    waited: float
    limit: float
    reported_at: float = 0.0
    reminders: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Watchdog:
    """Decides, from the flight recorder alone, which operations are hung."""

    def __init__(self, recorder: FlightRecorder, floor: float, multiple: float) -> None:
        self.recorder = recorder
        self.floor = floor
        self.multiple = multiple
        self.stuck: dict[int, Stuck] = {}
        self._waiting: dict[int, tuple[float, int]] = {}  # thread -> (since, recorder position then)

    def limit(self, record: Record) -> float:
        """Seconds ``record`` may wait before it is examined: its communicator's deadline, else the rule."""
        deadline = self.recorder.deadline(record[1])
        if deadline is not None:
            return deadline
        history = sorted(self.recorder.history(record[1], record[2]))
        if not history:
            return self.floor
        p90 = history[min(len(history) - 1, int(0.9 * len(history)))]
        return max(self.floor, self.multiple * p90)

    def _waiting_threads(self, now: float) -> dict[int, float]:
        """Threads blocked in a commlib wait, with how long they have waited without any completion."""
        position = self.recorder.position
        waiting = {}
        for thread, frame in sys._current_frames().items():
            if not is_waiting(frame):
                self._waiting.pop(thread, None)
                continue
            since, seen = self._waiting.get(thread, (now, position))
            if seen != position:
                since, seen = now, position
            self._waiting[thread] = (since, seen)
            waiting[thread] = now - since
        return waiting

    def poll(self, now: float) -> tuple[list[Stuck], list[Stuck], list[Stuck]]:
        """``(newly stuck, due a reminder, resolved)`` since the last poll."""
        inflight = self.recorder.inflight()
        tokens = {token for token, _ in inflight}
        resolved = [s for token, s in self.stuck.items() if token not in tokens]
        for s in resolved:
            del self.stuck[s.token]
            s.waited = now - s.record[0]
        new, reminders = [], []
        waiting: dict[int, float] | None = None
        threads = {s.extra["waiter"] for s in self.stuck.values() if "waiter" in s.extra}
        deadlines = list(self.recorder.deadlines.values())  # the application's thread may set one meanwhile
        least = min(self.floor, *deadlines) if deadlines else self.floor
        for token, record in inflight:
            age = now - record[0]
            if age < least:
                break  # oldest first: the rest are younger still
            if token in self.stuck:
                s = self.stuck[token]
                s.waited = age if self.recorder.is_blocking(record[2]) else s.waited + (now - s.extra["polled"])
                s.extra["polled"] = now
                if s.waited >= s.limit * 2 ** (s.reminders + 1):
                    s.reminders += 1
                    reminders.append(s)
                continue
            extra = {"polled": now}
            if self.recorder.is_blocking(record[2]):
                waited = age
            else:
                if waiting is None:
                    waiting = self._waiting_threads(now)
                # the thread that posted it, else any thread waiting, stands for the wait; one operation per wait
                free = {t: w for t, w in waiting.items() if t not in threads}
                if not free:
                    continue
                waiter = record[4] if record[4] in free else max(free, key=free.__getitem__)
                waited = free[waiter]
                extra["waiter"] = waiter
            if waited < least:
                continue
            limit = self.limit(record)
            if waited >= limit:
                s = Stuck(token, record, waited, limit, reported_at=now, extra=extra)
                self.stuck[token] = s
                new.append(s)
                if "waiter" in extra:
                    threads.add(extra["waiter"])
        return new, reminders, resolved
