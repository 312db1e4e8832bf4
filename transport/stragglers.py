"""Straggler detection from the arrival times of collectives, and slowdown detection from their durations.

Collectives are periodic and every member takes part, so the order in which
ranks arrive at the symmetric ones (:data:`SYMMETRIC`) is informative: a rank that keeps arriving last, well
after the others, is holding the job up (a compute straggler: slower
hardware, more work, a noisy neighbour). :class:`Collector` pulls each
rank's recent collective entry and exit times over the side channel, puts
them on one clock, and hands every complete instance (all members seen) to a
:class:`StragglerDetector`, which keeps a sliding window per communicator.

A rank ``r`` is flagged when, in at least ``fraction`` of the last
``window`` instances, its lateness (its arrival minus the latest arrival of
the others) is at least the threshold, the largest of: ``skew`` seconds;
``factor`` times the median spread of the others' arrivals (the noise of a
healthy rank); and ``share`` of the median interval between instances (it
costs the job a noticeable part of its time); and its median lateness is
at most 1.5 median intervals (a delay repeated at every collective, not one
delay seen through a burst of collectives posted together). Random delays
make a rank last now and then, rarely by that much that often; one slow
iteration neither raises a flag nor hides one. The flag tells the probable cause:
``compute`` when the rank spends longer than the others between leaving one
collective and entering the next, ``communication`` when it spends as long
but leaves each collective late (a slow link or node on its side).

The detector also watches the communication time of each instance (first
exit minus last arrival), per communicator and operation: when its window
median grows ``slow_factor``-fold over its baseline (the lowest window
median seen), it reports a slowdown, which the monitor answers with a link
probe (the probe's findings, not the slowdown, are the alarm: a busy machine
slows communication down too).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Any

from transport.operations import BLOCKING, NONBLOCKING

__all__ = ["SYMMETRIC", "Collector", "StragglerDetector"]

# Collectives where every member does the same work and leaves at about the same time: only these (and only
# when the collective before them on the communicator was one too) tell a straggler apart. Rooted collectives
# keep the root longer, scans serialise their members, neighbourhood collectives join only neighbours.
SYMMETRIC = frozenset(
    name
    for base in ("Barrier", "Allreduce", "Allgather", "Allgatherv", "Alltoall", "Alltoallv", "Alltoallw",
                 "Reduce_scatter", "Reduce_scatter_block")
    for name in (base, "I" + base.lower(), base.lower())
) & (BLOCKING | NONBLOCKING)  # fmt: skip


class StragglerDetector:
    """Sliding-window straggler and slowdown detection over complete collective instances."""

    def __init__(
        self,
        window: int = 12,
        skew: float = 0.01,
        fraction: float = 0.9,
        factor: float = 3.0,
        share: float = 0.05,
        slow_factor: float = 2.5,
    ) -> None:
        if window < 3:
            raise ValueError(f"StragglerDetector: window must be at least 3 instances, got {window}")
        self.window, self.skew, self.fraction, self.factor, self.share = window, skew, fraction, factor, share
        self.slow_factor = slow_factor
        self._windows: dict[str, deque] = {}
        self._flagged: dict[tuple[str, int], int] = {}  # (comm, rank) -> instances since the flag was last true
        self._uneven: dict[str, deque] = {}  # per communicator, the last instances of asymmetric collectives
        self._times: dict[tuple[str, str], deque] = {}  # (comm, op) -> (seq, communication time)
        self._baseline: dict[tuple[str, str], float] = {}
        self._slow: set[tuple[str, str]] = set()

    def add(
        self, comm: str, seq: int, arrivals: dict[int, float], exits: dict[int, float] | None = None, op: str = ""
    ) -> list[dict]:
        """One complete instance of collective ``op`` (``arrivals``/``exits``: world rank -> time); new findings."""
        if len(arrivals) < 2:
            return []
        findings: list[dict] = []
        uneven = self._uneven.setdefault(comm, deque(maxlen=4))
        if op and op not in SYMMETRIC:
            uneven.append(seq)
        elif seq - 1 not in uneven:  # after a rooted collective the root leaves (and comes back) late by design
            win = self._windows.setdefault(comm, deque(maxlen=self.window))
            win.append((seq, dict(arrivals), None, dict(exits or {})))
            if len(win) == self.window:
                findings += self._stragglers(comm, win)
        if exits and len(exits) == len(arrivals):
            times = self._times.setdefault((comm, op), deque(maxlen=self.window))
            times.append((seq, max(0.0, min(exits.values()) - max(arrivals.values()))))
            if len(times) == self.window:
                findings += self._slowdown(comm, op, times)
        return findings

    def _stragglers(self, comm: str, win: deque) -> list[dict]:
        findings = []
        instances = [arrivals for _, arrivals, _, _ in win]
        ranks = set(instances[-1])
        starts = [min(a.values()) for a in instances]
        period = statistics.median(b - a for a, b in zip(starts, starts[1:]))
        for r in sorted(ranks):
            if any(r not in a for a in instances):
                continue
            late = [a[r] - max(t for q, t in a.items() if q != r) for a in instances]
            spread = [
                max(t for q, t in a.items() if q != r) - min(t for q, t in a.items() if q != r) for a in instances
            ]
            threshold = max(self.skew, self.factor * statistics.median(spread), self.share * period)
            needed = math.ceil(self.fraction * self.window)
            key = (comm, r)
            repeated = statistics.median(late) <= 1.5 * period  # one delay seen through a burst of collectives is not
            if sorted(late, reverse=True)[needed - 1] >= threshold and repeated:  # late enough, ``needed`` times
                last = sum(1 for x in late if x >= threshold)
                lateness = statistics.median(late)
                if key not in self._flagged:
                    findings.append(
                        {
                            "kind": "straggler",
                            "comm": comm,
                            "straggler": r,
                            "last": last,
                            "window": self.window,
                            "lateness": lateness,
                            "threshold": threshold,
                            "period": period,
                            "cause": self._cause(win, r, lateness),
                            "first_seq": win[0][0],
                            "last_seq": win[-1][0],
                        }
                    )
                self._flagged[key] = 0
            elif key in self._flagged:
                self._flagged[key] += 1
                if self._flagged[key] >= self.window:  # a full window without the pattern: it may be flagged again
                    del self._flagged[key]
        return findings

    @staticmethod
    def _cause(win: deque, r: int, lateness: float) -> str:
        """``compute`` when ``r`` is late because it spends longer between collectives than the others,
        ``communication`` when it spends as long but leaves each collective late (its link or node is slow)."""
        excess = []
        for (seq, _, _, exits), (nxt, arrivals, _, _) in zip(win, list(win)[1:]):
            if nxt != seq + 1 or r not in exits or len(exits) < 2:
                continue
            gaps = {q: arrivals[q] - exits[q] for q in exits if q in arrivals}
            if r in gaps and len(gaps) > 1:
                excess.append(gaps[r] - statistics.median(g for q, g in gaps.items() if q != r))
        if not excess:
            return "unknown"
        return "compute" if statistics.median(excess) >= 0.5 * lateness else "communication"

    def _slowdown(self, comm: str, op: str, times: deque) -> list[dict]:
        now = statistics.median(t for _, t in times)
        key = (comm, op)
        base = self._baseline[key] = min(now, self._baseline.get(key, now))
        if base > 0 and now >= self.slow_factor * base and now - base >= self.skew:
            if key not in self._slow:
                self._slow.add(key)
                return [
                    {
                        "kind": "slowdown",
                        "comm": comm,
                        "op": op,
                        "baseline": base,
                        "now": now,
                        "first_seq": times[0][0],
                        "last_seq": times[-1][0],
                    }
                ]
        elif key in self._slow and now < 0.5 * self.slow_factor * base:
            self._slow.discard(key)
        return []


class Collector:
    """Gathers collective arrival times from the ranks' flight recorders into complete instances.

    ``pull`` takes each rank's ``arrivals`` answer (see
    :meth:`transport.monitor.Monitor.arrivals`) with the local times at which
    the question left and the answer came back. Ranks on the same boot of the
    same kernel share the monotonic clock; for others the clock offset is
    estimated from the answer's timestamp and the round trip, keeping the
    estimate with the shortest round trip.
    """

    def __init__(self, detector: StragglerDetector, boot: str) -> None:
        self.detector = detector
        self.boot = boot
        self.cursor: dict[int, int] = {}
        self._offsets: dict[int, deque] = {}
        self._members: dict[str, tuple[int, ...]] = {}
        self._pending: dict[tuple[str, int], dict[int, tuple[float, float, str]]] = {}

    def offset(self, rank: int, answer: dict, sent: float, received: float) -> float:
        """The peer's clock minus ours (0 on a shared clock)."""
        if answer.get("boot") == self.boot:
            return 0.0
        samples = self._offsets.setdefault(rank, deque(maxlen=16))
        samples.append((received - sent, answer["now"] - (sent + received) / 2))
        return min(samples)[1]

    def pull(self, answers: dict[int, tuple[dict, float, float]]) -> list[dict]:
        """Add the answers (by world rank: answer, sent, received); returns the detector's new findings."""
        for rank, (answer, sent, received) in answers.items():
            self.cursor[rank] = answer["pos"]
            shift = self.offset(rank, answer, sent, received)
            for ident, members in answer.get("comms", {}).items():
                self._members[ident] = tuple(members)
            for ident, seq, start, end, *op in answer.get("arrivals", []):
                self._pending.setdefault((ident, seq), {})[rank] = (start - shift, end - shift, op[0] if op else "")
        findings: list[dict] = []
        complete = []
        newest: dict[str, int] = {}
        for (ident, seq), seen in self._pending.items():
            newest[ident] = max(newest.get(ident, 0), seq)
            members = self._members.get(ident)
            if members and all(m in seen for m in members):
                complete.append((ident, seq))
        for ident, seq in sorted(complete, key=lambda key: key[1]):
            seen = self._pending.pop((ident, seq))
            arrivals = {r: t[0] for r, t in seen.items()}
            exits = {r: t[1] for r, t in seen.items()}
            findings += self.detector.add(ident, seq, arrivals, exits, op=next(iter(seen.values()))[2])
        horizon = 4 * self.detector.window
        for key in [k for k in self._pending if k[1] < newest.get(k[0], 0) - horizon]:
            del self._pending[key]  # never completed (a member did not answer, or its ring moved on)
        return findings

    def members(self, ident: str) -> tuple[int, ...]:
        return self._members.get(ident, ())

    def state(self) -> dict[str, Any]:
        return {"pending": len(self._pending), "cursors": dict(self.cursor)}
