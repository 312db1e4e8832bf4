"""Property-test your own packing code against MPI.

Hypothesis strategies that draw MPI derived datatypes, buffers and strided
views (from :mod:`datatypes.typegen`), the bytes MPI itself produces
(:func:`mpi_pack_reference`, :func:`mpi_unpack_reference`), and assertions
whose failure message locates the first wrong byte: its object, its block
and its coordinates in the canonical strided form. commlib tests its own
packer with exactly these. Needs hypothesis (the ``test`` extra)::

    from hypothesis import given, strategies as st
    from datatypes.testing import assert_pack_matches_mpi, buffers_for, mpi_datatypes

    @given(st.data())
    def test_my_pack(data):
        dt = data.draw(mpi_datatypes())
        count = data.draw(st.integers(0, 3))
        assert_pack_matches_mpi(my_pack, dt, count, data.draw(buffers_for(dt, count)))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from mpi4py import MPI

from .canonical import canonicalize
from .typegen import (
    CONSTRUCTORS,
    NAMED_TYPES,
    GeneratedDatatype,
    TypeSpec,
    buffers_for,
    built,
    live_datatypes,
    mpi_datatypes,
    strided_views,
    touched_range,
    type_specs,
)

__all__ = [
    "CONSTRUCTORS",
    "NAMED_TYPES",
    "GeneratedDatatype",
    "TypeSpec",
    "assert_pack_matches_mpi",
    "assert_unpack_matches_mpi",
    "buffers_for",
    "built",
    "live_datatypes",
    "locate_packed_byte",
    "mpi_datatypes",
    "mpi_pack_reference",
    "mpi_unpack_reference",
    "strided_views",
    "touched_range",
    "type_specs",
]


def _host_bytes(buf: Any) -> np.ndarray:
    """A flat uint8 numpy copy-or-view of a host or device buffer."""
    if hasattr(buf, "__cuda_array_interface__") and hasattr(buf, "get"):
        buf = buf.get()
    if isinstance(buf, np.ndarray):
        return np.ascontiguousarray(buf).reshape(-1).view(np.uint8)
    return np.frombuffer(memoryview(buf).cast("B"), np.uint8)


def _call_with_count(fn: Callable[[Any, MPI.Datatype], Any], buf: np.ndarray, count: int, dt: MPI.Datatype) -> None:
    """Call ``fn(buffer, type)`` as C's ``MPI_Pack(buf, count, dt, ...)`` would.

    mpi4py infers count = len(buffer) // extent, so pass the datatype itself
    with a buffer slice of the right length where one exists (as C does; this
    matters because MPICH packs some named types differently inside derived
    ones), else one object of a type that holds ``count`` objects.
    """
    lo, hi = touched_range(dt, count)
    extent = dt.Get_extent()[1]
    n = max(hi, count * extent)
    if lo >= 0 and extent > 0 and n < (count + 1) * extent and n <= buf.nbytes:
        fn(buf[:n], dt)
        return
    many = dt.Create_contiguous(count)
    one = many.Create_resized(0, max(buf.nbytes, 1)).Commit()
    many.Free()
    try:
        fn(buf, one)
    finally:
        one.Free()


def mpi_pack_reference(buf: Any, count: int, datatype: MPI.Datatype) -> bytes:
    """The bytes ``MPI_Pack`` produces for ``count`` objects of ``datatype`` in ``buf``."""
    src = _host_bytes(buf)
    out = bytearray(count * datatype.Get_size())
    if out:
        _call_with_count(lambda b, t: t.Pack(b, out, 0, MPI.COMM_SELF), src, count, datatype)
    return bytes(out)


def mpi_unpack_reference(packed: Any, buf: np.ndarray, count: int, datatype: MPI.Datatype) -> None:
    """``MPI_Unpack`` of ``count`` objects of ``datatype`` from ``packed`` into ``buf`` (a host array)."""
    if count * datatype.Get_size():
        data = bytes(_host_bytes(packed))
        target = buf.reshape(-1).view(np.uint8)
        _call_with_count(lambda b, t: t.Unpack(data, 0, b, MPI.COMM_SELF), target, count, datatype)


def _name(datatype: MPI.Datatype) -> str:
    if isinstance(datatype, GeneratedDatatype):
        return repr(datatype)
    name = datatype.Get_name()
    return f"MPI.{name.removeprefix('MPI_')}" if name else f"a derived datatype (size {datatype.Get_size()})"


def locate_packed_byte(datatype: MPI.Datatype, count: int, index: int) -> str:
    """Where packed byte ``index`` of ``count`` objects comes from, in words.

    Names the object, the byte within it and, when the type has a canonical
    form, the block, its coordinates per level and the buffer offset it is
    read from (or written to).
    """
    size = datatype.Get_size()
    obj, within = divmod(index, size)
    where = f"object {obj} of {count}, byte {within} of its {size}"
    sb = canonicalize(datatype)
    if sb is None:
        return where + " (the type has no canonical strided form)"
    block, byte = divmod(within, sb.block)
    coords, rest = [], block
    for c in sb.counts[1:]:
        rest, i = rest // c, rest % c
        coords.append(i)
    offset = obj * sb.extent + sb.start + byte + sum(i * s for i, s in zip(coords, sb.strides[1:]))
    levels = ", ".join(f"level {n + 1}: {i} of {c}" for n, (i, c) in enumerate(zip(coords, sb.counts[1:])))
    return (
        f"{where}; block {block} at ({levels or 'one block'}), byte {byte} of the {sb.block}-byte block, "
        f"buffer offset {offset}; canonical form {sb!r}"
    )


def assert_pack_matches_mpi(
    pack_fn: Callable[[Any, int, MPI.Datatype], Any], datatype: MPI.Datatype, count: int, buf: Any
) -> None:
    """Assert ``pack_fn(buf, count, datatype)`` returns exactly ``MPI_Pack``'s bytes.

    On a difference the message names the first wrong byte, the object it
    belongs to and its coordinates in the canonical strided form.
    """
    expected = np.frombuffer(mpi_pack_reference(buf, count, datatype), np.uint8)
    got = _host_bytes(pack_fn(buf, count, datatype))
    what = f"pack of {count} x {_name(datatype)}"
    if got.size != expected.size:
        raise AssertionError(f"{what}: {got.size} packed bytes, MPI_Pack gives {expected.size}")
    wrong = np.flatnonzero(got != expected)
    if wrong.size:
        i = int(wrong[0])
        raise AssertionError(
            f"{what}: {wrong.size} of {got.size} packed bytes differ from MPI_Pack; the first is byte {i} "
            f"(got 0x{got[i]:02x}, MPI 0x{expected[i]:02x}): {locate_packed_byte(datatype, count, i)}"
        )


def assert_unpack_matches_mpi(
    unpack_fn: Callable[[Any, Any, int, MPI.Datatype], Any],
    datatype: MPI.Datatype,
    count: int,
    packed: Any,
    buf: Any,
) -> None:
    """Assert ``unpack_fn(packed, target, count, datatype)`` writes what ``MPI_Unpack`` writes.

    ``target`` is a copy of ``buf`` (typically from :func:`buffers_for`, whose
    random bytes are the poison), so every byte outside the type map must
    come back unchanged; ``buf`` itself is not modified. On a difference the
    message names the first wrong buffer byte and, when the type map covers
    it, the packed byte that belongs there.
    """
    original = _host_bytes(buf).copy()
    expected = original.copy()
    mpi_unpack_reference(packed, expected, count, datatype)
    target = buf.copy() if hasattr(buf, "copy") else bytearray(buf)
    unpack_fn(packed, target, count, datatype)
    got = _host_bytes(target)
    wrong = np.flatnonzero(got != expected)
    if not wrong.size:
        return
    j = int(wrong[0])
    what = f"unpack of {count} x {_name(datatype)}"
    head = (
        f"{what}: {wrong.size} buffer bytes differ from MPI_Unpack; the first is byte {j} "
        f"(got 0x{got[j]:02x}, MPI 0x{expected[j]:02x}, before 0x{original[j]:02x})"
    )
    sb = canonicalize(datatype)
    if sb is None:
        raise AssertionError(head)
    sources = np.flatnonzero(sb.repeated(count).byte_offsets() == j)
    if not sources.size:
        raise AssertionError(f"{head}: the type map does not cover this byte, so unpack must not write it")
    k = int(sources[-1])  # with overlapping blocks the last write wins, as in MPI
    raise AssertionError(f"{head}: it is packed byte {k}, {locate_packed_byte(datatype, count, k)}")
