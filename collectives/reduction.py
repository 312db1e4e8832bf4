"""Local reduction of arrays by a predefined MPI operation.

:func:`reducer` maps a predefined ``MPI.Op`` and a predefined datatype to the
array function that combines two buffers elementwise, ``acc = acc op x``; it
returns ``None`` for every pair it does not handle (user-defined operations,
``MAXLOC``/``MINLOC``, ``REPLACE``/``NO_OP``, datatypes outside the groups
below, and pairs MPI itself forbids, such as ``MAX`` on complex numbers), so
that callers can hand those to MPI untouched.

The operation/datatype pairs follow the MPI standard's table (MPI-4.1
section 6.9.2): ``SUM``/``PROD`` on integer, floating point and complex types,
``MIN``/``MAX`` on integer and floating point types, ``LAND``/``LOR``/``LXOR``
on C integer and logical types, ``BAND``/``BOR``/``BXOR`` on integer types and
``MPI_BYTE``. Integer arithmetic wraps as in C.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from mpi4py import MPI

__all__ = ["Reducer", "array_module", "element_dtype", "reducer", "reducible_pairs"]

# Datatype groups of the MPI standard, by attribute name on mpi4py's MPI module.
_GROUP_NAMES = {
    "c_integer": (
        "SHORT INT LONG LONG_LONG UNSIGNED_SHORT UNSIGNED UNSIGNED_LONG UNSIGNED_LONG_LONG SIGNED_CHAR "
        "UNSIGNED_CHAR INT8_T INT16_T INT32_T INT64_T UINT8_T UINT16_T UINT32_T UINT64_T AINT OFFSET COUNT"
    ),
    "f_integer": "INTEGER INTEGER1 INTEGER2 INTEGER4 INTEGER8",
    "floating": "FLOAT DOUBLE LONG_DOUBLE REAL DOUBLE_PRECISION REAL4 REAL8 REAL16",
    "complex": (
        "C_COMPLEX C_FLOAT_COMPLEX C_DOUBLE_COMPLEX C_LONG_DOUBLE_COMPLEX CXX_FLOAT_COMPLEX CXX_DOUBLE_COMPLEX "
        "CXX_LONG_DOUBLE_COMPLEX COMPLEX DOUBLE_COMPLEX COMPLEX8 COMPLEX16 COMPLEX32"
    ),
    "logical": "C_BOOL CXX_BOOL",
    "byte": "BYTE",
}

_INTEGER = ("c_integer", "f_integer")
# op name -> (array function name, groups the op is defined on)
_OPS = {
    "SUM": ("add", (*_INTEGER, "floating", "complex")),
    "PROD": ("multiply", (*_INTEGER, "floating", "complex")),
    "MAX": ("maximum", (*_INTEGER, "floating")),
    "MIN": ("minimum", (*_INTEGER, "floating")),
    "LAND": ("logical_and", ("c_integer", "logical")),
    "LOR": ("logical_or", ("c_integer", "logical")),
    "LXOR": ("logical_xor", ("c_integer", "logical")),
    "BAND": ("bitwise_and", (*_INTEGER, "byte")),
    "BOR": ("bitwise_or", (*_INTEGER, "byte")),
    "BXOR": ("bitwise_xor", (*_INTEGER, "byte")),
}


def _handle_table(names: dict[str, str]) -> dict[int, str]:
    table: dict[int, str] = {}
    for group, attrs in names.items():
        for attr in attrs.split():
            obj = getattr(MPI, attr, None)
            if isinstance(obj, MPI.Datatype) and obj != MPI.DATATYPE_NULL:
                table.setdefault(obj.handle, group)
    return table


_GROUP_OF = _handle_table(_GROUP_NAMES)
_float16 = MPI.DATATYPE_NULL
try:  # MPICH's half precision (MPIX_C_FLOAT16), where the library has it
    _float16 = MPI.Datatype.fromcode("e")
    if _float16 != MPI.DATATYPE_NULL and _float16.handle not in _GROUP_OF:
        _GROUP_OF[_float16.handle] = "floating"
except (ValueError, KeyError):
    pass
_OP_NAME = {getattr(MPI, name).handle: name for name in _OPS}
_QUAD = {t.handle for t in (getattr(MPI, n, None) for n in ("REAL16", "COMPLEX32")) if isinstance(t, MPI.Datatype)}


def array_module(a: Any) -> Any:
    """``cupy`` for a cupy array, else ``numpy`` (cupy is never imported here, only looked up)."""
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(a, cupy.ndarray):
        return cupy
    return np


def element_dtype(datatype: MPI.Datatype) -> np.dtype | None:
    """The numpy dtype of one element of a predefined reducible ``datatype``, else ``None``."""
    if datatype.handle not in _GROUP_OF:
        return None
    try:
        dtype = np.dtype(datatype.tocode())
    except (ValueError, TypeError):
        return None
    if dtype.itemsize != datatype.Get_size() or dtype.kind not in "biufc":
        return None
    if datatype.handle in _QUAD and np.finfo(dtype.char.lower() if dtype.kind == "c" else dtype).nmant != 112:
        return None  # Fortran's 16-byte reals are IEEE quad, which numpy's long double is not (x86: 80 bits)
    return dtype


@dataclass(frozen=True)
class Reducer:
    """``acc = acc op x`` elementwise, in place, for one (op, datatype) pair."""

    op_name: str  # "SUM", "MAX", ...
    function: str  # name of the array function, looked up in numpy or cupy
    dtype: np.dtype

    def __call__(self, acc: Any, x: Any) -> None:
        fn: Callable[..., Any] = getattr(array_module(acc), self.function)
        fn(acc, x, out=acc)


_REDUCERS: dict[tuple[int, int], Reducer | None] = {}


def reducer(op: MPI.Op, datatype: MPI.Datatype) -> Reducer | None:
    """The local reduction for ``op`` on ``datatype``, or ``None`` when commlib leaves the pair to MPI."""
    if not isinstance(op, MPI.Op) or not isinstance(datatype, MPI.Datatype):
        return None
    key = (op.handle, datatype.handle)
    try:
        return _REDUCERS[key]
    except KeyError:
        pass
    name = _OP_NAME.get(op.handle)
    group = _GROUP_OF.get(datatype.handle)
    found = None
    if name is not None and group is not None:
        function, groups = _OPS[name]
        dtype = element_dtype(datatype)
        if group in groups and dtype is not None:
            found = Reducer(name, function, dtype)
    if name is not None or found is not None:  # user-defined ops' handles may be reused: never cached
        _REDUCERS[key] = found
    return found


def reducible_pairs() -> list[tuple[str, MPI.Op, MPI.Datatype, Reducer]]:
    """Every (op name, op, predefined datatype, reducer) commlib reduces itself, in a fixed order."""
    types: dict[int, MPI.Datatype] = {}
    for name in sorted(dir(MPI)):
        obj = getattr(MPI, name)
        if isinstance(obj, MPI.Datatype) and obj.handle in _GROUP_OF:
            types.setdefault(obj.handle, obj)
    if _float16.handle in _GROUP_OF:  # MPICH's half precision has no name in mpi4py
        types.setdefault(_float16.handle, _float16)
    out = []
    for op_name in _OPS:
        op = getattr(MPI, op_name)
        for dt in types.values():
            red = reducer(op, dt)
            if red is not None:
                out.append((op_name, op, dt, red))
    return out
