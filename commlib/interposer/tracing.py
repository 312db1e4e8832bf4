"""Tracing hooks: every communication call of a wrapped communicator, reported to a monitor.

A monitor is any object with ``enter(comm, op, args, kwargs) -> token`` and
``leave(token)``. When a session has one, each traced method of a wrapped
communicator calls ``enter`` before it starts and ``leave`` when it ends
(for a nonblocking operation: when its request completes through
``Wait``/``Test`` or their ``all``/``any``/``some`` forms). Without a monitor
a traced call costs one attribute test.

:data:`BLOCKING` and :data:`NONBLOCKING` name what is traced: point-to-point
and collective operations, buffer and pickle forms, neighbourhood
collectives. Persistent requests, one-sided and I/O operations are not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from mpi4py import MPI

from transport.flight import Traced
from transport.operations import BLOCKING, NONBLOCKING, OP_INDEX

from .requests import add_action

__all__ = ["BLOCKING", "NONBLOCKING", "Monitor", "traced"]


class Monitor(Protocol):
    """What a session's monitor implements (see :mod:`transport.monitor`)."""

    def enter(self, comm: Any, op: str, args: tuple, kwargs: dict) -> Any: ...

    def leave(self, token: Any) -> None: ...


# Positional arguments (after the communicator) that are buffers: where none is a list/tuple spec, commlib's
# method would hand the call to mpi4py as it is, so a traced method calls mpi4py's directly.
_BUFFERS = {
    **dict.fromkeys(("Send", "Ssend", "Isend", "Issend", "Recv", "Irecv", "Sendrecv_replace", "Bcast"), 0b1),
    "Sendrecv": 0b1001,
    **dict.fromkeys(
        ("Gather", "Gatherv", "Scatter", "Scatterv", "Allgather", "Allgatherv", "Alltoall", "Alltoallv"), 0b11
    ),
    **dict.fromkeys(("Neighbor_allgather", "Neighbor_allgatherv", "Neighbor_alltoall", "Neighbor_alltoallv"), 0b11),
}
_SPLIT = frozenset({"Send", "Recv", "Isend", "Irecv"})  # may go through a flow splitter (commlib.interposer)
_KNOWN = frozenset({"Send", "Ssend", "Isend", "Issend", "Recv", "Irecv"})  # one spec, first: the session's SpecCache


def _generic(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` reporting to a session monitor that implements the protocol in Python."""
    if name in NONBLOCKING:

        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            monitor = self._session.monitor
            token = monitor.enter(self, name, args, kwargs)
            try:
                request = method(self, *args, **kwargs)
            except BaseException:
                monitor.leave(token)
                raise
            if request == MPI.REQUEST_NULL:
                monitor.leave(token)
                return request
            return add_action(request, lambda status: monitor.leave(token))

    else:

        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            monitor = self._session.monitor
            token = monitor.enter(self, name, args, kwargs)
            try:
                return method(self, *args, **kwargs)
            finally:
                monitor.leave(token)

    return call


def traced(name: str, method: Callable[..., Any], base: Callable[..., Any] | None = None) -> Callable[..., Any]:
    """``method`` (an unbound communicator method) recording its calls in the session's monitor, if any.

    ``base`` is mpi4py's method of the same name: where ``method`` is
    commlib's own and no buffer argument is a list/tuple spec, ``base`` is
    called directly (:class:`transport.flight.Traced`).
    """
    fast = base if base is not None and base is not method and name in _BUFFERS else None
    return Traced(
        name,
        OP_INDEX[name],
        method,
        fast,
        _generic(name, method),
        _BUFFERS.get(name, 0),
        name in NONBLOCKING,
        name in _SPLIT,
        fast is not None and name in _KNOWN,
    )
