"""The canonical form kept on a datatype handle (an MPI attribute), shared by handles of the same signature."""

from __future__ import annotations

from typing import Any

from mpi4py import MPI

from ..bounded import BoundedDict
from ..signature import signature
from .strided import StridedBlock
from .translate import translate


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
            entry = CacheEntry(translate(datatype))
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
