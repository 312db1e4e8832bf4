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

:mod:`.strided` holds the form itself (and datatypes built back from it),
:mod:`.translate` the walk of an MPI datatype's constructor tree, and
:mod:`.cache` the per-handle cache that makes a translation happen once.
"""

from .cache import MAX_SHARED, CacheEntry, cache_entry, canonicalize
from .strided import EMPTY_LEVELS, Levels, StridedBlock, _dtype_name, from_array, named_datatype

__all__ = [
    "EMPTY_LEVELS",
    "MAX_SHARED",
    "CacheEntry",
    "Levels",
    "StridedBlock",
    "_dtype_name",
    "cache_entry",
    "canonicalize",
    "from_array",
    "named_datatype",
]
