"""The calibration file: where it lives, what it is keyed by, how it is checked on load and written.

``python -m commlib calibrate`` measures the machine and writes one JSON file
(never pickle) into the cache directory: ``COMMLIB_CACHE_DIR``, else
``$XDG_CACHE_HOME/commlib``, else ``~/.cache/commlib``. The file is keyed by
the host, the MPI library and its version, and the launch shape (world size);
its name carries a digest of that key and the key itself is stored inside.

Finding, reading and checking a file is the cost model's own
(:mod:`datatypes.calibration_file`, whose names this module shows too):
:func:`load` never raises for a bad file; a missing, corrupt, foreign or
stale file comes back as ``None`` with a one-line reason. :func:`save`
writes 0600 through a temporary name made by ``mkstemp`` in the same
directory, ``fsync`` and ``os.replace`` (missing directories are created
0700; the cache directory must be this user's and writable by nobody else).
Importing this module lets :meth:`datatypes.model.Model.save` write through
:func:`save`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datatypes import model as cost_model
from datatypes.calibration_file import (
    MAX_BYTES,
    SCHEMA,
    VERSION,
    CalibrationKey,
    cache_dir,
    current_key,
    find,
    load,
    path_for,
    validate,
)
from datatypes.calibration_file import new_file as _new_file
from transport.privatefiles import ensure_dir, write_atomic

__all__ = [
    "MAX_BYTES",
    "SCHEMA",
    "VERSION",
    "CalibrationKey",
    "cache_dir",
    "current_key",
    "find",
    "load",
    "path_for",
    "new_file",
    "save",
    "validate",
]


def save(data: dict[str, Any], path: Path | str) -> Path:
    """Write ``data`` as JSON, 0600, atomically (a reader never sees half a file; the last writer wins).

    Missing directories are made 0700. Into the cache directory, where the
    model looks for calibrations by itself, it raises
    :class:`~transport.privatefiles.UnsafePathError` when that directory is
    another user's, a symlink, or writable by others; a path named
    explicitly is written wherever it is.
    """
    path = Path(path)
    ensure_dir(path.parent, "calibration directory", check=path.parent == cache_dir())
    text = json.dumps(data, indent=1, sort_keys=True, allow_nan=False) + "\n"
    return write_atomic(path, text.encode("utf-8"))


def new_file(key: CalibrationKey, launch: dict[str, Any] | None = None) -> dict[str, Any]:
    """An empty calibration document for ``key`` (sections filled by the caller)."""
    from commlib import __version__

    return _new_file(key, launch, version=__version__)


cost_model.set_store(new_file, save)
