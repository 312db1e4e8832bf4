"""Flight recorder: every traced communication call of one rank, in a bounded ring buffer.

:meth:`FlightRecorder.enter` and :meth:`FlightRecorder.leave` implement the
monitor protocol of :mod:`commlib.interposer.tracing` and are the only per-call cost of
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

import time
import zlib
from typing import Any

from mpi4py import MPI

from .flight import CommState, Core
from .operations import ARGUMENTS, COLLECTIVES, OPERATIONS, SPECS
from .wavefront import ranges

__all__ = [
    "COLLECTIVES",
    "CommState",
    "FlightRecorder",
    "Record",
    "comm_ident",
    "describe_comm",
    "describe_peers",
    "ranges",
]

_now = time.perf_counter


def comm_ident(number: int, members: tuple[int, ...], generation: int = 1) -> str:
    """An identity of a communicator that its members agree on.

    The same on every member when they create and free their communicators
    in the same order: ``number`` is the Fortran handle (MPICH: the handle
    itself; Open MPI: an index in creation order, where the C handle is a
    per-process address); the generation tells apart communicators that
    reused a freed one's number.
    """
    digest = zlib.crc32(",".join(map(str, members)).encode())
    return f"{number & 0xFFFFFFFF:08x}.{generation}-{digest:08x}"


def describe_comm(state: CommState) -> dict:
    """A communicator's state as plain data (for reports and the side channel)."""
    return {
        "ident": state.ident,
        "label": state.label,
        "size": len(state.members),
        "members": ranges(state.members),
        "coll_entered": state.coll_entered,
        "coll_done": state.coll_done,
        "p2p": state.p2p,
        "last_op": state.last_op,
    }


# An in-flight record: (start, comm state, op, sequence number, thread id, peer fields or None, is collective).
Record = tuple


def describe_peers(op: str, peers: tuple | None, members: tuple[int, ...]) -> dict:
    """The peer ranks and tag of a record, as the communicator's ranks and (where known) world ranks."""
    out: dict[str, Any] = {}
    if peers is None or op not in ARGUMENTS:
        return out
    for (name, _, _), value in zip(ARGUMENTS[op], peers):
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
        self._comms: dict[int, CommState] = {}
        self._generations: dict[int, int] = {}
        self._world = MPI.COMM_WORLD.Get_group()
        self._fixed = {MPI.COMM_WORLD.handle, MPI.COMM_SELF.handle}
        self._keyval = MPI.Comm.Create_keyval(delete_fn=self._forget)
        self.world_rank = MPI.COMM_WORLD.Get_rank()
        self.deadlines: dict[str, float] = {}  # communicator ident -> seconds (see set_deadline)
        # the application's path: enter/leave/post, in C where the extension is built (transport.flight)
        self.core = Core(self._comms, self._adopt, size, OPERATIONS)
        self.enter, self.leave = self.core.enter, self.core.leave

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
        state = CommState(handle, members, label, comm_ident(number, members, generation))
        self._comms[handle] = state
        return state

    def state_of(self, comm: Any) -> CommState:
        """The recorder's state of ``comm``, adopting it now if no call has met it yet."""
        state = self._comms.get(comm.handle)
        return state if state is not None else self._adopt(comm)

    def set_deadline(self, comm: Any, seconds: float | None) -> None:
        """Calls on ``comm`` are examined after ``seconds`` instead of the watchdog's limit (``None``: the limit)."""
        ident = self.state_of(comm).ident
        if seconds is None:
            self.deadlines.pop(ident, None)
        else:
            self.deadlines[ident] = seconds

    def deadline(self, state: CommState) -> float | None:
        """The deadline set for ``state``'s communicator, if any."""
        return self.deadlines.get(state.ident) if self.deadlines else None

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
        state = self._comms.pop(handle, None)
        if state is not None:
            self.deadlines.pop(state.ident, None)

    def close(self) -> None:
        """Release the MPI objects the recorder holds (the records stay readable)."""
        if not MPI.Is_finalized():
            try:
                self._world.Free()
            except MPI.Exception:
                pass

    # -- reading (the monitor's thread) ----------------------------------------
    def inflight(self) -> list[tuple[int, Record]]:
        """``(token, record)`` of the calls entered and not yet completed, oldest first.

        Nonblocking calls whose requests MPI has completed are ended first.
        """
        self.core.sweep()
        return sorted(self.core.inflight(), key=lambda item: item[1][0])

    def completed(self, limit: int | None = None) -> list[tuple[Record, float]]:
        """The last ``limit`` (default: all kept) completed calls as ``(record, end)``, oldest first."""
        return self.core.completed(-1 if limit is None else limit)

    @property
    def position(self) -> int:
        """How many calls have completed since the recorder started."""
        return self.core.position

    @property
    def recorded(self) -> int:
        """How many calls have been entered since the recorder started."""
        return self.core.recorded

    @property
    def dropped(self) -> int:
        """Calls recorded and no longer kept: completed ones overwritten in the ring, nonblocking ones forgotten in
        flight (:meth:`prune`)."""
        return max(0, self.core.position - self.capacity) + self.core.forgotten

    def since(self, position: int, limit: int) -> tuple[int, list[tuple[Record, float]]]:
        """Completed calls after ``position`` (at most the last ``limit``), and the current position."""
        pos = self.core.position
        count = max(0, min(pos - position, limit, self.capacity))
        return pos, self.core.completed(count) if count else []

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
        return self.core.forget(keep)

    @staticmethod
    def is_collective(op: str) -> bool:
        return SPECS[op][0]

    @staticmethod
    def is_blocking(op: str) -> bool:
        return SPECS[op][1]

    def describe(self, record: Record, now: float) -> dict:
        """One in-flight or completed record as plain data (for reports and the side channel)."""
        start, state, op, seq, thread, peers, _ = record
        out = {
            "op": op,
            "comm": state.ident,
            "label": state.label,
            "size": len(state.members),
            "seq": seq,
            "kind": "collective" if SPECS[op][0] else "p2p",
            "blocking": SPECS[op][1],
            "thread": thread,
            "age": now - start,
        }
        out.update(describe_peers(op, peers, state.members))
        return out
