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

``Reduce_scatter(_block)`` and plain-array ``Allgather(v)`` go through
:mod:`collectives.hierarchical_calls` the same way (``COMMLIB_REDUCE_SCATTER``,
``COMMLIB_ALLGATHER``).

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
from .pieces import block_parts, typed_parts, vector_parts

__all__ = ["Collectives", "NeighborCollectives"]

_SPECS = (list, tuple)
IN_PLACE = MPI.IN_PLACE
_MPI_ALLREDUCE = MPI.Comm.Allreduce


_ALLREDUCE: Any = None  # collectives.allreduce, imported on the first Allreduce (it loads numpy-heavy modules)


def _load_allreduce() -> Any:
    global _ALLREDUCE
    import importlib

    # the module, not the package's ``allreduce`` function of the same name
    _ALLREDUCE = importlib.import_module("collectives.allreduce")
    return _ALLREDUCE


_LEVELS: Any = None  # collectives.hierarchical_calls, imported on the first Reduce_scatter* or Allgather*


def _levels() -> Any:
    global _LEVELS
    import importlib

    _LEVELS = importlib.import_module("collectives.hierarchical_calls")
    return _LEVELS


def _timed(start: float, *trials: Any) -> None:
    """Report the call's time to the sides being timed both ways (:class:`commlib.decision.Trial`)."""
    if trials[0] is None and trials[-1] is None:
        return
    seconds = perf_counter() - start
    for trial in trials:
        if trial is not None:
            trial.observe(seconds)


def _plain(*bufs: Any) -> bool:
    """No buffer is a list/tuple spec, so none can name a derived datatype."""
    return all(b.__class__ not in _SPECS for b in bufs)


class Collectives:
    """Intra-communicator collectives (mixed into :class:`commlib.comm.Intracomm`)."""

    def Allreduce(self, sendbuf: Any, recvbuf: Any, op: MPI.Op = MPI.SUM) -> None:
        """Through :func:`collectives.allreduce.try_allreduce`: MPI's own unless the cost model picks another."""
        allreduce = _ALLREDUCE or _load_allreduce()
        if allreduce.try_allreduce(self, sendbuf, recvbuf, op) is NotImplemented:
            return _MPI_ALLREDUCE(self, sendbuf, recvbuf, op)  # no subclass between here and MPI.Comm defines it
        if self._session is not None:
            spec = isinstance(recvbuf, (list, tuple))
            buf = recvbuf[0] if spec else recvbuf
            nbytes = int(getattr(buf, "nbytes", 0))
            kind = recvbuf[-1] if spec else getattr(buf, "dtype", None)  # the pair MPI may reduce wrongly
            chosen = allreduce.plan(self, nbytes, config.allreduce, op=op, datatype=kind)[0]
            self._session.record("Allreduce", chosen, nbytes)

    def Bcast(self, buf: Any, root: int = 0) -> None:
        if _plain(buf):
            return super().Bcast(buf, root)
        is_root = self.Get_rank() == root
        message, pack = self._message("Bcast", buf, writable=not is_root)
        if not pack:
            return super().Bcast(buf, root)
        start = perf_counter()
        if is_root:
            super().Bcast(Packed.for_send(message, self._staging).spec, root)
        else:
            packed = Packed.for_recv(message, self._staging)
            super().Bcast(packed.spec, root)
            packed.unpack()
        self._observe("Bcast", message, True, start)

    def _gather(self, op: str, sendbuf: Any, recvbuf: Any, root: int, read: Any, form: str) -> None:
        """Gather(v): the root's receive pieces staged, every send side on its own."""
        start = perf_counter()
        rspec, staged, trial = recvbuf, None, None
        if self.Get_rank() == root:
            rspec, staged, trial = self._stage(op, recvbuf, read, self.Get_size(), form, send=False)
        sspec, _ = self._stage_one(op, sendbuf, send=True)
        getattr(super(), op)(sspec, rspec, root)
        if staged is not None:
            staged.unpack(skip=root if sendbuf is IN_PLACE else None)
        _timed(start, trial)

    def Gather(self, sendbuf: Any, recvbuf: Any, root: int = 0) -> None:
        if _plain(sendbuf, recvbuf):
            return super().Gather(sendbuf, recvbuf, root)
        self._gather("Gather", sendbuf, recvbuf, root, block_parts, "block_spec")

    def Gatherv(self, sendbuf: Any, recvbuf: Any, root: int = 0) -> None:
        if _plain(sendbuf, recvbuf):
            return super().Gatherv(sendbuf, recvbuf, root)
        self._gather("Gatherv", sendbuf, recvbuf, root, vector_parts, "vector_spec")

    def _scatter(self, op: str, sendbuf: Any, recvbuf: Any, root: int, read: Any, form: str) -> None:
        """Scatter(v): the root's send pieces staged, every receive side on its own."""
        start = perf_counter()
        rspec, packed = self._stage_one(op, recvbuf, send=False)
        sspec, trial = sendbuf, None
        if self.Get_rank() == root:
            sspec, _, trial = self._stage(op, sendbuf, read, self.Get_size(), form, send=True)
        getattr(super(), op)(sspec, rspec, root)
        if packed is not None:
            packed.unpack()
        _timed(start, trial)

    def Scatter(self, sendbuf: Any, recvbuf: Any, root: int = 0) -> None:
        if _plain(sendbuf, recvbuf):
            return super().Scatter(sendbuf, recvbuf, root)
        self._scatter("Scatter", sendbuf, recvbuf, root, block_parts, "block_spec")

    def Scatterv(self, sendbuf: Any, recvbuf: Any, root: int = 0) -> None:
        if _plain(sendbuf, recvbuf):
            return super().Scatterv(sendbuf, recvbuf, root)
        self._scatter("Scatterv", sendbuf, recvbuf, root, vector_parts, "vector_spec")

    def _allgather(self, op: str, sendbuf: Any, recvbuf: Any, read: Any, form: str, pieces: int) -> None:
        """Allgather(v) and their neighbourhood forms: ``pieces`` receive pieces, one send piece."""
        start = perf_counter()
        rspec, staged, trial = self._stage(op, recvbuf, read, pieces, form, send=False)
        sspec, _ = self._stage_one(op, sendbuf, send=True)
        in_place = sendbuf is IN_PLACE
        if staged is not None and in_place:
            staged.pack_piece(self.Get_rank())  # every rank's contribution is read from its own piece
        getattr(super(), op)(sspec, rspec)
        if staged is not None:
            staged.unpack(skip=self.Get_rank() if in_place else None)
        _timed(start, trial)

    def Reduce_scatter_block(self, sendbuf: Any, recvbuf: Any, op: MPI.Op = MPI.SUM) -> None:
        """Through :mod:`collectives.hierarchical_calls`: MPI's own unless the level cost model picks the hierarchy."""
        if (_LEVELS or _levels()).try_reduce_scatter_block(self, sendbuf, recvbuf, op) is NotImplemented:
            super().Reduce_scatter_block(sendbuf, recvbuf, op)

    def Reduce_scatter(self, sendbuf: Any, recvbuf: Any, recvcounts: Any = None, op: MPI.Op = MPI.SUM) -> None:
        """As ``Reduce_scatter_block``."""
        if (_LEVELS or _levels()).try_reduce_scatter(self, sendbuf, recvbuf, recvcounts, op) is NotImplemented:
            super().Reduce_scatter(sendbuf, recvbuf, recvcounts, op)

    def Allgather(self, sendbuf: Any, recvbuf: Any) -> None:
        if _plain(sendbuf, recvbuf):
            if (_LEVELS or _levels()).try_allgather(self, sendbuf, recvbuf) is NotImplemented:
                super().Allgather(sendbuf, recvbuf)
            return None
        self._allgather("Allgather", sendbuf, recvbuf, block_parts, "block_spec", self.Get_size())

    def Allgatherv(self, sendbuf: Any, recvbuf: Any) -> None:
        if _plain(sendbuf) and (_LEVELS or _levels()).try_allgatherv(self, sendbuf, recvbuf) is None:
            return None
        if _plain(sendbuf, recvbuf):
            return super().Allgatherv(sendbuf, recvbuf)
        self._allgather("Allgatherv", sendbuf, recvbuf, vector_parts, "vector_spec", self.Get_size())

    def _exchange(self, op: str, sendbuf: Any, recvbuf: Any, read: Any, form: str, degrees: tuple[int, int]) -> None:
        """An all-to-all shaped exchange: ``degrees`` = (pieces received, pieces sent)."""
        if sendbuf is IN_PLACE:
            return getattr(super(), op)(sendbuf, recvbuf)
        start = perf_counter()
        rspec, staged, rtrial = self._stage(op, recvbuf, read, degrees[0], form, send=False)
        sspec, _, strial = self._stage(op, sendbuf, read, degrees[1], form, send=True)
        getattr(super(), op)(sspec, rspec)
        if staged is not None:
            staged.unpack()
        _timed(start, rtrial, strial)

    def Alltoall(self, sendbuf: Any, recvbuf: Any) -> None:
        if _plain(sendbuf, recvbuf):
            return super().Alltoall(sendbuf, recvbuf)
        size = self.Get_size()
        self._exchange("Alltoall", sendbuf, recvbuf, block_parts, "block_spec", (size, size))

    def Alltoallv(self, sendbuf: Any, recvbuf: Any) -> None:
        if _plain(sendbuf, recvbuf):
            return super().Alltoallv(sendbuf, recvbuf)
        size = self.Get_size()
        self._exchange("Alltoallv", sendbuf, recvbuf, vector_parts, "vector_spec", (size, size))

    def Alltoallw(self, sendbuf: Any, recvbuf: Any) -> None:
        size = self.Get_size()
        self._exchange("Alltoallw", sendbuf, recvbuf, typed_parts, "typed_spec", (size, size))


class NeighborCollectives:
    """Neighbourhood collectives of the topology communicators (mixed into :class:`commlib.comm.Topocomm`)."""

    def Neighbor_allgather(self, sendbuf: Any, recvbuf: Any) -> None:
        if sendbuf is IN_PLACE or _plain(sendbuf, recvbuf):
            return super().Neighbor_allgather(sendbuf, recvbuf)
        self._allgather("Neighbor_allgather", sendbuf, recvbuf, block_parts, "block_spec", self.degrees[0])

    def Neighbor_allgatherv(self, sendbuf: Any, recvbuf: Any) -> None:
        if sendbuf is IN_PLACE or _plain(sendbuf, recvbuf):
            return super().Neighbor_allgatherv(sendbuf, recvbuf)
        self._allgather("Neighbor_allgatherv", sendbuf, recvbuf, vector_parts, "vector_spec", self.degrees[0])

    def Neighbor_alltoall(self, sendbuf: Any, recvbuf: Any) -> None:
        if _plain(sendbuf, recvbuf):
            return super().Neighbor_alltoall(sendbuf, recvbuf)
        self._exchange("Neighbor_alltoall", sendbuf, recvbuf, block_parts, "block_spec", self.degrees)

    def Neighbor_alltoallv(self, sendbuf: Any, recvbuf: Any) -> None:
        if _plain(sendbuf, recvbuf):
            return super().Neighbor_alltoallv(sendbuf, recvbuf)
        self._exchange("Neighbor_alltoallv", sendbuf, recvbuf, vector_parts, "vector_spec", self.degrees)

    def Neighbor_alltoallw(self, sendbuf: Any, recvbuf: Any) -> None:
        self._exchange("Neighbor_alltoallw", sendbuf, recvbuf, typed_parts, "typed_spec", self.degrees)
