"""Channels: independent streams between two ranks that carry a split message's parts."""

from __future__ import annotations

from typing import Protocol

from mpi4py import MPI


class Pending(Protocol):
    """One part in flight: ``test()`` without blocking, ``wait()`` until done."""

    def test(self) -> bool: ...

    def wait(self) -> None: ...


class Channel(Protocol):
    """An independent stream to the peers of one communicator.

    ``rendezvous``: parts may be sent only once the receiver has posted its receives (it
    then answers a split header with an empty clear-to-send part, tag ``-1 - tag``, on
    the first channel used): for transports that would otherwise buffer early data, and
    so that the header never queues behind the parts on a shared path.
    """

    name: str
    rendezvous: bool

    def isend(self, view: memoryview, peer: int, tag: int) -> Pending: ...

    def irecv(self, view: memoryview, peer: int, tag: int) -> Pending: ...

    def close(self) -> None: ...


def discard_part(channel: Channel, nbytes: int, peer: int, tag: int) -> Pending:
    """Consume a part of ``nbytes`` without keeping it (a truncated receive): ``channel.discard`` where it
    has one, else a receive into scratch memory."""
    discard = getattr(channel, "discard", None)
    if discard is not None:
        return discard(nbytes, peer, tag)
    return channel.irecv(memoryview(bytearray(nbytes)), peer, tag)


class MPIPending:
    """A part in flight on an MPI request (:class:`CommChannel`'s ``isend``/``irecv``)."""

    __slots__ = ("request",)

    def __init__(self, request: MPI.Request) -> None:
        self.request = request

    def test(self) -> bool:
        return self.request.Test()

    def wait(self) -> None:
        self.request.Wait()


class CommChannel:
    """A channel on its own duplicated communicator (parts are tagged with the message's sequence number)."""

    rendezvous = False  # MPI matches early parts itself

    def __init__(self, comm: MPI.Comm, name: str = "comm") -> None:
        self.comm = comm
        self.name = name

    def isend(self, view: memoryview, peer: int, tag: int) -> Pending:
        return MPIPending(self.comm.Isend([view, MPI.BYTE], peer, tag))

    def irecv(self, view: memoryview, peer: int, tag: int) -> Pending:
        return MPIPending(self.comm.Irecv([view, MPI.BYTE], peer, tag))

    def close(self) -> None:
        if self.comm != MPI.COMM_NULL:
            self.comm.Free()


def plain_comm(comm: MPI.Comm) -> MPI.Comm:
    """``comm`` as mpi4py's own class on the same handle, so that no interposer intercepts the channels' traffic."""
    for cls in (MPI.Intercomm, MPI.Intracomm):
        if isinstance(comm, cls):
            return cls(comm)
    return MPI.Comm(comm)
