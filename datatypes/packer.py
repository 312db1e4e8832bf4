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

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from mpi4py import MPI

from commlib.config import config

from .canonical import StridedBlock, cache_entry
from .model import current as _current_model

__all__ = ["check_buffer", "choose_engine", "pack", "packed_size", "touched", "unpack", "unpack_partial"]

Typelike = MPI.Datatype | StridedBlock
_U8 = np.dtype(np.uint8)


@dataclass(frozen=True)
class _Plan:
    """Everything one (datatype, count) pair needs, computed once and cached.

    ``item`` is None for types without a canonical form (MPI copies them).
    ``mpi_len`` is a buffer length from which mpi4py infers exactly ``count``
    objects (it takes count = len // extent), or -1 when none exists and MPI
    must be given a wrapper type instead.
    """

    lo: int  # first byte touched, relative to the buffer origin
    hi: int  # one past the last byte touched
    packed: int  # packed bytes
    block: int  # contiguous bytes per block once the objects are laid end to end
    injective: bool  # no byte is touched twice (unpack may use numpy)
    mpi_len: int
    item: np.dtype | None = None
    shape: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    offset: int = 0  # byte offset of the first element of the strided view

    def view(self, data: np.ndarray, displacement: int = 0) -> np.ndarray:
        offset = self.offset + displacement
        return np.ndarray(self.shape, self.item, buffer=data, offset=offset, strides=self.strides)

    def packed_view(self, packed: np.ndarray) -> np.ndarray:
        return np.ndarray(self.shape, self.item, buffer=packed)


def _mpi_len(lo: int, hi: int, count: int, extent: int) -> int:
    n = max(hi, count * extent)
    return n if lo >= 0 and extent > 0 and n < (count + 1) * extent else -1


_LARGE_BLOCK = 1 << 16  # numpy copies one opaque element of more than this slower than memcpy would


def _strided_plan(sb: StridedBlock, count: int) -> _Plan:
    rep = sb.repeated(count)
    lo, hi = sb.touched(count)
    block = rep.block
    shape, strides = rep.counts[:0:-1], rep.strides[:0:-1]  # slowest level first
    item = np.dtype(f"u{block}") if block in (1, 2, 4, 8) else np.dtype(f"V{max(block, 1)}")
    if block > _LARGE_BLOCK:
        # a large block as a row of 4 KiB (or smaller power-of-two) elements
        piece = 4096
        while block % piece:
            piece //= 2
        if piece >= 512:
            shape, strides, item = (*shape, block // piece), (*strides, piece), np.dtype(f"V{piece}")
    injective, mpi_len = sb.is_injective(count), _mpi_len(lo, hi, count, sb.extent)
    return _Plan(lo, hi, rep.size, block, injective, mpi_len, item, shape, strides, rep.start)


def _mpi_plan(datatype: MPI.Datatype, count: int) -> _Plan:
    size = datatype.Get_size()
    lo = hi = 0
    if count and size:
        true_lb, true_extent = datatype.Get_true_extent()
        span = (count - 1) * datatype.Get_extent()[1]
        lo, hi = true_lb + min(0, span), true_lb + true_extent + max(0, span)
    mpi_len = _mpi_len(lo, hi, count, datatype.Get_extent()[1])
    return _Plan(lo, hi, count * size, 0, False, mpi_len)


_plan_of_block = lru_cache(maxsize=256)(_strided_plan)


def _resolve(op: str, count: int, datatype: Typelike) -> _Plan:
    """Validate ``count`` and return the cached plan for (datatype, count)."""
    if type(count) is not int:
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
            raise TypeError(f"{op}: count must be an integer, got {type(count).__name__}")
        count = int(count)
    if count < 0:
        raise ValueError(f"{op}: count must be >= 0, got {count} for {_describe(datatype)}")
    if isinstance(datatype, StridedBlock):
        return _plan_of_block(datatype, count)
    if not isinstance(datatype, MPI.Datatype):
        raise TypeError(f"{op}: expected an mpi4py.MPI.Datatype or StridedBlock, got {type(datatype).__name__}")
    entry = cache_entry(datatype)
    plan = entry.plans.get(count)
    if plan is None:
        if len(entry.plans) >= 32:
            entry.plans.clear()
        sb = entry.block
        plan = _strided_plan(sb, count) if sb is not None else _mpi_plan(datatype, count)
        entry.plans[count] = plan
    return plan


def _describe(datatype: Typelike) -> str:
    if isinstance(datatype, StridedBlock):
        return repr(datatype)
    if not isinstance(datatype, MPI.Datatype):
        return type(datatype).__name__
    name = datatype.Get_name()
    return name if name else f"derived datatype (size {datatype.Get_size()}, extent {datatype.Get_extent()[1]})"


def _byte_view(buf: Any, op: str, what: str, writable: bool) -> np.ndarray:
    """A flat uint8 view of a contiguous buffer, or a clear error."""
    if type(buf) is np.ndarray:  # fast path: the common case costs a few attribute reads
        flags = buf.flags
        if flags.c_contiguous and (flags.writeable or not writable):
            flat = buf if buf.ndim == 1 else buf.reshape(-1)
            return flat if flat.dtype is _U8 else flat.view(np.uint8)
    if isinstance(buf, np.ndarray):
        if not (buf.flags.c_contiguous or buf.flags.f_contiguous):
            raise ValueError(f"{op}: {what} must be contiguous memory (got a strided array view of shape {buf.shape})")
        if writable and not buf.flags.writeable:
            raise ValueError(f"{op}: {what} is read-only")
        return buf.ravel(order="K").view(np.uint8)
    try:
        mv = memoryview(buf)
    except TypeError:
        raise TypeError(f"{op}: {what} must support the buffer protocol, got {type(buf).__name__}") from None
    if not mv.c_contiguous:
        raise ValueError(f"{op}: {what} must be C-contiguous memory")
    if writable and mv.readonly:
        raise ValueError(f"{op}: {what} is read-only")
    return np.frombuffer(mv.cast("B") if mv.ndim != 1 or mv.itemsize != 1 else mv, dtype=np.uint8)


def _check_bounds(op: str, lo: int, hi: int, nbytes: int, count: int, datatype: Typelike, what: str) -> None:
    if hi > lo and (lo < 0 or hi > nbytes):
        raise ValueError(
            f"{op}: {count} object(s) of {_describe(datatype)} touch bytes [{lo}, {hi}) "
            f"of the {what}, which has {nbytes} bytes"
        )


def check_buffer(
    op: str, buf: Any, count: int, datatype: Typelike, *, writable: bool = False, displacement: int = 0
) -> int:
    """Raise ``ValueError`` unless ``buf`` holds ``count`` objects of ``datatype``; return the packed size.

    The same check ``pack``/``unpack`` make, for callers (such as a receive)
    that must refuse a buffer before anything else happens. ``displacement``
    (bytes) moves the objects' origin from the start of ``buf``, as the
    displacements of the vector collectives do.
    """
    plan = _resolve(op, count, datatype)
    data = _byte_view(buf, op, "buffer", writable=writable)
    _check_bounds(op, plan.lo + displacement, plan.hi + displacement, data.nbytes, count, datatype, "buffer")
    return plan.packed


def packed_size(count: int, datatype: Typelike) -> int:
    """Bytes that ``count`` objects of ``datatype`` occupy when packed."""
    return _resolve("packed_size", count, datatype).packed


def touched(count: int, datatype: Typelike) -> tuple[int, int]:
    """``[lo, hi)``: the bytes ``count`` objects of ``datatype`` touch, relative to the buffer's origin."""
    plan = _resolve("touched", count, datatype)
    return plan.lo, plan.hi


def _use_strided(plan: _Plan, engine: str | None) -> bool:
    if plan.item is None:
        return False
    engine = engine or config.pack_engine
    if engine == "mpi":
        return False
    if engine == "strided":
        return True
    # one cached dict lookup per (bytes, block, levels) after the first call
    return _current_model().engine_for(plan.packed, plan.block, len(plan.shape) + 1) == "strided"


def choose_engine(count: int, datatype: Typelike, engine: str | None = None) -> str:
    """``"strided"`` or ``"mpi"``: which engine packs ``count`` objects of ``datatype``.

    Under ``COMMLIB_PACK=auto`` the cost model (:mod:`datatypes.model`)
    picks the engine with the smaller predicted pack + unpack time for the
    packed bytes, block length and levels; types without a canonical form
    always go to MPI. Without a calibration its crossover is at
    ``pack_min_bytes`` (the strided packer's fixed Python cost) and
    ``pack_min_block`` (both engines are memory-latency bound below it).
    A ``StridedBlock`` has no MPI type and is always packed strided.
    """
    plan = _resolve("choose_engine", count, datatype)
    if isinstance(datatype, StridedBlock):
        return "strided"
    return "strided" if _use_strided(plan, engine) else "mpi"


def _displaced(data: np.ndarray, displacement: int, op: str) -> np.ndarray:
    """``data`` from byte ``displacement`` on, for MPI (which may reach before it: the bounds were checked)."""
    if displacement < 0:
        raise ValueError(f"{op}: a negative displacement ({displacement} bytes) needs the strided engine")
    return data[displacement:]


def _mpi_pack(src: np.ndarray, dst: np.ndarray, plan: _Plan, count: int, datatype: MPI.Datatype) -> None:
    if 0 <= plan.mpi_len <= src.nbytes:
        datatype.Pack(src[: plan.mpi_len], dst, 0, MPI.COMM_SELF)
        return
    with _holding(datatype, count, src.nbytes) as exact:
        exact.Pack(src, dst, 0, MPI.COMM_SELF)


def _mpi_unpack(src: np.ndarray, dst: np.ndarray, plan: _Plan, count: int, datatype: MPI.Datatype) -> None:
    if 0 <= plan.mpi_len <= dst.nbytes:
        datatype.Unpack(src, 0, dst[: plan.mpi_len], MPI.COMM_SELF)
        return
    with _holding(datatype, count, dst.nbytes) as exact:
        exact.Unpack(src, 0, dst, MPI.COMM_SELF)


@contextmanager
def _holding(datatype: MPI.Datatype, count: int, nbytes: int) -> Iterator[MPI.Datatype]:
    """A committed type of extent ``nbytes`` holding ``count`` objects, for one MPI call.

    mpi4py's ``Datatype.Pack``/``Unpack`` infer the count from the buffer
    length; one object of this type is exactly ``count`` objects.
    """
    many = datatype.Create_contiguous(count)
    exact = many.Create_resized(0, nbytes).Commit()
    many.Free()
    try:
        yield exact
    finally:
        exact.Free()


def pack(
    buf: Any,
    count: int,
    datatype: Typelike,
    out: Any = None,
    *,
    engine: str | None = None,
    displacement: int = 0,
) -> np.ndarray:
    """Pack ``count`` objects of ``datatype`` from ``buf``; returns the packed bytes (uint8).

    ``out``, when given, receives the bytes in its first ``packed_size`` bytes
    and the returned array is a view of it. Produces exactly the bytes of
    ``MPI_Pack`` on this (homogeneous) system. ``engine`` overrides
    ``COMMLIB_PACK`` (``auto``, ``strided`` or ``mpi``); a ``StridedBlock``
    is always packed by the strided engine. ``displacement`` (bytes) moves
    the objects' origin from the start of ``buf``.
    """
    plan = _resolve("pack", count, datatype)
    size = plan.packed
    src = _byte_view(buf, "pack", "input buffer", writable=False)
    own = isinstance(datatype, StridedBlock)
    strided = own or _use_strided(plan, engine)
    if out is None:
        # MPI may leave padding bytes (e.g. of LONG_DOUBLE) unwritten: never expose stale memory
        dst = np.empty(size, np.uint8) if strided else np.zeros(size, np.uint8)
    else:
        dst = _byte_view(out, "pack", "output buffer", writable=True)
        _check_bounds("pack", 0, size, dst.nbytes, count, datatype, "output buffer")
        dst = dst[:size]
    if size == 0:
        return dst
    _check_bounds("pack", plan.lo + displacement, plan.hi + displacement, src.nbytes, count, datatype, "input buffer")
    if strided:
        np.copyto(plan.packed_view(dst), plan.view(src, displacement))
    else:
        _mpi_pack(_displaced(src, displacement, "pack"), dst, plan, count, datatype)
    return dst


def unpack(
    packed: Any, buf: Any, count: int, datatype: Typelike, *, engine: str | None = None, displacement: int = 0
) -> None:
    """Unpack ``count`` objects of ``datatype`` from ``packed`` into ``buf``.

    Writes exactly the bytes ``MPI_Unpack`` writes and no other. Types that
    may touch a byte twice are unpacked by MPI, which defines the order.
    ``displacement`` (bytes) moves the objects' origin from the start of ``buf``.
    """
    plan = _resolve("unpack", count, datatype)
    size = plan.packed
    src = _byte_view(packed, "unpack", "packed buffer", writable=False)
    dst = _byte_view(buf, "unpack", "output buffer", writable=True)
    _check_bounds("unpack", 0, size, src.nbytes, count, datatype, "packed buffer")
    if size == 0:
        return
    src = src[:size]
    lo, hi = plan.lo + displacement, plan.hi + displacement
    _check_bounds("unpack", lo, hi, dst.nbytes, count, datatype, "output buffer")
    own = isinstance(datatype, StridedBlock)
    if plan.injective and (own or _use_strided(plan, engine)):
        np.copyto(plan.view(dst, displacement), plan.packed_view(src))
        return
    dst = _displaced(dst, displacement, "unpack")
    if own:
        mpi_type = datatype.to_datatype()
        try:
            _mpi_unpack(src, dst, _mpi_plan(mpi_type, count), count, mpi_type)
        finally:
            mpi_type.Free()
    else:
        _mpi_unpack(src, dst, plan, count, datatype)


def unpack_partial(packed: Any, nbytes: int, buf: Any, count: int, datatype: Typelike) -> None:
    """Unpack only the first ``nbytes`` packed bytes of ``count`` objects, as a short receive does.

    Whole objects go through :func:`unpack`; the bytes of a trailing partial
    object land where the type map puts them, in type-map order.
    """
    size = packed_size(1, datatype)
    if size == 0 or nbytes >= count * size:
        unpack(packed, buf, count, datatype)
        return
    whole, rest = divmod(nbytes, size)
    src = _byte_view(packed, "unpack", "packed buffer", writable=False)
    if whole:
        unpack(src[: whole * size], buf, whole, datatype)
    if rest:
        sb = datatype if isinstance(datatype, StridedBlock) else cache_entry(datatype).block
        if sb is None:
            raise ValueError("unpack_partial: a partial object needs a datatype with a canonical form")
        dst = _byte_view(buf, "unpack", "output buffer", writable=True)
        offsets = sb.byte_offsets()[:rest] + whole * sb.extent
        dst[offsets] = src[whole * size : whole * size + rest]
