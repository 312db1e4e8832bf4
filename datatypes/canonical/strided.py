"""The canonical form, :class:`StridedBlock`: one contiguous block repeated over strided levels, and back to MPI."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from mpi4py import MPI

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
        start, levels = simplify(self.start, self._levels + ((count, self.extent),))
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


def simplify(start: int, levels: Iterable[tuple[int, int]]) -> tuple[int, Levels]:
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


def from_array(view: Any) -> StridedBlock:
    """Canonical form of the elements of a strided array view, in C (row-major) order.

    Offsets are relative to the lowest byte the view touches, so the block
    describes the bytes ``[0, extent)`` of that span; ``base`` is the name of
    the predefined MPI type of the elements, when there is one.
    """
    shape, strides = tuple(view.shape), tuple(view.strides)
    levels = [(view.dtype.itemsize, 1)] + list(zip(reversed(shape), reversed(strides)))
    low = sum(min(0, (n - 1) * s) for n, s in zip(shape, strides))
    start, simple = simplify(-low, levels)
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
    from .cache import cache_entry  # .cache imports this module: imported here, not at load time

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
