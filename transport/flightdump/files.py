"""Reading dump files: bounded before anything is read, parsed, checked, gathered by rank."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable
from typing import Any

from ..reports import expand
from .schema import COMBINED, FORMAT, MAX_FILE, validate


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
