"""Buffer specs with derived datatypes, carried on the wire packed as their base type.

mpi4py takes a message as ``buf``, ``[buf, datatype]``, ``[buf, count,
datatype]`` or ``[buf, count, displacement, datatype]`` (and tuples alike).
:func:`derived` recognises the specs with a derived datatype that has a
canonical form; :class:`Packed` is such a message turned into a contiguous
buffer of ``n`` elements of the named base type. Because the type signature
is unchanged (n x base), any correctly matching peer, interposed or not,
derived type or not, sends and receives the same bytes.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
from mpi4py import MPI

import datatypes
from datatypes import model as cost_model
from datatypes.canonical import cache_entry, named_datatype
from datatypes.rebuild import rebuilt

from .staging import StagingPool, staging_buffer

__all__ = ["Message", "Packed", "Route", "base_of", "derived", "route_of"]

_SPECS = (list, tuple)
_SPECIAL = (MPI.IN_PLACE, MPI.BOTTOM)


class Route:
    """What every message of ``count`` objects of one datatype shares, computed once per (datatype, count).

    Cached on the datatype handle beside the packer's plans, so a repeated
    message costs one lookup: the named base type that carries it packed
    (``None`` when commlib cannot pack it), its packed size and elements, the
    cost model's features of its shape, and the type rebuilt from its
    canonical form that MPI's own path gets (``None``: the type itself).
    """

    __slots__ = ("base", "elements", "features", "hi", "lo", "native", "nbytes")

    def __init__(self, datatype: MPI.Datatype, count: int) -> None:
        self.lo, self.hi = datatypes.touched(count, datatype)
        self.base = base_of(datatype)
        self.nbytes = count * datatype.Get_size()
        self.elements = self.nbytes // self.base.Get_size() if self.base is not None else 0
        self.features = cost_model.features(count, datatype) if self.base is not None else None
        self.native = rebuilt(datatype) if self.base is not None else None  # what MPI gets on its own path


_SEEN: dict[int, tuple[Any, int, dict[int, Route] | None]] = {}
_SEEN_LIMIT = 4096


def _routes(datatype: MPI.Datatype) -> dict[int, Route] | None:
    """The routes by count of a derived ``datatype`` object; ``None`` for a predefined type.

    Kept per Python object - alive (a weak reference) and still holding the
    same handle - so a program that passes the same datatype object call
    after call skips MPI's attribute lookups; a freed type, or a new object,
    starts afresh.
    """
    seen = _SEEN.get(id(datatype))
    if seen is not None and seen[0]() is datatype and seen[1] == datatype.handle:
        return seen[2]
    routes = None if datatype.is_predefined else {}
    if len(_SEEN) >= _SEEN_LIMIT:
        _SEEN.clear()
    _SEEN[id(datatype)] = (weakref.ref(datatype), datatype.handle, routes)
    return routes


def route_of(datatype: MPI.Datatype, count: int) -> Route:
    """The cached :class:`Route` of ``count`` objects of ``datatype``."""
    plans = cache_entry(datatype).plans
    route = plans.get(("route", count))
    if route is None:
        route = plans[("route", count)] = Route(datatype, count)
    return route


class Message:
    """``count`` objects of a derived ``datatype`` in ``buf``; ``base`` carries it packed (``None``: cannot)."""

    __slots__ = ("base", "buf", "count", "datatype", "route")

    def __init__(self, buf: Any, count: int, datatype: MPI.Datatype, route: Route | None = None) -> None:
        self.buf = buf
        self.count = count
        self.datatype = datatype
        self.route = route if route is not None else route_of(datatype, count)
        self.base = self.route.base

    def __repr__(self) -> str:
        return f"Message(count={self.count}, nbytes={self.nbytes}, base={self.base})"

    @property
    def packable(self) -> bool:
        return self.base is not None

    @property
    def nbytes(self) -> int:
        return self.route.nbytes

    @property
    def elements(self) -> int:
        """Base-type elements in the packed message."""
        return self.route.elements

    @property
    def features(self) -> Any:
        """The cost model's features of the message's shape (``None`` without a canonical form)."""
        return self.route.features

    def check(self, op: str, *, writable: bool) -> None:
        """Refuse (``ValueError``) a buffer that does not hold the message, before MPI sees it."""
        buf, route = self.buf, self.route
        if type(buf) is np.ndarray:  # the common case: a few attribute reads
            flags = buf.flags
            if flags.c_contiguous and (flags.writeable or not writable):
                if route.hi <= route.lo or (route.lo >= 0 and route.hi <= buf.nbytes):
                    return
        datatypes.check_buffer(op, buf, self.count, self.datatype, writable=writable)


def _has_buffer(buf: Any) -> bool:
    try:
        memoryview(buf)
    except TypeError:
        return False
    return True


def _count_from_buffer(buf: Any, datatype: MPI.Datatype) -> int | None:
    """The count mpi4py infers for ``[buf, datatype]``, or ``None`` where it would refuse the spec."""
    extent = datatype.Get_extent()[1]
    try:
        nbytes = memoryview(buf).nbytes
    except TypeError:
        return None
    if extent <= 0 or nbytes % extent:
        return None
    return nbytes // extent


def base_of(datatype: MPI.Datatype) -> MPI.Datatype | None:
    """The named type whose elements carry a packed ``datatype``, or ``None`` when commlib cannot pack it."""
    sb = datatypes.canonicalize(datatype)
    if sb is None:
        return None
    base = named_datatype(sb.base)
    if base is None or base.Get_size() == 0 or sb.size % base.Get_size():
        return None
    return base


def derived(spec: Any) -> Message | None:
    """The :class:`Message` of a buffer spec with a derived datatype, else ``None``.

    ``None`` means "give the spec to mpi4py untouched": plain buffers,
    predefined datatypes, typecode strings, special buffers (``IN_PLACE``,
    ``BOTTOM``) and (count, displacement) pairs. A message whose type has no
    canonical form, or no single named base type, is returned with
    ``base=None``: it still gets its bounds checked, then goes to MPI.
    """
    if not isinstance(spec, _SPECS) or not 2 <= len(spec) <= 3:
        return None
    datatype = spec[-1]
    if not isinstance(datatype, MPI.Datatype):
        return None
    routes = _routes(datatype)
    if routes is None:
        return None
    buf = spec[0]
    if type(buf) is not np.ndarray and (buf is None or buf in _SPECIAL or not _has_buffer(buf)):
        return None  # special buffers, DLPack or CUDA-array-interface buffers go to mpi4py as they are
    if len(spec) == 3:
        count = spec[1]
        if type(count) is not int and (not isinstance(count, (int, np.integer)) or isinstance(count, bool)):
            return None  # (count, displacement) pairs belong to v-collectives: leave them to MPI
    else:
        count = _count_from_buffer(buf, datatype)
        if count is None:
            return None  # mpi4py reports the spec it cannot read
    count = int(count)
    route = routes.get(count)
    if route is None:
        if len(routes) >= 64:
            routes.clear()
        route = routes[count] = route_of(datatype, count)
    return Message(buf, count, datatype, route)


@dataclass
class Packed:
    """A message packed into a contiguous buffer of base-type elements."""

    message: Message
    data: np.ndarray  # uint8, message.nbytes long

    @classmethod
    def for_send(cls, message: Message, staging: StagingPool | None = None) -> Packed:
        """Pack ``message`` (whose buffer was checked) into a contiguous buffer (from ``staging`` if given)."""
        out = staging_buffer(message.nbytes, staging)
        return cls(message, datatypes.pack(message.buf, message.count, message.datatype, out=out))

    @classmethod
    def for_recv(cls, message: Message, staging: StagingPool | None = None) -> Packed:
        """A landing buffer for ``message`` (whose buffer was checked), from ``staging`` if given."""
        return cls(message, staging_buffer(message.nbytes, staging))

    @property
    def spec(self) -> list:
        """The mpi4py buffer spec of the packed data: ``[data, n, base]``."""
        return [self.data, self.message.elements, self.message.base]

    def unpack(self, status: MPI.Status | None = None) -> None:
        """Unpack what arrived (``status`` tells how much) into the user's buffer."""
        m = self.message
        received = m.nbytes if status is None else status.Get_count(MPI.BYTE)
        if received == MPI.UNDEFINED:
            received = m.nbytes
        datatypes.unpack_partial(self.data, received, m.buf, m.count, m.datatype)
