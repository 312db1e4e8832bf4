"""Sides of collectives a session has seen: a repeated call finds its outcome in one lookup.

Reading a vector collective's buffer spec into pieces (one per peer),
bounds-checking every piece and deciding (:mod:`commlib.interposer.decision`) takes
tens of microseconds of Python for an ``Alltoallw`` among a few peers.
Programs repeat the same call, with the same datatype objects, counts and
displacements (the transposes of a pencil FFT, a halo's neighbourhood
exchange): :class:`KnownSides` keeps each side's outcome (MPI's path, or a
staging layout) under a key made of the spec's counts, displacements and
datatype identities, and a later call pays for the key, a check that its
buffer holds every piece and that the datatypes are still alive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from mpi4py import MPI

from datatypes import model as cost_model
from datatypes.bounded import BoundedDict

from ..config import Config
from .decision import Layout, hot_bytes

__all__ = ["KnownSides", "NativePairs", "Side"]

MAX_SIDES = 1024
_NOTHING = (0, None)


def _freeze(item: Any) -> Any:
    """A hashable stand-in for one spec item (ints, datatypes and lists of them), or ``None``: not kept."""
    cls = item.__class__
    if cls is int:
        return item
    if cls is MPI.Datatype:
        return ~id(item)  # negative: never equal to a count or a displacement
    if cls is list or cls is tuple:
        out = []
        for x in item:
            frozen = _freeze(x)
            if frozen is None:
                return None
            out.append(frozen)
        return tuple(out)
    return None


def side_key(op: str, spec: Any, send: bool) -> tuple | None:
    """The key of one side of a collective: its operation, direction and spec without the buffer."""
    if spec.__class__ not in (list, tuple) or not 2 <= len(spec) <= 4:
        return None
    if len(spec) == 3 and spec[2].__class__ is list:  # Alltoallw's [buf, (counts, displacements), types]
        try:
            counts, displs = spec[1]
            return (op, send, tuple(counts), tuple(displs), tuple(map(id, spec[2])))
        except (TypeError, ValueError):
            return None
    rest = _freeze(spec[1:])
    return None if rest is None else (op, send, rest)


@dataclass
class Side:
    """One side's outcome and what a repeated call must check: the byte range its pieces touch."""

    types: tuple[MPI.Datatype, ...]  # held, so that their ids in the key cannot be reused while kept
    lo: int
    hi: int
    writable: bool
    pieces: Any  # the commlib.interposer.pieces.Pieces of the first call (its buffer is replaced by each call's)
    layout: Layout | None  # None: MPI's path
    tally: list[int]
    nbytes: int
    remaining: int  # calls left before the full path must see one again (-1: never)
    stamp: tuple[int, int]

    def holds(self, buf: Any) -> bool:
        """Whether ``buf`` (a C-contiguous numpy array, writable for a receive side) holds every piece, and the
        side's datatypes are still alive (a freed datatype is null)."""
        if type(buf) is not np.ndarray:
            return False
        flags = buf.flags
        if not flags.c_contiguous or (self.writable and not flags.writeable):
            return False
        return self.lo >= 0 and self.hi <= buf.nbytes and all(self.types)


class KnownSides:
    """The collective sides of one session whose outcome was decided by the cost model.

    A side is kept the second time its key is met: a spec built for one
    call (new datatypes every time) costs its key and nothing more.
    """

    def __init__(self) -> None:
        self._sides: BoundedDict[tuple, Side] = BoundedDict(MAX_SIDES)
        self._met: BoundedDict[tuple, None] = BoundedDict(MAX_SIDES)  # keys met once, as a set
        # key -> (bytes moved while not worth a look, the datatypes: held, so that the ids in the key are not
        # reused by types made later; a spec rebuilt for every call then never meets its key twice)
        self._moved: BoundedDict[tuple, tuple[int, Any]] = BoundedDict(MAX_SIDES)

    def worth(self, key: tuple | None, nbytes: int, types: Any = None) -> bool:
        """Whether a side is worth reading into pieces and deciding: it moved enough bytes, in this call and
        earlier ones with the same ``key``, for an analysis to pay (:func:`commlib.interposer.decision.hot_bytes`).
        ``types``: the spec's datatypes, held while the key is."""
        if key is None:
            return True
        moved = self._moved.get(key, _NOTHING)[0] + nbytes
        if moved >= hot_bytes():
            self._moved.pop(key, None)
            return True
        self._moved[key] = (moved, types)
        return False

    def lookup(self, key: tuple | None, spec: Any) -> tuple[Side, Any] | None:
        """``(side, pieces for this call's buffer)`` of a known side whose buffer holds every piece, else ``None``."""
        side = self._sides.get(key) if key is not None else None
        if side is None or side.stamp != (Config.changes, cost_model.generation()):
            return None
        buf = spec[0]
        if not side.holds(buf):
            return None
        if side.remaining >= 0:
            side.remaining -= 1
            if side.remaining <= 0:
                del self._sides[key]
                return None
        side.tally[0] += 1
        side.tally[1] += side.nbytes
        return side, (side.pieces if side.pieces.buf is buf else side.pieces.with_buffer(buf))

    def remember(
        self, key: tuple | None, pieces: Any, layout: Layout | None, tally: list[int], remaining: int, send: bool
    ) -> None:
        """Keep the outcome of one side (``remaining`` calls, or for ever with -1), if its key was met before."""
        if key is None or remaining in (0, 1):
            return
        if key not in self._met:
            self._met[key] = None
            return
        lo = hi = 0
        for count, disp, info, route in zip(pieces.counts, pieces.displacements, pieces.infos, pieces.routes):
            if count:
                a, b = info.touched(count) if route is None else (route.lo, route.hi)
                if b > a:
                    lo, hi = (a + disp, b + disp) if hi <= lo else (min(lo, a + disp), max(hi, b + disp))
        types = tuple({id(t): t for t in pieces.types}.values())
        stamp = (Config.changes, cost_model.generation())
        self._sides[key] = Side(types, lo, hi, not send, pieces, layout, tally, pieces.nbytes, remaining, stamp)

    def cold(self, key: tuple | None, spec: Any, cold: Any, tally: list[int], *, send: bool) -> Side | None:
        """A side not yet worth a look (:func:`commlib.interposer.pieces.cold_check` gave ``cold``) as a kept side
        for the calls it may make before it is (``None``: fewer than two, or its key met for the first time).
        Those calls' bytes are counted now, so that the call after them is analysed."""
        if key is None or not cold.nbytes:
            return None
        moved, held = self._moved.get(key, _NOTHING)
        if moved <= cold.nbytes:  # met for the first time: a spec built for one call is not kept
            return None
        calls = int((hot_bytes() - moved) // cold.nbytes) - 1
        if calls < 2:
            return None
        self._moved[key] = (moved + calls * cold.nbytes, held)
        types = spec[2] if isinstance(spec[2], (list, tuple)) else (spec[2],)
        types = tuple({id(t): t for t in types}.values())
        stamp = (Config.changes, cost_model.generation())
        return Side(types, cold.lo, cold.hi, not send, None, None, tally, cold.nbytes, calls, stamp)

    def native(self, key: tuple | None) -> Side | None:
        """The kept side of ``key`` when it goes to MPI as it is (for good, or for its ``remaining`` calls)."""
        side = self._sides.get(key) if key is not None else None
        if side is None or side.layout is not None or side.remaining == 0:
            return None
        return side if side.stamp == (Config.changes, cost_model.generation()) else None


def _lists(spec: Any) -> tuple | None:
    """``(buffer, counts, displacements, datatypes)`` of a ``[buf, (counts, displacements), types]`` spec."""
    if spec.__class__ is not list and spec.__class__ is not tuple or len(spec) != 3:
        return None
    inner = spec[1]
    if inner.__class__ is not tuple and inner.__class__ is not list or len(inner) != 2:
        return None
    return spec[0], inner[0], inner[1], spec[2]


class NativePairs:
    """Vector exchanges whose two sides both go to MPI as they are, found again in a few comparisons.

    The cheapest path for a repeated ``Alltoallw``/``Alltoallv`` of small
    pieces (the transposes of a small pencil FFT), where every microsecond
    of Python is a share of the call: keyed by the identities of the lists
    in the two specs and checked by comparing them with copies (so a list
    changed in place is seen), that the datatypes are alive and that each
    buffer still holds what its side touches.
    """

    def __init__(self) -> None:
        self._pairs: BoundedDict[tuple, tuple[Side, Side, tuple]] = BoundedDict(MAX_SIDES)

    @staticmethod
    def _key(op: str, rank: int, send: tuple, recv: tuple) -> tuple:
        return (op, rank, id(send[1]), id(send[2]), id(send[3]), id(recv[1]), id(recv[2]), id(recv[3]))

    def add(self, op: str, rank: int, sendbuf: Any, recvbuf: Any, sent: Side, received: Side) -> None:
        """Keep an exchange whose two sides go to MPI as they are (:meth:`KnownSides.native`, :meth:`~.cold`)."""
        send, recv = _lists(sendbuf), _lists(recvbuf)
        if send is None or recv is None:
            return
        copies = tuple(x.__class__(x) if x.__class__ in (list, tuple) else x for x in (*send[1:], *recv[1:]))
        self._pairs[self._key(op, rank, send, recv)] = (sent, received, copies)

    def find(self, op: str, rank: int, sendbuf: Any, recvbuf: Any) -> bool:
        """Whether this call is a kept exchange whose buffers hold every piece (its use is counted)."""
        send, recv = _lists(sendbuf), _lists(recvbuf)
        if send is None or recv is None:
            return False
        entry = self._pairs.get(self._key(op, rank, send, recv))
        if entry is None:
            return False
        sent, received, copies = entry
        if sent.stamp != (Config.changes, cost_model.generation()) or received.stamp != sent.stamp:
            return False
        if sent.remaining == 0 or received.remaining == 0:  # a cold side's calls are spent: it is worth a look
            return False
        sc, sd, st, rc, rd, rt = copies
        # lists compare element by element; a datatype equal by handle only is caught by Side.holds: the kept
        # one, freed to make room for it, is null
        if sc != send[1] or sd != send[2] or st != send[3] or rc != recv[1] or rd != recv[2] or rt != recv[3]:
            return False
        if not (sent.holds(send[0]) and received.holds(recv[0])):
            return False
        for side in (sent, received):
            side.tally[0] += 1
            side.tally[1] += side.nbytes
            if side.remaining > 0:
                side.remaining -= 1
        return True
