"""``Alltoallw`` on a communicator of one rank, where Open MPI reads and writes at the wrong place.

On a one-rank communicator an ``Alltoallw`` is a local copy. Open MPI 5.0
(its ``coll/self`` component) multiplies ``Alltoallw``'s byte displacements
by the datatypes' extents, as if they were ``Alltoallv``'s: with a
displacement of 16 bytes and ``MPI.DOUBLE`` it writes 128 bytes into the
receive buffer, past its end when the buffer is small. Whether the MPI in use
does this is probed once per process on private buffers large enough to
hold the wrong writes (:func:`scales_displacements`); where it does, commlib
makes the copy itself (:func:`datatypes.copy`, bounds-checked), and MPI is
not called.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mpi4py import MPI

import datatypes

from .pieces import typed_parts

__all__ = ["copy_alone", "scales_displacements"]

_scales: bool | None = None


def scales_displacements() -> bool:
    """Whether this MPI's one-rank ``Alltoallw`` scales byte displacements by the extent (probed once)."""
    global _scales
    if _scales is None:
        send = np.arange(16, dtype=np.float64)  # room for what a scaling MPI reads (element 8) and writes (16)
        recv = np.full(32, -1.0)
        # mpi4py's own method on the one-rank communicator: never this module's, however MPI.COMM_SELF is wrapped
        MPI.Comm.Alltoallw(MPI.COMM_SELF, [send, ([1], [8]), [MPI.DOUBLE]], [recv, ([1], [16]), [MPI.DOUBLE]])
        _scales = bool(recv[2] != 1.0)  # byte 16 holds send's byte 8 where displacements are read as bytes
    return _scales


def copy_alone(sendbuf: Any, recvbuf: Any) -> bool:
    """Make a one-rank ``Alltoallw`` as a local copy; ``False`` (nothing done) for a spec commlib does not read."""
    send, recv = typed_parts(sendbuf, 1), typed_parts(recvbuf, 1)
    if send is None or recv is None:
        return False
    (sbuf, (scount,), (sdisp,), (stype,)), (rbuf, (rcount,), (rdisp,), (rtype,)) = send, recv
    if scount < 0 or rcount < 0 or sdisp < 0 or rdisp < 0 or not stype or not rtype:
        return False  # MPI's to report
    # a send and a receive piece of different sizes, or a buffer too small, raise here before anything is copied
    datatypes.copy(sbuf, scount, stype, rbuf, rcount, rtype, sdisp=sdisp, rdisp=rdisp, op="Alltoallw")
    return True
