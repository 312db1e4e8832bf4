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
The records live in ``<base>/commlib-monitor-<uid>/<job>``, where the base
is ``COMMLIB_MONITOR_DIR`` when set (it must then be shared by all ranks: a
shared file system across machines), else ``$XDG_RUNTIME_DIR`` (private to
the user by design), else the system's temporary directory. Both levels
below the base are created 0700 or, when they exist, checked with ``lstat``
(this user's, no group or other bits, no symlink): a directory someone else
planted is refused with :class:`~transport.privatefiles.UnsafePathError`,
and the monitor then runs without peers. Records are written 0600 through
:func:`transport.privatefiles.write_atomic` and read back only when they are
this user's regular files of at most :data:`MAX_RECORD` bytes that pass
:func:`valid_record`. When no job name can be found,
:func:`exchange_over_mpi` swaps the same records with one ``Allgather`` over
a private duplicate of ``COMM_WORLD`` instead (a collective call).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import secrets
import shutil
import socket
import stat
import struct
import tempfile
from pathlib import Path
from typing import Any

from .privatefiles import check_private_dir, private_dir, read_private, write_atomic

__all__ = [
    "MAX_RECORD",
    "Rendezvous",
    "base_directory",
    "choose_address",
    "exchange_over_mpi",
    "job_key",
    "local_addresses",
    "new_token",
    "single_node",
    "valid_record",
]

_SIOCGIFADDR = 0x8915
MAX_RECORD = 4096  # bytes of one rank's record file
TOKEN_BYTES = 16  # 128-bit side-channel tokens
_TEXT_FIELDS = {"host": 256, "node": 256, "boot": 128}


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
    """``name`` as one plain path component (never empty, ``.`` or ``..``, never hidden)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:120]
    return name if name and not name.startswith(".") else "job-" + name


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


def single_node(world_size: int, environ: dict[str, str] | None = None) -> bool:
    """Whether the launcher says every rank of this job runs on this node (no MPI call).

    Read from the launcher's count of ranks on this node (Hydra's
    ``MPI_LOCALNRANKS``, Open MPI's ``OMPI_COMM_WORLD_LOCAL_SIZE``) or Slurm's
    node count; never when ``COMMLIB_NODE_ID`` places ranks on emulated nodes.
    """
    env = os.environ if environ is None else environ
    if env.get("COMMLIB_NODE_ID", "").strip():
        return False
    if world_size <= 1:
        return True
    for name in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE"):
        value = env.get(name, "").strip()
        if value.isdigit():
            return int(value) == world_size
    nodes = env.get("SLURM_STEP_NUM_NODES", env.get("SLURM_JOB_NUM_NODES", "")).strip()
    return nodes == "1"


def choose_address(explicit: str = "", world_size: int = 0) -> str:
    """The address this rank's side channel listens on.

    ``explicit`` (``COMMLIB_MONITOR_ADDRESS``) when given; else loopback when
    every rank of a ``world_size`` job shares this node (:func:`single_node`),
    so nothing outside the machine can reach the listener; else the address
    the host name resolves to; else (an emulated node, whose host name
    resolves to nothing) the first non-loopback address of this network
    namespace; else loopback.
    """
    if explicit:
        return explicit
    if world_size and single_node(world_size):
        return "127.0.0.1"
    with contextlib.suppress(OSError):
        return socket.gethostbyname(socket.gethostname())
    for address in local_addresses():
        if not address.startswith("127."):
            return address
    return "127.0.0.1"


def base_directory(explicit: str = "") -> Path:
    """Where the per-user rendezvous root lives: ``explicit``, else ``$XDG_RUNTIME_DIR``, else the temp dir.

    ``$XDG_RUNTIME_DIR`` is used only when it is an absolute path to a
    directory of this user's with no group or other bits, as its
    specification promises.
    """
    if explicit:
        return Path(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR", "").strip()
    if runtime and os.path.isabs(runtime):
        with contextlib.suppress(OSError):
            return check_private_dir(runtime, "XDG_RUNTIME_DIR")
    return Path(tempfile.gettempdir())


class Rendezvous:
    """The job's directory of side-channel records: ``<base>/commlib-monitor-<uid>/<job>``, both levels 0700."""

    def __init__(self, key: str, base: str = "") -> None:
        self.root = base_directory(base) / f"commlib-monitor-{os.getuid()}"
        self.path = self.root / _safe(key)
        self._mine: Path | None = None

    def register(self, record: dict[str, Any]) -> None:
        """Publish this rank's record, 0600, atomically (readers see all of it or none).

        Raises :class:`~transport.privatefiles.UnsafePathError` when a level of
        the directory is not this user's private directory.
        """
        problem = _record_problem(record)
        if problem is not None:
            raise ValueError(f"Rendezvous.register: invalid record ({problem})")
        private_dir(self.path, levels=2, what="monitor rendezvous directory")
        self.sweep(record.get("boot"))
        target = self.path / f"rank-{record['rank']}.json"
        write_atomic(target, json.dumps(record).encode())
        self._mine = target

    def sweep(self, boot: str | None, limit: int = 64) -> None:
        """Remove directories of other jobs killed before they could clean up (all their ranks dead, here)."""
        try:
            check_private_dir(self.root, "monitor rendezvous directory")
            others = [p for p in self.root.iterdir() if p != self.path][:limit]
        except OSError:
            return
        for job in others:
            try:
                info = os.lstat(job)
                names = os.listdir(job) if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() else None
            except OSError:
                continue
            if names is None:
                continue
            records = [_read_record(job / name) for name in names if _is_record_name(name)]
            if records and all(r is not None and r["boot"] == boot and not _alive(r["pid"]) for r in records):
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
        """The valid records published so far, by world rank (records of another world size are stale: skipped)."""
        out: dict[int, dict[str, Any]] = {}
        try:
            check_private_dir(self.path, "monitor rendezvous directory")
            names = os.listdir(self.path)
        except OSError:
            return out
        for name in names:
            if not _is_record_name(name):
                continue
            record = _read_record(self.path / name)
            if record is not None and record["world_size"] == world_size and name == f"rank-{record['rank']}.json":
                out[record["rank"]] = record
        return out


def _is_record_name(name: str) -> bool:
    return name.startswith("rank-") and name.endswith(".json")


def _read_record(path: Path) -> dict[str, Any] | None:
    """The record in ``path`` when it is a small regular file of this user's holding a valid record, else ``None``."""
    try:
        record = json.loads(read_private(path, MAX_RECORD))
    except (OSError, ValueError, RecursionError, UnicodeDecodeError):
        return None
    return record if valid_record(record) else None


def _int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _record_problem(record: Any) -> str | None:
    """Why ``record`` is not a usable side-channel record, or ``None``."""
    if not isinstance(record, dict):
        return f"a record is a JSON object, got {type(record).__name__}"
    if not _int(record.get("world_size"), 1, 1 << 24):
        return f"world_size {record.get('world_size')!r}"
    if not _int(record.get("rank"), 0, record["world_size"] - 1):
        return f"rank {record.get('rank')!r} of {record['world_size']}"
    if not _int(record.get("pid"), 1, 1 << 32):
        return f"pid {record.get('pid')!r}"
    if not _int(record.get("port"), 1, 65535):
        return f"port {record.get('port')!r}"
    address = record.get("address")
    try:
        ipaddress.ip_address(address if isinstance(address, str) else "")
    except ValueError:
        return f"address {address!r}"
    token = record.get("token")
    if not (isinstance(token, str) and re.fullmatch(f"[0-9a-f]{{{2 * TOKEN_BYTES}}}", token)):
        return "token (expected 32 hex digits)"
    for name, limit in _TEXT_FIELDS.items():
        value = record.get(name)
        if not (isinstance(value, str) and len(value) <= limit):
            return f"{name} {value!r:.40}"
    return None


def valid_record(record: Any) -> bool:
    """Whether ``record`` (read from a file or a peer) is a well-formed side-channel record."""
    return _record_problem(record) is None


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
    """A random 128-bit token (hex): the key every peer proves it holds before a rank's side channel answers."""
    return secrets.token_hex(TOKEN_BYTES)


def exchange_over_mpi(record: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Every rank's record through one ``Allgather`` on a private duplicate of ``COMM_WORLD`` (collective)."""
    from mpi4py import MPI

    comm = MPI.Intracomm(MPI.COMM_WORLD).Dup()
    try:
        records = comm.allgather(record)
    finally:
        comm.Free()
    return {r["rank"]: r for r in records if valid_record(r)}
