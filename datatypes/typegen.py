"""Hypothesis strategies for MPI derived datatypes, buffers for them, and strided numpy views.

Needs hypothesis (the ``test`` extra). Generated datatypes are committed, freed
when their example ends, and print as the mpi4py call that builds them, so a
shrunk failure reads as code: ``MPI.DOUBLE.Create_vector(2, 1, 3)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
from hypothesis import reject
from hypothesis import strategies as st
from hypothesis.control import cleanup
from mpi4py import MPI

__all__ = [
    "CONSTRUCTORS",
    "NAMED_TYPES",
    "GeneratedDatatype",
    "TypeSpec",
    "buffers_for",
    "built",
    "empty_subarrays_accepted",
    "live_datatypes",
    "mpi_datatypes",
    "strided_views",
    "touched_range",
    "type_specs",
]

#: Named types drawn by default: the fixed-size numeric types, BYTE and the C character types.
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

#: Constructor names accepted by ``constructors=`` (the mpi4py method is ``Create_<name>``, or ``Dup``).
CONSTRUCTORS = (
    "contiguous",
    "vector",
    "hvector",
    "indexed",
    "hindexed",
    "indexed_block",
    "hindexed_block",
    "subarray",
    "resized",
    "dup",
    "struct",
)

_METHOD = {name: "Dup" if name == "dup" else f"Create_{name}" for name in CONSTRUCTORS}
_live = 0


@dataclass(frozen=True)
class TypeSpec:
    """One constructor applied to child specs; ``build()`` returns a new, uncommitted datatype."""

    ctor: str  # "named" or an mpi4py method name, e.g. "Create_vector"
    args: tuple = ()
    children: tuple[TypeSpec, ...] = ()

    def build(self) -> MPI.Datatype:
        if self.ctor == "named":
            return getattr(MPI, self.args[0])
        kids = [c.build() for c in self.children]
        try:
            if self.ctor == "Create_struct":
                return MPI.Datatype.Create_struct(self.args[0], self.args[1], kids)
            return getattr(kids[0], self.ctor)(*self.args)
        finally:
            _free_all(kids)

    def constructors(self) -> set[str]:
        """Every constructor used in this tree (mpi4py method names, plus ``order=...`` of subarrays)."""
        used = {self.ctor} if self.ctor != "named" else set()
        if self.ctor == "Create_subarray":
            used.add("order=MPI.ORDER_FORTRAN" if self.args[3] == MPI.ORDER_FORTRAN else "order=MPI.ORDER_C")
        for child in self.children:
            used |= child.constructors()
        return used

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

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis prints examples with this
        printer.text(repr(self))


class GeneratedDatatype(MPI.Datatype):
    """A datatype made by :func:`mpi_datatypes`: the handle, plus the spec it was built from."""

    spec: TypeSpec

    def __repr__(self) -> str:
        return repr(self.spec)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self.spec))


def _free_all(types: list[MPI.Datatype]) -> None:
    for t in types:
        if not t.is_predefined:
            t.Free()


def live_datatypes() -> int:
    """How many datatypes made by :func:`mpi_datatypes` have not been freed yet."""
    return _live


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


def touched_range(datatype: MPI.Datatype, count: int) -> tuple[int, int]:
    """Bytes ``[lo, hi)`` that ``count`` objects touch, from MPI's own (true) extents."""
    if count == 0 or datatype.Get_size() == 0:
        return (0, 0)
    true_lb, true_extent = datatype.Get_true_extent()
    span = (count - 1) * datatype.Get_extent()[1]
    return (true_lb + min(0, span), true_lb + true_extent + max(0, span))


# -- datatype trees ---------------------------------------------------------


def _evenly(draw, n: int, lo: int, hi: int) -> tuple[int, ...]:
    """Displacements that are evenly spaced half of the time (so that they can canonicalize)."""
    if draw(st.booleans()):
        first, step = draw(st.integers(lo, hi)), draw(st.integers(lo, hi))
        return tuple(first + i * step for i in range(n))
    return tuple(draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n)))


def _lengths(draw, n: int, hi: int) -> tuple[int, ...]:
    """Block lengths that are all equal half of the time."""
    if draw(st.booleans()):
        return (draw(st.integers(0, hi)),) * n
    return tuple(draw(st.lists(st.integers(0, hi), min_size=n, max_size=n)))


@cache
def empty_subarrays_accepted() -> bool:
    """Whether the MPI in use builds subarray types with a zero subsize (MPICH does, Open MPI does not).

    Probed once per process; where it says no, :func:`type_specs` draws every
    subsize from 1 up, so that every drawn type is one this MPI accepts.
    """
    try:
        probe = MPI.BYTE.Create_subarray([2], [0], [0])
    except MPI.Exception:
        return False
    probe.Free()
    return True


@st.composite
def _wrap(draw, child: TypeSpec, ctors: tuple[str, ...], small: bool) -> TypeSpec:
    """Apply one constructor from ``ctors`` to ``child``; ``small`` keeps deep levels' counts low."""
    c = 3 if small else 5
    ctor = draw(st.sampled_from(ctors))
    method = _METHOD[ctor]
    if ctor == "contiguous":
        args: tuple = (draw(st.integers(0, c)),)
    elif ctor == "vector":
        args = (draw(st.integers(0, c)), draw(st.integers(0, 3)), draw(st.integers(-4, 6)))
    elif ctor == "hvector":
        args = (draw(st.integers(0, c)), draw(st.integers(0, 3)), draw(st.integers(-64, 96)))
    elif ctor in ("indexed", "hindexed"):
        n = draw(st.integers(0, 4))
        hi = 6 if ctor == "indexed" else 96
        args = (_lengths(draw, n, 3), _evenly(draw, n, 0, hi))
    elif ctor in ("indexed_block", "hindexed_block"):
        n = draw(st.integers(0, 4))
        hi = 6 if ctor == "indexed_block" else 96
        # blocklength 0 with blocks: MPICH 5.0.2 dies of SIGFPE packing it when the child's extent
        # differs from its size; empty types come from the other constructors
        args = (draw(st.integers(1 if n else 0, 3)), _evenly(draw, n, 0, hi))
    elif ctor == "subarray":
        ndim = draw(st.integers(1, 3))
        sizes = tuple(draw(st.integers(1, 4)) for _ in range(ndim))
        least = 0 if empty_subarrays_accepted() else 1
        subsizes = tuple(draw(st.integers(least, s)) for s in sizes)
        starts = tuple(draw(st.integers(0, s - ss)) for s, ss in zip(sizes, subsizes))
        order = draw(st.sampled_from([MPI.ORDER_C, MPI.ORDER_FORTRAN]))
        args = (sizes, subsizes, starts, order)
    elif ctor == "resized":
        args = (draw(st.integers(-16, 16)), draw(st.integers(-8, 96)))
    else:  # dup
        args = ()
    return TypeSpec(method, args, (child,))


@st.composite
def _struct(draw, child_strategy: st.SearchStrategy[TypeSpec]) -> TypeSpec:
    n = draw(st.integers(1, 3))
    first = draw(child_strategy)
    same = draw(st.booleans())  # struct of one repeated member type: it may canonicalize
    kids = tuple(first if same else draw(child_strategy) for _ in range(n))
    return TypeSpec("Create_struct", (_lengths(draw, n, 2), _evenly(draw, n, 0, 64)), kids)


def _names(named: Sequence[str | MPI.Datatype]) -> tuple[str, ...]:
    out = []
    for item in named:
        name = item.Get_name().removeprefix("MPI_") if isinstance(item, MPI.Datatype) else str(item)
        if not isinstance(getattr(MPI, name, None), MPI.Datatype):
            raise ValueError(f"named: {item!r} is not a predefined mpi4py datatype (e.g. 'DOUBLE' or MPI.DOUBLE)")
        out.append(name)
    if not out:
        raise ValueError("named: give at least one named type")
    return tuple(out)


def type_specs(
    max_depth: int = 3,
    named: Sequence[str | MPI.Datatype] = NAMED_TYPES,
    constructors: Sequence[str] = CONSTRUCTORS,
) -> st.SearchStrategy[TypeSpec]:
    """Random datatype trees (:class:`TypeSpec`) of up to ``max_depth`` constructors.

    ``named`` lists the leaf types (names such as ``"DOUBLE"`` or ``MPI.DOUBLE``);
    ``constructors`` the constructors to use (see :data:`CONSTRUCTORS`). Counts,
    strides and displacements are small, deeper levels smaller still, so extents
    stay in the kilobytes. Shrinks toward a named type, then toward shallow
    trees with small counts.
    """
    unknown = set(constructors) - set(CONSTRUCTORS)
    if unknown:
        raise ValueError(f"constructors: unknown {sorted(unknown)}; choose from {', '.join(CONSTRUCTORS)}")
    if max_depth < 0:
        raise ValueError(f"max_depth must be >= 0, got {max_depth}")
    wraps = tuple(c for c in constructors if c != "struct")
    strategy: st.SearchStrategy[TypeSpec] = st.sampled_from(_names(named)).map(lambda n: TypeSpec("named", (n,)))
    for depth in range(max_depth):
        inner = strategy
        options = [inner]
        if wraps:
            options.append(inner.flatmap(lambda c, small=depth >= 1: _wrap(c, wraps, small)))
        if "struct" in constructors:
            options.append(_struct(inner))
        strategy = st.one_of(options)
    return strategy


def _shifted(spec: TypeSpec, shift: int) -> TypeSpec:
    """The same type map moved ``shift`` bytes up; lb moves with it, extent is unchanged."""
    return TypeSpec("Create_hindexed_block", (1, (shift,)), (spec,))


@st.composite
def mpi_datatypes(
    draw,
    max_depth: int = 3,
    named: Sequence[str | MPI.Datatype] = NAMED_TYPES,
    constructors: Sequence[str] = CONSTRUCTORS,
    *,
    at_origin: bool = True,
    max_bytes: int = 1 << 20,
) -> GeneratedDatatype:
    """Committed MPI datatypes, freed when the example ends; they print as their constructor call.

    With ``at_origin`` (the default) every object starts at or after its buffer
    origin and consecutive objects go upward (true lb >= 0, extent >= 0): a
    type reaching below the origin is moved up by wrapping it in
    ``Create_hindexed_block(1, [shift])``, so any count of objects fits in a
    buffer that starts at the origin. Types spanning more than ``max_bytes``
    per object are not drawn.
    """
    global _live
    spec = draw(type_specs(max_depth, named, constructors))
    with built(spec) as dt:
        true_lb, true_extent = dt.Get_true_extent()
        lb, extent = dt.Get_extent()
        if max(true_extent, abs(extent)) > max_bytes:
            reject()
        if at_origin and extent < 0:
            reject()
    if at_origin and true_lb < 0 and true_extent > 0:
        spec = _shifted(spec, -true_lb)
    dt = spec.build()
    generated = GeneratedDatatype(dt)
    generated.spec = spec
    if dt.is_predefined:  # named types are never freed
        return generated
    generated.Commit()
    _live += 1

    def _free() -> None:
        global _live
        generated.Free()
        _live -= 1

    cleanup(_free)
    return generated


# -- buffers and views ------------------------------------------------------


def buffers_for(datatype: MPI.Datatype, count: int, *, slack: int = 16, xp: Any = None) -> st.SearchStrategy[Any]:
    """Byte buffers holding exactly ``count`` objects of ``datatype``, plus up to ``slack`` bytes.

    Every byte, the slack and the gaps between blocks included, is random
    (the poison): a packer that reads a byte outside the type map, or an
    unpacker that writes one, changes a result. ``xp`` is the array module
    of the result (numpy by default; ``cupy`` for device buffers).
    """
    lo, hi = touched_range(datatype, count)
    if lo < 0:
        raise ValueError(
            f"buffers_for: {count} object(s) of {datatype!r} reach {-lo} bytes below the buffer origin; "
            f"draw them with mpi_datatypes(at_origin=True) or move the type up with Create_hindexed_block"
        )

    def poisoned_buffer(slack_bytes: int, seed: int) -> Any:
        data = np.random.default_rng(seed).integers(0, 256, hi + slack_bytes, dtype=np.uint8)
        return data if xp is None or xp is np else xp.asarray(data)

    return st.builds(poisoned_buffer, st.integers(0, slack), st.integers(0, 2**32 - 1))


_VIEW_DTYPES = (np.uint8, np.int16, np.float32, np.float64, np.complex128)


@st.composite
def strided_views(draw, dtypes: Sequence[Any] = _VIEW_DTYPES, max_dims: int = 3, max_side: int = 5) -> np.ndarray:
    """Strided numpy views: every axis sliced with a step of 1, 2, -1 or -2 out of a larger array."""
    shape = tuple(draw(st.lists(st.integers(1, max_side), min_size=1, max_size=max_dims)))
    dtype = np.dtype(draw(st.sampled_from(list(dtypes))))
    full = tuple(2 * s for s in shape)
    base = np.arange(int(np.prod(full)), dtype=np.int64).astype(dtype).reshape(full)
    index = tuple(slice(None, None, draw(st.sampled_from([1, 2, -1, -2]))) for _ in shape)
    return base[index]
