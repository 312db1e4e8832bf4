"""What ``dispatch`` returns: the rows delivered to this rank's experts (:class:`RecvInfo`) and the handle."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from mpi4py import MPI

from ..routing import ReceivePlan, SendPlan


@dataclass(frozen=True)
class RecvInfo:
    """What ``dispatch`` delivered to this rank: local expert ``l`` reads ``recv_x[info.slice(l)]``."""

    experts: np.ndarray  # [L] global ids of this rank's experts, in local order
    bounds: np.ndarray  # [L + 1] first row of each local expert, then the row count
    counts: np.ndarray  # [L, P] rows per (local expert, source rank)
    capacity: int | None  # pairs kept per (source rank, expert), or None when dropless
    dropped: np.ndarray  # [E] pairs this rank dropped as a source, per global expert

    def __len__(self) -> int:
        return int(self.experts.size)

    def slice(self, local_expert: int) -> slice:
        """Rows of ``recv_x`` (and of the expert outputs) belonging to ``local_expert``."""
        return slice(int(self.bounds[local_expert]), int(self.bounds[local_expert + 1]))

    @property
    def num_rows(self) -> int:
        return int(self.bounds[-1])


@dataclass(frozen=True)
class MoEHandle:
    """Everything ``combine`` needs from its ``dispatch``; opaque to users apart from the byte counts."""

    comm: MPI.Comm
    num_tokens: int
    topk: int
    send: SendPlan
    recv: ReceivePlan
    weights: np.ndarray  # [N, K] float64 on the host: kept pairs' weights, 0 elsewhere
    xp: Any
    pack: str  # "gather" or "mpi"
    dispatch_bytes: int  # payload bytes this rank sent to other ranks in dispatch
    copied_rows: int  # rows duplicated locally after the exchange (extras)

    def combine_rows(self) -> int:
        """Rows this rank sends to other ranks in ``combine``."""
        counts = self.recv.counts.copy()
        counts[:, self.comm.Get_rank()] = 0
        return int(counts.sum())
