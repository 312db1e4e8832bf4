"""Collective buffer specs with derived datatypes, cut into one piece per peer.

A collective moves one piece of a buffer per peer: ``Gather``'s root receives
``size`` equal pieces, ``Gatherv`` pieces at displacements counted in
extents, ``Alltoallw`` pieces at byte displacements, each of its own type.
:func:`block_pieces`, :func:`vector_pieces` and :func:`typed_pieces` read the
buffer specs mpi4py accepts for these three shapes (the same forms, the same
count inference) and return :class:`Pieces`, or ``None`` for anything that
should go to mpi4py untouched: no derived datatype, ``IN_PLACE``/``BOTTOM``,
a form commlib does not read. :class:`PackedPieces` is the contiguous
staging buffer the collective then moves, one piece after another, each as
elements of its datatype's named base type, so that every peer, interposed
or not, sees the type signature it expects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from mpi4py import MPI

import datatypes

from .decision import Layout, Route, TypeInfo, piece_info
from .messages import Message, check_span
from .staging import StagingPool, staging_buffer

__all__ = ["PackedPieces", "Pieces", "StagedSide", "block_pieces", "typed_pieces", "vector_pieces"]


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _int_list(values: Any, blocks: int) -> list[int] | None:
    if not isinstance(values, (list, tuple, np.ndarray)) or len(values) != blocks:
        return None
    out = []
    for v in values:
        if type(v) is not int:
            if not _is_int(v):
                return None
            v = int(v)
        out.append(v)
    return out


def _plain_buffer(buf: Any) -> bool:
    """A host buffer commlib can read (not ``None``, ``IN_PLACE``, ``BOTTOM``, DLPack or CUDA arrays)."""
    if buf is None or buf is MPI.IN_PLACE or buf is MPI.BOTTOM:
        return False
    return type(buf) is np.ndarray or _nbytes(buf) is not None


def _nbytes(buf: Any) -> int | None:
    try:
        return memoryview(buf).nbytes
    except TypeError:
        return None


class Pieces:
    """``counts[i]`` objects of ``types[i]`` at byte ``displacements[i]`` of ``buf``, for each peer ``i``.

    ``infos[i]`` is what is known of ``types[i]`` (:mod:`commlib.interposer.decision`)
    and ``routes[i]`` its analysis for ``counts[i]`` objects: ``None`` for an
    empty piece, or while the piece's (type, count) is cold. ``analysed``:
    every non-empty piece has been (a cold one keeps the whole call on MPI's
    path); ``packable``: every non-empty piece has a canonical form with one
    named base type; ``nbytes``: the packed bytes of all pieces.
    """

    __slots__ = ("analysed", "buf", "counts", "displacements", "infos", "nbytes", "packable", "routes", "types")

    def __init__(
        self,
        buf: Any,
        counts: tuple[int, ...],
        displacements: tuple[int, ...],
        types: tuple[MPI.Datatype, ...],
        infos: tuple[TypeInfo, ...],
        routes: tuple[Route | None, ...],
    ) -> None:
        self.buf, self.counts, self.displacements, self.types = buf, counts, displacements, types
        self.infos, self.routes = infos, routes
        analysed = packable = True
        nbytes = 0
        for count, info, route in zip(counts, infos, routes):
            if count:
                nbytes += count * info.size
                if route is None:
                    analysed = packable = False
                elif route.base is None:
                    packable = False
        self.analysed, self.packable, self.nbytes = analysed, packable, nbytes

    def with_buffer(self, buf: Any) -> Pieces:
        """The same pieces in another buffer."""
        return Pieces(buf, self.counts, self.displacements, self.types, self.infos, self.routes)

    def message(self) -> Message:
        """The whole as one message, for a session's own decision rule: the datatype that carries the most bytes."""
        k = max(range(len(self.counts)), key=lambda i: self.counts[i] * self.infos[i].size, default=0)
        total = sum(c for c, info in zip(self.counts, self.infos) if info is self.infos[k])
        info = self.infos[k]
        route = info.route(self.types[k], total, eager=True)
        if not self.packable:
            route = None
        return Message(self.buf, total, self.types[k], info, route)

    def check(self, op: str, *, writable: bool) -> None:
        """Refuse (``ValueError``) a buffer that does not hold every piece, before MPI sees it."""
        buf = self.buf
        for count, disp, dt, info, route in zip(self.counts, self.displacements, self.types, self.infos, self.routes):
            if count:
                check_span(op, buf, count, dt, info, route, writable=writable, displacement=disp)


class StagedSide(NamedTuple):
    """How one side of a collective goes to MPI: the spec MPI gets, its staging when packed (else ``None``),
    the trial to report the call's time to (:class:`commlib.interposer.decision.Trial`) when both ways are being
    timed, the side's :class:`Pieces` when it was analysed, and its key (:func:`commlib.interposer.sides.side_key`)."""

    spec: Any
    packed: PackedPieces | None = None
    trial: Any = None
    pieces: Pieces | None = None
    key: tuple | None = None


@dataclass
class PackedPieces:
    """The pieces laid end to end in ``data``, as ``layout`` (:class:`.decision.Layout`) places them."""

    pieces: Pieces
    layout: Layout
    data: np.ndarray

    @classmethod
    def staged(cls, pieces: Pieces, layout: Layout, staging: StagingPool | None = None) -> PackedPieces:
        """An uninitialised staging buffer for ``pieces`` (from ``staging`` if given)."""
        return cls(pieces, layout, staging_buffer(layout.nbytes, staging))

    @classmethod
    def pack(
        cls, pieces: Pieces, layout: Layout, staging: StagingPool | None = None, skip: int | None = None
    ) -> PackedPieces:
        """Stage ``pieces`` (whose buffer was checked) for sending, but piece ``skip``: one copy where the
        layout allows."""
        staged = cls.staged(pieces, layout, staging)
        whole = layout.whole
        if whole is not None and skip is None:
            datatypes.pack(pieces.buf, 1, whole, out=staged.data)
        else:
            for i in range(len(pieces.counts)):
                if i != skip:
                    staged.pack_piece(i)
        return staged

    def _slot(self, i: int) -> np.ndarray:
        offset = self.layout.offsets[i]
        return self.data[offset : offset + self.layout.sizes[i]]

    def pack_piece(self, i: int) -> None:
        """Stage piece ``i`` from the user's buffer (an ``IN_PLACE`` contribution)."""
        p = self.pieces
        if p.counts[i]:
            datatypes.pack(p.buf, p.counts[i], p.types[i], out=self._slot(i), displacement=p.displacements[i])

    def unpack(self, skip: int | None = None) -> None:
        """Copy every received piece (but piece ``skip``) into the user's buffer: one copy where the layout allows."""
        p, whole = self.pieces, self.layout.whole
        if whole is not None and skip is None:
            datatypes.unpack(self.data, p.buf, 1, whole)
            return
        for i, (count, disp, dt) in enumerate(zip(p.counts, p.displacements, p.types)):
            if count and i != skip:
                datatypes.unpack(self._slot(i), p.buf, count, dt, displacement=disp)

    def block_spec(self) -> list:
        """``[data, n, base]``: equal pieces of ``n`` base elements (``Gather``, ``Scatter``, ...)."""
        elements = self.layout.elements
        return [self.data, elements[0] if elements else 0, self.layout.base]

    def _elements(self, skip: int | None) -> list[int]:
        elements = list(self.layout.elements)
        if skip is not None:
            elements[skip] = 0
        return elements

    def vector_spec(self, skip: int | None = None) -> list:
        """``[data, (counts, displacements), base]`` in base elements (``Gatherv``, ``Alltoallv``, ...);
        piece ``skip`` empty."""
        size = self.layout.base.Get_size()
        return [self.data, (self._elements(skip), [o // size for o in self.layout.offsets]), self.layout.base]

    def typed_spec(self, skip: int | None = None) -> list:
        """``[data, (counts, byte displacements), bases]`` (``Alltoallw``, ``Neighbor_alltoallw``); piece
        ``skip`` empty."""
        return [self.data, (self._elements(skip), list(self.layout.offsets)), list(self.layout.bases)]


def pieces_of(parts: Parts, *, eager: bool = False) -> Pieces | None:
    """The :class:`Pieces` of a read spec, what is known of every type looked up (``None``: no derived type)."""
    buf, counts, disps, types = parts
    for c, d in zip(counts, disps):
        if c < 0 or d < 0:
            return None  # mpi4py or MPI will report it
    infos, routes, derived = [], [], False
    known: dict[int, TypeInfo] = {}
    for t, count in zip(types, counts):
        info = known.get(id(t))
        if info is None:
            if not t:  # DATATYPE_NULL: MPI's to report
                return None
            info = known[id(t)] = piece_info(t)
            derived = derived or not t.is_predefined
        infos.append(info)
        routes.append(info.route(t, count, eager=eager) if count else None)
    if not derived:
        return None
    return Pieces(buf, tuple(counts), tuple(disps), tuple(types), tuple(infos), tuple(routes))


def _split_spec(spec: Any) -> tuple[Any, Any, Any, Any] | None:
    """``(buf, counts, displacements, datatype)`` of a 2- to 4-item spec, ``None`` when absent."""
    if not isinstance(spec, (list, tuple)) or not 2 <= len(spec) <= 4:
        return None
    if len(spec) == 4:
        return spec[0], spec[1], spec[2], spec[3]
    buf, counts, datatype = spec[0], (spec[1] if len(spec) == 3 else None), spec[-1]
    if isinstance(counts, tuple):
        if len(counts) != 2:
            return None
        return buf, counts[0], counts[1], datatype
    return buf, counts, None, datatype


Parts = tuple  # (buffer, counts, byte displacements, datatypes): a spec read, not yet looked into


def block_parts(spec: Any, blocks: int) -> Parts | None:
    """``blocks`` equal pieces laid end to end: the root's buffer of ``Gather``/``Scatter``, ``Allgather``..."""
    parts = _split_spec(spec)
    if parts is None or len(spec) == 4 or blocks <= 0:
        return None
    buf, count, displ, datatype = parts
    if displ is not None or not _plain_buffer(buf) or not isinstance(datatype, MPI.Datatype):
        return None
    if datatype.is_predefined:
        return None
    extent = datatype.Get_extent()[1]
    if count is None:
        nbytes = _nbytes(buf)
        if nbytes is None or extent <= 0 or nbytes % extent or (nbytes // extent) % blocks:
            return None  # mpi4py reports what it cannot infer
        count = nbytes // extent // blocks
    elif not _is_int(count):
        return None
    count = int(count)
    return buf, [count] * blocks, [i * count * extent for i in range(blocks)], [datatype] * blocks


def vector_parts(spec: Any, blocks: int) -> Parts | None:
    """Pieces at displacements counted in extents: ``Gatherv``/``Scatterv``, ``(Neighbor_)alltoallv``..."""
    parts = _split_spec(spec)
    if parts is None or blocks <= 0:
        return None
    buf, counts, displs, datatype = parts
    if not _plain_buffer(buf) or not isinstance(datatype, MPI.Datatype) or datatype.is_predefined:
        return None
    extent = datatype.Get_extent()[1]
    if counts is None:
        nbytes = _nbytes(buf)
        if nbytes is None or extent <= 0 or nbytes % extent:
            return None
        total = nbytes // extent
        counts = [total // blocks + (total % blocks > i) for i in range(blocks)]
    elif _is_int(counts):
        counts = [int(counts)] * blocks
    else:
        counts = _int_list(counts, blocks)
        if counts is None:
            return None
    if displs is None:
        displs = [int(x) for x in np.cumsum([0, *counts[:-1]])] if blocks else []
    elif _is_int(displs):
        displs = [int(displs) * i for i in range(blocks)]
    else:
        displs = _int_list(displs, blocks)
        if displs is None:
            return None
    return buf, counts, [d * extent for d in displs], [datatype] * blocks


def typed_parts(spec: Any, blocks: int) -> Parts | None:
    """Pieces of their own datatypes at byte displacements: ``Alltoallw``, ``Neighbor_alltoallw``."""
    if not isinstance(spec, (list, tuple)) or not 2 <= len(spec) <= 4 or blocks <= 0:
        return None
    if len(spec) == 2:
        buf, types = spec
        counts, displs = [1] * blocks, [0] * blocks
    elif len(spec) == 3:
        if not isinstance(spec[1], (list, tuple)) or len(spec[1]) != 2:
            return None
        buf, (counts, displs), types = spec
    else:
        buf, counts, displs, types = spec
    if not _plain_buffer(buf) or not isinstance(types, (list, tuple)) or len(types) != blocks:
        return None
    if not all(isinstance(t, MPI.Datatype) for t in types):
        return None
    counts, displs = _int_list(counts, blocks), _int_list(displs, blocks)
    if counts is None or displs is None:
        return None
    return buf, counts, displs, list(types)


def block_pieces(spec: Any, blocks: int, *, eager: bool = False) -> Pieces | None:
    """:class:`Pieces` of a spec :func:`block_parts` reads."""
    parts = block_parts(spec, blocks)
    return None if parts is None else pieces_of(parts, eager=eager)


def vector_pieces(spec: Any, blocks: int, *, eager: bool = False) -> Pieces | None:
    """:class:`Pieces` of a spec :func:`vector_parts` reads."""
    parts = vector_parts(spec, blocks)
    return None if parts is None else pieces_of(parts, eager=eager)


def typed_pieces(spec: Any, blocks: int, *, eager: bool = False) -> Pieces | None:
    """:class:`Pieces` of a spec :func:`typed_parts` reads."""
    parts = typed_parts(spec, blocks)
    return None if parts is None else pieces_of(parts, eager=eager)


def cold_check(op: str, parts: Parts, *, writable: bool) -> int | None:
    """Bounds-check every piece from MPI's extents alone; returns the pieces' packed bytes.

    ``None`` when a derived datatype is not involved (the spec goes to MPI as
    it is). A piece that may overrun the buffer by MPI's (exact or wider)
    extents gets the exact check of :func:`datatypes.check_buffer`, which
    raises. What a side of a collective costs while it is not worth
    analysing: no :class:`Pieces`, no lookup of what is known of its types.
    """
    buf, counts, disps, types = parts
    view = buf if type(buf) is np.ndarray and buf.flags.c_contiguous else None
    if view is not None and writable and not view.flags.writeable:
        view = None
    size = view.nbytes if view is not None else -1
    nbytes, derived, seen = 0, False, {}
    for count, disp, t in zip(counts, disps, types):
        if count < 0 or disp < 0:
            return None  # mpi4py or MPI will report it
        known = seen.get(id(t))
        if known is None:
            if not t:  # DATATYPE_NULL: MPI's to report
                return None
            derived = derived or not t.is_predefined
            lb, extent = t.Get_true_extent()
            known = seen[id(t)] = (t.Get_size(), t.Get_extent()[1], lb, lb + extent)
        if count:
            tsize, extent, lo, hi = known
            nbytes += count * tsize
            span = (count - 1) * extent
            if tsize and (disp + lo + min(0, span) < 0 or disp + hi + max(0, span) > size):
                datatypes.check_buffer(op, buf, count, t, writable=writable, displacement=disp)
    return nbytes if derived else None
