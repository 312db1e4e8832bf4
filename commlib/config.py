"""The one configuration object of commlib.

Every setting comes, in order of precedence, from a keyword argument of the
call that uses it, then from a ``COMMLIB_*`` environment variable, then from
the documented default below. ``config`` is read once at import; call
``config.reload()`` after changing the environment in-process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

__all__ = ["Config", "config"]

_listeners: list[Callable[[], None]] = []
_PACK_ENGINES = ("auto", "strided", "mpi")
_NODE_DETECT = ("auto", "shared", "name", "env")
_ALLREDUCE_ALGORITHMS = ("auto", "native", "ring", "star", "hierarchical", "hierarchical-root", "hierarchical-shard")
_MONITOR_ACTIONS = ("warn", "dump", "abort")
_MONITOR_BOOTSTRAPS = ("auto", "file", "mpi")


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


def _env_float(name: str, default: float) -> float:
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


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={raw!r}: expected 1/0, true/false, yes/no or on/off")


def _auto(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("", "auto")


def _env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = os.environ.get(name, default).strip().lower() or default
    if raw not in choices:
        raise ValueError(f"{name}={raw!r}: expected one of {', '.join(choices)}")
    return raw


@dataclass
class Config:
    """commlib settings (environment variable and default in brackets).

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
        interposer session keeps for reuse (:mod:`commlib.staging`), up to
        this many bytes; 0 allocates every staging buffer per call.
    interpose [COMMLIB_INTERPOSE=1]
        ``python -m commlib`` installs the interposer (``--no-interpose``: 0).
    report [COMMLIB_REPORT=0]
        ``python -m commlib`` prints what it intercepted at exit (``--report``: 1).
    cuda_aware_mpi [COMMLIB_CUDA_AWARE_MPI=0]
        MPI accepts device (cupy) buffers; when 0, collectives that take device
        arrays stage them through host memory around each exchange.
    moe_pack [COMMLIB_MOE_PACK=gather]
        how the expert all-to-all hands rows to MPI: ``gather`` copies them into
        contiguous blocks with numpy (MPI moves large contiguous messages),
        ``mpi`` lets MPI datatypes pick rows from the input and drop returned
        rows at their (token, slot) positions (no numpy copies).
    node_detect [COMMLIB_NODE_DETECT=auto]
        how collectives find the ranks of one node: ``shared`` by
        ``Split_type(COMM_TYPE_SHARED)``, ``name`` by ``MPI.Get_processor_name()``,
        ``env`` by ``COMMLIB_NODE_ID``; ``auto`` uses ``COMMLIB_NODE_ID`` when
        every rank has it, else shared memory.
    node_id [COMMLIB_NODE_ID=-1]
        this rank's node number, for launches where shared memory does not
        mark the node (emulated nodes, MPI forced onto the network); -1: unset.
    allreduce [COMMLIB_ALLREDUCE=auto]
        algorithm of the interposed ``Allreduce``: ``auto`` (cost model),
        ``native``, ``ring``, ``star``, ``hierarchical`` (its two variants by
        cost), ``hierarchical-root`` or ``hierarchical-shard``.
    reduction_check [COMMLIB_REDUCTION_CHECK=1]
        at the first allreduce on a communicator, check MPI's reduction of
        every (operation, datatype) pair commlib reduces against exact
        arithmetic (:mod:`collectives.reduction_check`) and run the pairs MPI
        gets wrong with commlib's ring or star; 0 trusts MPI. Set it alike on
        every rank.
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
    model_save [COMMLIB_MODEL_SAVE=0]
        at exit, rank 0 writes what the model learned from observed times back
        into its calibration file.
    record [COMMLIB_RECORD=]
        at exit, each session writes its recorded run (per shape: calls, time,
        choice) to this JSON path, ``{rank}`` replaced by the rank (without
        it, ``.rank<r>`` is added before the suffix in a multi-rank job), for
        ``python -m commlib explain``; empty: no record.
    monitor [COMMLIB_MONITOR=1]
        ``python -m commlib`` and ``commlib.interpose()`` start the
        fault-detection monitor (:mod:`transport.monitor`; ``--no-monitor``: 0).
    monitor_action [COMMLIB_MONITOR_ACTION=warn]
        on a hang: ``warn`` reports and keeps waiting, ``dump`` also writes
        every rank's flight record, ``abort`` reports and aborts the job.
    monitor_floor [COMMLIB_MONITOR_FLOOR=60]
        seconds an operation may block before it can count as hung.
    monitor_multiple [COMMLIB_MONITOR_MULTIPLE=10]
        the limit is this multiple of the operation's usual duration (90th
        percentile of its recent calls on that communicator), if above the floor.
    monitor_timeout [COMMLIB_MONITOR_TIMEOUT=2]
        seconds a rank waits for a peer's side-channel answer.
    monitor_report [COMMLIB_MONITOR_REPORT=]
        JSON-lines file of the monitor's findings, ``{rank}`` replaced by the
        rank (``python -m commlib monitor FILE`` summarises it); empty: none.
    monitor_ring [COMMLIB_MONITOR_RING=4096]
        completed calls kept per rank by the flight recorder.
    monitor_interval [COMMLIB_MONITOR_INTERVAL=0.5]
        seconds between two collections of collective arrival times (straggler
        detection, on the lowest monitored rank).
    monitor_window [COMMLIB_MONITOR_WINDOW=12]
        collectives per communicator in the straggler detector's sliding window
        (a straggler is late in nine tenths of them).
    monitor_skew [COMMLIB_MONITOR_SKEW=0.01]
        seconds: the least lateness at a collective that counts towards a straggler.
    monitor_probe [COMMLIB_MONITOR_PROBE=0]
        seconds between two probes of the node-to-node latency/bandwidth
        matrix; 0: probe only when collectives slow down.
    monitor_dir [COMMLIB_MONITOR_DIR=]
        directory, shared by all ranks, under which they publish their
        side-channel addresses (in ``commlib-monitor-<uid>/<job>``, both 0700);
        empty: ``$XDG_RUNTIME_DIR``, else the system's temporary directory.
    monitor_address [COMMLIB_MONITOR_ADDRESS=]
        address the side channel listens on; empty: loopback when the launcher
        says every rank runs on this node, else what the host name resolves
        to, else the first non-loopback address of the network namespace.
    monitor_bootstrap [COMMLIB_MONITOR_BOOTSTRAP=auto]
        how ranks find each other: ``file`` (the directory above, no MPI call),
        ``mpi`` (one collective at start-up), ``auto`` (file when the job has a
        name, else mpi).
    monitor_job [COMMLIB_MONITOR_JOB=]
        the job's name for the directory; empty: from the launcher (PMIx, Slurm, Hydra).
    split [COMMLIB_SPLIT=0]
        cut large contiguous point-to-point messages into subflows over several
        channels (:mod:`transport.flows`). Opt-in: a split message is understood
        only by a receiver that is interposed with this setting on too, so set it
        for every rank of the job or none.
    split_channels [COMMLIB_SPLIT_CHANNELS=2]
        channels (duplicated communicators) per communicator for splitting.
    split_min_bytes [COMMLIB_SPLIT_MIN_BYTES=1048576]
        messages smaller than this are never split.
    """

    pack_engine: str = "auto"
    pack_min_bytes: int = 16384
    pack_min_block: int = 4
    rebuild: bool = True
    analyse_bytes: int = -1
    staging_bytes: int = 64 << 20
    interpose: bool = True
    report: bool = False
    cuda_aware_mpi: bool = False
    moe_pack: str = "gather"
    node_detect: str = "auto"
    node_id: int = -1
    allreduce: str = "auto"
    reduction_check: bool = True
    model: str = "auto"
    cache_dir: str = ""
    model_max_age: int = 90
    model_save: bool = False
    record: str = ""
    monitor: bool = True
    monitor_action: str = "warn"
    monitor_floor: float = 60.0
    monitor_multiple: float = 10.0
    monitor_timeout: float = 2.0
    monitor_report: str = ""
    monitor_ring: int = 4096
    monitor_interval: float = 0.5
    monitor_window: int = 12
    monitor_skew: float = 0.01
    monitor_probe: float = 0.0
    monitor_dir: str = ""
    monitor_address: str = ""
    monitor_bootstrap: str = "auto"
    monitor_job: str = ""
    split: bool = False
    split_channels: int = 2
    split_min_bytes: int = 1 << 20

    changes: ClassVar[int] = 0  # counts assignments to any setting: caches of decisions compare it

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        Config.changes += 1
        for listener in _listeners:
            listener()

    @staticmethod
    def on_change(listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every assignment to a setting (caches of decisions kept outside Python)."""
        _listeners.append(listener)

    @classmethod
    def from_env(cls) -> Config:
        return cls(
            pack_engine=_env_choice("COMMLIB_PACK", cls.pack_engine, _PACK_ENGINES),
            pack_min_bytes=_env_int("COMMLIB_PACK_MIN_BYTES", cls.pack_min_bytes),
            pack_min_block=_env_int("COMMLIB_PACK_MIN_BLOCK", cls.pack_min_block),
            rebuild=_env_bool("COMMLIB_REBUILD", cls.rebuild),
            analyse_bytes=-1 if _auto("COMMLIB_ANALYSE_BYTES") else _env_int("COMMLIB_ANALYSE_BYTES", -1),
            staging_bytes=_env_int("COMMLIB_STAGING_BYTES", cls.staging_bytes),
            interpose=_env_bool("COMMLIB_INTERPOSE", cls.interpose),
            report=_env_bool("COMMLIB_REPORT", cls.report),
            cuda_aware_mpi=_env_bool("COMMLIB_CUDA_AWARE_MPI", cls.cuda_aware_mpi),
            moe_pack=_env_choice("COMMLIB_MOE_PACK", cls.moe_pack, ("gather", "mpi")),
            node_detect=_env_choice("COMMLIB_NODE_DETECT", cls.node_detect, _NODE_DETECT),
            node_id=_env_int("COMMLIB_NODE_ID", cls.node_id),
            allreduce=_env_choice("COMMLIB_ALLREDUCE", cls.allreduce, _ALLREDUCE_ALGORITHMS),
            reduction_check=_env_bool("COMMLIB_REDUCTION_CHECK", cls.reduction_check),
            model=os.environ.get("COMMLIB_MODEL", "").strip() or cls.model,
            cache_dir=os.environ.get("COMMLIB_CACHE_DIR", "").strip(),
            model_max_age=_env_int("COMMLIB_MODEL_MAX_AGE", cls.model_max_age),
            model_save=_env_bool("COMMLIB_MODEL_SAVE", cls.model_save),
            record=os.environ.get("COMMLIB_RECORD", "").strip(),
            monitor=_env_bool("COMMLIB_MONITOR", cls.monitor),
            monitor_action=_env_choice("COMMLIB_MONITOR_ACTION", cls.monitor_action, _MONITOR_ACTIONS),
            monitor_floor=_env_float("COMMLIB_MONITOR_FLOOR", cls.monitor_floor),
            monitor_multiple=_env_float("COMMLIB_MONITOR_MULTIPLE", cls.monitor_multiple),
            monitor_timeout=_env_float("COMMLIB_MONITOR_TIMEOUT", cls.monitor_timeout),
            monitor_report=os.environ.get("COMMLIB_MONITOR_REPORT", "").strip(),
            monitor_ring=_env_int("COMMLIB_MONITOR_RING", cls.monitor_ring),
            monitor_interval=_env_float("COMMLIB_MONITOR_INTERVAL", cls.monitor_interval),
            monitor_window=_env_int("COMMLIB_MONITOR_WINDOW", cls.monitor_window),
            monitor_skew=_env_float("COMMLIB_MONITOR_SKEW", cls.monitor_skew),
            monitor_probe=_env_float("COMMLIB_MONITOR_PROBE", cls.monitor_probe),
            monitor_dir=os.environ.get("COMMLIB_MONITOR_DIR", "").strip(),
            monitor_address=os.environ.get("COMMLIB_MONITOR_ADDRESS", "").strip(),
            monitor_bootstrap=_env_choice("COMMLIB_MONITOR_BOOTSTRAP", cls.monitor_bootstrap, _MONITOR_BOOTSTRAPS),
            monitor_job=os.environ.get("COMMLIB_MONITOR_JOB", "").strip(),
            split=_env_bool("COMMLIB_SPLIT", cls.split),
            split_channels=_env_int("COMMLIB_SPLIT_CHANNELS", cls.split_channels),
            split_min_bytes=_env_int("COMMLIB_SPLIT_MIN_BYTES", cls.split_min_bytes),
        )

    def reload(self) -> None:
        """Re-read the environment into this object (in place)."""
        fresh = Config.from_env()
        for f in fields(self):
            setattr(self, f.name, getattr(fresh, f.name))


config = Config.from_env()
