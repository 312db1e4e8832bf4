"""What a rank's monitor answers on the side channel about itself: its state now, its collective arrivals."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import traceback

from ..recorder import describe_comm
from ..watchdog import is_waiting

ARRIVALS = 128  # collectives per rank per collection, the most recent


class Answers:
    """Part of the monitor (:class:`transport.monitor.Monitor`): the side channel's ``state``, ``arrivals`` and
    ``aborting`` handlers."""

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

    def _peer_aborting(self, request: dict) -> dict:
        """A peer reported a hang and aborts the job: this rank reports no second, stale view of it."""
        rank, why = request.get("rank"), request.get("why")
        if isinstance(rank, int) and not isinstance(rank, bool) and isinstance(why, str):
            self.aborting = {"rank": rank, "why": why[:500]}
        return {}
