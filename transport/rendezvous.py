"""Where the ranks of one job find each other's side channel, without MPI.

Each rank writes one small file, ``rank-<r>.json`` (its address, port, pid,
host, node and a random token), into a directory named after the job; a rank
that needs its peers reads the directory when it needs them. Installing the
monitor is therefore not a collective call: a job where only some ranks run
under commlib (or where one rank never gets that far) cannot hang on it, and
the ranks that never registered are simply reported as unmonitored.

The job is named by ``COMMLIB_MONITOR_JOB`` when set, else by what the
launcher tells every rank alike: the PMIx namespace (Open MPI, PRRTE), the
Slurm job and step, or the control port of MPICH's Hydra process manager
(from the command line of the ``hydra_pmi_proxy`` that started this rank).
The directory (``COMMLIB_MONITOR_DIR``, default the system's temporary
directory) must be shared by all ranks: local on one machine or on emulated
nodes, a shared file system across machines. When no job name can be found,
:func:`exchange_over_mpi` swaps the same records with one ``Allgather`` over
a private duplicate of ``COMM_WORLD`` instead (a collective call).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import socket
import struct
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["Rendezvous", "choose_address", "exchange_over_mpi", "job_key", "local_addresses", "new_token"]

_SIOCGIFADDR = 0x8915


def job_key(explicit: str = "", environ: dict[str, str] | None = None) -> str | None:
    """A name shared by every rank of this job and by no other running job, or ``None``."""
    env = os.environ if environ is None else environ
    if explicit:
        return _safe(explicit)
    if env.get("PMIX_NAMESPACE"):
        return _safe("pmix-" + env["PMIX_NAMESPACE"])
    if env.get("SLURM_JOB_ID"):
        return _safe(f"slurm-{env['SLURM_JOB_ID']}.{env.get('SLURM_STEP_ID', '0')}")
    hydra = _hydra_control_port()
    if hydra is not None:
        return _safe("hydra-" + hydra)
    return None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:120]


def _hydra_control_port() -> str | None:
    """``host_port_pgid`` of the Hydra proxy above this process, found through ``/proc``."""
    pid = os.getppid()
    for _ in range(16):
        if pid <= 1:
            return None
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        if argv and os.path.basename(argv[0].decode(errors="replace")) == "hydra_pmi_proxy":
            words = [w.decode(errors="replace") for w in argv]
            port = _option(words, "--control-port")
            if port is None:
                return None
            return f"{port}_{_option(words, '--pgid') or '0'}"
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state is the parent pid
    return None


def _option(words: list[str], name: str) -> str | None:
    for i, word in enumerate(words[:-1]):
        if word == name:
            return words[i + 1]
    return None


def local_addresses() -> list[str]:
    """IPv4 addresses of this network namespace's interfaces that are up, loopback last."""
    found: list[tuple[bool, str]] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                raw = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
            address = socket.inet_ntoa(raw[20:24])
            found.append((address.startswith("127."), address))
    return [address for _, address in sorted(found, key=lambda item: item[0])]


def choose_address(explicit: str = "") -> str:
    """The address this rank's side channel listens on.

    ``explicit`` (``COMMLIB_MONITOR_ADDRESS``) when given; else the address the
    host name resolves to; else (an emulated node, whose host name resolves to
    nothing) the first non-loopback address of this network namespace; else
    loopback.
    """
    if explicit:
        return explicit
    with contextlib.suppress(OSError):
        return socket.gethostbyname(socket.gethostname())
    for address in local_addresses():
        if not address.startswith("127."):
            return address
    return "127.0.0.1"


class Rendezvous:
    """The job's directory of side-channel records."""

    def __init__(self, key: str, base: str = "") -> None:
        root = Path(base or tempfile.gettempdir()) / f"commlib-monitor-{os.getuid()}"
        self.path = root / key
        self._mine: Path | None = None

    def register(self, record: dict[str, Any]) -> None:
        """Publish this rank's record (atomically: readers see all of it or none)."""
        self.sweep(record.get("boot"))
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = self.path / f"rank-{record['rank']}.json"
        scratch = self.path / f".rank-{record['rank']}.{os.getpid()}.tmp"
        scratch.write_text(json.dumps(record))
        os.replace(scratch, target)
        self._mine = target

    def sweep(self, boot: str | None, limit: int = 64) -> None:
        """Remove directories of other jobs killed before they could clean up (all their ranks dead, here)."""
        try:
            others = [p for p in self.path.parent.iterdir() if p.is_dir() and p != self.path][:limit]
        except OSError:
            return
        for job in others:
            try:
                records = [json.loads(f.read_text()) for f in job.glob("rank-*.json")]
            except (OSError, ValueError):
                continue
            if records and all(r.get("boot") == boot and not _alive(r.get("pid")) for r in records):
                shutil.rmtree(job, ignore_errors=True)

    def unregister(self) -> None:
        """Remove this rank's record, and the job's directory once it is empty."""
        if self._mine is not None:
            with contextlib.suppress(OSError):
                self._mine.unlink()
            self._mine = None
        with contextlib.suppress(OSError):
            self.path.rmdir()

    def peers(self, world_size: int) -> dict[int, dict[str, Any]]:
        """The records published so far, by world rank (records of another world size are stale: skipped)."""
        out: dict[int, dict[str, Any]] = {}
        try:
            names = os.listdir(self.path)
        except OSError:
            return out
        for name in names:
            if not (name.startswith("rank-") and name.endswith(".json")):
                continue
            try:
                record = json.loads((self.path / name).read_text())
            except (OSError, ValueError):
                continue
            if record.get("world_size") == world_size and isinstance(record.get("rank"), int):
                out[record["rank"]] = record
        return out


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def new_token() -> str:
    """A random token a rank's side channel requires in every request (keeps other jobs' stray calls out)."""
    return secrets.token_hex(8)


def exchange_over_mpi(record: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Every rank's record through one ``Allgather`` on a private duplicate of ``COMM_WORLD`` (collective)."""
    from mpi4py import MPI

    comm = MPI.Intracomm(MPI.COMM_WORLD).Dup()
    try:
        records = comm.allgather(record)
    finally:
        comm.Free()
    return {r["rank"]: r for r in records}
