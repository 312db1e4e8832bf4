"""A two-tier leaf-spine (Clos) fabric: hosts, leaves, spines, link ids and capacities."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LeafSpine:
    """A two-tier Clos: ``leaves`` leaf switches of ``hosts_per_leaf`` hosts, each leaf linked to every spine.

    Links are directed; capacities in Gbit/s (host<->leaf and leaf<->spine, each direction).
    Link ids: host uplinks ``[0, N)``, host downlinks ``[N, 2N)``, leaf->spine ``2N + l*S + s``,
    spine->leaf ``2N + L*S + l*S + s``.
    """

    leaves: int
    hosts_per_leaf: int
    spines: int
    host_gbps: float = 100.0
    spine_gbps: float = 100.0

    def __post_init__(self) -> None:
        for name in ("leaves", "hosts_per_leaf", "spines"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"LeafSpine: {name} must be a positive integer, got {value!r}")
        if not (self.host_gbps > 0 and self.spine_gbps > 0):
            raise ValueError(f"LeafSpine: capacities must be > 0, got {self.host_gbps}, {self.spine_gbps} Gbit/s")

    @property
    def hosts(self) -> int:
        return self.leaves * self.hosts_per_leaf

    @property
    def n_links(self) -> int:
        return 2 * self.hosts + 2 * self.leaves * self.spines

    def leaf(self, host: np.ndarray) -> np.ndarray:
        return np.asarray(host) // self.hosts_per_leaf

    def capacity(self) -> np.ndarray:
        """Bytes per second of every link, by link id."""
        n, ls = self.hosts, self.leaves * self.spines
        return np.concatenate([np.full(2 * n, self.host_gbps), np.full(2 * ls, self.spine_gbps)]) * 1e9 / 8

    def describe(self) -> str:
        ratio = self.hosts_per_leaf * self.host_gbps / (self.spines * self.spine_gbps)
        return (
            f"{self.hosts} hosts = {self.leaves} leaves x {self.hosts_per_leaf}, {self.spines} spines, "
            f"{self.host_gbps:g}/{self.spine_gbps:g} Gbit/s, oversubscription {ratio:g}:1"
        )
