"""Rows on the move: host or device arrays, scratch buffers kept between calls, one ``Alltoallw`` of row blocks."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from mpi4py import MPI


def array_namespace(x: Any) -> Any:
    """``numpy`` for numpy arrays, else cupy's module for ``x`` (numpy when cupy is missing)."""
    if isinstance(x, np.ndarray):
        return np
    try:
        import cupy
    except ImportError:
        return np
    return cupy.get_array_module(x)


def host(a: Any) -> np.ndarray:
    """``a`` as a numpy array on the host (copied from the device for cupy arrays)."""
    return a if isinstance(a, np.ndarray) else (a.get() if hasattr(a, "get") else np.asarray(a))


def _row_type(row_bytes: int) -> MPI.Datatype:
    return MPI.BYTE.Create_contiguous(row_bytes).Commit()


def _blocks(row: MPI.Datatype, row_bytes: int, starts: np.ndarray, lengths: np.ndarray) -> tuple[int, MPI.Datatype]:
    """``(count, datatype)`` of rows ``starts[i] : starts[i] + lengths[i]``, in that order (a new type, or ``row``)."""
    nonempty = lengths > 0
    starts, lengths = starts[nonempty], lengths[nonempty]
    if starts.size == 0:
        return 0, row
    return 1, row.Create_hindexed(lengths.tolist(), (starts * row_bytes).tolist()).Commit()


def alltoallw(comm: MPI.Comm, sendbuf: Any, sends: list, recvbuf: Any, recvs: list, row_bytes: int) -> None:
    """One ``Alltoallw`` moving rows: ``sends[p]`` and ``recvs[p]`` are ``(starts, lengths)`` of rows per peer."""
    row = _row_type(row_bytes)
    made: list[MPI.Datatype] = []
    try:
        specs = []
        for blocks in (sends, recvs):
            counts, types = [], []
            for starts, lengths in blocks:
                count, datatype = _blocks(row, row_bytes, starts, lengths)
                if datatype is not row:
                    made.append(datatype)
                counts.append(count)
                types.append(datatype)
            specs.append((counts, types))
        zeros = [0] * len(sends)
        comm.Alltoallw([sendbuf, specs[0][0], zeros, specs[0][1]], [recvbuf, specs[1][0], zeros, specs[1][1]])
    finally:
        for datatype in made:
            datatype.Free()
        row.Free()


class _Workspace(threading.local):
    """Host buffers kept between calls, per thread: a fresh large buffer costs a page fault per page, every call."""

    def __init__(self) -> None:
        self.buffers: dict[str, np.ndarray] = {}


_workspace = _Workspace()


def scratch(xp: Any, name: str, rows: int, width: int, dtype: np.dtype) -> Any:
    """A ``[rows, width]`` scratch array: numpy's reused from the last call (grown as needed), else a new one."""
    if xp is not np:
        return xp.empty((rows, width), dtype)
    nbytes = rows * width * dtype.itemsize
    buf = _workspace.buffers.get(name)
    if buf is None or buf.nbytes < nbytes:
        buf = _workspace.buffers[name] = np.empty(max(nbytes, 1), np.uint8)
    return buf[:nbytes].view(dtype).reshape(rows, width)


def release_buffers() -> None:
    """Free the scratch buffers that ``dispatch`` and ``combine`` keep between calls (this thread's)."""
    _workspace.buffers.clear()


def take(xp: Any, rows: Any, index: Any, out: Any) -> None:
    """``out[:] = rows[index]`` without a temporary (numpy's ``take`` buffers ``out`` unless told not to check)."""
    if xp is np:
        np.take(rows, index, axis=0, out=out, mode="clip")
    else:
        xp.take(rows, xp.asarray(index), axis=0, out=out)


def displacements(counts: np.ndarray) -> np.ndarray:
    """Exclusive prefix sums of ``counts``: where each peer's block starts."""
    return np.cumsum(counts) - counts
