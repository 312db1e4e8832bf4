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

from dataclasses import dataclass
from typing import Any

import numpy as np
from mpi4py import MPI

import datatypes

from .decision import Route, TypeInfo, type_info
from .staging import StagingPool, staging_buffer

__all__ = ["Message", "Packed", "derived"]

_SPECS = (list, tuple)
_SPECIAL = (MPI.IN_PLACE, MPI.BOTTOM)


class Message:
    """``count`` objects of a derived ``datatype`` in ``buf``.

    ``info`` is what is known of the type (:class:`commlib.interposer.decision.TypeInfo`);
    ``route`` its analysis, or ``None`` while the (type, count) is cold: the
    message then goes to MPI as it is. ``base`` carries it packed (``None``:
    not analysed, or commlib cannot pack it).
    """

    __slots__ = ("buf", "count", "datatype", "info", "route")

    def __init__(self, buf: Any, count: int, datatype: MPI.Datatype, info: TypeInfo, route: Route | None) -> None:
        self.buf = buf
        self.count = count
        self.datatype = datatype
        self.info = info
        self.route = route

    def __repr__(self) -> str:
        return f"Message(count={self.count}, nbytes={self.nbytes}, base={self.base})"

    @property
    def base(self) -> MPI.Datatype | None:
        route = self.route
        return None if route is None else route.base

    @property
    def packable(self) -> bool:
        route = self.route
        return route is not None and route.base is not None

    @property
    def nbytes(self) -> int:
        return self.count * self.info.size

    @property
    def elements(self) -> int:
        """Base-type elements in the packed message."""
        return self.route.elements

    @property
    def features(self) -> Any:
        """The cost model's features of the message's shape (``None``: not analysed, or no canonical form)."""
        route = self.route
        return None if route is None else route.features

    def check(self, op: str, *, writable: bool) -> None:
        """Refuse (``ValueError``) a buffer that does not hold the message, before MPI sees it."""
        check_span(op, self.buf, self.count, self.datatype, self.info, self.route, writable=writable)


def check_span(
    op: str,
    buf: Any,
    count: int,
    datatype: MPI.Datatype,
    info: TypeInfo,
    route: Route | None,
    *,
    writable: bool,
    displacement: int = 0,
) -> None:
    """Refuse (``ValueError``) a buffer that does not hold ``count`` objects, before MPI sees it.

    A contiguous numpy array is checked against the analysed byte range, or
    for a cold type against MPI's true extent (exact, or wider where a type
    has empty members); anything else, and anything that fails, gets the
    exact check of :func:`datatypes.check_buffer`, which raises.
    """
    if type(buf) is np.ndarray:  # the common case: a few attribute reads
        flags = buf.flags
        if flags.c_contiguous and (flags.writeable or not writable):
            lo, hi = (route.lo, route.hi) if route is not None else info.touched(count)
            if hi <= lo or (lo + displacement >= 0 and hi + displacement <= buf.nbytes):
                return
    datatypes.check_buffer(op, buf, count, datatype, writable=writable, displacement=displacement)


def _has_buffer(buf: Any) -> bool:
    try:
        memoryview(buf)
    except TypeError:
        return False
    return True


def _count_from_buffer(buf: Any, extent: int) -> int | None:
    """The count mpi4py infers for ``[buf, datatype]`` of this extent, or ``None`` where it would refuse the spec."""
    try:
        nbytes = memoryview(buf).nbytes
    except TypeError:
        return None
    if extent <= 0 or nbytes % extent:
        return None
    return nbytes // extent


def derived(spec: Any, *, eager: bool = False) -> Message | None:
    """The :class:`Message` of a buffer spec with a derived datatype, else ``None``.

    ``None`` means "give the spec to mpi4py untouched": plain buffers,
    predefined datatypes, typecode strings, special buffers (``IN_PLACE``,
    ``BOTTOM``) and (count, displacement) pairs. The message's ``route`` is
    ``None`` while its (type, count) is cold (:mod:`commlib.interposer.decision`);
    ``eager`` analyses it at once. An analysed type with no canonical form,
    or no single named base type, has ``base=None``: it still gets its
    bounds checked, then goes to MPI.
    """
    if not isinstance(spec, _SPECS) or not 2 <= len(spec) <= 3:
        return None
    datatype = spec[-1]
    if not isinstance(datatype, MPI.Datatype):
        return None
    info = type_info(datatype)
    if info is None:
        return None
    buf = spec[0]
    if type(buf) is not np.ndarray and (buf is None or buf in _SPECIAL or not _has_buffer(buf)):
        return None  # special buffers, DLPack or CUDA-array-interface buffers go to mpi4py as they are
    if len(spec) == 3:
        count = spec[1]
        if type(count) is not int:
            if not isinstance(count, (int, np.integer)) or isinstance(count, bool):
                return None  # (count, displacement) pairs belong to v-collectives: leave them to MPI
            count = int(count)
    else:
        count = _count_from_buffer(buf, info.extent)
        if count is None:
            return None  # mpi4py reports the spec it cannot read
    return Message(buf, count, datatype, info, info.route(datatype, count, eager=eager))


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
