"""The settings of the datatypes package, and the base every package's settings share.

Each package of commlib owns the settings it reads: a small dataclass filled
from its own ``COMMLIB_*`` environment variables (:class:`DatatypesSettings`
here, :mod:`transport.settings`, :mod:`collectives.settings`), read once at
import; ``settings.reload()`` re-reads them after the environment changed
in-process. :mod:`commlib.config` composes them into the one object users
see. Keyword arguments of the calls that use a setting win over all of this.

:class:`Settings` is the common base: assigning any field calls the
listeners registered on its class and those registered for every package
(:func:`on_any_change`: caches of decisions kept outside Python use it),
and the ``env_*`` readers give every variable the same parsing and the
same error messages.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

__all__ = [
    "PACK_ENGINES",
    "DatatypesSettings",
    "Settings",
    "env_auto",
    "env_bool",
    "env_choice",
    "env_float",
    "env_int",
    "env_text",
    "on_any_change",
    "settings",
]

PACK_ENGINES = ("auto", "strided", "mpi")
_any_listeners: list[Callable[[], None]] = []


def env_int(name: str, default: int) -> int:
    """The non-negative integer in ``name`` (any base Python reads: ``0x100`` too); ``default`` when unset."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw, 0)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected an integer") from None
    if value < 0:
        raise ValueError(f"{name}={raw!r}: expected a non-negative integer")
    return value


def env_float(name: str, default: float) -> float:
    """The non-negative number in ``name``; ``default`` when unset."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a number") from None
    if not value >= 0:
        raise ValueError(f"{name}={raw!r}: expected a non-negative number")
    return value


def env_bool(name: str, default: bool) -> bool:
    """``name`` as a flag (1/0, true/false, yes/no, on/off); ``default`` when unset."""
    raw = os.environ.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={raw!r}: expected 1/0, true/false, yes/no or on/off")


def env_auto(name: str) -> bool:
    """Whether ``name`` is unset, empty or ``auto``."""
    return os.environ.get(name, "").strip().lower() in ("", "auto")


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    """``name`` (case-insensitive), which must be one of ``choices``; ``default`` when unset."""
    raw = os.environ.get(name, default).strip().lower() or default
    if raw not in choices:
        raise ValueError(f"{name}={raw!r}: expected one of {', '.join(choices)}")
    return raw


def env_text(name: str, default: str = "") -> str:
    """``name`` with surrounding blanks removed; ``default`` when that leaves nothing."""
    return os.environ.get(name, "").strip() or default


class Settings:
    """Base of a package's settings dataclass: assignments notify the listeners of its class."""

    _listeners: ClassVar[list[Callable[[], None]]] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._listeners = []

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        for listener in type(self)._listeners:
            listener()
        for listener in _any_listeners:
            listener()

    @classmethod
    def on_change(cls, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every assignment to a field of any instance of this class."""
        cls._listeners.append(listener)

    @classmethod
    def from_env(cls) -> Settings:
        """A new instance read from the environment."""
        raise NotImplementedError

    def reload(self) -> None:
        """Re-read the environment into this object (in place)."""
        fresh = type(self).from_env()
        for f in fields(self):  # type: ignore[arg-type]
            setattr(self, f.name, getattr(fresh, f.name))


def on_any_change(listener: Callable[[], None]) -> None:
    """Call ``listener()`` after every assignment to a field of any package's settings, loaded now or later."""
    _any_listeners.append(listener)


@dataclass
class DatatypesSettings(Settings):
    """Settings of the packers and the cost model (environment variable and default in brackets).

    pack_engine [COMMLIB_PACK=auto]
        ``auto`` chooses per datatype and size, ``strided`` always uses the
        canonical-form packer where the type allows, ``mpi`` always uses
        ``MPI_Pack``/``MPI_Unpack``.
    pack_min_bytes [COMMLIB_PACK_MIN_BYTES=16384]
        under ``auto`` without a calibration, messages with fewer packed bytes
        go to MPI: below this the fixed Python cost of the strided packer
        exceeds MPI's whole pack (the analytic cost model's crossover).
    pack_min_block [COMMLIB_PACK_MIN_BLOCK=4]
        under ``auto`` without a calibration, types whose contiguous blocks are
        shorter than this go to MPI: both are bound by memory latency there.
    model [COMMLIB_MODEL=auto]
        the cost model behind the pack-vs-native and engine choices
        (:mod:`datatypes.model`): ``auto`` loads this machine's calibration
        from the cache directory when a valid one exists, else analytic
        defaults; ``analytic`` never reads a file; any other value is the path
        of a calibration file.
    cache_dir [COMMLIB_CACHE_DIR=]
        where ``python -m commlib calibrate`` writes and the model looks for
        calibrations; empty: ``$XDG_CACHE_HOME/commlib``, else ``~/.cache/commlib``.
    model_max_age [COMMLIB_MODEL_MAX_AGE=90]
        days after which a calibration is stale (a warning, analytic defaults);
        0: never stale.
    """

    pack_engine: str = "auto"
    pack_min_bytes: int = 16384
    pack_min_block: int = 4
    model: str = "auto"
    cache_dir: str = ""
    model_max_age: int = 90

    @classmethod
    def from_env(cls) -> DatatypesSettings:
        return cls(
            pack_engine=env_choice("COMMLIB_PACK", cls.pack_engine, PACK_ENGINES),
            pack_min_bytes=env_int("COMMLIB_PACK_MIN_BYTES", cls.pack_min_bytes),
            pack_min_block=env_int("COMMLIB_PACK_MIN_BLOCK", cls.pack_min_block),
            model=env_text("COMMLIB_MODEL", cls.model),
            cache_dir=env_text("COMMLIB_CACHE_DIR"),
            model_max_age=env_int("COMMLIB_MODEL_MAX_AGE", cls.model_max_age),
        )


settings = DatatypesSettings.from_env()
