"""The flight-record document format: its names and version, the bounds of every field, and its validation."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

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

KINDS = ("collective", "p2p")
STATES = ("completed", "in-flight")
PEER_FIELDS = ("root", "dest", "source", "tag", "root_world", "dest_world", "source_world")


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
