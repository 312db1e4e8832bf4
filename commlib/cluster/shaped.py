"""Shaping an emulated cluster's links: node, pair and path rates, and what is in force (a mixin)."""

from __future__ import annotations

import json
import re

from .layout import DEVICE
from .netns import ClusterError, tool
from .shaping import Rate, parse_rate, rate_text, shape_device, slowest

__all__ = ["ShapedLinks"]


class ShapedLinks:
    """The rates of :class:`commlib.cluster.EmulatedCluster`'s links, applied with ``tc``."""

    @property
    def node_rates(self) -> list[str | None]:
        """Each node's link rate as given to tc (``None``: unshaped)."""
        return list(self._node_rates)

    @property
    def link_rates(self) -> dict[tuple[int, int], str]:
        """Per-pair overrides set with :meth:`set_link_rate`, keyed ``(a, b)`` with ``a < b``."""
        return dict(self._link_rates)

    @property
    def path_rates(self) -> list[str | None]:
        return list(self._path_rates)

    def _shape(self, node: int) -> None:
        """Apply the rates in force to node ``node``'s link (both of its ends)."""
        ns = self.namespaces[node]
        rate = self._node_rates[node]
        if self.hub is None:
            # Both ends of a direct path carry both nodes' traffic: each end gets the slowest applicable rate.
            pair = self._link_rates.get((0, 1))
            for p, dev in enumerate(self.devices):
                shape_device(ns, dev, slowest(*self._node_rates, self._path_rates[p], pair), {}, self.burst)
            return
        peers = {}
        for (a, b), link_rate in self._link_rates.items():
            if node in (a, b):
                peers[self.addresses[b if node == a else a]] = link_rate
        try:
            shape_device(ns, DEVICE, rate, peers, self.burst)
        except ClusterError as exc:
            if not peers or not re.search(r"unknown|not exist|not found|no such", str(exc), re.I):
                raise
            shape_device(ns, DEVICE, rate, {}, self.burst)
            raise NotImplementedError(
                f"EmulatedCluster.set_link_rate needs the kernel's htb qdisc and u32 filter (sch_htb, cls_u32): {exc}"
            ) from None
        shape_device(self.hub, f"p{node}", rate, {}, self.burst)

    def _reshape(self, *nodes: int) -> None:
        for node in range(len(self)) if self.hub is None else nodes:
            self._shape(node)

    def set_node_rate(self, node: int, rate: Rate | None) -> None:
        """Shape node ``node``'s link (both directions, every path) to ``rate``; ``None`` removes the limit."""
        self._check_open("set_node_rate")
        node = self._node(node, "set_node_rate")
        parse_rate(rate, "EmulatedCluster.set_node_rate")
        self._node_rates[node] = rate_text(rate)
        self._reshape(node)

    def set_link_rate(self, a: int, b: int, rate: Rate | None) -> None:
        """Limit only traffic between nodes ``a`` and ``b`` to ``rate`` (``None`` removes the override).

        In the star topology each of the two nodes gets an htb class with a u32
        filter on the other's address under its own node rate, so the pair is
        slow while the rest of both nodes' traffic is not.
        """
        self._check_open("set_link_rate")
        a, b = sorted((self._node(a, "set_link_rate"), self._node(b, "set_link_rate")))
        if a == b:
            raise ValueError(f"EmulatedCluster.set_link_rate: a link needs two different nodes, got {a} and {b}")
        parse_rate(rate, "EmulatedCluster.set_link_rate")
        before = dict(self._link_rates)
        if rate is None:
            self._link_rates.pop((a, b), None)
        else:
            self._link_rates[(a, b)] = rate_text(rate)
        try:
            self._reshape(a, b)
        except NotImplementedError:
            self._link_rates = before
            self._reshape(a, b)
            raise

    def set_path_rate(self, path: int, rate: Rate | None) -> None:
        """Limit path ``path`` (``paths >= 2``) to ``rate`` on both nodes; ``None`` removes the override."""
        self._check_open("set_path_rate")
        if self.paths == 1:
            raise ValueError("EmulatedCluster.set_path_rate: the cluster has one path per node (paths=1)")
        if not isinstance(path, int) or not 0 <= path < self.paths:
            raise IndexError(f"EmulatedCluster.set_path_rate: path {path!r} out of range 0..{self.paths - 1}")
        parse_rate(rate, "EmulatedCluster.set_path_rate")
        self._path_rates[path] = rate_text(rate)
        self._reshape()

    def qdiscs(self, node: int) -> str:
        """``tc qdisc show`` of the node's devices (and its hub port): what shaping is in force."""
        node = self._node(node, "qdiscs")
        self._check_open("qdiscs")
        text = tool("tc", "-n", self.namespaces[node], "qdisc", "show").stdout
        if self.hub is not None:
            text += tool("tc", "-n", self.hub, "qdisc", "show", "dev", f"p{node}").stdout
        return text

    def link_bytes(self, node: int) -> dict[str, tuple[int, int]]:
        """``{device: (rx_bytes, tx_bytes)}`` of the node's link devices, from the kernel's counters."""
        node = self._node(node, "link_bytes")
        self._check_open("link_bytes")
        out = tool("ip", "-n", self.namespaces[node], "-j", "-s", "link", "show").stdout
        counters = {}
        for link in json.loads(out):
            if link.get("ifname") in self.devices:
                stats = link["stats64"]
                counters[link["ifname"]] = (int(stats["rx"]["bytes"]), int(stats["tx"]["bytes"]))
        return counters
