"""The traffic of a collective step on the fabric: its flows (ring, all-to-all) and where the ranks sit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .leafspine import LeafSpine


@dataclass(frozen=True)
class Collective:
    """The flows of one step of a collective (``steps`` identical steps over the same connections)."""

    name: str
    src: np.ndarray
    dst: np.ndarray
    nbytes: np.ndarray
    steps: int = 1

    def __post_init__(self) -> None:
        if not (len(self.src) == len(self.dst) == len(self.nbytes)):
            raise ValueError(f"Collective {self.name}: src, dst and nbytes lengths differ")
        if (np.asarray(self.nbytes) < 0).any():
            raise ValueError(f"Collective {self.name}: flow sizes must be >= 0")

    def __len__(self) -> int:
        return len(self.src)


def _placement(topo: LeafSpine, placement: str, rng: np.random.Generator) -> np.ndarray:
    """Host of each rank: ``linear`` fills leaves in order, ``random`` is a random permutation (a scattered job)."""
    if placement == "linear":
        return np.arange(topo.hosts)
    if placement == "random":
        return rng.permutation(topo.hosts)
    raise ValueError(f"placement must be 'linear' or 'random', got {placement!r}")


def ring(topo: LeafSpine, message_bytes: float, placement: str = "random", seed: int = 0) -> Collective:
    """Ring allreduce of ``message_bytes`` per rank: 2(N-1) steps, each rank sends N-th chunks to the next rank."""
    n = topo.hosts
    if n < 2:
        raise ValueError(f"ring: needs at least 2 hosts, got {n}")
    host = _placement(topo, placement, np.random.default_rng(seed))
    src, dst = host, np.roll(host, -1)
    return Collective("ring", src, dst, np.full(n, message_bytes / n), steps=2 * (n - 1))


def alltoall(topo: LeafSpine, message_bytes: float, placement: str = "random", seed: int = 0) -> Collective:
    """All-to-all of ``message_bytes`` per rank: every rank sends an N-th to every other rank, all at once."""
    n = topo.hosts
    if n < 2:
        raise ValueError(f"alltoall: needs at least 2 hosts, got {n}")
    host = _placement(topo, placement, np.random.default_rng(seed))
    a, b = np.divmod(np.arange(n * n, dtype=np.int64), n)
    off = a != b
    return Collective("alltoall", host[a[off]], host[b[off]], np.full(int(off.sum()), message_bytes / n))


COLLECTIVES: dict[str, Callable[..., Collective]] = {"ring": ring, "alltoall": alltoall}
