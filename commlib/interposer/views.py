"""Strided numpy views in buffer calls: what mpi4py refuses as not contiguous, commlib moves.

mpi4py raises ``BufferError`` for a view that is neither C- nor
Fortran-contiguous (``comm.Send(a[:, 3], ...)``). A wrapped communicator
moves it instead, exactly as if the sender had sent
``np.ascontiguousarray(view)`` with the predefined MPI type of its elements
and the receiver had received into a contiguous array and copied it into the
view, so a plain mpi4py peer matches it. By default (``COMMLIB_VIEWS=copy``)
that is what it does, through contiguous buffers it reuses call after call
for blocking operations, so that large messages fault in no fresh pages. With
``COMMLIB_VIEWS=derived``, a buffer that is one message or one piece of a
collective (point to point, ``Bcast``, the own side of ``Gather``,
``Scatter``, ``Allgather``) becomes the spec ``[span, 1, datatype]`` of
:func:`buffer` instead: a derived type over the view's own memory whose type
signature is ``view.size`` elements of the named type, which the interposer
packs or hands to MPI as it does any derived type. Buffers of several pieces
and reductions always go through a contiguous copy, written back into the
view once the operation has completed.

A view that overlaps itself (a zero stride, or a receive view whose elements
may alias) is refused with :class:`OverlappingView` before anything is posted.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from mpi4py import MPI

from datatypes.bounded import BoundedDict
from datatypes.canonical import _dtype_name, from_array, named_datatype

from ..config import config
from .requests import add_action

__all__ = ["OverlappingView", "buffer", "refused", "retry"]

_LIMIT = 1024  # datatypes kept for view layouts met before; all freed when a new one would pass this
# the largest contiguous copy a thread keeps for reuse (two of them: a call's first and second)
SCRATCH_BYTES = 64 << 20


class OverlappingView(ValueError):
    """A view whose elements share memory: as a message it has no single meaning."""


def refused(obj: Any) -> bool:
    """Whether ``obj`` is a numpy array mpi4py refuses as a buffer (neither C- nor Fortran-contiguous)."""
    if not isinstance(obj, np.ndarray):
        return False
    flags = obj.flags
    return not (flags.c_contiguous or flags.f_contiguous)


class _Span:
    """The bytes from a view's lowest to its highest address, as an array interface (keeps the view alive)."""

    def __init__(self, view: np.ndarray, start: int, nbytes: int) -> None:
        self.view = view
        data = (view.__array_interface__["data"][0] + start, not view.flags.writeable)
        self.__array_interface__ = {"data": data, "shape": (nbytes,), "typestr": "|u1", "version": 3}


_types: dict[tuple, tuple[MPI.Datatype, int, int]] = {}


def _layout(view: np.ndarray) -> tuple[MPI.Datatype, int, int]:
    """``(datatype, start, span)`` of a view's layout: ``start`` (<= 0) is its lowest byte from ``view``'s."""
    key = (view.dtype.str, view.shape, view.strides)
    known = _types.get(key)
    if known is not None:
        return known
    if len(_types) >= _LIMIT:
        for datatype, _, _ in _types.values():
            if not MPI.Is_finalized():
                datatype.Free()  # MPI keeps a type alive for the operations still using it
        _types.clear()
    start = sum(min(0, (n - 1) * s) for n, s in zip(view.shape, view.strides))
    end = sum(max(0, (n - 1) * s) for n, s in zip(view.shape, view.strides)) + view.dtype.itemsize
    known = _types[key] = (from_array(view).to_datatype(), start, end - start)
    return known


def _describe(view: np.ndarray) -> str:
    return f"a {view.dtype} view of shape {view.shape} with strides {view.strides}"


_checked: BoundedDict[tuple, MPI.Datatype] = BoundedDict(4096)  # layouts that passed, with their named type


def _check(view: np.ndarray, writable: bool, op: str, role: str) -> MPI.Datatype:
    """The named MPI type of ``view``'s elements, after refusing what cannot be a message."""
    key = (view.dtype, view.shape, view.strides, writable)
    named = _checked.get(key)
    if named is not None and (view.flags.writeable or not writable):
        return named
    named = _checked[key] = _validate(view, writable, op, role)
    return named


def _validate(view: np.ndarray, writable: bool, op: str, role: str) -> MPI.Datatype:
    named = named_datatype(_dtype_name(view.dtype)) if view.dtype.isnative else None
    if named is None:
        raise TypeError(f"{op}: the {role}, {_describe(view)}, has no predefined MPI datatype for {view.dtype}")
    moving = [(n, abs(s)) for n, s in zip(view.shape, view.strides) if n > 1]
    zero = [axis for axis, (n, s) in enumerate(zip(view.shape, view.strides)) if n > 1 and s == 0]
    if zero:
        raise OverlappingView(
            f"{op}: the {role}, {_describe(view)}, overlaps itself (stride 0 on axis {zero[0]}): "
            "pass a view whose elements are distinct, or np.ascontiguousarray of it"
        )
    if writable and not view.flags.writeable:
        raise BufferError(f"{op}: the {role}, {_describe(view)}, is read-only")
    if writable:
        reach = view.dtype.itemsize
        for n, s in sorted(moving, key=lambda item: item[1]):
            if s < reach:
                raise OverlappingView(
                    f"{op}: the {role}, {_describe(view)}, may overlap itself (a stride of {s} bytes within the "
                    f"{reach} bytes of the axes inside it): MPI would write some elements twice"
                )
            reach += (n - 1) * s
    return named


def buffer(view: np.ndarray, *, writable: bool = False, op: str = "commlib.buffer", role: str = "buffer") -> list:
    """The buffer spec ``[span, count, datatype]`` that moves ``view`` through any mpi4py communicator.

    For a contiguous array it is ``[view, view.size, named type]``; for a
    strided one ``[span, 1, datatype]``, a derived datatype over the view's
    own memory (``span``: its bytes from lowest to highest) with the type
    signature of ``view.size`` elements of the named type. ``writable``: the
    spec will be received into (refuses read-only and self-overlapping views).
    """
    if not isinstance(view, np.ndarray):
        raise TypeError(f"{op}: expected a numpy array, got {type(view).__name__}")
    named = _check(view, writable, op, role)
    if not refused(view):
        return [view, view.size, named]
    if view.size == 0:
        return [np.empty(0, view.dtype), 0, named]
    datatype, start, span = _layout(view)
    return [np.asarray(_Span(view, start, span)), 1, datatype]


# How each operation's buffers move when one is a strided view: (position, keyword, role) per buffer.
#   one_out / one_in: a single message sent / received (a derived type under COMMLIB_VIEWS=derived);
#   both: sent and received in place;
#   many_out / many_in: several pieces sent / received (a temporary); *_root: only the root's counts;
#   red_in / red_out: a reduction's operand / result (a temporary).
_ONE_OUT = ((0, "buf", "one_out"),)
_ONE_IN = ((0, "buf", "one_in"),)
_RULES: dict[str, tuple[tuple[int, str, str], ...]] = {
    **dict.fromkeys(("Send", "Ssend", "Bsend", "Rsend", "Isend", "Issend", "Ibsend", "Irsend"), _ONE_OUT),
    **dict.fromkeys(("Send_init", "Ssend_init", "Bsend_init", "Rsend_init"), _ONE_OUT),
    **dict.fromkeys(("Recv", "Irecv", "Recv_init"), _ONE_IN),
    **dict.fromkeys(("Sendrecv", "Isendrecv"), ((0, "sendbuf", "one_out"), (3, "recvbuf", "one_in"))),
    **dict.fromkeys(("Sendrecv_replace", "Isendrecv_replace"), ((0, "buf", "both"),)),
    **dict.fromkeys(("Bcast", "Ibcast"), ((0, "buf", "bcast"),)),
    **dict.fromkeys(("Gather", "Igather"), ((0, "sendbuf", "one_out"), (1, "recvbuf", "many_in_root"))),
    **dict.fromkeys(("Scatter", "Iscatter"), ((0, "sendbuf", "many_out_root"), (1, "recvbuf", "one_in"))),
    **dict.fromkeys(
        ("Allgather", "Iallgather", "Neighbor_allgather", "Ineighbor_allgather"),
        ((0, "sendbuf", "one_out"), (1, "recvbuf", "many_in")),
    ),
    **dict.fromkeys(
        ("Alltoall", "Ialltoall", "Neighbor_alltoall", "Ineighbor_alltoall"),
        ((0, "sendbuf", "many_out"), (1, "recvbuf", "many_in")),
    ),
    **dict.fromkeys(
        ("Gatherv", "Igatherv", "Allgatherv", "Iallgatherv", "Neighbor_allgatherv", "Ineighbor_allgatherv"),
        ((0, "sendbuf", "one_out"),),
    ),
    **dict.fromkeys(("Scatterv", "Iscatterv"), ((1, "recvbuf", "one_in"),)),
    **dict.fromkeys(("Reduce", "Ireduce"), ((0, "sendbuf", "red_out"), (1, "recvbuf", "red_in_root"))),
    **dict.fromkeys(
        (
            "Allreduce",
            "Iallreduce",
            "Reduce_scatter_block",
            "Ireduce_scatter_block",
            "Reduce_scatter",
            "Ireduce_scatter",
            "Scan",
            "Iscan",
            "Exscan",
            "Iexscan",
        ),
        ((0, "sendbuf", "red_out"), (1, "recvbuf", "red_in")),
    ),  # fmt: skip
}
_ROOTED = {"Bcast": 1, "Ibcast": 1, "Gather": 2, "Igather": 2, "Scatter": 2, "Iscatter": 2, "Reduce": 3, "Ireduce": 3}


_scratch = threading.local()


def _contiguous(view: np.ndarray, slot: int, keep: bool) -> np.ndarray:
    """A C-contiguous array of ``view``'s shape and dtype: this thread's reused buffer ``slot`` if ``keep``."""
    nbytes = view.nbytes
    if not keep or nbytes > SCRATCH_BYTES or nbytes == 0:
        return np.empty(view.shape, view.dtype)
    shapes = getattr(_scratch, "shapes", None)
    if shapes is None:
        shapes = _scratch.shapes = BoundedDict(256)  # (slot, dtype, shape) -> an array over the slot's buffer
        _scratch.buffers = [np.empty(0, np.uint8), np.empty(0, np.uint8)]
    key = (slot, view.dtype, view.shape)
    made = shapes.get(key)
    if made is not None:
        return made
    buffers = _scratch.buffers
    if buffers[slot].nbytes < nbytes:
        size = max(nbytes, 2 * buffers[slot].nbytes)
        raw = np.empty(size + 64, np.uint8)
        skip = -raw.__array_interface__["data"][0] % 64  # cache-line aligned, as malloc gives large blocks
        buffers[slot] = raw[skip : skip + size]
        shapes.clear()  # arrays over the old buffer
    made = shapes[key] = buffers[slot][:nbytes].view(view.dtype).reshape(view.shape)
    return made


def _root(name: str, args: list, kwargs: dict) -> int:
    at = _ROOTED[name]
    return int(args[at + 1] if at + 1 < len(args) else kwargs.get("root", 0))


_IN = frozenset({"one_in", "many_in", "red_in", "both"})


def retry(name: str, method: Any, args: tuple, kwargs: dict) -> Any:
    """Call ``method(comm, *args, **kwargs)`` (``args[0]`` the communicator) with its strided views moved
    as this module says; ``NotImplemented`` when no buffer argument is such a view (the caller re-raises
    mpi4py's error)."""
    rules = _RULES.get(name)
    if rules is None:
        return NotImplemented
    args = list(args)
    kwargs = dict(kwargs) if kwargs else kwargs
    count = len(args)
    views = []
    in_place = False
    for position, keyword, role in rules:
        holder, key = (args, position + 1) if position + 1 < count else (kwargs, keyword)
        value = holder.get(key) if holder is kwargs else holder[key]
        if value is MPI.IN_PLACE:
            in_place = True
        elif refused(value):
            views.append((holder, key, role, value))
    if not views:
        return NotImplemented
    derived = config.views == "derived"
    keep = name[0] != "I"  # a blocking call is done with its copies when it returns
    copies = []
    slot = 0
    for holder, key, role, view in views:
        if role.endswith("_root") or role == "bcast":
            mine = args[0].Get_rank() == _root(name, args, kwargs)
            if role == "bcast":
                role = "one_out" if mine else "one_in"
            elif not mine:
                continue  # MPI reads no such buffer on this rank
            else:
                role = role[:-5]
        receives = role in _IN
        which = "receive buffer" if receives and role != "both" else "buffer"
        if derived and role in ("one_out", "one_in", "both"):
            holder[key] = buffer(view, writable=receives, op=name, role=which)
            continue
        _check(view, receives, name, which)
        temporary = _contiguous(view, slot, keep)
        slot += 1  # a call with one copy always reuses the same memory, the warmest
        # what MPI does not write keeps its values (in place: this rank's own part; Exscan's rank 0)
        if not receives or in_place or role == "both" or role == "red_in":
            np.copyto(temporary, view)
        holder[key] = temporary
        if receives:
            copies.append((view, temporary))
    result = method(*args, **kwargs)
    if not copies:
        return result
    if not keep and isinstance(result, MPI.Request):
        return add_action(result, lambda _status: _copy_back(copies))
    _copy_back(copies)
    return result


def _copy_back(copies: list[tuple[np.ndarray, np.ndarray]]) -> None:
    for view, temporary in copies:
        np.copyto(view, temporary)
