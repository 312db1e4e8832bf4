"""The one configuration object users see: commlib's own settings and every package's, composed.

Every setting comes, in order of precedence, from a keyword argument of the
call that uses it, then from a ``COMMLIB_*`` environment variable, then from
the documented default. Each package owns the settings it reads, in a
settings module of its own (:mod:`datatypes.settings`,
:mod:`transport.settings`, :mod:`collectives.settings`); :class:`Config`
holds commlib's own and shows the others' as attributes of the same name,
so ``config.<field>`` reads and sets any setting, wherever it lives.
Everything is read once at import; call ``config.reload()`` after changing
the environment in-process.

The packages' settings are looked up on first use, so ``import commlib``
loads none of them (nor mpi4py).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

__all__ = ["PACKAGE_FIELDS", "Config", "config"]

# the settings each package owns (their dataclasses in <package>.settings hold exactly these fields)
PACKAGE_FIELDS: dict[str, tuple[str, ...]] = {
    "datatypes": ("pack_engine", "pack_min_bytes", "pack_min_block", "model", "cache_dir", "model_max_age"),
    "transport": (
        "node_id",
        "monitor",
        "monitor_action",
        "monitor_suspect",
        "monitor_floor",
        "monitor_multiple",
        "monitor_timeout",
        "monitor_report",
        "monitor_ring",
        "monitor_interval",
        "monitor_window",
        "monitor_skew",
        "monitor_probe",
        "monitor_dir",
        "monitor_address",
        "monitor_bootstrap",
        "monitor_job",
        "split",
        "split_channels",
        "split_min_bytes",
    ),
    "collectives": (
        "cuda_aware_mpi",
        "moe_pack",
        "node_detect",
        "allreduce",
        "reduction_check",
        "topology",
        "level_links",
        "reduce_scatter",
        "allgather",
    ),
}
_OWNER = {name: package for package, names in PACKAGE_FIELDS.items() for name in names}
_listeners: list[Callable[[], None]] = []
_subscribed: list[bool] = []  # whether _changed is told of every package's assignments


# commlib's own fields need only these readers; the packages' share datatypes.settings' (the same
# parsing and messages), which commlib does not import here so that importing it stays cheap
def _env_int(name: str, default: int) -> int:
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


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={raw!r}: expected 1/0, true/false, yes/no or on/off")


def _env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = os.environ.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw not in choices:
        raise ValueError(f"{name}={raw!r}: expected one of {', '.join(choices)}")
    return raw


def _changed() -> None:
    Config.changes += 1
    for listener in _listeners:
        listener()


def _subscribe() -> None:
    """Have every assignment to any package's settings, loaded now or later, reach :func:`_changed`."""
    if not _subscribed:
        importlib.import_module("datatypes.settings").on_any_change(_changed)
        _subscribed.append(True)


def _package_settings(package: str) -> Any:
    """The process's settings object of ``package``."""
    _subscribe()
    return importlib.import_module(f"{package}.settings").settings


def _own_from_env() -> dict[str, Any]:
    auto = os.environ.get("COMMLIB_ANALYSE_BYTES", "").strip().lower() in ("", "auto")
    return {
        "rebuild": _env_bool("COMMLIB_REBUILD", Config.rebuild),
        "analyse_bytes": -1 if auto else _env_int("COMMLIB_ANALYSE_BYTES", -1),
        "staging_bytes": _env_int("COMMLIB_STAGING_BYTES", Config.staging_bytes),
        "interpose": _env_bool("COMMLIB_INTERPOSE", Config.interpose),
        "report": _env_bool("COMMLIB_REPORT", Config.report),
        "model_save": _env_bool("COMMLIB_MODEL_SAVE", Config.model_save),
        "record": os.environ.get("COMMLIB_RECORD", "").strip(),
        "views": _env_choice("COMMLIB_VIEWS", Config.views, ("copy", "derived")),
    }


@dataclass
class Config:
    """commlib's settings (environment variable and default in brackets), and every package's.

    The fields of the packages below commlib are attributes of the same name
    that read and set the package's own settings object:
    :class:`datatypes.settings.DatatypesSettings` (``pack_engine``,
    ``pack_min_bytes``, ``pack_min_block``, ``model``, ``cache_dir``,
    ``model_max_age``), :class:`transport.settings.TransportSettings`
    (``node_id``, ``monitor`` and ``monitor_*``, ``split`` and ``split_*``) and
    :class:`collectives.settings.CollectivesSettings` (``cuda_aware_mpi``,
    ``moe_pack``, ``node_detect``, ``allreduce``, ``reduction_check``, ``topology``,
    ``level_links``, ``reduce_scatter``, ``allgather``); their
    docstrings describe them. commlib's own:

    rebuild [COMMLIB_REBUILD=1]
        derived types that MPI moves itself (the ``native`` choice) are handed
        to it rebuilt from their canonical form, with the same type map
        (:mod:`datatypes.rebuild`); 0 hands MPI the application's type.
    analyse_bytes [COMMLIB_ANALYSE_BYTES=auto]
        the interposer analyses a derived datatype (canonical form, cost-model
        choice, rebuilt type) once the messages of one (type, count) have
        moved this many bytes; until then they go to MPI untouched. ``auto``
        (-1): the cost model's analysis cost over the most packing can save
        per byte, so that analysis pays for itself; 0 analyses every message.
    staging_bytes [COMMLIB_STAGING_BYTES=67108864]
        packed messages of 32 KiB and more are staged in buffers that each
        interposer session keeps for reuse (:mod:`commlib.interposer.staging`), up to
        this many bytes; 0 allocates every staging buffer per call.
    interpose [COMMLIB_INTERPOSE=1]
        ``python -m commlib`` installs the interposer (``--no-interpose``: 0).
    report [COMMLIB_REPORT=0]
        ``python -m commlib`` prints what it intercepted at exit (``--report``: 1).
    model_save [COMMLIB_MODEL_SAVE=0]
        at exit, rank 0 writes what the model learned from observed times back
        into its calibration file.
    record [COMMLIB_RECORD=]
        at exit, each session writes its recorded run (per shape: calls, time,
        choice) to this JSON path, ``{rank}`` replaced by the rank (without
        it, ``.rank<r>`` is added before the suffix in a multi-rank job), for
        ``python -m commlib explain``; empty: no record.
    views [COMMLIB_VIEWS=copy]
        how a wrapped communicator moves a strided numpy view that mpi4py
        refuses (:mod:`commlib.interposer.views`): ``copy`` through a contiguous buffer
        the session reuses, ``derived`` as a derived datatype over the view's
        own memory (packed or handed to MPI, as the cost model chooses) where
        the buffer is one message or one piece.

    A ``Config`` made directly shows the process's package settings;
    :meth:`from_env` makes one whose package settings are its own.
    """

    rebuild: bool = True
    analyse_bytes: int = -1
    staging_bytes: int = 64 << 20
    interpose: bool = True
    report: bool = False
    model_save: bool = False
    record: str = ""
    views: str = "copy"

    changes: ClassVar[int] = 0  # counts assignments to any setting of any package: caches of decisions compare it

    def __post_init__(self) -> None:
        object.__setattr__(self, "_parts", {})  # package -> its settings object, looked up on first use

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # a package's field: its settings object reports the change itself
        if name not in _OWNER:
            _changed()

    def _part(self, package: str) -> Any:
        part = self._parts.get(package)
        if part is None:
            part = self._parts[package] = _package_settings(package)
        return part

    @staticmethod
    def on_change(listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every assignment to a setting of any package (caches kept outside Python).

        Assignments made on a package's own settings object reach it too.
        """
        _subscribe()
        _listeners.append(listener)

    @classmethod
    def from_env(cls) -> Config:
        """A new configuration read from the environment, with package settings of its own."""
        own = _own_from_env()
        parts = {package: type(_package_settings(package)).from_env() for package in PACKAGE_FIELDS}
        made = cls(**own)
        made._parts.update(parts)
        return made

    def reload(self) -> None:
        """Re-read the environment into this object and the package settings it shows (in place).

        Everything is read before anything is assigned: a bad variable leaves every setting as it was.
        """
        own = _own_from_env()
        parts = [self._part(package) for package in PACKAGE_FIELDS]
        fresh = [type(part).from_env() for part in parts]
        for name, value in own.items():
            setattr(self, name, value)
        for part, new in zip(parts, fresh):
            for f in fields(part):
                setattr(part, f.name, getattr(new, f.name))


def _delegate(package: str, name: str) -> property:
    def get(self: Config) -> Any:
        return getattr(self._part(package), name)

    def set_(self: Config, value: Any) -> None:
        setattr(self._part(package), name, value)

    return property(get, set_, doc=f"``{name}`` of :mod:`{package}.settings`.")


for _name, _package in _OWNER.items():
    setattr(Config, _name, _delegate(_package, _name))
del _name, _package

config = Config(**_own_from_env())
