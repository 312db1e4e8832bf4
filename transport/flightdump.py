"""Flight-record dumps: the versioned file format, its validation, and where ranks diverge.

A dump is one rank's flight record (:mod:`transport.recorder`) as a
self-describing JSON document, ``{"format": "commlib-flight-record",
"version": 1, ...}`` (:func:`build`; fields in README's monitor section).
Times are integer nanoseconds on the wall clock, converted from the
recorder's monotonic clock with one anchor pair taken when the dump is
built (``clock``). The monitor's ``dump`` action writes every rank's dump in
one document, ``{"format": "commlib-flight-records", "version": 1, "ranks":
{rank: dump}, "silent": {rank: reason}}``.

Nothing read from a file is trusted: :func:`validate` checks every field's
type and range, bounds every list and string, and :func:`read` refuses files
over :data:`MAX_FILE` bytes before reading them. :func:`diverge` matches the
ranks' records by (communicator, collective sequence number), which agree
across ranks, and tells per communicator the last collective every member
completed, who is inside or has not entered the next ones, collectives whose
operation differs between ranks, and point-to-point calls left in flight;
:func:`describe` says it in lines.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterable, Mapping
from typing import Any

from .reports import expand
from .wavefront import call_text, ranges, ranks_text

__all__ = [
    "COMBINED",
    "FORMAT",
    "MAX_FILE",
    "VERSION",
    "build",
    "collect",
    "combine",
    "describe",
    "diverge",
    "is_flight_record",
    "load",
    "parse",
    "read",
    "validate",
]

FORMAT = "commlib-flight-record"  # one rank's dump
COMBINED = "commlib-flight-records"  # every rank's, as the monitor's dump action writes them
VERSION = 1
MAX_FILE = 256 << 20  # bytes of one dump file
MAX_WORLD = 1 << 24  # ranks
MAX_COMMS = 1 << 16  # communicators in one dump
MAX_ENTRIES = 1 << 20  # calls in one dump
MAX_MEMBERS = 1 << 24  # communicator members in one dump, all communicators together
MAX_TEXT = 256  # characters of a name (host, node, label, operation, identity, job)
MAX_REASON = 1024  # characters of why a rank gave no dump
MAX_COUNT = (1 << 62) - 1  # counters and sequence numbers
MAX_NS = (1 << 63) - 1
MAX_RANK_FIELD = (1 << 31) - 1  # peer ranks and tags as the call gave them
DUMP_ENTRIES = 1 << 16  # completed calls in a dump answered over the side channel (answers are bounded)
COMBINED_ENTRIES = 1 << 19  # completed calls of all ranks together in the dump action's document
FRONTIER = 8  # collectives past the last completed one described per communicator

KINDS = ("collective", "p2p")
STATES = ("completed", "in-flight")
PEER_FIELDS = ("root", "dest", "source", "tag", "root_world", "dest_world", "source_world")


# -- building --------------------------------------------------------------------------
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


# -- validation ------------------------------------------------------------------------
def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _int(value: Any, where: str, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise ValueError(f"{where}: expected an integer in [{lo}, {hi}], got {_show(value)}")
    return value


def _str(value: Any, where: str, limit: int = MAX_TEXT) -> str:
    if type(value) is not str or len(value) > limit:
        raise ValueError(f"{where}: expected a string of at most {limit} characters, got {_show(value)}")
    return value


def _dict(value: Any, where: str, required: Iterable[str] = ()) -> dict:
    if type(value) is not dict:
        raise ValueError(f"{where}: expected a JSON object, got {type(value).__name__}")
    missing = [k for k in required if k not in value]
    if missing:
        raise ValueError(f"{where}: missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    return value


def _list(value: Any, where: str, limit: int) -> list:
    if type(value) is not list or len(value) > limit:
        size = f"of {len(value)} items" if type(value) is list else type(value).__name__
        raise ValueError(f"{where}: expected a list of at most {limit} items, got {size}")
    return value


def parse_members(text: str, world_size: int, where: str = "members", budget: int = MAX_MEMBERS) -> list[int]:
    """``"0-2,5"`` as ``[0, 1, 2, 5]``, checked: increasing world ranks below ``world_size``, at most ``budget``."""
    _str(text, where, 1 << 24)
    out: list[int] = []
    last = -1
    for part in filter(None, text.split(",")):
        first, dash, end = part.partition("-")
        if not first.isdigit() or (dash and not end.isdigit()) or len(first) > 9 or len(end) > 9:
            raise ValueError(f"{where}: {_show(part)} is not a rank or a range of ranks")
        lo, hi = int(first), int(end) if dash else int(first)
        if not last < lo <= hi < world_size:
            raise ValueError(f"{where}: {_show(part)} is out of order or not below the world size {world_size}")
        if len(out) + hi - lo + 1 > budget:
            raise ValueError(f"{where}: more than {budget} members")
        out += range(lo, hi + 1)
        last = hi
    return out


def _validate_rank(doc: Any, where: str) -> None:
    fields = ("format", "version", "job", "rank", "world_size", "host", "pid", "node", "clock", "comms", "entries",
              "capacity", "recorded", "dropped")  # fmt: skip
    _dict(doc, where, ("format", "version"))
    if doc["format"] != FORMAT:
        raise ValueError(f"{where}: format {_show(doc['format'])} is not {FORMAT!r}")
    _version(doc["version"], where)
    _dict(doc, where, fields)
    if doc["job"] is not None:
        _str(doc["job"], f"{where}: job")
    world = _int(doc["world_size"], f"{where}: world_size", 1, MAX_WORLD)
    rank = _int(doc["rank"], f"{where}: rank", 0, world - 1)
    for name in ("host", "node"):
        _str(doc[name], f"{where}: {name}")
    _int(doc["pid"], f"{where}: pid", 0, (1 << 32) - 1)
    clock = _dict(doc["clock"], f"{where}: clock", ("wall_ns", "mono_ns"))
    _int(clock["wall_ns"], f"{where}: clock.wall_ns", 0, MAX_NS)
    _int(clock["mono_ns"], f"{where}: clock.mono_ns", 0, MAX_NS)
    _int(doc["capacity"], f"{where}: capacity", 1, 1 << 40)
    recorded = _int(doc["recorded"], f"{where}: recorded", 0, MAX_COUNT)
    _int(doc["dropped"], f"{where}: dropped", 0, recorded)
    counters: dict[str, tuple[int, int]] = {}
    budget = MAX_MEMBERS
    for i, comm in enumerate(_list(doc["comms"], f"{where}: comms", MAX_COMMS)):
        at = f"{where}: comms[{i}]"
        _dict(comm, at, ("ident", "label", "size", "members", "coll_entered", "coll_done", "p2p"))
        ident = _str(comm["ident"], f"{at}.ident")
        if ident in counters:
            raise ValueError(f"{at}.ident: communicator {ident!r} listed twice")
        _str(comm["label"], f"{at}.label")
        members = parse_members(comm["members"], world, f"{at}.members", budget)
        budget -= len(members)
        _int(comm["size"], f"{at}.size", len(members), len(members))
        if members and rank not in members:
            raise ValueError(f"{at}.members: rank {rank} is not a member of its own communicator")
        entered = _int(comm["coll_entered"], f"{at}.coll_entered", 0, MAX_COUNT)
        _int(comm["coll_done"], f"{at}.coll_done", 0, entered)
        counters[ident] = (entered, _int(comm["p2p"], f"{at}.p2p", 0, MAX_COUNT))
        if "last_op" in comm:
            _str(comm["last_op"], f"{at}.last_op")
    entries = _list(doc["entries"], f"{where}: entries", MAX_ENTRIES)
    if len(entries) > recorded:
        raise ValueError(f"{where}: {len(entries)} entries but only {recorded} calls recorded")
    for i, entry in enumerate(entries):
        at = f"{where}: entries[{i}]"
        _dict(entry, at, ("comm", "label", "op", "kind", "seq", "enter_ns", "leave_ns", "state"))
        comm = _str(entry["comm"], f"{at}.comm")
        if comm not in counters:
            raise ValueError(f"{at}.comm: communicator {comm!r} is not in comms")
        _str(entry["label"], f"{at}.label")
        _str(entry["op"], f"{at}.op")
        if entry["kind"] not in KINDS:
            raise ValueError(f"{at}.kind: expected one of {', '.join(KINDS)}, got {_show(entry['kind'])}")
        top = counters[comm][0 if entry["kind"] == "collective" else 1]
        _int(entry["seq"], f"{at}.seq", 1, top)  # numbered by the communicator's counter
        enter = _int(entry["enter_ns"], f"{at}.enter_ns", 0, MAX_NS)
        if entry["state"] not in STATES:
            raise ValueError(f"{at}.state: expected one of {', '.join(STATES)}, got {_show(entry['state'])}")
        if entry["state"] == "in-flight":
            if entry["leave_ns"] is not None:
                raise ValueError(f"{at}.leave_ns: a call in flight has no leave time")
        else:
            _int(entry["leave_ns"], f"{at}.leave_ns", enter, MAX_NS)
        for name in PEER_FIELDS:
            if name in entry:
                _int(entry[name], f"{at}.{name}", -MAX_RANK_FIELD, MAX_RANK_FIELD)
        if "size" in entry:
            _int(entry["size"], f"{at}.size", 0, MAX_WORLD)
        if "blocking" in entry and type(entry["blocking"]) is not bool:
            raise ValueError(f"{at}.blocking: expected true or false, got {_show(entry['blocking'])}")
        if "thread" in entry:
            _int(entry["thread"], f"{at}.thread", 0, (1 << 64) - 1)


def _version(value: Any, where: str) -> None:
    if type(value) is not int:
        raise ValueError(f"{where}: version must be an integer, got {_show(value)}")
    if value != VERSION:
        newer = " (newer than this commlib reads)" if value > VERSION else ""
        raise ValueError(f"{where}: version {value}{newer}; this commlib reads version {VERSION}")


def _rank_key(key: str, where: str, world: int) -> int:
    if type(key) is not str or not key.isdigit() or len(key) > 9 or int(key) >= world:
        raise ValueError(f"{where}: {_show(key)} is not a rank below the world size {world}")
    return int(key)


def validate(doc: Any, name: str = "flight record") -> None:
    """Raise ``ValueError`` naming ``name`` and the field unless ``doc`` is a version-1 dump or combined dump."""
    fmt = doc.get("format") if type(doc) is dict else None
    if fmt != COMBINED:
        _validate_rank(doc, name)
        return
    _dict(doc, name, ("version", "ranks", "silent"))
    _version(doc["version"], name)
    world = _int(doc.get("world_size", MAX_WORLD), f"{name}: world_size", 1, MAX_WORLD)
    if doc.get("job") is not None:
        _str(doc["job"], f"{name}: job")
    ranks, silent = _dict(doc["ranks"], f"{name}: ranks"), _dict(doc["silent"], f"{name}: silent")
    if len(ranks) > world or len(silent) > world:
        raise ValueError(f"{name}: more ranks than the world size {world}")
    for key, dump in ranks.items():
        rank = _rank_key(key, f"{name}: ranks", world)
        _validate_rank(dump, f"{name}: ranks[{key}]")
        if dump["rank"] != rank or ("world_size" in doc and dump["world_size"] != world):
            raise ValueError(f"{name}: ranks[{key}]: the dump of rank {dump['rank']} of {dump['world_size']}")
    for key, reason in silent.items():
        _rank_key(key, f"{name}: silent", world)
        _str(reason, f"{name}: silent[{key}]", MAX_REASON)


# -- reading ---------------------------------------------------------------------------
def read(path: str) -> bytes:
    """The bytes of a regular file of at most :data:`MAX_FILE` bytes (checked before reading).

    Opened without blocking, so a FIFO or device named by mistake is refused rather than waited on.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path}: not a regular file")
        if info.st_size > MAX_FILE:
            raise ValueError(f"{path}: {info.st_size} B, more than the {MAX_FILE >> 20} MiB accepted")
    except BaseException:
        os.close(fd)
        raise
    with open(fd, "rb") as f:
        data = f.read(MAX_FILE + 1)
    if len(data) > MAX_FILE:
        raise ValueError(f"{path}: more than the {MAX_FILE >> 20} MiB accepted")
    return data


def is_flight_record(doc: Any) -> bool:
    """Whether ``doc`` claims to be a flight-record document (a dump or a combined dump), valid or not."""
    return type(doc) is dict and type(doc.get("format")) is str and doc["format"].startswith("commlib-flight")


def parse(data: bytes) -> Any:
    """The document in ``data`` when it is one JSON value claiming to be a flight record, else ``None``."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):  # not one JSON value (JSON lines, say), or nested beyond reason
        return None
    return doc if is_flight_record(doc) else None


def collect(named: Iterable[tuple[str, Any]]) -> dict:
    """Validate ``(file name, document)`` pairs and merge them: ``{"ranks": {rank: dump}, "silent": {rank:
    reason}, "files": [...]}``. A rank found twice keeps its latest dump; dumps of different jobs or world
    sizes are refused."""
    ranks: dict[int, dict] = {}
    silent: dict[int, str] = {}
    origin: dict[int, str] = {}
    files = []
    for name, doc in named:
        validate(doc, name)
        files.append(name)
        if doc["format"] == COMBINED:
            found = {int(k): d for k, d in doc["ranks"].items()}
            for key, reason in doc["silent"].items():
                silent.setdefault(int(key), reason)
        else:
            found = {doc["rank"]: doc}
        for rank, dump in found.items():
            for other_rank, other in ranks.items():
                _same_job(dump, name, other, origin[other_rank])
                break
            if rank not in ranks or dump["clock"]["wall_ns"] > ranks[rank]["clock"]["wall_ns"]:
                ranks[rank], origin[rank] = dump, name
    for rank in ranks:
        silent.pop(rank, None)
    return {"ranks": dict(sorted(ranks.items())), "silent": dict(sorted(silent.items())), "files": files}


def _same_job(dump: dict, name: str, other: dict, other_name: str) -> None:
    if dump["world_size"] != other["world_size"]:
        raise ValueError(
            f"{name}: a job of {dump['world_size']} ranks, but {other_name} is one of {other['world_size']}"
        )
    if dump["job"] and other["job"] and dump["job"] != other["job"]:
        raise ValueError(f"{name}: job {dump['job']!r}, but {other_name} is of job {other['job']!r}")


def load(paths: Iterable[str]) -> dict:
    """Read, validate and merge dump files (names or glob patterns); see :func:`collect`."""
    named = []
    for name in expand(list(paths), "flight record"):
        doc = parse(read(name))
        if doc is None:
            raise ValueError(f"{name}: not a flight-record document (no 'format': '{FORMAT}')")
        named.append((name, doc))
    return collect(named)


# -- matching ranks --------------------------------------------------------------------
def _signature(entry: dict) -> str:
    return f"{entry['op']}(root={entry['root']})" if "root" in entry else entry["op"]


def _age(dump: dict, entry: dict) -> float:
    return max(0.0, (dump["clock"]["wall_ns"] - entry["enter_ns"]) / 1e9)


def _doing(dump: dict | None) -> str:
    """What a rank was doing when it dumped: its calls in flight, else running outside MPI."""
    if dump is None:
        return "its dump is missing"
    calls = [e for e in dump["entries"] if e["state"] == "in-flight"]
    if not calls:
        return "no call in flight (running outside MPI)"
    blocking = [e for e in calls if e.get("blocking")] or calls
    return "in " + "; ".join(f"{call_text(_sized(e))} for {_age(dump, e):.1f} s" for e in blocking[-3:])


def _sized(entry: dict) -> dict:
    return entry if "size" in entry else {**entry, "size": "?"}


def diverge(dumps: Mapping[int, dict], silent: Mapping[int, str] | None = None) -> dict:
    """Where the ranks' flight records diverge; ``dumps`` are validated per-rank dumps by rank (a subset is fine).

    Per communicator (by its identity, the same on every member): the last
    collective every present member completed, then for the next ones
    (``frontier``) which ranks are inside (in flight), done, or have not
    entered it, and what those are doing instead; the collectives whose
    operation or root differs between ranks (``mismatches``); members whose
    dump is missing. Also point-to-point calls in flight, with what their
    peer is doing. ``diverged`` is true when any of these shows a rank
    waiting or ranks disagreeing.
    """
    silent = dict(silent or {})
    present = sorted(dumps)
    world = max((d["world_size"] for d in dumps.values()), default=0)
    jobs = sorted({d["job"] for d in dumps.values() if d["job"]})
    comms: dict[str, dict] = {}
    for rank in present:
        for comm in dumps[rank]["comms"]:
            comms.setdefault(comm["ident"], comm)
    out_comms = []
    for ident, comm in comms.items():
        members = parse_members(comm["members"], world)
        if len(members) < 2:
            continue
        out_comms.append(_comm(ident, comm, members, dumps))
    p2p = []
    for rank in present:
        dump = dumps[rank]
        for entry in dump["entries"]:
            if entry["kind"] != "p2p" or entry["state"] != "in-flight":
                continue
            peer = entry.get("dest_world", entry.get("source_world"))
            item = {
                "rank": rank,
                "call": call_text(_sized(entry)),
                "comm": entry["comm"],
                "op": entry["op"],
                "seq": entry["seq"],
                "waited": _age(dump, entry),
                **{k: entry[k] for k in PEER_FIELDS if k in entry},
                "peer": peer,
            }
            if peer is not None and peer != rank:
                item["peer_doing"] = _doing(dumps.get(peer))
            elif peer is None and "source" in entry:
                item["peer_doing"] = "any source"
            p2p.append(item)
    dropped = {r: [d["dropped"], d["recorded"]] for r, d in dumps.items() if d["dropped"]}
    diverged = bool(p2p) or any(c["frontier"] or c["mismatches"] for c in out_comms)
    return {
        "job": jobs[0] if len(jobs) == 1 else (jobs or None),
        "world_size": world,
        "ranks": present,
        "missing": [r for r in range(world) if r not in dumps],
        "silent": {str(r): silent[r] for r in sorted(silent)},
        "dropped": {str(r): v for r, v in sorted(dropped.items())},
        "comms": out_comms,
        "p2p": p2p,
        "diverged": diverged,
    }


def _comm(ident: str, comm: dict, members: list[int], dumps: Mapping[int, dict]) -> dict:
    here = [r for r in members if r in dumps]
    counters: dict[int, tuple[int, int]] = {}
    inflight: dict[int, dict[int, dict]] = {}  # seq -> rank -> entry
    calls: dict[int, dict[str, list[int]]] = {}  # seq -> signature -> ranks
    ops: dict[int, str] = {}
    for rank in here:
        mine = next((c for c in dumps[rank]["comms"] if c["ident"] == ident), None)
        counters[rank] = (mine["coll_entered"], mine["coll_done"]) if mine else (0, 0)
        for entry in dumps[rank]["entries"]:
            if entry["comm"] != ident or entry["kind"] != "collective":
                continue
            seq = entry["seq"]
            ops.setdefault(seq, entry["op"])
            ranks = calls.setdefault(seq, {}).setdefault(_signature(entry), [])
            if rank not in ranks:
                ranks.append(rank)
            if entry["state"] == "in-flight":
                inflight.setdefault(seq, {})[rank] = entry
    done = min((counters[r][1] for r in here), default=0)
    top = max((counters[r][0] for r in here), default=0)
    frontier = []
    for seq in range(done + 1, min(top, done + FRONTIER) + 1):
        inside = sorted(inflight.get(seq, {}))
        absent = [r for r in here if counters[r][0] < seq]
        step = {
            "seq": seq,
            "op": ops.get(seq),
            "inside": inside,
            "done": [r for r in here if r not in inside and r not in absent],
            "not_entered": absent,
            "waited": max((_age(dumps[r], e) for r, e in inflight.get(seq, {}).items()), default=0.0),
            "last_entered": {str(r): counters[r][0] for r in absent},
            "doing": {str(r): _doing(dumps[r]) for r in absent},
        }
        frontier.append(step)
    mismatches = [
        {"seq": seq, "calls": {sig: sorted(ranks) for sig, ranks in sorted(found.items())}}
        for seq, found in sorted(calls.items())
        if len(found) > 1
    ]
    return {
        "ident": ident,
        "label": comm["label"],
        "size": len(members),
        "members": comm["members"],
        "present": here,
        "missing": [r for r in members if r not in dumps],
        "completed": done,
        "completed_op": ops.get(done),
        "entered": {str(r): counters[r][0] for r in here},
        "frontier": frontier,
        "more": max(0, top - done - FRONTIER),
        "mismatches": mismatches,
    }


def describe(analysis: dict) -> list[str]:
    """The lines a person reads: per communicator where its ranks stand, then point-to-point calls in flight."""
    ranks, world = analysis["ranks"], analysis["world_size"]
    job = analysis["job"]
    head = f"flight records of {ranks_text(ranks)} of {world}" + (f" (job {job})" if isinstance(job, str) else "")
    lines = [head + (f"; no dump from {ranks_text(analysis['missing'])}" if analysis["missing"] else "")]
    for rank, reason in analysis["silent"].items():
        lines.append(f"  rank {rank}: {reason}")
    for rank, (dropped, recorded) in analysis["dropped"].items():
        lines.append(
            f"  rank {rank}: the oldest {dropped} of its {recorded} calls are not in its dump (ring overwritten)"
        )
    for comm in analysis["comms"]:
        last = f"#{comm['completed']} ({comm['completed_op']})" if comm["completed_op"] else f"#{comm['completed']}"
        lines.append(
            f"{comm['label']} [{comm['ident']}] ({comm['size']} ranks): "
            + (f"every member with a dump completed {last}" if comm["completed"] else "no collective completed by all")
        )
        if comm["missing"]:
            lines.append(f"  no dump from members {ranks_text(comm['missing'])}: their progress is unknown")
        for step in comm["frontier"]:
            what = f"  #{step['seq']} {step['op'] or '(operation not in any record)'}:"
            parts = []
            if step["inside"]:
                parts.append(f"inside: {ranks_text(step['inside'])} (for {step['waited']:.1f} s)")
            if step["done"]:
                parts.append(f"done: {ranks_text(step['done'])}")
            if step["not_entered"]:
                parts.append(f"NOT entered: {ranks_text(step['not_entered'])}")
            lines.append(f"{what} {'; '.join(parts)}")
            for rank in step["not_entered"]:
                r = str(rank)
                lines.append(f"    rank {rank} (last entered #{step['last_entered'][r]}): {step['doing'][r]}")
        if comm["more"]:
            lines.append(f"  ... and {comm['more']} more collectives entered by some rank")
        for bad in comm["mismatches"]:
            calls = "; ".join(f"{sig} on {ranks_text(rs)}" for sig, rs in bad["calls"].items())
            lines.append(f"  MISMATCH at #{bad['seq']}: {calls}")
    if analysis["p2p"]:
        lines.append("point-to-point calls in flight:")
        for item in analysis["p2p"]:
            peer = ""
            if "peer_doing" in item:
                who = f"rank {item['peer']}" if item["peer"] is not None else "its peer"
                peer = f"; {who}: {item['peer_doing']}"
            lines.append(f"  rank {item['rank']}: {item['call']} for {item['waited']:.1f} s{peer}")
    lines.append(
        "verdict: the ranks diverge (see above)"
        if analysis["diverged"]
        else "verdict: no divergence: nothing in flight, every rank at the same collectives"
    )
    return lines
