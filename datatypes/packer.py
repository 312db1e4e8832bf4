"""Host packer: pack and unpack objects of a datatype into contiguous bytes.

For a type with a canonical form the copy is one numpy assignment between a
strided view of the user's buffer and the contiguous packed buffer: the
``count`` objects become one more level, blocks of 1, 2, 4 or 8 bytes are
copied as one unsigned word each, and longer blocks as one opaque element
that numpy moves with memcpy (itself copying in the widest aligned words).
Types without a canonical form, and shapes where MPI is faster, go to
``MPI_Pack``/``MPI_Unpack``. Either way the byte range the operation touches
is checked against the buffers before any memory is read or written.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from mpi4py import MPI

from commlib.config import config

from .canonical import StridedBlock, cache_entry

__all__ = ["choose_engine", "pack", "packed_size", "unpack"]

Typelike = MPI.Datatype | StridedBlock


@dataclass(frozen=True)
class _Plan:
    """How to copy ``count`` objects of one canonical form."""

    lo: int  # first byte touched, relative to the buffer origin
    hi: int  # one past the last byte touched
    packed: int  # packed bytes
    block: int  # contiguous bytes per block once the objects are laid end to end
    contiguous: bool  # the whole message is one block
    injective: bool  # no byte is touched twice (unpack may use numpy)
    item: np.dtype
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    offset: int  # byte offset of the first element of the view

    def view(self, data: np.ndarray) -> np.ndarray:
        return np.ndarray(self.shape, self.item, buffer=data, offset=self.offset, strides=self.strides)

    def packed_view(self, packed: np.ndarray) -> np.ndarray:
        return np.ndarray(self.shape, self.item, buffer=packed)


def _make_plan(sb: StridedBlock, count: int) -> _Plan:
    rep = sb.repeated(count)
    lo, hi = sb.touched(count)
    block = rep.block
    item = np.dtype(f"u{block}") if block in (1, 2, 4, 8) else np.dtype(f"V{max(block, 1)}")
    shape = rep.counts[:0:-1]  # slowest level first
    strides = rep.strides[:0:-1]
    return _Plan(lo, hi, rep.size, block, rep.is_contiguous, sb.is_injective(count), item, shape, strides, rep.start)


_plan_of_block = lru_cache(maxsize=256)(_make_plan)


def _resolve(op: str, count: int, datatype: Typelike) -> tuple[_Plan | None, int]:
    """Validate ``count`` and return (copy plan or None when not strided, packed bytes)."""
    if type(count) is not int:
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
            raise TypeError(f"{op}: count must be an integer, got {type(count).__name__}")
        count = int(count)
    if count < 0:
        raise ValueError(f"{op}: count must be >= 0, got {count} for {_describe(datatype)}")
    if isinstance(datatype, StridedBlock):
        plan = _plan_of_block(datatype, count)
        return plan, plan.packed
    if not isinstance(datatype, MPI.Datatype):
        raise TypeError(f"{op}: expected an mpi4py.MPI.Datatype or StridedBlock, got {type(datatype).__name__}")
    entry = cache_entry(datatype)
    if entry.block is None:
        return None, count * datatype.Get_size()
    plan = entry.plans.get(count)
    if plan is None:
        if len(entry.plans) >= 32:
            entry.plans.clear()
        plan = entry.plans[count] = _make_plan(entry.block, count)
    return plan, plan.packed


def _describe(datatype: Typelike) -> str:
    if isinstance(datatype, StridedBlock):
        return repr(datatype)
    if not isinstance(datatype, MPI.Datatype):
        return type(datatype).__name__
    name = datatype.Get_name()
    return name if name else f"derived datatype (size {datatype.Get_size()}, extent {datatype.Get_extent()[1]})"


def _byte_view(buf: Any, op: str, what: str, writable: bool) -> np.ndarray:
    """A flat uint8 view of a contiguous buffer, or a clear error."""
    if isinstance(buf, np.ndarray):
        if not (buf.flags.c_contiguous or buf.flags.f_contiguous):
            raise ValueError(f"{op}: {what} must be contiguous memory (got a strided array view of shape {buf.shape})")
        if writable and not buf.flags.writeable:
            raise ValueError(f"{op}: {what} is read-only")
        if buf.ndim != 1:
            buf = buf.ravel(order="K")
        return buf.view(np.uint8)
    try:
        mv = memoryview(buf)
    except TypeError:
        raise TypeError(f"{op}: {what} must support the buffer protocol, got {type(buf).__name__}") from None
    if not mv.c_contiguous:
        raise ValueError(f"{op}: {what} must be C-contiguous memory")
    if writable and mv.readonly:
        raise ValueError(f"{op}: {what} is read-only")
    return np.frombuffer(mv.cast("B") if mv.ndim != 1 or mv.itemsize != 1 else mv, dtype=np.uint8)


def _type_bounds(datatype: MPI.Datatype, count: int) -> tuple[int, int]:
    """Bytes ``[lo, hi)`` that ``count`` objects of any datatype touch."""
    if count == 0 or datatype.Get_size() == 0:
        return (0, 0)
    true_lb, true_extent = datatype.Get_true_extent()
    span = (count - 1) * datatype.Get_extent()[1]
    return (true_lb + min(0, span), true_lb + true_extent + max(0, span))


def _check_bounds(op: str, lo: int, hi: int, nbytes: int, count: int, datatype: Typelike, what: str) -> None:
    if hi > lo and (lo < 0 or hi > nbytes):
        raise ValueError(
            f"{op}: {count} object(s) of {_describe(datatype)} touch bytes [{lo}, {hi}) "
            f"of the {what}, which has {nbytes} bytes"
        )


def packed_size(count: int, datatype: Typelike) -> int:
    """Bytes that ``count`` objects of ``datatype`` occupy when packed."""
    return _resolve("packed_size", count, datatype)[1]


def _use_strided(plan: _Plan | None, engine: str | None) -> bool:
    engine = engine or config.pack_engine
    if plan is None or engine == "mpi":
        return False
    if engine == "strided" or plan.contiguous:
        return True
    return plan.packed >= config.pack_min_bytes and plan.block >= config.pack_min_block


def choose_engine(count: int, datatype: Typelike, engine: str | None = None) -> str:
    """``"strided"`` or ``"mpi"``: which engine packs ``count`` objects of ``datatype``.

    The default rule (``COMMLIB_PACK=auto``) uses MPI where the strided packer
    is not faster: types without a canonical form, messages under
    ``pack_min_bytes`` (the strided packer's fixed Python cost) and blocks
    under ``pack_min_block`` bytes (both engines are memory-latency bound).
    A ``StridedBlock`` has no MPI type and is always packed strided.
    """
    plan, _ = _resolve("choose_engine", count, datatype)
    if isinstance(datatype, StridedBlock):
        return "strided"
    return "strided" if _use_strided(plan, engine) else "mpi"


def _mpi_exact(datatype: MPI.Datatype, count: int, nbytes: int) -> MPI.Datatype:
    """A committed type holding ``count`` objects whose extent is ``nbytes``."""
    many = datatype.Create_contiguous(count)
    exact = many.Create_resized(0, nbytes)
    many.Free()
    return exact.Commit()


def _mpi_apply(fn: Any, data: np.ndarray, count: int, datatype: MPI.Datatype, lo: int, hi: int) -> None:
    """Call ``fn(data_slice, type)`` so that mpi4py infers exactly ``count`` objects.

    mpi4py's ``Datatype.Pack``/``Unpack`` take the count to be
    ``len(buffer) // extent``: slice the buffer to a length that gives
    ``count`` when possible, else hand MPI one object of an exact-size type.
    """
    extent = datatype.Get_extent()[1]
    if lo >= 0 and extent > 0:
        n = max(hi, count * extent)
        if n < (count + 1) * extent and n <= data.nbytes:
            fn(data[:n], datatype)
            return
    tmp = _mpi_exact(datatype, count, data.nbytes)
    try:
        fn(data, tmp)
    finally:
        tmp.Free()


def pack(buf: Any, count: int, datatype: Typelike, out: Any = None, *, engine: str | None = None) -> np.ndarray:
    """Pack ``count`` objects of ``datatype`` from ``buf``; returns the packed bytes (uint8).

    ``out``, when given, receives the bytes in its first ``packed_size`` bytes
    and the returned array is a view of it. Produces exactly the bytes of
    ``MPI_Pack`` on this (homogeneous) system. ``engine`` overrides
    ``COMMLIB_PACK`` (``auto``, ``strided`` or ``mpi``); a ``StridedBlock``
    is always packed by the strided engine.
    """
    plan, size = _resolve("pack", count, datatype)
    src = _byte_view(buf, "pack", "input buffer", writable=False)
    strided = isinstance(datatype, StridedBlock) or _use_strided(plan, engine)
    if out is None:
        # MPI may leave padding bytes (e.g. of LONG_DOUBLE) unwritten: never expose stale memory
        dst = np.empty(size, np.uint8) if strided else np.zeros(size, np.uint8)
    else:
        dst = _byte_view(out, "pack", "output buffer", writable=True)
    _check_bounds("pack", 0, size, dst.nbytes, count, datatype, "output buffer")
    if size == 0:
        return dst[:0]
    dst = dst[:size]
    lo, hi = (plan.lo, plan.hi) if plan is not None else _type_bounds(datatype, count)
    _check_bounds("pack", lo, hi, src.nbytes, count, datatype, "input buffer")
    if strided:
        np.copyto(plan.packed_view(dst), plan.view(src))
    else:
        _mpi_apply(lambda d, t: t.Pack(d, dst, 0, MPI.COMM_SELF), src, count, datatype, lo, hi)
    return dst


def unpack(packed: Any, buf: Any, count: int, datatype: Typelike, *, engine: str | None = None) -> None:
    """Unpack ``count`` objects of ``datatype`` from ``packed`` into ``buf``.

    Writes exactly the bytes ``MPI_Unpack`` writes and no other. Types that
    may touch a byte twice are unpacked by MPI, which defines the order.
    """
    plan, size = _resolve("unpack", count, datatype)
    src = _byte_view(packed, "unpack", "packed buffer", writable=False)
    dst = _byte_view(buf, "unpack", "output buffer", writable=True)
    _check_bounds("unpack", 0, size, src.nbytes, count, datatype, "packed buffer")
    if size == 0:
        return
    src = src[:size]
    lo, hi = (plan.lo, plan.hi) if plan is not None else _type_bounds(datatype, count)
    _check_bounds("unpack", lo, hi, dst.nbytes, count, datatype, "output buffer")
    own = isinstance(datatype, StridedBlock)
    if plan is not None and plan.injective and (own or _use_strided(plan, engine)):
        np.copyto(plan.view(dst), plan.packed_view(src))
        return
    mpi_type = datatype.to_datatype() if own else datatype
    try:
        _mpi_apply(lambda d, t: t.Unpack(src, 0, d, MPI.COMM_SELF), dst, count, mpi_type, lo, hi)
    finally:
        if own:
            mpi_type.Free()
