"""Install commlib under an unchanged mpi4py program.

``interpose()`` rebinds ``MPI.COMM_WORLD`` and ``MPI.COMM_SELF`` to wrapped
communicators (so everything derived from them is wrapped too) and
``MPI.Request``/``MPI.Prequest`` to commlib's request classes (so that
``MPI.Request.Waitall(...)`` completes packed receives). ``uninterpose()``
puts mpi4py's objects back. Code that imported ``COMM_WORLD`` by name before
``interpose()`` keeps the plain communicator: install it first.
"""

from __future__ import annotations

from typing import Any

from mpi4py import MPI

from transport.flight import invalidate

from ..config import config
from .comm import wrap
from .requests import Prequest, Request
from .session import Decision, Session

__all__ = ["active_session", "interpose", "uninterpose"]

_saved: dict[str, object] = {}
_session: Session | None = None


def interpose(decision: Decision | None = None, monitor: Any = None) -> Session:
    """Install the interposer (idempotent) and return its session (decision hook and report).

    With ``COMMLIB_SPLIT=1`` it is collective over ``COMM_WORLD``: it attaches a
    :class:`transport.flows.Splitter`, through which ``COMM_WORLD``'s ``Send``,
    ``Recv``, ``Isend`` and ``Irecv`` of plain buffers go, split over several
    channels where the splitter predicts it pays (every rank must run with it).
    ``monitor`` is the session's fault-detection monitor: ``None`` follows
    ``COMMLIB_MONITOR`` (on by default), ``False`` installs none, ``True`` a
    default one, or a :class:`transport.monitor.Monitor` (see
    :func:`transport.monitor.start_monitor`).
    """
    global _session
    if _session is not None:
        return _session
    session = Session(decision)
    from transport.monitor import start_monitor

    session.monitor = start_monitor(monitor)
    for name in ("COMM_WORLD", "COMM_SELF", "Request", "Prequest"):
        _saved[name] = getattr(MPI, name)
    MPI.COMM_WORLD = wrap(MPI.COMM_WORLD, session)
    MPI.COMM_SELF = wrap(MPI.COMM_SELF, session)
    if config.split:  # collective over COMM_WORLD: every rank must run with the same setting
        from transport import flows

        MPI.COMM_WORLD._splitter = flows.attach(MPI.COMM_WORLD)
        invalidate()  # the traced methods read the splitter afresh
    MPI.Request = Request
    MPI.Prequest = Prequest
    _session = session
    return session


def uninterpose() -> None:
    """Restore mpi4py's own objects and stop the monitor (communicators already wrapped stay wrapped)."""
    global _session
    if _session is not None and _session.monitor is not None:
        _session.monitor.stop()
        _session.monitor = None
    for name, value in _saved.items():
        setattr(MPI, name, value)
    _saved.clear()
    _session = None


def active_session() -> Session | None:
    """The session of the installed interposer, or ``None``."""
    return _session
