"""One splitter per communicator, and the ``split_*`` calls that go through it."""

from __future__ import annotations

from typing import Any

from mpi4py import MPI

from ..settings import settings
from .request import SplitRequest
from .splitter import Splitter
from .wire import HEADER_BYTES

_registry: dict[int, Splitter] = {}


def attach(comm: MPI.Comm, channels: int | None = None, **kwargs: Any) -> Splitter:
    """Collective over ``comm``: make its :class:`Splitter` (``COMMLIB_SPLIT_CHANNELS`` duplicates by default)."""
    key = MPI.Comm.py2f(comm)
    if key in _registry:
        return _registry[key]
    kwargs.setdefault("min_bytes", settings.split_min_bytes)
    splitter = Splitter.dup(comm, channels or settings.split_channels, **kwargs)
    _registry[key] = splitter
    return splitter


def detach(comm: MPI.Comm) -> None:
    """Collective over ``comm``: free its splitter's channels (call before freeing ``comm``)."""
    splitter = _registry.pop(MPI.Comm.py2f(comm), None)
    if splitter is not None:
        splitter.close()


def splitter_for(comm: MPI.Comm) -> Splitter | None:
    """The splitter :func:`attach` made for ``comm``, if any."""
    return _registry.get(MPI.Comm.py2f(comm))


def _need(comm: MPI.Comm, op: str) -> Splitter:
    splitter = splitter_for(comm)
    if splitter is None:
        raise ValueError(f"{op}: no splitter attached to this communicator (call transport.flows.attach(comm) first)")
    return splitter


def worth_splitting(nbytes: int, comm: MPI.Comm, peer: int) -> bool:
    """Whether a contiguous message of ``nbytes`` to ``peer`` on ``comm`` should go through :func:`split_send`.

    False unless ``COMMLIB_SPLIT`` is on and ``comm`` has a splitter. Note: with splitting on, a
    plain message of exactly :data:`HEADER_BYTES` bytes must go through :func:`split_send` too
    (it checks whether the bytes look like a header).
    """
    if not settings.split:
        return False
    splitter = splitter_for(comm)
    return splitter is not None and (nbytes == HEADER_BYTES or splitter.worth_splitting(nbytes, peer))


def split_isend(comm: MPI.Comm, buf: Any, dest: int, tag: int = 0) -> SplitRequest:
    """Nonblocking split send on ``comm``'s attached splitter."""
    return _need(comm, "split_isend").Isend(buf, dest, tag)


def split_send(comm: MPI.Comm, buf: Any, dest: int, tag: int = 0) -> None:
    """Blocking split send on ``comm``'s attached splitter."""
    _need(comm, "split_send").Send(buf, dest, tag)


def split_irecv(comm: MPI.Comm, buf: Any, source: int = MPI.ANY_SOURCE, tag: int = MPI.ANY_TAG) -> SplitRequest:
    """Nonblocking receive of a plain or split message on ``comm``'s attached splitter."""
    return _need(comm, "split_irecv").Irecv(buf, source, tag)


def split_recv(
    comm: MPI.Comm, buf: Any, source: int = MPI.ANY_SOURCE, tag: int = MPI.ANY_TAG, status: MPI.Status | None = None
) -> None:
    """Blocking receive of a plain or split message on ``comm``'s attached splitter."""
    _need(comm, "split_recv").Recv(buf, source, tag, status)
