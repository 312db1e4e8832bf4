"""The settings of the transport package: the fault-detection monitor, flow splitting, the node number.

Each read from its own ``COMMLIB_*`` variable once at import (``settings.reload()`` re-reads them);
:mod:`commlib.config` shows them beside every other package's. The parsing and the base class are
:mod:`datatypes.settings`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

from datatypes.settings import Settings, env_bool, env_choice, env_float, env_int, env_text

__all__ = ["MONITOR_ACTIONS", "MONITOR_BOOTSTRAPS", "TransportSettings", "settings"]

MONITOR_ACTIONS = ("warn", "dump", "abort")
MONITOR_BOOTSTRAPS = ("auto", "file", "mpi")


def _node_id(value: str) -> str:
    if len(value) > 256:
        raise ValueError(f"COMMLIB_NODE_ID must be at most 256 characters, got {len(value)}")
    return value


@dataclass
class TransportSettings(Settings):
    """Settings of the monitor and the flow splitter (environment variable and default in brackets).

    node_id [COMMLIB_NODE_ID=""]
        this rank's node: any name (a host name, a scheduler's node name, a
        number) of at most 256 characters, for launches where shared memory
        does not mark the node (emulated nodes, MPI forced onto the network);
        empty: unset.
    monitor [COMMLIB_MONITOR=1]
        ``python -m commlib`` and ``commlib.interpose()`` start the
        fault-detection monitor (:mod:`transport.monitor`; ``--no-monitor``: 0).
    monitor_action [COMMLIB_MONITOR_ACTION=warn]
        on a hang: ``warn`` reports and keeps waiting, ``dump`` also writes
        every rank's flight record, ``abort`` reports and aborts the job.
    monitor_suspect [COMMLIB_MONITOR_SUSPECT=10]
        seconds an operation may block before the monitor asks the ranks it
        waits for what they are doing (a stopped, dead or blocked rank is then
        a hang at once, a rank running code a straggler).
    monitor_floor [COMMLIB_MONITOR_FLOOR=60]
        seconds a rank it waits for may stay at the same place in its code, or
        stay unobservable, before the wait counts as a hang.
    monitor_multiple [COMMLIB_MONITOR_MULTIPLE=10]
        an operation is examined after this multiple of its usual duration (90th
        percentile of its recent calls on that communicator), if above ``monitor_suspect``.
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

    node_id: str = ""
    monitor: bool = True
    monitor_action: str = "warn"
    monitor_suspect: float = 10.0
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

    @classmethod
    def from_env(cls) -> TransportSettings:
        return cls(
            node_id=_node_id(env_text("COMMLIB_NODE_ID")),
            monitor=env_bool("COMMLIB_MONITOR", cls.monitor),
            monitor_action=env_choice("COMMLIB_MONITOR_ACTION", cls.monitor_action, MONITOR_ACTIONS),
            monitor_suspect=env_float("COMMLIB_MONITOR_SUSPECT", cls.monitor_suspect),
            monitor_floor=env_float("COMMLIB_MONITOR_FLOOR", cls.monitor_floor),
            monitor_multiple=env_float("COMMLIB_MONITOR_MULTIPLE", cls.monitor_multiple),
            monitor_timeout=env_float("COMMLIB_MONITOR_TIMEOUT", cls.monitor_timeout),
            monitor_report=env_text("COMMLIB_MONITOR_REPORT"),
            monitor_ring=env_int("COMMLIB_MONITOR_RING", cls.monitor_ring),
            monitor_interval=env_float("COMMLIB_MONITOR_INTERVAL", cls.monitor_interval),
            monitor_window=env_int("COMMLIB_MONITOR_WINDOW", cls.monitor_window),
            monitor_skew=env_float("COMMLIB_MONITOR_SKEW", cls.monitor_skew),
            monitor_probe=env_float("COMMLIB_MONITOR_PROBE", cls.monitor_probe),
            monitor_dir=env_text("COMMLIB_MONITOR_DIR"),
            monitor_address=env_text("COMMLIB_MONITOR_ADDRESS"),
            monitor_bootstrap=env_choice("COMMLIB_MONITOR_BOOTSTRAP", cls.monitor_bootstrap, MONITOR_BOOTSTRAPS),
            monitor_job=env_text("COMMLIB_MONITOR_JOB"),
            split=env_bool("COMMLIB_SPLIT", cls.split),
            split_channels=env_int("COMMLIB_SPLIT_CHANNELS", cls.split_channels),
            split_min_bytes=env_int("COMMLIB_SPLIT_MIN_BYTES", cls.split_min_bytes),
        )


settings = TransportSettings.from_env()
