"""The calibration file, read side: where it lives, what it is keyed by, and how it is checked on load.

``python -m commlib calibrate`` measures the machine and writes one JSON file
(never pickle) into the cache directory: ``COMMLIB_CACHE_DIR``, else
``$XDG_CACHE_HOME/commlib``, else ``~/.cache/commlib``. The file is keyed by
the host, the MPI library and its version, and the launch shape (world size);
its name carries a digest of that key and the key itself is stored inside.

:func:`load` never raises for a bad file: a missing, corrupt, foreign (other
host or MPI library) or stale (other schema, too old) file comes back as
``None`` with a one-line reason, and the caller falls back to analytic
defaults. A file written for another launch shape of the same host and MPI
library is used when no exact one exists: its host measurements still hold.
Files over :data:`MAX_BYTES` are not read. The cost model
(:func:`datatypes.model.load`) reads its calibration through here; writing
one (0600, atomically, into a private directory) is :mod:`commlib.calibration`'s.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .settings import settings

__all__ = [
    "MAX_BYTES",
    "SCHEMA",
    "VERSION",
    "CalibrationKey",
    "cache_dir",
    "current_key",
    "find",
    "load",
    "new_file",
    "path_for",
    "validate",
]

SCHEMA = "commlib-calibration"
VERSION = 1
MAX_BYTES = 16 << 20  # a calibration file larger than this is not read


@dataclass(frozen=True)
class CalibrationKey:
    """What a calibration is valid for: host, MPI library (name and version line), world size."""

    host: str
    mpi_library: str
    mpi_version: str
    world_size: int

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "mpi_library": self.mpi_library,
            "mpi_version": self.mpi_version,
            "world_size": self.world_size,
        }

    @classmethod
    def from_json(cls, data: Any) -> CalibrationKey:
        if not isinstance(data, dict):
            raise ValueError("'key' is not an object")
        texts = [data.get(name) for name in ("host", "mpi_library", "mpi_version")]
        size = data.get("world_size")
        if not all(isinstance(t, str) and len(t) <= 4096 for t in texts):
            raise ValueError("'key' is incomplete (host, mpi_library and mpi_version must be strings)")
        if not (isinstance(size, int) and not isinstance(size, bool) and 1 <= size <= 1 << 24):
            raise ValueError(f"'key' is incomplete (world_size must be an integer from 1 to 2**24, got {size!r:.20})")
        return cls(texts[0], texts[1], texts[2], size)

    @property
    def machine(self) -> tuple[str, str, str]:
        """The part of the key that must match for any measurement to apply."""
        return (self.host, self.mpi_library, self.mpi_version)

    def digest(self, *, with_shape: bool = True) -> str:
        parts = [*self.machine, str(self.world_size) if with_shape else "*"]
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]

    def describe(self) -> str:
        return f"{self.host}, {self.mpi_library} (MPI {self.mpi_version}), {self.world_size} rank(s)"


def current_key(world_size: int | None = None) -> CalibrationKey:
    """The key of this process: its host, its MPI library and the size of ``COMM_WORLD``.

    Uses only local calls, so it is safe anywhere (no communication).
    """
    from mpi4py import MPI

    library = " ".join(MPI.Get_library_version().splitlines()[0].split()) if MPI.Get_library_version() else "unknown"
    version = "{}.{}".format(*MPI.Get_version())
    if world_size is None:
        world_size = MPI.COMM_WORLD.Get_size() if MPI.Is_initialized() and not MPI.Is_finalized() else 1
    return CalibrationKey(socket.gethostname(), library, version, world_size)


def cache_dir() -> Path:
    """``COMMLIB_CACHE_DIR``, else ``$XDG_CACHE_HOME/commlib``, else ``~/.cache/commlib``."""
    if settings.cache_dir:
        return Path(settings.cache_dir).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "commlib"


def path_for(key: CalibrationKey, directory: Path | None = None) -> Path:
    """Where the calibration for ``key`` is written."""
    return (directory or cache_dir()) / f"calibration-{key.digest(with_shape=False)}-{key.world_size}.json"


def find(key: CalibrationKey, directory: Path | None = None) -> Path | None:
    """The file for ``key``, else the one of the same host and MPI library with the nearest world size."""
    exact = path_for(key, directory)
    if exact.exists():
        return exact
    prefix = f"calibration-{key.digest(with_shape=False)}-"
    candidates = []
    try:
        entries = list((directory or cache_dir()).glob(prefix + "*.json"))
    except OSError:
        return None
    for path in entries:
        size = path.stem[len(prefix) :]
        if size.isdigit():
            candidates.append((abs(int(size) - key.world_size), -int(size), path))
    return min(candidates)[2] if candidates else None


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate(data: Any, key: CalibrationKey | None = None, *, max_age_days: float | None = None) -> str | None:
    """Why ``data`` (a parsed calibration file) cannot be used, or ``None`` when it can.

    Checks the schema and version, the key against ``key`` (host and MPI
    library must match; the world size may differ), the age, and that the
    measurement sections have the right shape. The tables themselves are
    checked again, value by value, when the model is built from them.
    """
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        return "not a commlib calibration file"
    if data.get("version") != VERSION:
        return f"stale: schema version {data.get('version')!r}, this commlib reads version {VERSION}"
    try:
        stored = CalibrationKey.from_json(data.get("key"))
    except ValueError as exc:
        return f"corrupt: {exc}"
    if key is not None and stored.machine != key.machine:
        return f"foreign: measured on {stored.describe()}, this is {key.describe()}"
    created = data.get("created")
    if not _finite_number(created):
        return "corrupt: no creation time"
    if max_age_days is not None and max_age_days > 0:
        age = (time.time() - created) / 86400
        if age > max_age_days:
            return f"stale: {age:.0f} days old (COMMLIB_MODEL_MAX_AGE={max_age_days:g})"
    for section in ("tables", "alpha_beta", "reduce_beta", "constants", "refinement"):
        if section in data and not isinstance(data[section], dict):
            return f"corrupt: {section!r} is not an object"
    return None


def load(
    path: Path | str | None = None, key: CalibrationKey | None = None, *, max_age_days: float | None = None
) -> tuple[dict[str, Any] | None, str]:
    """Read and check a calibration file: ``(data, where)`` or ``(None, one-line reason)``.

    ``path`` defaults to :func:`find` for ``key`` (default: :func:`current_key`).
    Never raises for a missing or bad file.
    """
    key = key or current_key()
    if max_age_days is None:
        max_age_days = settings.model_max_age
    if path is None:
        path = find(key)
        if path is None:
            return None, f"no calibration for {key.describe()} in {cache_dir()}"
    path = Path(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            return None, f"calibration file {path} is corrupt (over {MAX_BYTES} bytes)"
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, f"calibration file {path} does not exist"
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"calibration file {path} cannot be read ({type(exc).__name__})"
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: bad JSON, or an integer of thousands of digits
        return None, f"calibration file {path} is corrupt ({str(exc)[:120]})"
    problem = validate(data, key, max_age_days=max_age_days)
    if problem is not None:
        return None, f"calibration file {path}: {problem}"
    return data, str(path)


def new_file(key: CalibrationKey, launch: dict[str, Any] | None = None, *, version: str) -> dict[str, Any]:
    """An empty calibration document for ``key``, written by commlib ``version`` (sections filled by the caller)."""
    return {
        "schema": SCHEMA,
        "version": VERSION,
        "key": key.to_json(),
        "launch": launch or {"size": key.world_size},
        "created": time.time(),
        "commlib": version,
        "tables": {},
        "alpha_beta": {},
        "reduce_beta": {},
        "refinement": {},
    }
