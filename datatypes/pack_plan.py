"""The pack plan of a (datatype, count) pair: the bytes it touches, its packed size and its strided view.

Computed once per pair and kept on the datatype (:func:`datatypes.canonical.cache_entry`), or in a
bounded cache for a :class:`~datatypes.canonical.StridedBlock`. The packer copies through it and the
cost model reads a message's features from it; :func:`resolve` is where both validate ``count``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from mpi4py import MPI

from .canonical import StridedBlock, cache_entry

__all__ = ["PackPlan", "Typelike", "describe", "mpi_plan", "resolve"]

Typelike = MPI.Datatype | StridedBlock


@dataclass(frozen=True)
class PackPlan:
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


def _strided_plan(sb: StridedBlock, count: int) -> PackPlan:
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
    return PackPlan(lo, hi, rep.size, block, injective, mpi_len, item, shape, strides, rep.start)


def mpi_plan(datatype: MPI.Datatype, count: int) -> PackPlan:
    """The plan of ``count`` objects of ``datatype`` as MPI packs them (no strided view)."""
    size = datatype.Get_size()
    lo = hi = 0
    if count and size:
        true_lb, true_extent = datatype.Get_true_extent()
        span = (count - 1) * datatype.Get_extent()[1]
        lo, hi = true_lb + min(0, span), true_lb + true_extent + max(0, span)
    mpi_len = _mpi_len(lo, hi, count, datatype.Get_extent()[1])
    return PackPlan(lo, hi, count * size, 0, False, mpi_len)


_plan_of_block = lru_cache(maxsize=256)(_strided_plan)


def resolve(op: str, count: int, datatype: Typelike) -> PackPlan:
    """Validate ``count`` and return the cached plan for (datatype, count); errors name ``op``."""
    if type(count) is not int:
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
            raise TypeError(f"{op}: count must be an integer, got {type(count).__name__}")
        count = int(count)
    if count < 0:
        raise ValueError(f"{op}: count must be >= 0, got {count} for {describe(datatype)}")
    if isinstance(datatype, StridedBlock):
        return _plan_of_block(datatype, count)
    if not isinstance(datatype, MPI.Datatype):
        raise TypeError(f"{op}: expected an mpi4py.MPI.Datatype or StridedBlock, got {type(datatype).__name__}")
    entry = cache_entry(datatype)
    plan = entry.plans.get(count)
    if plan is None:
        sb = entry.block
        plan = _strided_plan(sb, count) if sb is not None else mpi_plan(datatype, count)
        entry.plans[count] = plan
    return plan


def describe(datatype: Typelike) -> str:
    """``datatype`` as error messages name it."""
    if isinstance(datatype, StridedBlock):
        return repr(datatype)
    if not isinstance(datatype, MPI.Datatype):
        return type(datatype).__name__
    name = datatype.Get_name()
    return name if name else f"derived datatype (size {datatype.Get_size()}, extent {datatype.Get_extent()[1]})"
