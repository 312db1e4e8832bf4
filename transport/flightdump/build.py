"""Building dump documents from a flight recorder, and combining every rank's into one."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ..wavefront import ranges
from .schema import COMBINED, FORMAT, MAX_ENTRIES, MAX_REASON, MAX_TEXT, VERSION


def _text(value: Any, limit: int = MAX_TEXT) -> str:
    return str(value)[:limit]


def build(
    recorder: Any,
    *,
    rank: int,
    world_size: int,
    host: str,
    pid: int,
    node: str,
    job: str | None = None,
    limit: int | None = None,
) -> dict:
    """One rank's flight record as a version-1 dump document.

    ``recorder`` is a :class:`transport.recorder.FlightRecorder`; ``limit``
    bounds the completed calls kept (the newest; default: all the ring
    holds), and calls left out count as ``dropped``. Calls in flight are all
    kept (the monitor bounds them).
    """
    limit = MAX_ENTRIES if limit is None else max(0, min(int(limit), MAX_ENTRIES))
    inflight = recorder.inflight()  # first: it ends the calls whose requests MPI has completed
    completed = recorder.completed()
    recorded, dropped = recorder.recorded, recorder.dropped
    comms = recorder.comms()  # last: their counters cover every sequence number read above
    mono_ns, wall_ns = time.perf_counter_ns(), time.time_ns()

    def ns(t: float) -> int:
        return wall_ns + round(t * 1e9) - mono_ns

    if len(completed) > limit:
        dropped += len(completed) - limit
        completed = completed[len(completed) - limit :]
    entries, seen = [], set()
    for record, end in completed:
        entries.append(_entry(recorder, record, ns(record[0]), ns(end)))
        seen.add((record[1].ident, record[6], record[3]))
    for _, record in inflight:
        if (record[1].ident, record[6], record[3]) not in seen:  # completed between the two reads
            entries.append(_entry(recorder, record, ns(record[0]), None))
    entries.sort(key=lambda e: e["enter_ns"])
    return {
        "format": FORMAT,
        "version": VERSION,
        "job": None if job is None else _text(job),
        "rank": rank,
        "world_size": world_size,
        "host": _text(host),
        "pid": pid,
        "node": _text(node),
        "clock": {"wall_ns": wall_ns, "mono_ns": mono_ns},
        "comms": [
            {
                "ident": _text(c.ident),
                "label": _text(c.label),
                "size": len(c.members),
                "members": ranges(c.members),
                "coll_entered": c.coll_entered,
                "coll_done": c.coll_done,
                "p2p": c.p2p,
                "last_op": _text(c.last_op),
            }
            for c in comms
        ],
        "entries": entries,
        "capacity": recorder.capacity,
        "recorded": max(recorded, len(entries) + dropped),
        "dropped": dropped,
    }


def _entry(recorder: Any, record: tuple, enter_ns: int, leave_ns: int | None) -> dict:
    item = recorder.describe(record, 0.0)
    del item["age"]
    item["comm"], item["label"], item["op"] = _text(item["comm"]), _text(item["label"]), _text(item["op"])
    item.update(enter_ns=enter_ns, leave_ns=leave_ns, state="in-flight" if leave_ns is None else "completed")
    return item


def combine(dumps: Mapping[int, dict], silent: Mapping[int, str], *, job: str | None, world_size: int) -> dict:
    """Every gathered rank's dump in one version-1 document, with why the others gave none."""
    return {
        "format": COMBINED,
        "version": VERSION,
        "job": job,
        "world_size": world_size,
        "ranks": {str(r): dumps[r] for r in sorted(dumps)},
        "silent": {str(r): _text(silent[r], MAX_REASON) for r in sorted(silent)},
    }
