"""When cached choices are stale (:func:`generation`), and how models are saved (:func:`set_store`).

Apart from the model itself so that the model, the process's current model
and the caches of choices kept outside (the interposer's, the traced
methods') all read one counter without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import calibration_file

__all__ = ["bump", "generation", "on_change", "set_store", "the_store"]

_generation = 0  # bumped when any model's choices may have changed


def generation() -> int:
    """A number that changes whenever a cached choice of any model may be stale.

    It moves when :func:`set_current` installs a model and when learning
    (:meth:`Model.observe`) moves a model's predictions enough to drop its
    cached choices; callers that cache decisions compare it.
    """
    return _generation


_listeners: list[Callable[[], None]] = []
_store: tuple[Callable[..., dict[str, Any]], Callable[[dict[str, Any], Path], Path]] | None = None


def set_store(
    new_document: Callable[[calibration_file.CalibrationKey], dict[str, Any]],
    write: Callable[[dict[str, Any], Path], Path],
) -> None:
    """Install how :meth:`Model.save` makes a new calibration document for a key and writes one to a path.

    :mod:`commlib.calibration` installs its own when imported (documents stamped with commlib's
    version, written 0600 and atomically into a private directory); the datatypes package reads
    calibration files but writes none by itself.
    """
    global _store
    _store = (new_document, write)


def the_store(method: str) -> tuple[Callable[..., dict[str, Any]], Callable[[dict[str, Any], Path], Path]]:
    if _store is None:
        raise RuntimeError(f"Model.{method}: no calibration store installed (import commlib.calibration)")
    return _store


def on_change(listener: Callable[[], None]) -> None:
    """Call ``listener()`` whenever :func:`generation` moves (caches of choices kept outside Python use it)."""
    _listeners.append(listener)


def bump() -> None:
    global _generation
    _generation += 1
    for listener in _listeners:
        listener()
