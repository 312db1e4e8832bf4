"""The fault monitor as a program sees it: the running monitor, and deadlines for known phases.

The monitor itself is :class:`transport.monitor.Monitor`, started by
``python -m commlib`` and ``commlib.interpose()``. A call is examined once it
has waited ``COMMLIB_MONITOR_SUSPECT`` seconds or ten times its usual time;
a phase known to be long (a checkpoint, a first compilation) or known to be
short can say so per communicator::

    commlib.monitor.deadline(io_comm, 600)   # examined after 10 minutes
    commlib.monitor.deadline(io_comm, None)  # back to the usual rule
"""

from __future__ import annotations

import math
from typing import Any

from transport.monitor import Monitor

__all__ = ["current", "deadline"]


def current() -> Monitor | None:
    """The monitor of the installed interposer, or ``None`` (not interposed, or ``--no-monitor``)."""
    from .interposer import active_session

    session = active_session()
    return None if session is None else session.monitor


def deadline(comm: Any, seconds: float | None) -> bool:
    """Examine calls on ``comm`` after ``seconds`` instead of the monitor's usual limit; ``None`` restores it.

    Applies to ``comm`` (not to communicators created from it) until it is
    freed. Returns whether a monitor runs to apply it; without one it does
    nothing. Call it alike on every rank of ``comm``.
    """
    if seconds is not None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
            raise TypeError(f"commlib.monitor.deadline: seconds must be a finite number or None, got {seconds!r}")
        if seconds <= 0:
            raise ValueError(f"commlib.monitor.deadline: seconds must be positive, got {seconds!r}")
        seconds = float(seconds)
    if getattr(comm, "handle", None) is None or not hasattr(comm, "Get_group"):
        raise TypeError(f"commlib.monitor.deadline: comm must be an MPI communicator, got {type(comm).__name__}")
    monitor = current()
    if monitor is None:
        return False
    monitor.recorder.set_deadline(comm, seconds)
    return True
