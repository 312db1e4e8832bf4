"""Flight recorder: every traced communication call of one rank, in a bounded ring buffer.

:meth:`FlightRecorder.enter` and :meth:`FlightRecorder.leave` implement the
monitor protocol of :mod:`commlib.tracing` and are the only per-call cost of
the fault-detection monitor, so they do as little as possible: a clock read,
one dictionary lookup for the communicator (by handle), a sequence counter,
an in-flight table entry, and on completion one slot of a preallocated ring.
Collectives and point-to-point operations are numbered separately per
communicator: collective numbers agree across ranks (every member calls the
same collectives in the same order), so comparing them across ranks finds the
wavefront of a hang. Only cheap summaries of the arguments are kept (peer
ranks and tag as given); user buffers are never referenced.

Everything else (snapshots, histories, descriptions) is read by the monitor's
own thread, never on the application's path.
"""

from __future__ import annotations

import itertools
import operator
import time
import zlib
from _thread import get_ident
from collections.abc import Callable
from typing import Any

from mpi4py import MPI

from commlib.tracing import BLOCKING, NONBLOCKING

__all__ = ["COLLECTIVES", "CommState", "FlightRecorder", "Record", "describe_peers", "ranges"]

_now = time.perf_counter

# Operations that every member of the communicator calls, in the same order on every member.
COLLECTIVES = frozenset(
    name
    for name in BLOCKING | NONBLOCKING
    if name.lstrip("I").lower().startswith(
        ("barrier", "bcast", "gather", "scatter", "allgather", "alltoall", "reduce", "allreduce", "scan", "exscan",
         "neighbor")
    )
)  # fmt: skip

# Where each operation's peer ranks and tag sit: (field, position, keyword) for the fields it has.
_SEND = (("dest", 1, "dest"), ("tag", 2, "tag"))
_RECV = (("source", 1, "source"), ("tag", 2, "tag"))
_PROBE = (("source", 0, "source"), ("tag", 1, "tag"))
_SENDRECV = (("dest", 1, "dest"), ("tag", 2, "sendtag"), ("source", 4, "source"))
_REPLACE = (("dest", 1, "dest"), ("tag", 2, "sendtag"), ("source", 3, "source"))
_ROOT1, _ROOT2, _ROOT3 = (("root", 1, "root"),), (("root", 2, "root"),), (("root", 3, "root"),)
_ARGUMENTS = {
    **dict.fromkeys(("Send", "Ssend", "Bsend", "Rsend", "send", "ssend", "bsend"), _SEND),
    **dict.fromkeys(("Isend", "Issend", "Ibsend", "Irsend"), _SEND),
    **dict.fromkeys(("Recv", "Irecv", "recv"), _RECV),
    **dict.fromkeys(("Probe", "Mprobe", "probe", "mprobe"), _PROBE),
    **dict.fromkeys(("Sendrecv", "Isendrecv", "sendrecv"), _SENDRECV),
    **dict.fromkeys(("Sendrecv_replace", "Isendrecv_replace"), _REPLACE),
    **dict.fromkeys(("Bcast", "Ibcast", "bcast", "gather", "scatter"), _ROOT1),
    **dict.fromkeys(("Gather", "Gatherv", "Scatter", "Scatterv", "reduce"), _ROOT2),
    **dict.fromkeys(("Igather", "Igatherv", "Iscatter", "Iscatterv"), _ROOT2),
    **dict.fromkeys(("Reduce", "Ireduce"), _ROOT3),
}
_DEFAULTS = {"dest": None, "root": 0, "source": MPI.ANY_SOURCE, "tag": MPI.ANY_TAG, "sendtag": 0}


def _extractor(fields: tuple) -> Callable[[tuple, dict], tuple]:
    """A function taking an operation's ``(args, kwargs)`` to the tuple of its ``fields`` (ints, as given)."""
    positions = tuple(position for _, position, _ in fields)
    need = max(positions)
    fast = operator.itemgetter(*positions, need)  # one more item keeps the result a tuple

    def slow(args: tuple, kwargs: dict) -> tuple:
        return tuple(
            args[position] if len(args) > position else kwargs.get(keyword, _DEFAULTS[keyword])
            for _, position, keyword in fields
        )

    def extract(args: tuple, kwargs: dict) -> tuple:
        if kwargs or len(args) <= need:
            return slow(args, kwargs)
        return fast(args)[:-1]

    return extract


class _Specs(dict):
    """op -> (is collective, is blocking, argument extractor or None); a name traced later than this module
    was written counts as a blocking point-to-point call rather than raising into the application."""

    def __missing__(self, op: str) -> tuple[bool, bool, Callable | None]:
        return (False, True, None)


_SPECS = _Specs(
    (name, (name in COLLECTIVES, name in BLOCKING, _extractor(_ARGUMENTS[name]) if name in _ARGUMENTS else None))
    for name in BLOCKING | NONBLOCKING
)


def ranges(ranks: tuple[int, ...] | list[int]) -> str:
    """``(0, 1, 2, 5)`` as ``"0-2,5"``."""
    parts: list[str] = []
    items = sorted(ranks)
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[j] + 1:
            j += 1
        parts.append(str(items[i]) if i == j else f"{items[i]}-{items[j]}")
        i = j + 1
    return ",".join(parts)


class CommState:
    """What the recorder knows of one communicator: identity, members and counters."""

    __slots__ = ("coll_done", "coll_entered", "handle", "ident", "label", "last_op", "members", "p2p")

    def __init__(
        self, handle: int, members: tuple[int, ...], label: str, generation: int = 1, number: int | None = None
    ) -> None:
        self.handle = handle
        self.members = members  # world rank of each communicator rank (intercomms: local group, then remote)
        digest = zlib.crc32(",".join(map(str, members)).encode())
        # the same on every member when they create and free their communicators in the same order: ``number``
        # is the Fortran handle (MPICH: the handle itself; Open MPI: an index in creation order, where the C
        # handle is a per-process address); the generation tells apart communicators that reused a freed one's
        number = handle if number is None else number
        self.ident = f"{number & 0xFFFFFFFF:08x}.{generation}-{digest:08x}"
        self.label = label
        self.coll_entered = 0  # number of the last collective entered
        self.coll_done = 0  # highest number of a collective completed
        self.p2p = 0  # point-to-point operations entered
        self.last_op = ""

    def describe(self) -> dict:
        return {
            "ident": self.ident,
            "label": self.label,
            "size": len(self.members),
            "members": ranges(self.members),
            "coll_entered": self.coll_entered,
            "coll_done": self.coll_done,
            "p2p": self.p2p,
            "last_op": self.last_op,
        }


# An in-flight record: (start, comm state, op, sequence number, thread id, peer fields or None, is collective).
Record = tuple


def describe_peers(op: str, peers: tuple | None, members: tuple[int, ...]) -> dict:
    """The peer ranks and tag of a record, as the communicator's ranks and (where known) world ranks."""
    out: dict[str, Any] = {}
    if peers is None or op not in _ARGUMENTS:
        return out
    for (name, _, _), value in zip(_ARGUMENTS[op], peers):
        try:
            value = int(value)
        except (TypeError, ValueError):
            continue
        out[name] = value
        if name != "tag" and 0 <= value < len(members):
            out[f"{name}_world"] = members[value]
    return out


class FlightRecorder:
    """Per-rank record of traced calls: in-flight table plus a ring of the last ``capacity`` completed calls."""

    def __init__(self, capacity: int = 4096) -> None:
        if capacity < 16:
            raise ValueError(f"FlightRecorder: capacity must be at least 16, got {capacity}")
        size = 1 << (capacity - 1).bit_length()  # a power of two: the slot is a mask away
        self.capacity = size
        self._mask = size - 1
        self._ring: list[tuple | None] = [None] * size
        self._pos = 0  # completed calls so far; the next one goes to slot _pos & _mask
        self._inflight: dict[int, Record] = {}
        self._tokens = itertools.count(1)
        self._comms: dict[int, CommState] = {}
        self._generations: dict[int, int] = {}
        self._world = MPI.COMM_WORLD.Get_group()
        self._fixed = {MPI.COMM_WORLD.handle, MPI.COMM_SELF.handle}
        self._keyval = MPI.Comm.Create_keyval(delete_fn=self._forget)
        self.world_rank = MPI.COMM_WORLD.Get_rank()
        self.enter, self.leave = self._protocol()

    # -- the monitor protocol (the application's path) ------------------------
    def _protocol(self) -> tuple[Callable, Callable]:
        """``enter`` and ``leave`` as closures: locals instead of attribute lookups on the hot path."""
        comms, inflight, specs, ring, mask = self._comms, self._inflight, _SPECS, self._ring, self._mask
        tokens, adopt, now, ident = self._tokens, self._adopt, _now, get_ident
        recorder = self

        def enter(comm: Any, op: str, args: tuple, kwargs: dict) -> int:
            start = now()
            state = comms.get(comm.handle)
            if state is None:
                state = adopt(comm)
            collective, _, extract = specs[op]
            if collective:
                seq = state.coll_entered = state.coll_entered + 1
            else:
                seq = state.p2p = state.p2p + 1
            state.last_op = op
            token = next(tokens)
            inflight[token] = (start, state, op, seq, ident(), extract(args, kwargs) if extract else None, collective)
            return token

        def leave(token: int) -> None:
            record = inflight.pop(token, None)
            if record is None:
                return
            end = now()
            if record[6]:
                state = record[1]
                if record[3] > state.coll_done:
                    state.coll_done = record[3]
            pos = recorder._pos
            recorder._pos = pos + 1
            ring[pos & mask] = (record, end)

        return enter, leave

    # -- communicators ---------------------------------------------------------
    def _adopt(self, comm: Any) -> CommState:
        handle = comm.handle
        try:
            members = self._members(comm)
        except Exception:  # whatever MPI says, the application's call goes on
            members = ()
        if handle == MPI.COMM_WORLD.handle:
            label = "COMM_WORLD"
        elif handle == MPI.COMM_SELF.handle:
            label = "COMM_SELF"
        else:
            label = type(comm).__name__
            try:
                label = comm.Get_name() or label
                comm.Set_attr(self._keyval, handle)  # dropped from the table when the communicator is freed
            except Exception:  # a name or attribute is a nicety
                pass
        try:
            number = comm.py2f()
        except Exception:  # the C handle then (the same on every rank under MPICH)
            number = handle
        generation = self._generations[number] = self._generations.get(number, 0) + 1
        state = CommState(handle, members, label, generation, number)
        self._comms[handle] = state
        return state

    def _members(self, comm: Any) -> tuple[int, ...]:
        groups = [comm.Get_group()]
        if comm.Is_inter():
            groups.append(comm.Get_remote_group())
        try:
            out: list[int] = []
            for group in groups:
                out += MPI.Group.Translate_ranks(group, None, self._world)
            return tuple(out)
        finally:
            for group in groups:
                group.Free()

    def _forget(self, comm: Any, keyval: int, handle: int) -> None:
        self._comms.pop(handle, None)

    def close(self) -> None:
        """Release the MPI objects the recorder holds (the records stay readable)."""
        if not MPI.Is_finalized():
            try:
                self._world.Free()
            except MPI.Exception:
                pass

    # -- reading (the monitor's thread) ----------------------------------------
    def inflight(self) -> list[tuple[int, Record]]:
        """``(token, record)`` of the calls entered and not yet completed, oldest first."""
        return sorted(self._inflight.copy().items(), key=lambda item: item[1][0])

    def completed(self, limit: int | None = None) -> list[tuple[Record, float]]:
        """The last ``limit`` (default: all kept) completed calls as ``(record, end)``, oldest first."""
        pos = self._pos
        ring = self._ring.copy()
        count = min(pos, self.capacity if limit is None else min(limit, self.capacity))
        return [ring[(pos - count + i) & self._mask] for i in range(count) if ring[(pos - count + i) & self._mask]]

    @property
    def position(self) -> int:
        """How many calls have completed since the recorder started."""
        return self._pos

    def since(self, position: int, limit: int) -> tuple[int, list[tuple[Record, float]]]:
        """Completed calls after ``position`` (at most the last ``limit``), and the current position."""
        pos = self._pos
        count = max(0, min(pos - position, limit, self.capacity))
        ring = self._ring.copy()
        return pos, [ring[(pos - count + i) & self._mask] for i in range(count)]

    def comms(self) -> list[CommState]:
        return list(self._comms.copy().values())

    def history(self, state: CommState, op: str, limit: int = 64) -> list[float]:
        """Durations of the last ``limit`` completed ``op`` calls on ``state``'s communicator."""
        out = []
        for record, end in reversed(self.completed()):
            if record[1] is state and record[2] == op:
                out.append(end - record[0])
                if len(out) == limit:
                    break
        return out

    def prune(self, keep: int) -> int:
        """Forget the oldest nonblocking in-flight records beyond ``keep`` (never completed); returns how many."""
        records = self._inflight.copy()
        if len(records) <= keep:
            return 0
        nonblocking = sorted((r[0], t) for t, r in records.items() if not _SPECS[r[2]][1])
        dropped = 0
        for _, token in nonblocking[: len(records) - keep]:
            if self._inflight.pop(token, None) is not None:
                dropped += 1
        return dropped

    @staticmethod
    def is_collective(op: str) -> bool:
        return _SPECS[op][0]

    @staticmethod
    def is_blocking(op: str) -> bool:
        return _SPECS[op][1]

    def describe(self, record: Record, now: float) -> dict:
        """One in-flight or completed record as plain data (for reports and the side channel)."""
        start, state, op, seq, thread, peers, _ = record
        out = {
            "op": op,
            "comm": state.ident,
            "label": state.label,
            "size": len(state.members),
            "seq": seq,
            "kind": "collective" if _SPECS[op][0] else "p2p",
            "blocking": _SPECS[op][1],
            "thread": thread,
            "age": now - start,
        }
        out.update(describe_peers(op, peers, state.members))
        return out
