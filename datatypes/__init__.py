"""Canonical strided datatypes and packers.

``canonicalize`` turns an MPI derived datatype into a :class:`StridedBlock`
(or ``None`` when it is not uniformly strided); ``pack``/``unpack`` copy
objects of any datatype to and from contiguous bytes, bit-identical to
``MPI_Pack``/``MPI_Unpack``, using the strided form where it is faster.
"""

from .canonical import StridedBlock, canonicalize, from_array
from .local_copy import copy
from .packer import check_buffer, choose_engine, pack, packed_size, touched, unpack, unpack_partial
from .signature import signature

__all__ = [
    "StridedBlock",
    "canonicalize",
    "copy",
    "check_buffer",
    "choose_engine",
    "from_array",
    "pack",
    "packed_size",
    "signature",
    "touched",
    "unpack",
    "unpack_partial",
]
