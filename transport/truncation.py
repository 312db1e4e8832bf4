"""Receives that never write past their buffer, even on an MPI that would.

The MPI standard lets a message longer than its receive buffer fail with
``MPI_ERR_TRUNCATE`` and modify only the buffer. Open MPI 5.0 (ob1, both the
``self`` and the ``sm`` paths) reports the error but writes the whole message
past the buffer once the message takes the rendezvous protocol (about 4 KiB
and up): the bytes that follow the buffer in memory are overwritten, and the
process crashes later somewhere unrelated.

:func:`overruns` finds out once per process, by a receive to itself on
``COMM_SELF`` into a 16-byte window of a larger array. Where the MPI overruns,
the interposer's blocking receives go through :func:`recv`: the message is
matched first (``Mprobe``), received into the buffer when it fits, and
otherwise into scratch memory of its own size, leaving the buffer untouched,
and :class:`Truncated` is raised. ``COMMLIB_RECV_GUARD`` = ``auto`` (the
default: guard where the probe saw an overrun), ``on`` or ``off``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from mpi4py import MPI

__all__ = ["Truncated", "capacity", "guarded", "overruns", "recv"]

_PROBE_BYTES = 64 * 1024  # well above every eager limit seen (MPICH and Open MPI, self and shared memory)
_WINDOW = 16
_overruns: bool | None = None


class Truncated(MPI.Exception):
    """A message longer than the receive buffer (``MPI.ERR_TRUNCATE``); the buffer is left untouched."""

    def __init__(self, message: str) -> None:
        super().__init__(MPI.ERR_TRUNCATE)
        self.message = message

    def __str__(self) -> str:
        return self.message


def overruns() -> bool:
    """True when this MPI writes a truncated message past the receive buffer (probed once, on ``COMM_SELF``).

    Before ``MPI_Init`` (or after ``MPI_Finalize``) nothing can be probed: the
    answer is ``False`` then, and the probe is made at the first call that can.
    """
    global _overruns
    if _overruns is None:
        if not MPI.Is_initialized() or MPI.Is_finalized():
            return False
        _overruns = _probe()
    return _overruns


def _probe() -> bool:
    comm = MPI.COMM_SELF.Dup()
    try:
        message = np.full(_PROBE_BYTES, 0xA5, np.uint8)
        memory = np.zeros(_PROBE_BYTES + _WINDOW, np.uint8)  # all of it ours: an overrun stays inside
        send = comm.Isend([message, MPI.BYTE], 0, 0)
        try:
            comm.Recv([memory[:_WINDOW], MPI.BYTE], 0, 0)
        except MPI.Exception as exc:
            if exc.Get_error_class() != MPI.ERR_TRUNCATE:
                raise
        send.Wait()
        return bool(memory[_WINDOW:].any())
    finally:
        comm.Free()


def guarded() -> bool:
    """Whether blocking receives go through :func:`recv` (``COMMLIB_RECV_GUARD``, default ``auto``)."""
    setting = os.environ.get("COMMLIB_RECV_GUARD", "auto").strip().lower()
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"COMMLIB_RECV_GUARD must be auto, on or off, got {setting!r}")
    return setting == "on" or (setting == "auto" and overruns())


def capacity(buf: Any) -> int | None:
    """Bytes a receive into the mpi4py buffer spec ``buf`` can take; ``None`` for a spec not read here.

    Read: a buffer object, ``[buf, datatype]`` with a predefined datatype,
    and ``[buf, count, datatype]`` (with a predefined datatype, only where
    the buffer holds ``count`` elements).
    """
    if buf.__class__ not in (list, tuple):
        return _writable_bytes(buf)
    if len(buf) == 2 and isinstance(buf[1], MPI.Datatype) and buf[1].is_predefined:
        size, nbytes = buf[1].Get_size(), _writable_bytes(buf[0])
        return None if nbytes is None else nbytes // size * size if size else 0
    if len(buf) == 3 and isinstance(buf[1], int) and isinstance(buf[2], MPI.Datatype):
        room, nbytes = buf[1] * buf[2].Get_size(), _writable_bytes(buf[0])
        if nbytes is None or buf[1] < 0:
            return None
        # a count larger than a buffer of a named type is the caller's error: MPI's path reports it; a
        # derived type's span has been checked against its buffer by the interposer
        return None if buf[2].is_predefined and room > nbytes else room
    return None


def _writable_bytes(obj: Any) -> int | None:
    try:
        view = memoryview(obj)
    except TypeError:
        return None
    return None if view.readonly or not view.contiguous else view.nbytes  # mpi4py refuses the others itself


def recv(comm: MPI.Comm, buf: Any, room: int, source: int, tag: int, status: MPI.Status | None, op: str) -> None:
    """Receive into ``buf`` (``room`` bytes) on ``comm`` (mpi4py's own methods), never past it."""
    st = status if status is not None else MPI.Status()
    message = comm.Mprobe(source, tag, st)
    size = st.Get_count(MPI.BYTE)
    if size <= room:
        try:
            message.Recv(buf, status)
        except BaseException:  # refused before MPI received it: the matched message must not stay behind
            if message != MPI.MESSAGE_NULL:
                message.Recv([np.empty(size, np.uint8), MPI.BYTE])
            raise
        return
    message.Recv([np.empty(size, np.uint8), MPI.BYTE], status)
    raise Truncated(
        f"{op}: message of {size} bytes from rank {st.Get_source()} (tag {st.Get_tag()}) does not fit the "
        f"receive buffer of {room} bytes (MPI_ERR_TRUNCATE); the buffer is left untouched"
    )
