"""The model of this process (:func:`current`): loaded once from its calibration, or the analytic defaults."""

from __future__ import annotations

import sys

from .. import calibration_file
from ..settings import settings
from .costs import Model
from .generation import bump

__all__ = ["current", "load", "set_current"]

_current: Model | None = None
_setting: tuple = ()

_warned: set[str] = set()


def _warn(message: str) -> None:
    """One line on stderr, once per message, from rank 0 only."""
    if message in _warned:
        return
    _warned.add(message)
    try:
        from mpi4py import MPI

        if MPI.Is_initialized() and not MPI.Is_finalized() and MPI.COMM_WORLD.Get_rank() != 0:
            return
    except ImportError:
        pass
    print(f"commlib: warning: {message}", file=sys.stderr)


def load(setting: str | None = None) -> Model:
    """The model ``setting`` names (default ``COMMLIB_MODEL``): ``auto``, ``analytic`` or a file path.

    A missing, corrupt, foreign or stale file gives a one-line warning and the
    analytic defaults; it never raises. Every value is checked against the
    schema (types, finite, within bounds) before the model uses it; whatever
    else goes wrong while building the model also counts as a corrupt file.
    """
    setting = setting or settings.model
    if setting == "analytic":
        return Model()
    where = setting
    try:
        data, where = calibration_file.load(None if setting == "auto" else setting)
        if data is None:
            model = Model()
            model.note = f"{where} (run 'python -m commlib calibrate' to measure this machine)"
            if not (setting == "auto" and where.startswith("no calibration for ")):
                _warn(f"{where}; using analytic defaults (run 'python -m commlib calibrate')")
            return model
        return Model.from_json(data, source=f"calibrated ({where})")
    except Exception as exc:  # a file must never stop the application: anything unforeseen is corruption too
        _warn(f"calibration file {where} is corrupt ({type(exc).__name__}: {str(exc)[:160]}); using analytic defaults")
        return Model()


def _configured() -> tuple:
    return (
        settings.model,
        settings.cache_dir,
        settings.model_max_age,
        settings.pack_min_bytes,
        settings.pack_min_block,
    )


def current() -> Model:
    """The model of this process, loaded once (again when its settings name another one)."""
    model, seen = _current, _setting
    if (
        model is not None
        and settings.model is seen[0]
        and settings.cache_dir is seen[1]
        and settings.model_max_age is seen[2]
        and settings.pack_min_bytes is seen[3]
        and settings.pack_min_block is seen[4]
    ):
        return model
    return set_current(load(), _configured())


def set_current(model: Model | None, setting: tuple | None = None) -> Model | None:
    """Make ``model`` the process's model (``None``: load again on next use); returns it."""
    global _current, _setting
    _current = model
    _setting = setting or _configured()
    bump()
    return model
