"""Canonical strided form of MPI derived datatypes.

A :class:`StridedBlock` describes the type map of one object as one contiguous
byte block repeated over N strided levels::

    for i_n in range(counts[n]):            # outermost level, slowest
        ...
            for i_1 in range(counts[1]):
                copy counts[0] bytes from  start + i_1*strides[1] + ... + i_n*strides[n]

Level 0 is the contiguous block (``counts[0]`` bytes, ``strides[0] == 1``).
Levels are kept in type-map order, which is the order MPI packs in; they are
never reordered by stride, because reordering two levels with counts > 1
changes the packed byte order. The copy kernel is free to traverse memory in
whatever order is fastest.

:func:`canonicalize` translates an ``mpi4py.MPI.Datatype`` by walking its
``decode()`` tree; it returns ``None`` (never a wrong answer) for types that
are not uniformly strided or that it does not understand.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from mpi4py import MPI

from .bounded import BoundedDict
from .signature import signature

__all__ = ["StridedBlock", "canonicalize", "from_array"]

Levels = tuple[tuple[int, int], ...]  # ((count, stride), ...), level 0 first


@dataclass(frozen=True)
class StridedBlock:
    """Immutable canonical form of one object of a datatype.

    ``start`` is the byte offset of the first block from the buffer origin,
    ``counts``/``strides`` describe the levels (level 0 = contiguous block in
    bytes), ``extent``/``lb`` are the datatype's (spacing of consecutive
    objects), and ``base`` names the uniform named element type (or ``None``
    when there is none, e.g. for a :func:`from_array` of an unmapped dtype).
    """

    start: int
    counts: tuple[int, ...]
    strides: tuple[int, ...]
    extent: int
    lb: int = 0
    base: str | None = None

    def __post_init__(self) -> None:
        if len(self.counts) != len(self.strides) or not self.counts:
            raise ValueError("StridedBlock: counts and strides must have the same non-zero length")
        if self.strides[0] != 1:
            raise ValueError("StridedBlock: level 0 is a contiguous block, its stride must be 1")
        if any(c < 0 for c in self.counts):
            raise ValueError(f"StridedBlock: negative count in {self.counts}")

    # -- derived quantities -------------------------------------------------
    @property
    def size(self) -> int:
        """Packed bytes per object."""
        return math.prod(self.counts)

    @property
    def block(self) -> int:
        """Bytes in the contiguous level-0 block."""
        return self.counts[0]

    @property
    def ndim(self) -> int:
        """Number of levels, level 0 included."""
        return len(self.counts)

    @property
    def is_empty(self) -> bool:
        return self.size == 0

    @property
    def is_contiguous(self) -> bool:
        """One object is one contiguous run of bytes."""
        return self.ndim == 1

    @property
    def true_lb(self) -> int:
        """Lowest byte offset one object touches.

        Equal to MPI's true lb except where a type contains empty members,
        which MPI counts in its true extent although they touch nothing."""
        if self.is_empty:
            return 0
        return self.start + sum(min(0, (c - 1) * s) for c, s in self._levels[1:])

    @property
    def true_ub(self) -> int:
        """One past the highest byte offset touched by one object."""
        if self.is_empty:
            return 0
        return self.start + self.block + sum(max(0, (c - 1) * s) for c, s in self._levels[1:])

    @property
    def _levels(self) -> Levels:
        return tuple(zip(self.counts, self.strides))

    # -- transformations ----------------------------------------------------
    def repeated(self, count: int) -> StridedBlock:
        """``count`` consecutive objects (at ``extent`` spacing) as one simplified object."""
        if count < 0:
            raise ValueError(f"StridedBlock.repeated: negative count {count}")
        start, levels = _simplify(self.start, self._levels + ((count, self.extent),))
        counts, strides = zip(*levels)
        return StridedBlock(start, counts, strides, count * self.extent, self.lb, self.base)

    def touched(self, count: int) -> tuple[int, int]:
        """Byte range ``[lo, hi)`` that ``count`` objects touch, relative to the origin."""
        if count == 0 or self.is_empty:
            return (0, 0)
        span = (count - 1) * self.extent
        return (self.true_lb + min(0, span), self.true_ub + max(0, span))

    def is_injective(self, count: int = 1) -> bool:
        """True when no byte is touched twice by ``count`` objects.

        A sufficient test (levels sorted by |stride| must each clear the span
        of the smaller ones); ``False`` means "maybe overlapping".
        """
        if self.is_empty or count == 0:
            return True
        levels = sorted(self.repeated(count)._levels[1:], key=lambda cs: abs(cs[1]))
        span = self.block
        for c, s in levels:
            if abs(s) < span:
                return False
            span += (c - 1) * abs(s)
        return True

    def block_offsets(self) -> np.ndarray:
        """Byte offset of every level-0 block of one object, in pack order."""
        if self.is_empty:
            return np.zeros(0, dtype=np.int64)
        offs = np.array([self.start], dtype=np.int64)
        for c, s in self._levels[1:]:
            offs = (np.arange(c, dtype=np.int64)[:, None] * s + offs[None, :]).reshape(-1)
        return offs

    def byte_offsets(self) -> np.ndarray:
        """Byte offset of every packed byte of one object, in pack order."""
        blocks = self.block_offsets()
        return (blocks[:, None] + np.arange(self.block, dtype=np.int64)[None, :]).reshape(-1)

    def to_datatype(self) -> MPI.Datatype:
        """An equivalent committed MPI datatype (caller frees it)."""
        return _build_datatype(self)

    def __repr__(self) -> str:
        if self.is_empty:
            body = "empty"
        else:
            lv = ", ".join(f"{c} x {s:+d}" for c, s in self._levels[1:])
            body = f"start={self.start}, block={self.block}B, levels=[{lv}]"
        return f"StridedBlock({body}, extent={self.extent}, lb={self.lb}, size={self.size}, base={self.base})"


EMPTY_LEVELS: Levels = ((0, 1),)


def _simplify(start: int, levels: Iterable[tuple[int, int]]) -> tuple[int, Levels]:
    """Apply the simplification rules until none fires.

    * a level with count 0 empties the whole type;
    * levels above 0 with count 1 are dropped;
    * a level whose stride equals the child's ``count * stride`` merges with
      the child (merging into level 0 folds a dense level into the block).
    """
    levels = list(levels)
    if any(c == 0 for c, _ in levels):
        return 0, EMPTY_LEVELS
    out: list[tuple[int, int]] = [levels[0]]
    for c, s in levels[1:]:
        if c == 1:
            continue
        pc, ps = out[-1]
        if s == pc * ps:
            out[-1] = (pc * c, ps)
        else:
            out.append((c, s))
    return start, tuple(out)


# -- translation from MPI ---------------------------------------------------


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
        start, levels = _simplify(self.start, self.levels + ((count, stride),))
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
            return _Layout(*_simplify(*merged), a.base)
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


class CacheEntry:
    """What commlib keeps on a datatype handle: its canonical form, plus a
    small table other modules may fill (the packer keeps its copy plans there).
    It lives as an MPI attribute, so it dies with the handle; handles whose
    types were built by the same constructor calls share one entry
    (:mod:`datatypes.signature`), so a type rebuilt for every transfer is
    translated once."""

    __slots__ = ("block", "plans")

    def __init__(self, block: StridedBlock | None) -> None:
        self.block = block
        self.plans: BoundedDict[Any, Any] = BoundedDict(32)


_keyval: int | None = None
_SHARED: dict[tuple, CacheEntry] = {}  # signature -> entry, the most recent MAX_SHARED
MAX_SHARED = 1024


def _translate(datatype: MPI.Datatype) -> StridedBlock | None:
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


def cache_entry(datatype: MPI.Datatype) -> CacheEntry:
    """The cache entry of ``datatype``, translating it on first use (of its signature)."""
    global _keyval
    if _keyval is None:
        _keyval = MPI.Datatype.Create_keyval()
    if datatype == MPI.DATATYPE_NULL:
        raise ValueError("canonicalize: MPI.DATATYPE_NULL has no type map")
    entry = datatype.Get_attr(_keyval)
    if entry is None:
        sig = signature(datatype)
        entry = _SHARED.pop(sig, None) if sig is not None else None
        if entry is None:
            entry = CacheEntry(_translate(datatype))
        if sig is not None:
            if len(_SHARED) >= MAX_SHARED:
                del _SHARED[next(iter(_SHARED))]  # the least recently met
            _SHARED[sig] = entry
        datatype.Set_attr(_keyval, entry)
    return entry


def canonicalize(datatype: MPI.Datatype) -> StridedBlock | None:
    """The canonical :class:`StridedBlock` of ``datatype``, or ``None``.

    ``None`` means the type is not uniformly strided (or uses a constructor
    this module does not translate); callers then use MPI itself. The result
    is cached as an MPI attribute on the datatype, so it lives exactly as long
    as the handle and a freed-and-reused handle never sees a stale entry.
    """
    if not isinstance(datatype, MPI.Datatype):
        raise TypeError(f"canonicalize: expected an mpi4py.MPI.Datatype, got {type(datatype).__name__}")
    return cache_entry(datatype).block


def from_array(view: Any) -> StridedBlock:
    """Canonical form of the elements of a strided array view, in C (row-major) order.

    Offsets are relative to the lowest byte the view touches, so the block
    describes the bytes ``[0, extent)`` of that span; ``base`` is the name of
    the predefined MPI type of the elements, when there is one.
    """
    shape, strides = tuple(view.shape), tuple(view.strides)
    levels = [(view.dtype.itemsize, 1)] + list(zip(reversed(shape), reversed(strides)))
    low = sum(min(0, (n - 1) * s) for n, s in zip(shape, strides))
    start, simple = _simplify(-low, levels)
    counts, strides = zip(*simple)
    span = StridedBlock(start, counts, strides, 0, 0).true_ub
    return StridedBlock(start, counts, strides, span, 0, _dtype_name(view.dtype))


def _dtype_name(dtype: np.dtype) -> str | None:
    named = MPI._typedict.get(dtype.char)  # numpy type code -> predefined MPI type
    return named.Get_name() if named is not None and named.Get_size() == dtype.itemsize else None


def named_datatype(name: str | None) -> MPI.Datatype | None:
    """The predefined datatype called ``name`` (e.g. ``"MPI_DOUBLE"``), if any."""
    global _NAMED
    if _NAMED is None:
        found = (getattr(MPI, a) for a in dir(MPI))
        _NAMED = {
            t.Get_name(): t for t in found if isinstance(t, MPI.Datatype) and t != MPI.DATATYPE_NULL and t.Get_name()
        }
    return _NAMED.get(name) if name else None


_NAMED: dict[str, MPI.Datatype] | None = None


def _build_datatype(sb: StridedBlock) -> MPI.Datatype:
    base = named_datatype(sb.base)
    if base is None or base.Get_size() == 0 or sb.block % base.Get_size():
        base = MPI.BYTE
    out = _nested(sb, base, explicit=False)
    if not sb.is_empty and any(s < 0 for s in sb.strides):
        again = cache_entry(out).block
        if again is None or (again.start, again.counts, again.strides) != (sb.start, sb.counts, sb.strides):
            out.Free()  # this MPI builds a vector with a negative stride otherwise (Open MPI 5: stride -1)
            out = _nested(sb, base, explicit=True)
    return out


def _nested(sb: StridedBlock, base: MPI.Datatype, explicit: bool) -> MPI.Datatype:
    """Nested hvectors of a contiguous run of ``base`` (negative strides as explicit displacements)."""
    if sb.is_empty:
        dt = base.Create_contiguous(0)
    else:
        cur = base.Create_contiguous(sb.block // base.Get_size())
        for c, s in sb._levels[1:]:
            if explicit and s < 0:
                nxt = cur.Create_hindexed_block(1, [i * s for i in range(c)])
            else:
                nxt = cur.Create_hvector(c, 1, s)
            cur.Free()
            cur = nxt
        dt = cur.Create_hindexed_block(1, [sb.start])
        cur.Free()
    out = dt.Create_resized(sb.lb, sb.extent)
    dt.Free()
    return out.Commit()
