"""mpi4py buffer specs turned into flat, typed array views for the collectives.

A reduction only needs ``count`` elements of one predefined type laid out
contiguously. :func:`typed_buffer` accepts the specs mpi4py's capitalised
collectives accept - an array or any buffer object, ``[buf, datatype]``,
``[buf, count, datatype]``, ``[buf, (count, displ), datatype]`` and
``[buf, count, displ, datatype]`` - and returns a 1-D view of exactly those
elements in the caller's memory (numpy or cupy), or ``None`` for what it
leaves to MPI: ``IN_PLACE``/``BOTTOM``/``None``, derived datatypes (MPI
defines its predefined operations on predefined types only, pair types aside),
and element types no reduction is defined on. Specs that are wrong whoever handles them (too small,
read-only or non-contiguous buffers) raise before any memory is touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from mpi4py import MPI

from .reduction import array_module, element_dtype

__all__ = ["TypedBuffer", "datatype_of", "typed_buffer"]


@dataclass(frozen=True)
class TypedBuffer:
    """``array``: a 1-D view of ``count`` elements of the predefined ``datatype``, in the caller's memory."""

    array: Any
    datatype: MPI.Datatype

    @property
    def count(self) -> int:
        return int(self.array.size)

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)


def _type_name(datatype: MPI.Datatype) -> str:
    return datatype.Get_name() or f"datatype of {datatype.Get_size()} bytes"


def _foreign(obj: Any) -> bool:
    """A DLPack or CUDA-array-interface object that is no array commlib reduces: mpi4py takes it as it is."""
    if isinstance(obj, array_module(obj).ndarray):
        return False
    if not (hasattr(obj, "__dlpack__") or hasattr(obj, "__cuda_array_interface__")):
        return False
    try:
        memoryview(obj)
    except TypeError:
        return True
    return False


def _flat(obj: Any, what: str, writable: bool) -> Any:
    """A 1-D view of a whole array or buffer object, in memory order."""
    xp = array_module(obj)
    if isinstance(obj, xp.ndarray):
        arr = obj
    else:
        try:
            arr = np.asarray(memoryview(obj))
        except (TypeError, ValueError, NotImplementedError) as err:
            raise TypeError(f"allreduce: {what} of type {type(obj).__name__} is not a buffer") from err
    if arr.flags.c_contiguous:
        flat = arr.reshape(-1)
    elif arr.flags.f_contiguous:
        flat = arr.reshape(-1, order="F")
    else:
        raise BufferError(
            f"allreduce: {what} is a non-contiguous {arr.dtype} array of shape {arr.shape} "
            f"and strides {arr.strides}: MPI buffers must be contiguous"
        )
    if writable and not _writeable(flat):
        raise BufferError(f"allreduce: {what} ({arr.dtype} array of shape {arr.shape}) is read-only")
    return flat


def _writeable(arr: Any) -> bool:
    flags = arr.flags
    return bool(getattr(flags, "writeable", True))


_DATATYPE_OF: dict[Any, MPI.Datatype | None] = {}


def datatype_of(dtype: Any) -> MPI.Datatype | None:
    """The predefined reducible datatype mpi4py infers for arrays of ``dtype``, else ``None`` (cached)."""
    try:
        return _DATATYPE_OF[dtype]
    except KeyError:
        pass
    datatype = None
    if dtype.isnative:
        try:
            datatype = MPI.Datatype.fromcode(dtype.char)
        except (ValueError, KeyError):
            datatype = None
        if datatype is not None and element_dtype(datatype) != dtype:
            datatype = None
    _DATATYPE_OF[dtype] = datatype
    return datatype


def _is_count(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def typed_buffer(spec: Any, what: str, *, writable: bool) -> TypedBuffer | None:
    """The elements ``spec`` names, as a :class:`TypedBuffer`, or ``None`` to leave the spec to MPI.

    ``what`` names the argument in error messages (``"sendbuf"``, ``"recvbuf"``).
    """
    if spec is None or spec is MPI.IN_PLACE or spec is MPI.BOTTOM:
        return None
    if not isinstance(spec, (list, tuple)):
        if _foreign(spec):
            return None
        flat = _flat(spec, what, writable)
        datatype = datatype_of(flat.dtype)
        return None if datatype is None else TypedBuffer(flat, datatype)
    count: int | None = None
    displ = 0
    if len(spec) == 2:
        buf, datatype = spec
    elif len(spec) == 3 and _is_count(spec[1]):
        buf, count, datatype = spec
    elif len(spec) == 3 and isinstance(spec[1], (list, tuple)) and len(spec[1]) == 2:
        buf, (count, displ), datatype = spec
    elif len(spec) == 4:
        buf, count, displ, datatype = spec
    else:
        return None
    if not isinstance(datatype, MPI.Datatype) or not _is_count(displ) or (count is not None and not _is_count(count)):
        return None
    if buf is None or buf is MPI.IN_PLACE or buf is MPI.BOTTOM or datatype == MPI.DATATYPE_NULL:
        return None
    if not datatype.is_predefined:
        return None  # MPI defines the predefined operations on predefined datatypes only (pairs aside)
    dtype = element_dtype(datatype)
    if dtype is None or _foreign(buf):
        return None
    flat = _flat(buf, what, writable)
    raw = flat.view(array_module(flat).uint8)
    size = datatype.Get_size()
    if count is None:
        if size <= 0 or raw.size % size:
            return None
        count = raw.size // size
    start, stop = int(displ) * size, (int(displ) + int(count)) * size
    if count < 0 or displ < 0 or stop > raw.size:
        raise ValueError(
            f"allreduce: {what} holds {raw.size} bytes, but count={count} displacement={displ} "
            f"of {_type_name(datatype)} ({size} bytes each) needs bytes [{start}, {stop})"
        )
    return TypedBuffer(raw[start:stop].view(dtype), datatype)
