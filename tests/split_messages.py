"""Helpers for the flow-splitting tests: a fixed cost model, recognisable bytes, a send to oneself."""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from transport.flows import Splitter


class Model:
    """A cost model stand-in: 10 us per message, 1 GB/s."""

    def alpha_beta(self, level: str) -> tuple[float, float]:
        return 10e-6, 1e-9


def pattern(n: int, seed: int = 0) -> np.ndarray:
    """``n`` bytes that differ from their neighbours, from message to message (``seed``)."""
    return ((np.arange(n, dtype=np.uint64) * 2654435761 + seed) % 251).astype(np.uint8)


def roundtrip(sp: Splitter, data: np.ndarray, *, sizes=None, tag: int = 3, slack: int = 5) -> tuple[np.ndarray, int]:
    """Send ``data`` to oneself through ``sp``, testing both sides; the receive buffer and the count received."""
    out = np.full(data.nbytes + slack, 0xEE, np.uint8)
    rreq = sp.Irecv(out, 0, tag)
    sreq = sp.Isend(data, 0, tag, sizes=sizes)
    status = MPI.Status()
    sent = received = False
    while not (sent and received):  # test both: a clear-to-send needs the receive to make progress
        sent = sent or sreq.Test()
        received = received or rreq.Test(status)
    return out, status.Get_count(MPI.BYTE)
