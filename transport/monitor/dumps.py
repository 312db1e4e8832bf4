"""Flight-record dumps: this rank's (answered on the side channel, written on request) and the whole job's."""

from __future__ import annotations

import json
import os
import socket

from .. import flightdump
from ..privatefiles import write_atomic
from ..wavefront import ranks_text


class Dumps:
    """Part of the monitor (:class:`transport.monitor.Monitor`): flight-record documents and where they go."""

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
