"""The flight recorder's per-call path: :class:`Core` (recording) and :class:`Traced` (traced methods).

This is the only part of the fault monitor that runs on the application's
path, once per communication call, so it is written in C
(``transport/_flight.c``, built by ``pip install``); this module holds its
Python twin, used where the extension could not be built, with the same
behaviour (the tests run both).

A :class:`Core` keeps, in plain Python containers that the monitor's thread
reads (:mod:`transport.recorder`): the in-flight calls as records
``(start, comm state, op, sequence number, thread id, peer fields or None,
is collective)`` by token, a ring of ``(record, end)`` for completed calls,
and per-communicator counters. A nonblocking call is in flight until MPI
has completed its request (mpi4py's request then tests false): the core
holds the request and checks a few held requests at every call, and all of
them when the monitor polls (:meth:`Core.sweep`), so that requests need no
wrapping and ``Wait``/``Waitall`` run untouched.

A :class:`Traced` is a communicator method (a descriptor) that records each
call in its session's core. When none of its buffer arguments is a
list/tuple spec (so no derived datatype is involved) and no flow splitter
is attached, it calls mpi4py's own method directly, skipping commlib's
Python method; and a message whose spec the session's ``_specs``
(:class:`SpecCache`) knows goes to mpi4py with the spec the cache gives.
The session's ``_core`` is its monitor's core, ``None`` (no monitor), or a
monitor of another kind, which gets the ``fallback`` callable instead.
"""

from __future__ import annotations

import time
from _thread import get_ident
from collections.abc import Callable, Sequence
from types import MethodType
from typing import Any

from datatypes.bounded import BoundedDict

__all__ = [
    "COMPILED", "CommState", "Core", "PyCommState", "PyCore", "PySpecCache", "PyTraced", "SpecCache", "Traced",
    "invalidate", "set_retry",
]  # fmt: skip

SWEEP_PER_CALL = 4  # held requests checked at every call

_now = time.perf_counter


class PyCommState:
    """What the recorder knows of one communicator (Python twin of ``_flight.CommState``)."""

    __slots__ = ("coll_done", "coll_entered", "handle", "ident", "label", "last_op", "members", "p2p")

    def __init__(self, handle: Any, members: tuple, label: str, ident: str) -> None:
        self.handle, self.members, self.label, self.ident = handle, members, label, ident
        self.coll_entered = 0  # number of the last collective entered
        self.coll_done = 0  # highest number of a collective completed
        self.p2p = 0  # point-to-point operations entered
        self.last_op = ""


class PyCore:
    """The application-side half of a flight recorder (Python twin of ``_flight.Core``).

    ``Core(comms, adopt, capacity, specs)``: ``comms`` maps communicator
    handles to their states, ``adopt(comm)`` makes the state of a
    communicator met the first time (and files it in ``comms``),
    ``capacity`` (a power of two) completed calls are kept, ``specs`` is,
    per operation, ``(name, collective, blocking, ((position, keyword, default), ...))``.
    """

    def __init__(self, comms: dict, adopt: Callable, capacity: int, specs: Sequence) -> None:
        if capacity < 1 or capacity & (capacity - 1):
            raise ValueError("Core: capacity must be a power of two")
        self._comms, self._adopt = comms, adopt
        self.capacity, self._mask = capacity, capacity - 1
        self._ring: list[tuple | None] = [None] * capacity
        self.position = 0
        self._live: dict[int, tuple[tuple, Any]] = {}  # token -> (record, request or None)
        self._pending: list[int] = []
        self._cursor = 0
        self._serial = 0
        self.forgotten = 0  # nonblocking calls forgotten in flight
        self.names = tuple(spec[0] for spec in specs)
        self._index = {name: i for i, name in enumerate(self.names)}
        self._specs = [(bool(spec[1]), tuple(spec[3]), bool(spec[2])) for spec in specs]

    @property
    def recorded(self) -> int:
        """Calls entered so far."""
        return self._serial

    @property
    def pending(self) -> int:
        """Nonblocking calls whose requests MPI has not completed."""
        return len(self._pending)

    def _enter(self, comm: Any, op: int, args: Sequence, kwargs: dict | None) -> int:
        start = _now()
        state = self._comms.get(comm.handle)
        if state is None:
            state = self._adopt(comm)
        collective, fields, _ = self._specs[op]
        if collective:
            state.coll_entered += 1
            seq = state.coll_entered
        else:
            state.p2p += 1
            seq = state.p2p
        name = self.names[op]
        state.last_op = name
        peers = None
        if fields:
            values = (
                args[position] if position < len(args) else (kwargs or {}).get(keyword, default)
                for position, keyword, default in fields
            )
            peers = tuple(int(v) if isinstance(v, int) else None for v in values)
        self._serial += 1
        token = self._serial
        self._live[token] = ((start, state, name, seq, get_ident(), peers, collective), None)
        return token

    def enter(self, comm: Any, op: str, args: tuple, kwargs: dict) -> int:
        """Record the start of a call (the monitor protocol of :mod:`commlib.interposer.tracing`); returns its token."""
        index = self._index.get(op)
        if index is None:  # a name not in the specs joins them as a blocking point-to-point call
            index = self._index[op] = len(self.names)
            self.names += (op,)
            self._specs.append((False, (), True))
        self.sweep(SWEEP_PER_CALL)
        return self._enter(comm, index, args, kwargs)

    def _finish(self, token: int) -> None:
        live = self._live.pop(token, None)
        if live is None:
            return
        record = live[0]
        end = _now()
        if record[6] and record[3] > record[1].coll_done:
            record[1].coll_done = record[3]
        self._ring[self.position & self._mask] = (record, end)
        self.position += 1

    def leave(self, token: int) -> None:
        """Record the end of a blocking call."""
        live = self._live.get(token)
        if live is not None and live[1] is None:
            self._finish(token)

    def post(self, token: int, request: Any) -> None:
        """A nonblocking call returned ``request``: the call ends when MPI completes it."""
        live = self._live.get(token)
        if live is None or live[1] is not None:
            return
        try:
            active = bool(request)
        except Exception:
            active = False
        if active:
            self._live[token] = (live[0], request)
            self._pending.append(token)
        else:
            self._finish(token)

    def sweep(self, limit: int = -1) -> None:
        """End the calls whose requests MPI has completed (check ``limit`` of them; all if < 0)."""
        pending = self._pending
        checks = len(pending) if limit < 0 else min(limit, len(pending))
        try:
            while checks > 0 and pending:
                checks -= 1
                if self._cursor >= len(pending):
                    self._cursor = 0
                i = self._cursor
                token = pending[i]
                live = self._live.get(token)
                if live is not None and live[1]:
                    self._cursor = i + 1
                    continue
                pending[i] = pending[-1]
                pending.pop()
                self._finish(token)
        except IndexError:  # another thread swept meanwhile
            self._cursor = 0

    def inflight(self) -> list[tuple[int, tuple]]:
        """``(token, record)`` of the calls in flight."""
        return [(token, live[0]) for token, live in list(self._live.items())]

    def completed(self, count: int = -1) -> list[tuple[tuple, float]]:
        """The last ``count`` completed calls kept (all if < 0), oldest first, as ``(record, end)``."""
        pos, ring = self.position, list(self._ring)
        kept = min(pos, self.capacity)
        count = kept if count < 0 else min(count, kept)
        return [ring[(pos - count + i) & self._mask] for i in range(count)]

    def forget(self, keep: int) -> int:
        """Forget the oldest nonblocking calls beyond ``keep`` calls in flight; returns how many."""
        excess = len(self._live) - keep
        if excess <= 0:
            return 0
        nonblocking = [(live[0][0], token) for token, live in list(self._live.items()) if not self._blocking(live[0])]
        oldest = [token for _, token in sorted(nonblocking)[:excess]]
        for token in oldest:
            self._live.pop(token, None)
        self._pending[:] = [token for token in self._pending if token in self._live]
        self._cursor = 0
        self.forgotten += len(oldest)
        return len(oldest)

    def _blocking(self, record: tuple) -> bool:
        return self._specs[self._index[record[2]]][2]


class PySpecCache:
    """Derived-datatype messages known to go to MPI (Python twin of ``_flight.SpecCache``).

    For an (operation, datatype object, count): the byte range its messages
    touch, checked against each buffer; the datatype MPI gets instead (or
    ``None``); and, for a message not yet analysed, how many more uses it may
    have before the full path must see one again.
    """

    def __init__(self) -> None:
        self._known: BoundedDict[tuple, list] = BoundedDict(512)

    def add(
        self, op: int, datatype: Any, count: int, lo: int, hi: int, twin: Any, nbytes: int, remaining: int,
        writable: bool,
    ) -> None:  # fmt: skip
        # [datatype, twin, lo, hi, nbytes, remaining, calls, bytes, writable]
        self._known[op, id(datatype), count] = [datatype, twin, lo, hi, nbytes, remaining, 0, 0, writable]

    def lookup(self, op: int, spec: Any) -> Any:
        """The spec to hand MPI for a known message, or ``None``; counts the use."""
        if spec.__class__ not in (list, tuple) or len(spec) != 3 or type(spec[1]) is not int:
            return None
        buf, count, datatype = spec
        key = (op, id(datatype), count)
        k = self._known.get(key)
        if k is None or k[0] is not datatype or not datatype:
            return None
        try:
            view = memoryview(buf)
        except TypeError:
            return None
        if not view.c_contiguous or (k[8] and view.readonly) or k[2] < 0 or k[3] > view.nbytes:
            return None
        if k[5] >= 0:
            k[5] -= 1
            if k[5] <= 0:
                del self._known[key]
                return None
        k[6] += 1
        k[7] += k[4]
        return spec if k[1] is None else [buf, count, k[1]]

    def drain(self) -> list[tuple]:
        """``(op, datatype, count, calls, bytes)`` counted since the last drain."""
        out = []
        for (op, _, count), k in list(self._known.items()):
            if k[6]:
                out.append((op, k[0], count, k[6], k[7]))
                k[6] = k[7] = 0
        return out

    def clear(self) -> None:
        self._known.clear()


class PyTraced:
    """A communicator method that records its calls (Python twin of ``_flight.Traced``)."""

    def __init__(
        self,
        name: str,
        op: int,
        method: Callable,
        fast: Callable | None,
        fallback: Callable,
        buffers: int,
        nonblocking: bool,
        splitter: bool,
        known: bool = False,
    ) -> None:
        self.__name__ = self.__qualname__ = name
        self.__doc__ = getattr(method, "__doc__", None)
        self.__wrapped__ = method
        self._op, self._method, self._fast, self._fallback = op, method, fast, fallback
        self._buffers = tuple(i for i in range(64) if buffers >> i & 1)
        self._nonblocking, self._splitter = nonblocking, splitter

    def __get__(self, obj: Any, cls: type | None = None) -> Any:
        return self if obj is None else MethodType(self, obj)

    def __call__(self, comm: Any, *args: Any, **kwargs: Any) -> Any:
        target = self._method
        if self._fast is not None and not kwargs:
            if not any(i < len(args) and args[i].__class__ in (list, tuple) for i in self._buffers) and (
                not self._splitter or comm._splitter is None
            ):
                target = self._fast
        session = comm._session
        if session is None:
            return self._call(target, comm, args, kwargs)
        core = session._core  # the monitor's core, None (no monitor) or a monitor of another kind
        if not isinstance(core, PyCore):
            return self._call(target if core is None else self._fallback, comm, args, kwargs)
        core.sweep(SWEEP_PER_CALL)
        token = core._enter(comm, self._op, args, kwargs)
        try:
            result = self._call(target, comm, args, kwargs)
        except BaseException:
            core._finish(token)
            raise
        if self._nonblocking:
            core.post(token, result)
        else:
            core._finish(token)
        return result

    def _call(self, target: Callable, comm: Any, args: tuple, kwargs: dict) -> Any:
        """``target(comm, *args, **kwargs)``; on ``BufferError``, what the retry hook makes of it (see set_retry)."""
        try:
            return target(comm, *args, **kwargs)
        except BufferError:
            if _retry is None:
                raise
            result = _retry(self.__name__, self._method, (comm, *args), kwargs)
            if result is NotImplemented:
                raise
            return result


_retry: Callable | None = None


def _set_retry(hook: Callable | None) -> None:
    """Have traced calls that raise ``BufferError`` return ``hook(name, method, args, kwargs)`` instead, unless
    it returns ``NotImplemented`` (``args[0]`` is the communicator; ``None``: no hook)."""
    global _retry
    if hook is not None and not callable(hook):
        raise TypeError("set_retry: expected a callable or None")
    _retry = hook


def _invalidate() -> None:
    """Forget what traced methods know of communicators: a session's monitor, a communicator's session or its
    flow splitter changed (the Python twin keeps nothing to forget)."""


try:
    from ._flight import CommState, Core, SpecCache, Traced
    from ._flight import invalidate as _invalidate  # noqa: F811
    from ._flight import set_retry as _set_retry_c

    def set_retry(hook: Callable | None) -> None:
        """The retry hook of the compiled and the Python traced methods alike (see :func:`_set_retry`)."""
        _set_retry(hook)
        _set_retry_c(hook)

    COMPILED = True
except ImportError:  # the extension was not built: the Python twin does the same, more slowly
    CommState, Core, SpecCache, Traced = PyCommState, PyCore, PySpecCache, PyTraced  # type: ignore[misc]
    COMPILED = False
    set_retry = _set_retry

invalidate = _invalidate
