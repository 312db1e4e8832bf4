"""Collectives with derived datatypes, carried packed.

Mixins for the wrapped communicators (:mod:`commlib.interposer.comm`). Each side of a
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

import datatypes

from ..config import config
from .lone_exchange import copy_alone, scales_displacements
from .messages import Packed
from .pieces import Pieces, block_parts, typed_parts, vector_parts

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
    """Report the call's time to the sides being timed both ways (:class:`commlib.interposer.decision.Trial`)."""
    if trials[0] is None and trials[-1] is None:
        return
    seconds = perf_counter() - start
    for trial in trials:
        if trial is not None:
            trial.observe(seconds)


# A rank's piece for itself is copied by commlib from this size on: a copy costs about 5 us of Python, which MPI's
# own copy of a strided piece costs at about 64 KiB (measured for pencil-transpose subarrays, MPICH).
OWN_PIECE_BYTES = 1 << 16


def _own_piece(op: str, rank: int, received: Pieces | None, staged: Any) -> int | None:
    """``rank`` when an exchange's piece for the caller itself may skip MPI: both sides are read into
    pieces (the receive side here), and the piece has a strided form and enough bytes to pay a copy."""
    if received is None or not (op == "Alltoallw" or (op == "Alltoallv" and staged is not None)):
        return None
    count, route = received.counts[rank], received.routes[rank]
    if route is None or route.block is None or route.contiguous or count * received.infos[rank].size < OWN_PIECE_BYTES:
        return None
    return rank


def _copy_own(op: str, sent: Pieces | None, received: Pieces, rank: int) -> bool:
    """Copy a rank's piece for itself straight from its send buffer into its receive buffer (both checked).

    One pass where packing, MPI's own copy and unpacking make three, and
    where MPI's derived-datatype copy would make two. ``False`` (nothing
    copied) when the send side was not read into pieces, its piece has no
    strided form, or the two pieces' sizes differ (MPI reports that).
    """
    if sent is None or sent.routes[rank] is None or sent.routes[rank].block is None:
        return False
    scount, rcount = sent.counts[rank], received.counts[rank]
    if scount * sent.infos[rank].size != rcount * received.infos[rank].size:
        return False
    # the canonical forms, shared by every type of the same signature: a type built for this call is not walked
    datatypes.copy(
        sent.buf,
        scount,
        sent.routes[rank].block,
        received.buf,
        rcount,
        received.routes[rank].block,
        sdisp=sent.displacements[rank],
        rdisp=received.displacements[rank],
        op=op,
    )
    return True


def _without(spec: Any, pieces: Pieces, rank: int) -> list:
    """An ``Alltoallw`` spec for MPI's own path with piece ``rank`` empty."""
    counts = list(pieces.counts)
    counts[rank] = 0
    return [spec[0], (counts, list(pieces.displacements)), list(pieces.types)]


def _keep_pair(session: Any, op: str, rank: int, sendbuf: Any, recvbuf: Any, sside: Any, rside: Any) -> None:
    """Let repeats of this exchange skip the Python path while both its sides go to MPI as they are: kept sides
    (:meth:`.sides.KnownSides.native`), or for the calls a cold side may make before it is worth a look
    (:meth:`.sides.KnownSides.cold`)."""
    sides = session.sides
    kept = []
    for side, spec, send in ((sside, sendbuf, True), (rside, recvbuf, False)):
        if side.cold is not None:
            kept.append(sides.cold(side.key, spec, side.cold, session.native_tally(op), send=send))
        else:
            kept.append(sides.native(side.key))
    if kept[0] is not None and kept[1] is not None:
        session.pairs.add(op, rank, sendbuf, recvbuf, kept[0], kept[1])


def _plain(*bufs: Any) -> bool:
    """No buffer is a list/tuple spec, so none can name a derived datatype."""
    return all(b.__class__ not in _SPECS for b in bufs)


class Collectives:
    """Intra-communicator collectives (mixed into :class:`commlib.interposer.comm.Intracomm`)."""

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
            rspec, staged, trial, *_ = self._stage(op, recvbuf, read, self.Get_size(), form, send=False)
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
            sspec, _, trial, *_ = self._stage(op, sendbuf, read, self.Get_size(), form, send=True)
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
        rspec, staged, trial, *_ = self._stage(op, recvbuf, read, pieces, form, send=False)
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
        session, rank = self._session, self.Get_rank()
        if session is not None and session.pairs.find(op, rank, sendbuf, recvbuf):
            return getattr(super(), op)(sendbuf, recvbuf)
        start = perf_counter()
        rside = self._stage(op, recvbuf, read, degrees[0], form, send=False)
        rspec, staged, rtrial, received = rside[:4]
        own = _own_piece(op, rank, received, staged)
        sside = self._stage(op, sendbuf, read, degrees[1], form, send=True, skip=own)
        sspec, sent, strial, given = sside[:4]
        if own is not None:
            # a send side left to MPI can drop its piece only in Alltoallw's form (_without)
            if (sent is not None or op == "Alltoallw") and _copy_own(op, given, received, own):
                sspec = sspec if sent is not None else _without(sspec, given, own)
                rspec = getattr(staged, form)(skip=own) if staged is not None else _without(rspec, received, own)
            else:
                if sent is not None:  # left out for a copy that cannot be made: MPI moves it after all
                    sent.pack_piece(own)
                    sspec = getattr(sent, form)()
                own = None
        getattr(super(), op)(sspec, rspec)
        if staged is not None:
            staged.unpack(skip=own)
        elif sent is None and own is None and session is not None:
            _keep_pair(session, op, rank, sendbuf, recvbuf, sside, rside)
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
        if size == 1 and sendbuf is not IN_PLACE and scales_displacements() and copy_alone(sendbuf, recvbuf):
            return None
        self._exchange("Alltoallw", sendbuf, recvbuf, typed_parts, "typed_spec", (size, size))


class NeighborCollectives:
    """Neighbourhood collectives of the topology communicators (mixed into :class:`.comm.Topocomm`)."""

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
