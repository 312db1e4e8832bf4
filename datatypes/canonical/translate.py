"""Translation of an MPI datatype into a strided layout by walking its ``decode()`` tree; ``None`` when not strided."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mpi4py import MPI

from .strided import EMPTY_LEVELS, Levels, StridedBlock, named_datatype, simplify


class _Reject(Exception):
    """Internal: the datatype is not uniformly strided."""


@dataclass(frozen=True)
class _Layout:
    start: int
    levels: Levels
    base: str | None  # None only while empty

    @property
    def empty(self) -> bool:
        return self.levels[0][0] == 0

    def shifted(self, delta: int) -> _Layout:
        return self if self.empty else _Layout(self.start + delta, self.levels, self.base)

    def repeated(self, count: int, stride: int) -> _Layout:
        if self.empty:
            return self
        start, levels = simplify(self.start, self.levels + ((count, stride),))
        return _Layout(start, levels, self.base if levels != EMPTY_LEVELS else None)


_EMPTY = _Layout(0, EMPTY_LEVELS, None)


def _concat(a: _Layout, b: _Layout) -> _Layout:
    """Type map ``a`` followed by ``b`` as one strided layout, or raise _Reject."""
    if a.empty:
        return b
    if b.empty:
        return a
    if a.base != b.base:
        raise _Reject("mixed base types")
    one = ((1, 0),)  # a count-1 level: lets an entry continue, or start, an outer level
    la, lb = a.levels, b.levels
    if len(la) == len(lb):
        tries = [(la, lb), (la + one, lb + one)]
    elif len(la) + 1 == len(lb):
        tries = [(la + one, lb)]
    elif len(lb) + 1 == len(la):
        tries = [(la, lb + one)]
    else:
        raise _Reject("entries differ in depth")
    for xa, xb in tries:
        merged = _append(a.start, xa, b.start, xb)
        if merged is not None:
            return _Layout(*simplify(*merged), a.base)
    raise _Reject("entries are not evenly spaced copies of one shape")


def _append(sa: int, la: Levels, sb: int, lb: Levels) -> tuple[int, Levels] | None:
    """Extend the outermost level of ``la`` with the instances of ``lb``, if they line up."""
    if la[:-1] != lb[:-1]:
        return None
    (ca, da), (cb, db) = la[-1], lb[-1]
    if len(la) == 1:
        stride = 1  # level 0 only grows contiguously
    elif ca > 1 and cb > 1:
        stride = da if da == db else None
    else:
        stride = da if ca > 1 else db if cb > 1 else sb - sa
    if stride is None or sb != sa + ca * stride:
        return None
    return sa, la[:-1] + ((ca + cb, stride),)


def _sequence(entries: Iterable[_Layout]) -> _Layout:
    out = _EMPTY
    for e in entries:
        out = _concat(out, e)
    return out


def _free(dt: MPI.Datatype) -> None:
    """Release a child handle returned by ``decode()`` (named ones are not owned)."""
    if not dt.is_predefined:
        dt.Free()


def _named(dt: MPI.Datatype) -> _Layout:
    size = dt.Get_size()
    lb, extent = dt.Get_true_extent()
    if size == 0:
        return _EMPTY
    if lb != 0 or extent != size:  # named pair types with holes (SHORT_INT, ...)
        raise _Reject(f"{dt.Get_name()} has holes")
    name = dt.Get_name() or f"datatype:{dt.handle}"
    if not _packs_bytewise(dt, name):
        raise _Reject(f"MPI does not pack {name} as a plain byte copy")
    return _Layout(0, ((size, 1),), name)


_BYTEWISE: dict[str, bool] = {}


def _pair_packs(dt: MPI.Datatype, shift: int, src: bytes) -> bool:
    """Whether ``MPI_Pack`` of two elements ``shift`` bytes apart gives the bytes the type map says."""
    size = dt.Get_size()
    pair = dt.Create_hindexed_block(1, [0, shift])
    one = pair.Create_resized(0, len(src)).Commit()  # exactly one pair: mpi4py counts len // extent
    pair.Free()
    try:
        out = bytearray(2 * size)
        one.Pack(src, out, 0, MPI.COMM_SELF)
    finally:
        one.Free()
    return bytes(out) == src[:size] + src[shift : shift + size]


def _packs_bytewise(dt: MPI.Datatype, name: str) -> bool:
    """Whether ``MPI_Pack`` copies every byte of this named type.

    Not always so: inside a type resized to an unaligned extent, MPICH packs
    ``LONG_DOUBLE`` as its 10 significant bytes and leaves the padding
    unwritten; inside a vector, Open MPI packs the same 10 bytes and zeros.
    Probed once per type, alone, resized, and as two elements 0, 1 and 2
    sizes apart, with a pattern that has no zero byte.
    """
    if name not in _BYTEWISE:
        size = dt.Get_size()
        src = bytes((i % 255) + 1 for i in range(3 * size + 1))
        odd = dt.Create_resized(0, size + 1).Commit()
        try:
            ok = True
            for t, buf in ((dt, src[:size]), (odd, src[: size + 1])):
                out = bytearray(size)
                t.Pack(buf, out, 0, MPI.COMM_SELF)
                ok = ok and bytes(out) == src[:size]
        finally:
            odd.Free()
        _BYTEWISE[name] = ok and all(_pair_packs(dt, shift, src) for shift in (0, size, 2 * size))
    return _BYTEWISE[name]


_UNALIGNED: dict[str, bool] = {}


def _packs_unaligned(dt: MPI.Datatype | None) -> bool:
    """Whether ``MPI_Pack`` copies elements of this named type placed at any distance that is not a multiple
    of its size (overlapping or not) as the type map says.

    Not always so: Open MPI 5 packs a complex number placed half its size
    (plus any multiple of its size) after another as a second copy of that
    other. Probed once per type, for every such distance up to twice the
    size, with a pattern that has no zero byte.
    """
    if dt is None:
        return True
    name = dt.Get_name()
    if name not in _UNALIGNED:
        size = dt.Get_size()
        src = bytes((i % 255) + 1 for i in range(3 * size))
        _UNALIGNED[name] = all(_pair_packs(dt, shift, src) for shift in range(1, 2 * size) if shift != size)
    return _UNALIGNED[name]


_empty_members: bool | None = None


def _packs_empty_members() -> bool:
    """Whether ``MPI_Pack`` of several objects spaces them by the extent when an empty derived member of a
    struct sets the bounds (Open MPI 5 spaces them by the true extent). Probed once."""
    global _empty_members
    if _empty_members is None:
        empty = MPI.BYTE.Create_contiguous(0)
        t = MPI.Datatype.Create_struct([1, 1], [1, 0], [MPI.BYTE, empty]).Commit()  # lb 0, extent 2
        empty.Free()
        try:
            out = bytearray(2)
            t.Pack(bytes(range(1, 5)), out, 0, MPI.COMM_SELF)  # two objects: bytes 1 and 3
        finally:
            t.Free()
        _empty_members = bytes(out) == bytes([2, 4])
    return _empty_members


def _layout(dt: MPI.Datatype) -> _Layout:
    if dt.is_predefined:
        return _named(dt)
    base, combiner, p = dt.decode()  # base is DATATYPE_NULL for STRUCT
    children = list(p["datatypes"]) if combiner == "STRUCT" else [base]
    try:
        out = _combine(combiner, p, children)
    finally:
        for child in children:
            _free(child)
    _check_within_mpi_extent(dt, out)
    return out


def _check_within_mpi_extent(dt: MPI.Datatype, lay: _Layout) -> None:
    """Reject a layout that touches bytes outside MPI's own true extent of ``dt``.

    The layout follows the standard's type map; an MPI whose type map differs
    (Open MPI 5 builds ``BYTE.Create_vector(2, 1, -1)`` as two bytes going up)
    must then pack the type itself, so that commlib's bytes stay MPI's. Empty
    members widen MPI's true extent, never the layout, so only a layout
    reaching outside it is wrong.
    """
    if lay.empty:
        return
    sb = StridedBlock(lay.start, *zip(*lay.levels), extent=0)
    true_lb, true_extent = dt.Get_true_extent()
    if sb.true_lb < true_lb or sb.true_ub > true_lb + true_extent:
        raise _Reject(f"MPI's true extent [{true_lb}, {true_lb + true_extent}) does not hold the type map")


def _combine(combiner: str, p: dict[str, Any], children: list[MPI.Datatype]) -> _Layout:
    if combiner == "STRUCT":
        entries, markers = [], False
        for bl, disp, child in zip(p["blocklengths"], p["displacements"], children):
            inner = _layout(child)
            markers = markers or (inner.empty and bl > 0 and not child.is_predefined)
            entries.append(inner.repeated(bl, child.Get_extent()[1]).shifted(disp))
        out = _sequence(entries)
        if markers and not out.empty and not _packs_empty_members():
            raise _Reject("an empty derived member sets the bounds, and this MPI packs such types its own way")
        return out
    (child,) = children
    inner = _layout(child)
    ext = child.Get_extent()[1]
    if combiner in ("DUP", "RESIZED"):
        return inner
    if combiner == "CONTIGUOUS":
        return inner.repeated(p["count"], ext)
    if combiner in ("VECTOR", "HVECTOR"):
        stride = p["stride"] * (ext if combiner == "VECTOR" else 1)
        return inner.repeated(p["blocklength"], ext).repeated(p["count"], stride)
    if combiner in ("INDEXED", "HINDEXED", "INDEXED_BLOCK", "HINDEXED_BLOCK"):
        unit = ext if combiner in ("INDEXED", "INDEXED_BLOCK") else 1
        disps = p["displacements"]
        lens = p["blocklengths"] if "blocklengths" in p else [p["blocklength"]] * len(disps)
        return _sequence(inner.repeated(bl, ext).shifted(d * unit) for bl, d in zip(lens, disps))
    if combiner == "SUBARRAY":
        sizes, subsizes, starts = p["sizes"], p["subsizes"], p["starts"]
        dims = range(len(sizes))
        order = reversed(dims) if p["order"] == MPI.ORDER_C else dims
        out, stride = inner, ext
        for d in order:  # fastest-varying dimension first
            out = out.repeated(subsizes[d], stride).shifted(starts[d] * stride)
            stride *= sizes[d]
        return out
    raise _Reject(f"combiner {combiner} is not handled")


def translate(datatype: MPI.Datatype) -> StridedBlock | None:
    """The :class:`StridedBlock` of ``datatype``; ``None`` when it is not uniformly strided or MPI packs it its way."""
    try:
        lay = _layout(datatype)
    except _Reject:
        return None
    lb, extent = datatype.Get_extent()
    counts, strides = zip(*lay.levels)
    block = StridedBlock(lay.start, counts, strides, extent, lb, lay.base)
    base = named_datatype(block.base)
    if base is not None and not _packs_unaligned(base):
        size = base.Get_size()
        if any(d % size for d in (extent, *block.strides[1:])):
            return None  # MPI packs elements of this base at such distances its own way
    return block
