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
from typing import Any

import numpy as np
from mpi4py import MPI

from .canonical import StridedBlock, cache_entry
from .model import current as _current_model
from .pack_plan import PackPlan, Typelike, describe, mpi_plan, resolve
from .settings import settings

_U8 = np.dtype(np.uint8)

__all__ = ["check_buffer", "choose_engine", "pack", "packed_size", "touched", "unpack", "unpack_partial"]


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
            f"{op}: {count} object(s) of {describe(datatype)} touch bytes [{lo}, {hi}) "
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
    plan = resolve(op, count, datatype)
    data = _byte_view(buf, op, "buffer", writable=writable)
    _check_bounds(op, plan.lo + displacement, plan.hi + displacement, data.nbytes, count, datatype, "buffer")
    return plan.packed


def packed_size(count: int, datatype: Typelike) -> int:
    """Bytes that ``count`` objects of ``datatype`` occupy when packed."""
    return resolve("packed_size", count, datatype).packed


def touched(count: int, datatype: Typelike) -> tuple[int, int]:
    """``[lo, hi)``: the bytes ``count`` objects of ``datatype`` touch, relative to the buffer's origin."""
    plan = resolve("touched", count, datatype)
    return plan.lo, plan.hi


def _use_strided(plan: PackPlan, engine: str | None) -> bool:
    if plan.item is None:
        return False
    engine = engine or settings.pack_engine
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
    plan = resolve("choose_engine", count, datatype)
    if isinstance(datatype, StridedBlock):
        return "strided"
    return "strided" if _use_strided(plan, engine) else "mpi"


def _displaced(data: np.ndarray, displacement: int, op: str) -> np.ndarray:
    """``data`` from byte ``displacement`` on, for MPI (which may reach before it: the bounds were checked)."""
    if displacement < 0:
        raise ValueError(f"{op}: a negative displacement ({displacement} bytes) needs the strided engine")
    return data[displacement:]


def _mpi_pack(src: np.ndarray, dst: np.ndarray, plan: PackPlan, count: int, datatype: MPI.Datatype) -> None:
    if 0 <= plan.mpi_len <= src.nbytes:
        datatype.Pack(src[: plan.mpi_len], dst, 0, MPI.COMM_SELF)
        return
    with _holding(datatype, count, src.nbytes) as exact:
        exact.Pack(src, dst, 0, MPI.COMM_SELF)


def _mpi_unpack(src: np.ndarray, dst: np.ndarray, plan: PackPlan, count: int, datatype: MPI.Datatype) -> None:
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
    plan = resolve("pack", count, datatype)
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
    plan = resolve("unpack", count, datatype)
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
            _mpi_unpack(src, dst, mpi_plan(mpi_type, count), count, mpi_type)
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
