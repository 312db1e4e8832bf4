"""commlib's communicators: mpi4py's classes, subclassed, sharing the original handle.

``wrap(comm)`` returns a :class:`Intracomm`, :class:`Cartcomm`,
:class:`Graphcomm`, :class:`Distgraphcomm` or :class:`Intercomm` on the same
handle, so ``isinstance`` checks and every mpi4py method keep working.
Communicators derived from a wrapped one (``Dup``, ``Split``,
``Create_cart``, ``Sub``, ...) come back wrapped too.

Point-to-point operations (:mod:`commlib.interposer.point_to_point`), and the
collectives of :mod:`commlib.interposer.packed_collectives`, whose buffer spec has a strided derived
datatype are intercepted: when the session's decision is ``"pack"``, the data
travel packed as the type signature's base type (see
:mod:`commlib.interposer.messages` and :mod:`commlib.interposer.pieces`); otherwise, and for
everything else, the call goes to mpi4py untouched.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

from mpi4py import MPI

from transport import truncation
from transport.flight import invalidate, set_retry

from ..config import config
from .messages import Message, Packed, derived
from .packed_collectives import Collectives, NeighborCollectives
from .pieces import PackedPieces, StagedSide, cold_check, pieces_of
from .point_to_point import PointToPoint
from .session import Session
from .sides import side_key
from .staging import StagingPool
from .tracing import BLOCKING, NONBLOCKING, traced
from .views import retry

__all__ = ["Cartcomm", "Distgraphcomm", "Graphcomm", "Intercomm", "Intracomm", "Topocomm", "wrap"]

_OBSERVED = frozenset({"Send", "Ssend", "Recv", "Sendrecv_replace", "Bcast"})  # timed for the cost model
_SPECS = (list, tuple)  # only a list or tuple spec can name a derived datatype: anything else goes straight through
_GUARDED = truncation.guarded()  # the traced Recv and Sendrecv always run commlib's method (its guard)
set_retry(retry)  # a strided numpy view mpi4py refuses is moved as commlib.interposer.views says


def _named(name: str) -> MPI.Comm:
    """``MPI.COMM_WORLD`` or ``MPI.COMM_SELF`` as they are now (wrapped while the interposer is installed)."""
    return getattr(MPI, name)


def _adopting(mpi_class: type, name: str) -> Any:
    """A method calling mpi4py's ``mpi_class.name`` and wrapping the communicator it returns."""
    original = getattr(mpi_class, name)

    def method(self: _Interposed, *args: Any, **kwargs: Any) -> Any:
        return self._adopt(original(self, *args, **kwargs))

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"mpi4py's ``{name}``; the new communicator is wrapped in this one's session."
    return method


class _Interposed(PointToPoint):
    """What every commlib communicator adds to its mpi4py class."""

    _session: Session | None = None
    _splitter: Any = None  # a transport.flows.Splitter where COMMLIB_SPLIT attached one (see commlib.interposer)

    # -- plumbing -------------------------------------------------------------
    @property
    def _staging(self) -> StagingPool | None:
        """The session's reusable buffers for packed messages."""
        session = self._session
        return None if session is None else session.staging

    def _adopt(self, comm: Any) -> Any:
        """Wrap a communicator derived from this one, in this one's session."""
        return wrap(comm, self._session)

    def _message(self, op: str, spec: Any, *, writable: bool = False) -> tuple[Message | None, bool]:
        """``(message, pack?)`` for a spec with a derived datatype, ``(None, False)`` to pass ``spec`` as is.

        Every derived-type buffer is bounds-checked here, whatever the choice:
        a buffer too small raises before MPI sees it.
        """
        session = self._session
        message = derived(spec, eager=session is not None and session.eager)
        if message is None:
            return None, False
        message.check(op, writable=writable)
        if session is None:
            return message, False
        pack = session.choose(op, message) == "pack"
        if not pack and len(spec) == 3:
            session.remember_native(op, message, self._twin(message), observed=op in _OBSERVED)
        return message, pack

    def _known(self, op: str, spec: Any) -> Any:
        """The spec for MPI of a message already known to go to MPI (:meth:`Session.native_spec`), else ``None``."""
        session = self._session
        return None if session is None else session.native_spec(op, spec)

    @staticmethod
    def _twin(message: Message) -> MPI.Datatype | None:
        """The datatype MPI gets in place of the message's own: its rebuild (``COMMLIB_REBUILD``), or ``None``."""
        if message.route is None or not config.rebuild:
            return None
        return message.route.native

    @classmethod
    def _native(cls, spec: Any, message: Message | None) -> Any:
        """The spec MPI gets for a derived-type message it moves itself.

        With ``COMMLIB_REBUILD`` (the default) the datatype is replaced by its
        rebuild from the canonical form (:mod:`datatypes.rebuild`): the same
        type map, which MPI may move faster than the type as it was built.
        """
        twin = None if message is None else cls._twin(message)
        return spec if twin is None else [message.buf, message.count, twin]

    def _stage_one(self, op: str, spec: Any, *, send: bool) -> tuple[Any, Packed | None]:
        """The spec to give MPI for one message, and its staging buffer when it is packed."""
        if spec.__class__ in _SPECS and (known := self._known(op, spec)) is not None:
            return known, None
        message, pack = self._message(op, spec, writable=not send)
        if not pack:
            return self._native(spec, message), None
        packed = Packed.for_send(message, self._staging) if send else Packed.for_recv(message, self._staging)
        return packed.spec, packed

    def _stage(
        self, op: str, spec: Any, read: Any, blocks: int, form: str, *, send: bool, skip: int | None = None
    ) -> StagedSide:
        """How one side of a collective of per-peer pieces (see :mod:`commlib.interposer.pieces`) goes to MPI.

        ``read`` reads the spec into parts (:func:`commlib.interposer.pieces.typed_parts`, ...). A side decided before
        costs a lookup; a side not yet worth a look (its bytes so far could not pay an analysis) costs a
        bounds check from MPI's extents and goes to MPI as it is. A staged send side leaves piece ``skip``
        unpacked and empty in the spec (the caller copies it itself).
        """
        session = self._session
        key = side_key(op, spec, send) if session is not None else None
        known = session.sides.lookup(key, spec) if key is not None else None
        if known is not None:  # decided before for this spec, and its buffer holds every piece
            side, pieces = known
            layout, trial = side.layout, None
        else:
            parts = read(spec, blocks)
            if parts is None:
                return StagedSide(spec)
            if session is None or not session.eager:
                cold = cold_check(op, parts, writable=not send)
                if cold is None:
                    return StagedSide(spec)  # no derived datatype
                if session is None or not session.sides.worth(key, cold.nbytes, parts[3]):
                    if session is not None:
                        session.record(op, "native", cold.nbytes)
                    return StagedSide(spec, key=key, cold=cold)
            pieces = pieces_of(parts, eager=session.eager)
            if pieces is None:
                return StagedSide(spec)
            pieces.check(op, writable=not send)
            layout, trial = session.choose_side(op, pieces, send=send, key=key)
        if layout is None:
            return StagedSide(spec, None, trial, pieces, key)
        staging = session.staging
        if not send:
            staged = PackedPieces.staged(pieces, layout, staging)
            return StagedSide(getattr(staged, form)(), staged, trial, pieces, key)
        staged = PackedPieces.pack(pieces, layout, staging, skip)
        spec = getattr(staged, form)() if skip is None else getattr(staged, form)(skip=skip)
        return StagedSide(spec, staged, trial, pieces, key)

    def _observe(self, op: str, message: Message, packed: bool, start: float) -> None:
        if self._session is not None:
            self._session.observe(op, message, "pack" if packed else "native", perf_counter() - start)

    def __reduce__(self) -> Any:
        for name in ("COMM_WORLD", "COMM_SELF"):
            if getattr(MPI, name) is self:
                return _named, (name,)
        return super().__reduce__()

    Dup = _adopting(MPI.Comm, "Dup")
    Clone = _adopting(MPI.Comm, "Clone")


class Intracomm(Collectives, _Interposed, MPI.Intracomm):
    """A wrapped intra-communicator."""

    Split = _adopting(MPI.Intracomm, "Split")
    Create_group = _adopting(MPI.Intracomm, "Create_group")
    Split_type = _adopting(MPI.Intracomm, "Split_type")
    Create = _adopting(MPI.Intracomm, "Create")
    Create_cart = _adopting(MPI.Intracomm, "Create_cart")
    Create_graph = _adopting(MPI.Intracomm, "Create_graph")
    Create_dist_graph = _adopting(MPI.Intracomm, "Create_dist_graph")
    Create_dist_graph_adjacent = _adopting(MPI.Intracomm, "Create_dist_graph_adjacent")
    Create_intercomm = _adopting(MPI.Intracomm, "Create_intercomm")


class Topocomm(NeighborCollectives, Intracomm, MPI.Topocomm):
    """What the wrapped topology communicators share: the neighbourhood collectives."""


class Cartcomm(Topocomm, MPI.Cartcomm):
    """A wrapped Cartesian communicator."""

    Sub = _adopting(MPI.Cartcomm, "Sub")


class Graphcomm(Topocomm, MPI.Graphcomm):
    """A wrapped graph communicator."""


class Distgraphcomm(Topocomm, MPI.Distgraphcomm):
    """A wrapped distributed-graph communicator."""


class Intercomm(_Interposed, MPI.Intercomm):
    """A wrapped inter-communicator (point-to-point interception; collectives pass through)."""

    Merge = _adopting(MPI.Intercomm, "Merge")


def _trace(cls: type, mpi_class: type, inherited: type | None = None) -> None:
    """Route ``cls``'s communication methods through the monitor hook (once per method)."""
    for name in sorted(BLOCKING | NONBLOCKING):
        if hasattr(mpi_class, name) and (inherited is None or not hasattr(inherited, name)):
            base = None if _GUARDED and name in ("Recv", "Sendrecv") else getattr(mpi_class, name)
            setattr(cls, name, traced(name, getattr(cls, name), base))


_trace(Intracomm, MPI.Intracomm)
_trace(Topocomm, MPI.Topocomm, inherited=MPI.Intracomm)
_trace(Intercomm, MPI.Intercomm)

_WRAPPERS: tuple[tuple[type, type], ...] = (
    (MPI.Cartcomm, Cartcomm),
    (MPI.Graphcomm, Graphcomm),
    (MPI.Distgraphcomm, Distgraphcomm),
    (MPI.Intercomm, Intercomm),
    (MPI.Intracomm, Intracomm),
)


def wrap(comm: MPI.Comm, session: Session | None = None) -> MPI.Comm:
    """``comm`` as the matching commlib class, on the same handle (``COMM_NULL`` stays as it is).

    ``session`` decides pack vs native and keeps the report; a new default
    session is made when none is given.
    """
    if not isinstance(comm, MPI.Comm):
        raise TypeError(f"wrap: expected an mpi4py communicator, got {type(comm).__name__}")
    if comm == MPI.COMM_NULL:
        return comm
    if session is None:
        session = comm._session if isinstance(comm, _Interposed) and comm._session is not None else Session()
    for mpi_class, ours in _WRAPPERS:
        if isinstance(comm, mpi_class):
            wrapped = comm if type(comm) is ours else ours(comm)
            wrapped._session = session
            invalidate()  # the traced methods read the session afresh
            return wrapped
    raise TypeError(f"wrap: {type(comm).__name__} is not an intra- or inter-communicator")
