"""Hypothesis strategies for MPI derived datatypes, and MPI reference packing.

Import this module only where hypothesis is installed (the ``test`` extra).
A generated value is a :class:`TypeSpec`: a small tree whose ``repr`` is the
mpi4py constructor call that builds it (``MPI.DOUBLE.Create_vector(3, 1, 2)``),
so a failing example reads as code; ``spec.build()`` makes the datatype.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st
from mpi4py import MPI

__all__ = [
    "NAMED_TYPES",
    "TypeSpec",
    "built",
    "mpi_pack_reference",
    "mpi_unpack_reference",
    "touched_range",
    "type_specs",
]

#: Named types the strategies draw from (all fixed-size numeric types plus BYTE).
NAMED_TYPES = (
    "BYTE",
    "CHAR",
    "SIGNED_CHAR",
    "UNSIGNED_CHAR",
    "SHORT",
    "UNSIGNED_SHORT",
    "INT",
    "UNSIGNED",
    "LONG",
    "UNSIGNED_LONG",
    "LONG_LONG",
    "FLOAT",
    "DOUBLE",
    "LONG_DOUBLE",
    "C_BOOL",
    "INT8_T",
    "INT16_T",
    "INT32_T",
    "INT64_T",
    "UINT8_T",
    "UINT16_T",
    "UINT32_T",
    "UINT64_T",
    "C_FLOAT_COMPLEX",
    "C_DOUBLE_COMPLEX",
    "AINT",
    "OFFSET",
    "COUNT",
)


@dataclass(frozen=True)
class TypeSpec:
    """One constructor applied to child specs; ``build()`` returns a new (uncommitted) datatype."""

    ctor: str  # "named" or an mpi4py constructor name, e.g. "Create_vector"
    args: tuple = ()
    children: tuple[TypeSpec, ...] = ()

    def build(self) -> MPI.Datatype:
        if self.ctor == "named":
            return getattr(MPI, self.args[0])
        if self.ctor == "Create_struct":
            kids = [c.build() for c in self.children]
            try:
                return MPI.Datatype.Create_struct(self.args[0], self.args[1], kids)
            finally:
                _free_all(kids)
        (child,) = self.children
        base = child.build()
        try:
            return getattr(base, self.ctor)(*self.args)
        finally:
            _free_all([base])

    def __repr__(self) -> str:
        if self.ctor == "named":
            return f"MPI.{self.args[0]}"
        if self.ctor == "Create_struct":
            kids = ", ".join(map(repr, self.children))
            return f"MPI.Datatype.Create_struct({list(self.args[0])}, {list(self.args[1])}, [{kids}])"
        args = [repr(list(a)) if isinstance(a, tuple) else repr(a) for a in self.args]
        if self.ctor == "Create_subarray":
            args[3] = "order=MPI.ORDER_FORTRAN" if self.args[3] == MPI.ORDER_FORTRAN else "order=MPI.ORDER_C"
        return f"{self.children[0]!r}.{self.ctor}({', '.join(args)})"


def _free_all(types: list[MPI.Datatype]) -> None:
    for t in types:
        if not t.is_predefined:
            t.Free()


@contextmanager
def built(spec: TypeSpec) -> Iterator[MPI.Datatype]:
    """Build and commit ``spec``; free the datatype afterwards."""
    dt = spec.build()
    if not dt.is_predefined:
        dt.Commit()
    try:
        yield dt
    finally:
        _free_all([dt])


def named(names: tuple[str, ...] = NAMED_TYPES) -> st.SearchStrategy[TypeSpec]:
    return st.sampled_from(names).map(lambda n: TypeSpec("named", (n,)))


def _arith(draw, n: int, lo: int, hi: int) -> tuple[int, ...]:
    first = draw(st.integers(lo, hi))
    step = draw(st.integers(lo, hi))
    return tuple(first + i * step for i in range(n))


def _displacements(draw, n: int, lo: int, hi: int) -> tuple[int, ...]:
    """Displacements that are evenly spaced most of the time (so they canonicalize)."""
    if draw(st.booleans()):
        return _arith(draw, n, lo, hi)
    return tuple(draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n)))


@st.composite
def _wrap(draw, child: TypeSpec, small: bool) -> TypeSpec:
    """Apply one random constructor to ``child``."""
    c = 3 if small else 5
    ctor = draw(
        st.sampled_from(
            [
                "Create_contiguous",
                "Create_vector",
                "Create_hvector",
                "Create_indexed",
                "Create_hindexed",
                "Create_indexed_block",
                "Create_hindexed_block",
                "Create_subarray",
                "Create_resized",
                "Dup",
            ]
        )
    )
    if ctor == "Create_contiguous":
        return TypeSpec(ctor, (draw(st.integers(0, c)),), (child,))
    if ctor in ("Create_vector", "Create_hvector"):
        count, bl = draw(st.integers(0, c)), draw(st.integers(0, 3))
        stride = draw(st.integers(-4, 6)) if ctor == "Create_vector" else draw(st.integers(-64, 96))
        return TypeSpec(ctor, (count, bl, stride), (child,))
    if ctor in ("Create_indexed", "Create_hindexed"):
        n = draw(st.integers(0, 4))
        uniform = draw(st.booleans())
        bls = (
            (draw(st.integers(0, 3)),) * n
            if uniform
            else tuple(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
        )
        lo, hi = (0, 6) if ctor == "Create_indexed" else (0, 96)
        return TypeSpec(ctor, (bls, _displacements(draw, n, lo, hi)), (child,))
    if ctor in ("Create_indexed_block", "Create_hindexed_block"):
        n = draw(st.integers(0, 4))
        lo, hi = (0, 6) if ctor == "Create_indexed_block" else (0, 96)
        return TypeSpec(ctor, (draw(st.integers(0, 3)), _displacements(draw, n, lo, hi)), (child,))
    if ctor == "Create_subarray":
        ndim = draw(st.integers(1, 3))
        sizes = tuple(draw(st.integers(1, 4)) for _ in range(ndim))
        subsizes = tuple(draw(st.integers(0, s)) for s in sizes)
        starts = tuple(draw(st.integers(0, s - ss)) for s, ss in zip(sizes, subsizes))
        order = draw(st.sampled_from([MPI.ORDER_C, MPI.ORDER_FORTRAN]))
        return TypeSpec(ctor, (sizes, subsizes, starts, order), (child,))
    if ctor == "Create_resized":
        return TypeSpec(ctor, (draw(st.integers(-16, 16)), draw(st.integers(-8, 96))), (child,))
    return TypeSpec("Dup", (), (child,))


@st.composite
def _struct(draw, child_strategy: st.SearchStrategy[TypeSpec]) -> TypeSpec:
    n = draw(st.integers(1, 3))
    first = draw(child_strategy)
    same = draw(st.booleans())
    kids = tuple(first if same else draw(child_strategy) for _ in range(n))
    bls = (draw(st.integers(0, 2)),) * n if draw(st.booleans()) else tuple(draw(st.integers(0, 2)) for _ in range(n))
    return TypeSpec("Create_struct", (bls, _displacements(draw, n, 0, 64)), kids)


def type_specs(max_depth: int = 3, names: tuple[str, ...] = NAMED_TYPES) -> st.SearchStrategy[TypeSpec]:
    """Random datatype trees: every constructor, nesting up to ``max_depth``.

    Deeper levels use smaller counts so that extents stay in the kilobytes.
    Shrinks toward a named type, then toward shallow trees with small counts.
    """
    strategy = named(names)
    for depth in range(max_depth):
        small = depth >= 1
        inner = strategy
        strategy = st.one_of(
            strategy,
            inner.flatmap(lambda c, small=small: _wrap(c, small)),
            _struct(inner),
        )
    return strategy


def touched_range(datatype: MPI.Datatype, count: int) -> tuple[int, int]:
    """Bytes ``[lo, hi)`` that ``count`` objects touch, from MPI's own extents."""
    if count == 0 or datatype.Get_size() == 0:
        return (0, 0)
    true_lb, true_extent = datatype.Get_true_extent()
    span = (count - 1) * datatype.Get_extent()[1]
    return (true_lb + min(0, span), true_lb + true_extent + max(0, span))


def _call_with_count(fn, buf: np.ndarray, count: int, datatype: MPI.Datatype) -> None:
    """Call ``fn(buffer, type)`` as C's ``MPI_Pack(buf, count, datatype, ...)`` would.

    mpi4py infers count = len(buffer) // extent, so pass the datatype itself
    with a buffer slice of the right length where one exists (as C does; this
    matters because MPICH packs some named types differently inside derived
    ones), else one object of a type that holds ``count`` objects.
    """
    lo, hi = touched_range(datatype, count)
    extent = datatype.Get_extent()[1]
    n = max(hi, count * extent)
    if lo >= 0 and extent > 0 and n < (count + 1) * extent and n <= buf.nbytes:
        fn(buf[:n], datatype)
        return
    many = datatype.Create_contiguous(count)
    one = many.Create_resized(0, max(buf.nbytes, 1)).Commit()
    many.Free()
    try:
        fn(buf, one)
    finally:
        one.Free()


def mpi_pack_reference(buf: np.ndarray, count: int, datatype: MPI.Datatype) -> bytes:
    """``MPI_Pack`` of ``count`` objects of ``datatype`` from ``buf`` (a flat uint8 array)."""
    out = bytearray(count * datatype.Get_size())
    if out:
        _call_with_count(lambda b, t: t.Pack(b, out, 0, MPI.COMM_SELF), buf, count, datatype)
    return bytes(out)


def mpi_unpack_reference(packed: bytes, buf: np.ndarray, count: int, datatype: MPI.Datatype) -> None:
    """``MPI_Unpack`` of ``count`` objects of ``datatype`` into ``buf`` (a flat uint8 array)."""
    if count * datatype.Get_size():
        _call_with_count(lambda b, t: t.Unpack(packed, 0, b, MPI.COMM_SELF), buf, count, datatype)
