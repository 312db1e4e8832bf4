"""Collectives with derived datatypes, carried packed.

Mixins for the wrapped communicators (:mod:`commlib.comm`). Each side of a
collective is decided on its own: a buffer spec with a derived datatype that
has a canonical form is bounds-checked, and, when the session says
``"pack"``, staged in a contiguous buffer and handed to MPI as elements of
the type's named base type; received pieces are unpacked when the call
returns. The type signature every rank sees is unchanged, so ranks may choose
differently, and peers need not be interposed. Everything else (plain
buffers, predefined types, ``IN_PLACE`` where staging would not pay, forms
commlib does not read) goes to mpi4py untouched.

``Allreduce`` goes through :func:`collectives.allreduce.try_allreduce`, which
keeps MPI's own unless the cost model predicts a clear gain for the
communicator's shape (``COMMLIB_ALLREDUCE`` forces an algorithm).

Intercepted: ``Bcast``, ``Gather(v)``, ``Scatter(v)``, ``Allgather(v)``,
``Alltoall(v|w)`` and the neighbourhood ``Neighbor_allgather(v)``,
``Neighbor_alltoall(v|w)``.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

from mpi4py import MPI

from .config import config
from .messages import Packed
from .pieces import block_pieces, typed_pieces, vector_pieces

__all__ = ["Collectives", "NeighborCollectives"]

_SPECS = (list, tuple)
IN_PLACE = MPI.IN_PLACE


_ALLREDUCE: Any = None  # collectives.allreduce, imported on the first Allreduce (it loads numpy-heavy modules)


def _load_allreduce() -> Any:
    global _ALLREDUCE
    import importlib

    # the module, not the package's ``allreduce`` function of the same name
    _ALLREDUCE = importlib.import_module("collectives.allreduce")
    return _ALLREDUCE


def _plain(*bufs: Any) -> bool:
    """No buffer is a list/tuple spec, so none can name a derived datatype."""
    return all(b.__class__ not in _SPECS for b in bufs)


class Collectives:
    """Intra-communicator collectives (mixed into :class:`commlib.comm.Intracomm`)."""

    def Allreduce(self, sendbuf: Any, recvbuf: Any, op: MPI.Op = MPI.SUM) -> None:
        """Through :func:`collectives.allreduce.try_allreduce`: MPI's own unless the cost model picks another."""
        allreduce = _ALLREDUCE or _load_allreduce()
        if allreduce.try_allreduce(self, sendbuf, recvbuf, op) is NotImplemented:
            return super().Allreduce(sendbuf, recvbuf, op)
        if self._session is not None:
            buf = recvbuf[0] if isinstance(recvbuf, (list, tuple)) else recvbuf
            nbytes = int(getattr(buf, "nbytes", 0))
            self._session.record("Allreduce", allreduce.plan(self, nbytes, config.allreduce)[0], nbytes)

    def Bcast(self, buf: Any, root: int = 0) -> None:
        if _plain(buf):
            return super().Bcast(buf, root)
        is_root = self.Get_rank() == root
        message, pack = self._message("Bcast", buf, writable=not is_root)
        if not pack:
            return super().Bcast(buf, root)
        start = perf_counter()
        if is_root:
            super().Bcast(Packed.for_send(message).spec, root)
        else:
            packed = Packed.for_recv(message)
            super().Bcast(packed.spec, root)
            packed.unpack()
        self._observe("Bcast", message, True, start)

    def Gather(self, sendbuf: Any, recvbuf: Any, root: int = 0) -> None:
        if _plain(sendbuf, recvbuf):
            return super().Gather(sendbuf, recvbuf, root)
        rank, size = self.Get_rank(), self.Get_size()
        rspec, staged = recvbuf, None
        if rank == root:
            rspec, staged = self._stage("Gather", recvbuf, block_pieces, size, "block_spec", send=False)
        sspec, _ = self._stage_one("Gather", sendbuf, send=True)
        super().Gather(sspec, rspec, root)
        if staged is not None:
            staged.unpack(skip=root if sendbuf is IN_PLACE else None)

    def Gatherv(self, sendbuf: Any, recvbuf: Any, root: int = 0) -> None:
        if _plain(sendbuf, recvbuf):
            return super().Gatherv(sendbuf, recvbuf, root)
        rank, size = self.Get_rank(), self.Get_size()
        rspec, staged = recvbuf, None
        if rank == root:
            rspec, staged = self._stage("Gatherv", recvbuf, vector_pieces, size, "vector_spec", send=False)
        sspec, _ = self._stage_one("Gatherv", sendbuf, send=True)
        super().Gatherv(sspec, rspec, root)
        if staged is not None:
            staged.unpack(skip=root if sendbuf is IN_PLACE else None)

    def Scatter(self, sendbuf: Any, recvbuf: Any, root: int = 0) -> None:
        if _plain(sendbuf, recvbuf):
            return super().Scatter(sendbuf, recvbuf, root)
        rank, size = self.Get_rank(), self.Get_size()
        rspec, packed = self._stage_one("Scatter", recvbuf, send=False)
        sspec = sendbuf
        if rank == root:
            sspec, _ = self._stage("Scatter", sendbuf, block_pieces, size, "block_spec", send=True)
        super().Scatter(sspec, rspec, root)
        if packed is not None:
            packed.unpack()

    def Scatterv(self, sendbuf: Any, recvbuf: Any, root: int = 0) -> None:
        if _plain(sendbuf, recvbuf):
            return super().Scatterv(sendbuf, recvbuf, root)
        rank, size = self.Get_rank(), self.Get_size()
        rspec, packed = self._stage_one("Scatterv", recvbuf, send=False)
        sspec = sendbuf
        if rank == root:
            sspec, _ = self._stage("Scatterv", sendbuf, vector_pieces, size, "vector_spec", send=True)
        super().Scatterv(sspec, rspec, root)
        if packed is not None:
            packed.unpack()

    def Allgather(self, sendbuf: Any, recvbuf: Any) -> None:
        if _plain(sendbuf, recvbuf):
            return super().Allgather(sendbuf, recvbuf)
        rank, size = self.Get_rank(), self.Get_size()
        rspec, staged = self._stage("Allgather", recvbuf, block_pieces, size, "block_spec", send=False)
        sspec, _ = self._stage_one("Allgather", sendbuf, send=True)
        if staged is not None and sendbuf is IN_PLACE:
            staged.pack_piece(rank)  # every rank's contribution is read from its own piece
        super().Allgather(sspec, rspec)
        if staged is not None:
            staged.unpack(skip=rank if sendbuf is IN_PLACE else None)

    def Allgatherv(self, sendbuf: Any, recvbuf: Any) -> None:
        if _plain(sendbuf, recvbuf):
            return super().Allgatherv(sendbuf, recvbuf)
        rank, size = self.Get_rank(), self.Get_size()
        rspec, staged = self._stage("Allgatherv", recvbuf, vector_pieces, size, "vector_spec", send=False)
        sspec, _ = self._stage_one("Allgatherv", sendbuf, send=True)
        if staged is not None and sendbuf is IN_PLACE:
            staged.pack_piece(rank)  # every rank's contribution is read from its own piece
        super().Allgatherv(sspec, rspec)
        if staged is not None:
            staged.unpack(skip=rank if sendbuf is IN_PLACE else None)

    def _exchange(self, op: str, sendbuf: Any, recvbuf: Any, read: Any, form: str, degrees: tuple[int, int]) -> None:
        """An all-to-all shaped exchange: ``degrees`` = (pieces received, pieces sent)."""
        if sendbuf is IN_PLACE:
            return getattr(super(), op)(sendbuf, recvbuf)
        rspec, staged = self._stage(op, recvbuf, read, degrees[0], form, send=False)
        sspec, _ = self._stage(op, sendbuf, read, degrees[1], form, send=True)
        getattr(super(), op)(sspec, rspec)
        if staged is not None:
            staged.unpack()

    def Alltoall(self, sendbuf: Any, recvbuf: Any) -> None:
        if _plain(sendbuf, recvbuf):
            return super().Alltoall(sendbuf, recvbuf)
        size = self.Get_size()
        self._exchange("Alltoall", sendbuf, recvbuf, block_pieces, "block_spec", (size, size))

    def Alltoallv(self, sendbuf: Any, recvbuf: Any) -> None:
        if _plain(sendbuf, recvbuf):
            return super().Alltoallv(sendbuf, recvbuf)
        size = self.Get_size()
        self._exchange("Alltoallv", sendbuf, recvbuf, vector_pieces, "vector_spec", (size, size))

    def Alltoallw(self, sendbuf: Any, recvbuf: Any) -> None:
        size = self.Get_size()
        self._exchange("Alltoallw", sendbuf, recvbuf, typed_pieces, "typed_spec", (size, size))


class NeighborCollectives:
    """Neighbourhood collectives of the topology communicators (mixed into :class:`commlib.comm.Topocomm`)."""

    def Neighbor_allgather(self, sendbuf: Any, recvbuf: Any) -> None:
        if _plain(sendbuf, recvbuf):
            return super().Neighbor_allgather(sendbuf, recvbuf)
        indegree = self.degrees[0]
        rspec, staged = self._stage("Neighbor_allgather", recvbuf, block_pieces, indegree, "block_spec", send=False)
        sspec, _ = self._stage_one("Neighbor_allgather", sendbuf, send=True)
        super().Neighbor_allgather(sspec, rspec)
        if staged is not None:
            staged.unpack()

    def Neighbor_allgatherv(self, sendbuf: Any, recvbuf: Any) -> None:
        if _plain(sendbuf, recvbuf):
            return super().Neighbor_allgatherv(sendbuf, recvbuf)
        indegree = self.degrees[0]
        rspec, staged = self._stage("Neighbor_allgatherv", recvbuf, vector_pieces, indegree, "vector_spec", send=False)
        sspec, _ = self._stage_one("Neighbor_allgatherv", sendbuf, send=True)
        super().Neighbor_allgatherv(sspec, rspec)
        if staged is not None:
            staged.unpack()

    def _neighbor_exchange(self, op: str, sendbuf: Any, recvbuf: Any, read: Any, form: str) -> None:
        indegree, outdegree = self.degrees
        rspec, staged = self._stage(op, recvbuf, read, indegree, form, send=False)
        sspec, _ = self._stage(op, sendbuf, read, outdegree, form, send=True)
        getattr(super(), op)(sspec, rspec)
        if staged is not None:
            staged.unpack()

    def Neighbor_alltoall(self, sendbuf: Any, recvbuf: Any) -> None:
        if _plain(sendbuf, recvbuf):
            return super().Neighbor_alltoall(sendbuf, recvbuf)
        self._neighbor_exchange("Neighbor_alltoall", sendbuf, recvbuf, block_pieces, "block_spec")

    def Neighbor_alltoallv(self, sendbuf: Any, recvbuf: Any) -> None:
        if _plain(sendbuf, recvbuf):
            return super().Neighbor_alltoallv(sendbuf, recvbuf)
        self._neighbor_exchange("Neighbor_alltoallv", sendbuf, recvbuf, vector_pieces, "vector_spec")

    def Neighbor_alltoallw(self, sendbuf: Any, recvbuf: Any) -> None:
        self._neighbor_exchange("Neighbor_alltoallw", sendbuf, recvbuf, typed_pieces, "typed_spec")
