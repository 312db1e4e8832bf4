"""The monitor's findings, told three ways, and read back.

:class:`Reporter` writes each finding as human-readable lines on stderr
(prefixed with the rank), as one JSON object per line in the report file
(``COMMLIB_MONITOR_REPORT``), and hands it to the registered Python
callbacks. Alarms (hangs, stragglers, slow links...) go everywhere; notes
(monitor started and stopped, probe matrices, slowdowns, and the ranks that
wait in a hang another rank reports) only to the file, so a healthy run
prints nothing and a hang is told once.

:func:`main` is ``python -m commlib monitor FILE...``: it summarises one
or more report files (a run's ranks may each have their own) and analyses
flight-record dumps (:mod:`transport.flightdump`) given beside them, and
exits with 0 when nothing is wrong, 1 on alarms or ranks that diverge, 2
when a file cannot be read or is not valid.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["ALARMS", "Reporter", "expand", "main", "parse_reports", "read_reports", "summarise"]

# Kinds of records that are alarms (printed); every other kind is a note.
ALARMS = frozenset(
    {"hang", "hang-reminder", "hang-resolved", "straggler", "straggler-resolved", "slow-node", "slow-link", "error"}
)

Callback = Callable[[dict], Any]


class Reporter:
    """Where one rank's findings go: stderr, a JSON-lines file, callbacks."""

    def __init__(self, rank: int, path: str = "", stream: TextIO | None = None) -> None:
        self.rank = rank
        self.path = path.replace("{rank}", str(rank)) if path else ""
        self.per_rank = "{rank}" in path  # the file is this rank's alone
        self.stream = stream
        self.callbacks: list[Callback] = []
        self.alarms = 0
        self.write_errors = 0  # records the report file could not take (each failure told, at most once a minute)
        self._write_told = -1e9
        self._lock = threading.Lock()
        self._base = {"rank": rank, "pid": os.getpid(), "host": socket.gethostname()}

    def emit(self, record: dict) -> dict:
        """Tell ``record`` (with ``kind`` and ``lines``); alarms go to stderr and callbacks too."""
        full = {"time": time.time(), **self._base, **record}
        alarm = full.get("kind") in ALARMS
        with self._lock:
            if alarm:
                self.alarms += 1
                stream = self.stream if self.stream is not None else sys.stderr
                with contextlib.suppress(Exception):
                    stream.write("".join(f"[commlib monitor, rank {self.rank}] {line}\n" for line in full["lines"]))
                    stream.flush()
            if self.path:
                try:
                    self._append((json.dumps(full, default=str) + "\n").encode())
                except OSError as exc:
                    self._write_failed(exc)
        if alarm:
            for callback in list(self.callbacks):
                try:
                    callback(full)
                except Exception as exc:  # a user's callback must not stop the monitor
                    with contextlib.suppress(Exception):
                        (self.stream or sys.stderr).write(
                            f"[commlib monitor, rank {self.rank}] report callback {callback!r} raised {exc!r}\n"
                        )
        return full

    def _write_failed(self, exc: OSError) -> None:
        self.write_errors += 1
        now = time.monotonic()
        if now - self._write_told < 60.0:
            return
        self._write_told = now
        with contextlib.suppress(Exception):
            stream = self.stream if self.stream is not None else sys.stderr
            count = f" ({self.write_errors} records lost so far)" if self.write_errors > 1 else ""
            stream.write(
                f"[commlib monitor, rank {self.rank}] cannot write the report file {self.path}: "
                f"{exc.strerror or exc}{count}; alarms still go to stderr\n"
            )
            stream.flush()

    def _append(self, line: bytes) -> None:
        """One ``write`` in append mode (lines of ranks sharing a file never interleave); created 0600,
        never through a symlink."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def expand(patterns: list[str], what: str = "report") -> list[str]:
    """The files named by ``patterns``: names as given, glob patterns matched (sorted); none matching is an error."""
    files: list[str] = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        if not matched:
            raise FileNotFoundError(f"no {what} file matches {pattern!r}")
        files += matched
    return files


def parse_reports(text: str, name: str) -> list[dict]:
    """The records of one report file's text (JSON lines); ``ValueError`` naming the file and line otherwise."""
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            raise ValueError(f"{name}:{number}: not a JSON line") from None
        if not isinstance(record, dict) or "kind" not in record:
            raise ValueError(f"{name}:{number}: not a monitor record (no 'kind')")
        records.append(record)
    return records


def read_reports(patterns: list[str]) -> tuple[list[dict], list[str]]:
    """Every record of the files matching ``patterns`` (sorted by time), and the files read."""
    files = expand(patterns)
    records = []
    for name in files:
        with open(name, encoding="utf-8") as f:
            records += parse_reports(f.read(), name)
    records.sort(key=lambda r: r.get("time", 0))
    return records, files


def summarise(records: list[dict]) -> list[str]:
    """A few lines per run: ranks seen, alarm counts, then one line per alarm that matters."""
    kinds = Counter(r["kind"] for r in records)
    started = sorted({r["rank"] for r in records if r["kind"] == "start"})
    stopped = sorted({r["rank"] for r in records if r["kind"] == "stop"})
    t0 = min((r.get("time", 0) for r in records), default=0)
    lines = [f"monitored ranks: {len(started)} started, {len(stopped)} stopped cleanly"]
    alarms = {k: n for k, n in kinds.items() if k in ALARMS}
    lines.append("alarms: " + (", ".join(f"{n} {k}" for k, n in sorted(alarms.items())) if alarms else "none"))
    for r in records:
        at = f"+{r.get('time', 0) - t0:7.2f}s rank {r.get('rank')}"
        kind = r["kind"]
        if kind == "hang":
            suspects = ",".join(map(str, r.get("suspects", []))) or "none"
            lines.append(f"{at} HANG {r.get('call')} after {r.get('waited', 0):.1f} s; suspects: {suspects}")
            lines.append(f"{'':>20} cause: {r.get('cause')}")
        elif kind in ("hang-resolved", "straggler-resolved"):
            lines.append(f"{at} resolved: {r.get('call')} completed after {r.get('waited', 0):.1f} s")
        elif kind in ("straggler", "slow-node", "slow-link", "error", "slowdown"):
            lines.append(f"{at} {r['lines'][0] if r.get('lines') else kind}")
    probes = [r for r in records if r["kind"] == "links"]
    if probes:
        last = probes[-1]
        lines.append(f"link probes: {len(probes)}; last: {last['lines'][0] if last.get('lines') else ''}")
    return lines


DESCRIPTION = """\
Summarise what commlib's fault-detection monitor left behind: JSON-lines report
files (COMMLIB_MONITOR_REPORT) and flight-record dumps (COMMLIB_MONITOR_ACTION=dump,
Monitor.write_dump). Flight records are matched across ranks by communicator and
collective sequence number to show where the ranks diverge."""

EPILOG = """\
exit status: 0 nothing wrong, 1 alarms in the reports or ranks that diverge in the
flight records, 2 a file that cannot be read or is not a valid report or dump."""


def main(argv: list[str] | None = None, prog: str = "python -m commlib monitor") -> int:
    """Summarise report files and analyse flight-record dumps; exit 0 when nothing is wrong, 1 with alarms or
    diverging ranks, 2 when a file is unreadable or invalid."""
    from . import flightdump

    parser = argparse.ArgumentParser(
        prog=prog,
        usage="%(prog)s [options] FILE ...",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "files", nargs="+", metavar="FILE", help="report files, flight-record dumps, or glob patterns of them"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print JSON instead: the records as one list, or, with flight records, "
        '{"reports": [...], "flight": analysis}',
    )
    args = parser.parse_args(argv)
    records: list[dict] = []
    reports: list[str] = []
    dumps: list[tuple[str, Any]] = []
    try:
        for name in expand(args.files, "report or dump"):
            data = flightdump.read(name)
            doc = flightdump.parse(data)
            if doc is not None:
                dumps.append((name, doc))
                continue
            try:
                text = data.decode()
            except UnicodeDecodeError:
                raise ValueError(f"{name}: neither a flight record nor JSON lines (not UTF-8)") from None
            records += parse_reports(text, name)
            reports.append(name)
        flight = flightdump.collect(dumps) if dumps else None
    except (OSError, ValueError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    records.sort(key=lambda r: r.get("time", 0))
    analysis = flightdump.diverge(flight["ranks"], flight["silent"]) if flight else None
    if args.json:
        print(json.dumps(records if analysis is None else {"reports": records, "flight": analysis}, indent=1))
    else:
        if reports:
            print(f"{len(records)} records from {len(reports)} file{'s' if len(reports) != 1 else ''}")
            for line in summarise(records):
                print(line)
        if analysis is not None:
            for line in flightdump.describe(analysis):
                print(line)
    wrong = any(r["kind"] in ALARMS for r in records) or (analysis is not None and analysis["diverged"])
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
