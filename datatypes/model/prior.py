"""Analytic defaults of the cost model: what it assumes of copies and links where nothing was measured."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..settings import settings
from .features import Features

__all__ = ["PAYBACK_SHAPES", "Prior", "node_local_over_network"]

# links as collectives.allreduce_cost documents them: shared memory, TCP loopback, 1 Gbit/s TCP
_LINKS = {"intra": (1.5e-6, 0.25e-9), "inter": (60e-6, 8.4e-9)}
_LOOPBACK = (30e-6, 0.6e-9)


def node_local_over_network() -> bool:
    """Whether MPI is told to send node-local messages through its network module, not shared memory.

    MPICH: ``MPIR_CVAR_NOLOCAL``; Open MPI: an ``OMPI_MCA_btl`` list without
    its shared-memory transport (``sm``, formerly ``vader``), as the emulated
    cluster sets.
    """
    if os.environ.get("MPIR_CVAR_NOLOCAL", "0").strip().lower() in ("1", "true", "yes", "on"):
        return True
    btl = os.environ.get("OMPI_MCA_btl", "").replace(" ", "")
    if not btl:
        return False
    names = set(btl.lstrip("^").split(","))
    shared = bool(names & {"sm", "vader"})
    return shared if btl.startswith("^") else not shared


@dataclass(frozen=True)
class Prior:
    """Analytic costs used where nothing was measured.

    Pack engines: ``fixed + bytes * per_byte + blocks * block_cost``; the
    strided engine also pays ``(mpi_byte - strided_byte) * (min_block - 1/2)^2
    / block`` per block (numpy's loop over narrow words), so that, like the
    rule it replaces, it wins exactly for blocks of at least ``min_block``
    bytes, and its fixed cost puts the crossover of long blocks at
    ``min_bytes``. Links: ``alpha + beta * bytes``.
    """

    min_bytes: int = 16384
    min_block: int = 4
    mpi_fixed: float = 2.0e-6
    mpi_byte: float = 1 / 2.5e9
    strided_byte: float = 1 / 10e9
    block_cost: float = 10e-9
    pack_overhead: float = 2.0e-6  # the pack strategy's buffers and bookkeeping, both sides together
    pack_overhead_byte: float = 0.25e-9  # its fresh buffers' page faults (about 1 us per 4 KiB page)
    pack_piece: float = 2.0e-6  # each further piece of a vector collective packed or unpacked on its own
    analysis: float = 40e-6  # the interposer's analysis of a new (datatype, count): canonical form, route, choice
    links: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(_LINKS))
    reduce: float = 0.25e-9  # seconds per byte of a local elementwise reduction

    @classmethod
    def from_config(cls) -> Prior:
        links = dict(_LINKS)
        if node_local_over_network():
            links["intra"] = _LOOPBACK
        return cls(min_bytes=settings.pack_min_bytes, min_block=max(settings.pack_min_block, 1), links=links)

    def pack(self, engine: str, nbytes: int, block: int) -> float:
        """Seconds to pack (or unpack) ``nbytes`` in blocks of ``block`` bytes with ``engine``."""
        blocks = nbytes / max(block, 1)
        if engine == "mpi":
            return self.mpi_fixed + nbytes * self.mpi_byte + blocks * self.block_cost
        gap = self.mpi_byte - self.strided_byte
        fixed = self.mpi_fixed + self.min_bytes * gap
        narrow = gap * (self.min_block - 0.5) ** 2 / max(block, 1)
        return fixed + nbytes * self.strided_byte + blocks * (self.block_cost + narrow)

    def link(self, level: str) -> tuple[float, float]:
        return self.links.get(level, self.links["inter"])


PAYBACK_SHAPES = tuple(Features(1 << 20, block, 2) for block in (8, 64, 512, 4096))
