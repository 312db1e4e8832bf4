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

from .requests import add_action

__all__ = ["BLOCKING", "NONBLOCKING", "Monitor", "traced"]


class Monitor(Protocol):
    """What a session's monitor implements (see :mod:`transport.monitor`)."""

    def enter(self, comm: Any, op: str, args: tuple, kwargs: dict) -> Any: ...

    def leave(self, token: Any) -> None: ...


BLOCKING = frozenset(
    {
        # point to point
        "Send", "Ssend", "Bsend", "Rsend", "Recv", "Sendrecv", "Sendrecv_replace", "Probe", "Mprobe",
        "send", "ssend", "bsend", "recv", "sendrecv", "probe", "mprobe",
        # collectives
        "Barrier", "Bcast", "Gather", "Gatherv", "Scatter", "Scatterv", "Allgather", "Allgatherv",
        "Alltoall", "Alltoallv", "Alltoallw", "Reduce", "Allreduce", "Reduce_scatter",
        "Reduce_scatter_block", "Scan", "Exscan",
        "barrier", "bcast", "gather", "scatter", "allgather", "alltoall", "reduce", "allreduce", "scan", "exscan",
        # neighbourhood collectives
        "Neighbor_allgather", "Neighbor_allgatherv", "Neighbor_alltoall", "Neighbor_alltoallv", "Neighbor_alltoallw",
        "neighbor_allgather", "neighbor_alltoall",
    }
)  # fmt: skip

NONBLOCKING = frozenset(
    {
        "Isend", "Issend", "Ibsend", "Irsend", "Irecv", "Isendrecv", "Isendrecv_replace",
        "Ibarrier", "Ibcast", "Igather", "Igatherv", "Iscatter", "Iscatterv", "Iallgather", "Iallgatherv",
        "Ialltoall", "Ialltoallv", "Ialltoallw", "Ireduce", "Iallreduce", "Ireduce_scatter",
        "Ireduce_scatter_block", "Iscan", "Iexscan",
        "Ineighbor_allgather", "Ineighbor_allgatherv", "Ineighbor_alltoall", "Ineighbor_alltoallv",
        "Ineighbor_alltoallw",
    }
)  # fmt: skip


def traced(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` (an unbound communicator method) reporting to the session's monitor, if any."""
    if name in NONBLOCKING:

        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            session = self._session
            monitor = session.monitor if session is not None else None
            if monitor is None:
                return method(self, *args, **kwargs)
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
            session = self._session
            monitor = session.monitor if session is not None else None
            if monitor is None:
                return method(self, *args, **kwargs)
            token = monitor.enter(self, name, args, kwargs)
            try:
                return method(self, *args, **kwargs)
            finally:
                monitor.leave(token)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = method.__doc__
    call.__wrapped__ = method  # type: ignore[attr-defined]
    return call
