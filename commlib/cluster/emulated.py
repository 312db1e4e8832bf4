"""The emulated cluster: network namespaces as nodes, veth links through a bridge or direct paths."""

from __future__ import annotations

import json
import os
import re
import time

from .launching import Launching
from .layout import DEVICE, LOOPBACK_SUBNET, MAX_NODES, MAX_PATHS, NODE_INDEX, PEER_INDEX, STAR_SUBNET
from .lifecycle import forget, install_handlers, new_key, remember
from .netns import ClusterError, batch, delete_namespaces, namespaces, tool
from .shaped import ShapedLinks
from .shaping import Rate, parse_rate, rate_text

__all__ = ["EmulatedCluster"]


class EmulatedCluster(ShapedLinks, Launching):
    """``nodes`` emulated nodes (network namespaces) with links shaped to ``rate`` (``None``: unshaped).

    Usable as a context manager; :meth:`close` (idempotent) deletes everything
    it made. See the module docstring for the topology and addresses.
    """

    def __init__(
        self,
        nodes: int = 2,
        rate: Rate | None = "1gbit",
        paths: int = 1,
        name: str | None = None,
        *,
        burst: str | None = None,
    ) -> None:
        if not isinstance(nodes, int) or not 1 <= nodes <= MAX_NODES:
            raise ValueError(f"EmulatedCluster: nodes must be an int in 1..{MAX_NODES}, got {nodes!r}")
        if not isinstance(paths, int) or not 1 <= paths <= MAX_PATHS:
            raise ValueError(f"EmulatedCluster: paths must be an int in 1..{MAX_PATHS}, got {paths!r}")
        if paths > 1 and nodes != 2:
            raise ValueError(f"EmulatedCluster: paths={paths} needs exactly 2 nodes, got nodes={nodes}")
        parse_rate(rate, "EmulatedCluster")
        if burst is not None and not re.fullmatch(r"\d+(k|m)?b", burst.strip().lower()):
            raise ValueError(f"EmulatedCluster: burst {burst!r} is not a tc size in bytes (e.g. '64kb', '250000b')")
        self.burst = burst
        self._pid = os.getpid()
        self._key = new_key()
        self.name = name or self._key
        self.paths = paths
        self.namespaces = [f"{self._key}-n{i}" for i in range(nodes)]
        self.hub = f"{self._key}-hub" if paths == 1 else None
        self.hostnames = [f"node{i}" for i in range(nodes)]
        self.devices = [f"cl{p}" for p in range(paths)]
        self.device = DEVICE
        self._node_rates: list[str | None] = [rate_text(rate)] * nodes
        self._link_rates: dict[tuple[int, int], str] = {}
        self._path_rates: list[str | None] = [None] * paths
        self._made: list[str] = []
        self._closed = False
        remember(self)
        install_handlers()
        try:
            self._build()
            if rate is not None:
                self._reshape(*range(nodes))
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- topology
    def __len__(self) -> int:
        return len(self.namespaces)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        rates = ", ".join(f"{h}={r or 'unshaped'}" for h, r in zip(self.hostnames, self._node_rates))
        links = "".join(f", link {a}-{b}={r}" for (a, b), r in sorted(self._link_rates.items()))
        kind = "star" if self.paths == 1 else f"{self.paths} paths"
        return f"<EmulatedCluster {self.name!r} {state}: {len(self)} nodes ({kind}) on {self.device}, {rates}{links}>"

    def __enter__(self) -> EmulatedCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def addresses(self) -> list[str]:
        """Each node's address: on :data:`DEVICE` (star), or on ``lo`` behind the multipath route (paths)."""
        subnet = STAR_SUBNET if self.paths == 1 else LOOPBACK_SUBNET
        return [f"{subnet}{i + 1}" for i in range(len(self))]

    def address(self, node: int) -> str:
        return self.addresses[self._node(node, "address")]

    def path_addresses(self, node: int) -> list[str]:
        """The node's address on each path device, in path order (one entry in the star topology)."""
        node = self._node(node, "path_addresses")
        if self.paths == 1:
            return [self.addresses[node]]
        return [f"198.18.{p + 1}.{node + 1}" for p in range(self.paths)]

    def peer_addresses(self, node: int, peer: int) -> list[str]:
        """Addresses of ``peer`` reachable from ``node``, one per path that joins them."""
        self._node(node, "peer_addresses")
        if self._node(peer, "peer_addresses") == node:
            raise ValueError(f"EmulatedCluster.peer_addresses: node and peer are both {node}")
        return self.path_addresses(peer)

    def _node(self, node: int, what: str) -> int:
        if not isinstance(node, int) or not 0 <= node < len(self):
            raise IndexError(f"EmulatedCluster.{what}: node {node!r} out of range 0..{len(self) - 1}")
        return node

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise ClusterError(f"EmulatedCluster.{what}: cluster {self.name!r} is closed")

    def _build(self) -> None:
        """Make the namespaces and links with one ``ip -batch`` in the root namespace and one per namespace."""
        # Each veth end gets an ifindex unlike its peer's: the kernel defers (by up to 1 s) the carrier of a veth
        # whose ifindex equals its peer's, and UCX ignores a device without carrier.
        made = [*([self.hub] if self.hub else []), *self.namespaces]
        self._made = list(made)  # before creating: close() deletes whatever of these exists
        root = [f"netns add {ns}" for ns in made]
        per_ns: dict[str, list[str]] = {ns: ["link set lo up"] for ns in made}
        if self.hub is not None:
            per_ns[self.hub] += ["link add br0 type bridge", "link set br0 up"]
            for i, ns in enumerate(self.namespaces):
                node_end = f"{DEVICE} index {NODE_INDEX} netns {ns}"
                root.append(f"link add {node_end} type veth peer name p{i} index {PEER_INDEX + i} netns {self.hub}")
                per_ns[self.hub].append(f"link set p{i} master br0 up")
                per_ns[ns] += [f"addr add {self.addresses[i]}/24 dev {DEVICE}", f"link set {DEVICE} up"]
        else:
            a, b = self.namespaces
            for p, dev in enumerate(self.devices):
                ends = (f"{dev} index {NODE_INDEX + p} netns {a}", f"{dev} index {PEER_INDEX + p} netns {b}")
                root.append(f"link add {ends[0]} type veth peer name {ends[1]}")
                for i, ns in enumerate(self.namespaces):
                    per_ns[ns] += [f"addr add {self.path_addresses(i)[p]}/24 dev {dev}", f"link set {dev} up"]
            for i, ns in enumerate(self.namespaces):
                peer = 1 - i
                hops = " ".join(
                    f"nexthop via {self.path_addresses(peer)[p]} dev {dev}" for p, dev in enumerate(self.devices)
                )
                per_ns[ns] += [
                    f"addr add {self.addresses[i]}/32 dev lo",
                    f"route add {self.addresses[peer]}/32 src {self.addresses[i]} {hops}",
                ]
        batch("ip", root)
        for ns, lines in per_ns.items():
            batch("ip", lines, ns)
        if self.hub is None:
            for ns in self.namespaces:
                tool("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1")
        self._wait_links_up()

    def _wait_links_up(self, timeout: float = 10.0) -> None:
        """Wait until every node device reports carrier: the kernel raises it asynchronously after ``link set up``,
        and UCX ignores a device that is not yet up."""
        deadline = time.monotonic() + timeout
        pending = list(range(len(self)))
        while pending:
            pending = [node for node in pending if not self._links_up(node)]
            if pending and time.monotonic() > deadline:
                raise ClusterError(f"EmulatedCluster: links of nodes {pending} not up after {timeout:g} s")
            if pending:
                time.sleep(0.02)

    def _links_up(self, node: int) -> bool:
        out = tool("ip", "-n", self.namespaces[node], "-j", "link", "show").stdout
        state = {link.get("ifname"): link.get("operstate") for link in json.loads(out)}
        return all(state.get(dev) == "UP" for dev in self.devices)

    # ---------------------------------------------------------------- teardown
    def close(self) -> None:
        """Kill what still runs on the nodes and delete every namespace (and so every link) made; idempotent.

        Safe to re-enter from the signal handler: the namespaces leave the list
        only once deleted, so an interrupted close is finished by the next.
        """
        if os.getpid() != self._pid:
            return
        self._closed = True
        if self._made:
            delete_namespaces(*self._made)
            self._made = []
        forget(self)
        left = {*self.namespaces, *([self.hub] if self.hub else [])} & set(namespaces())
        if left:
            raise ClusterError(f"EmulatedCluster.close: could not delete namespaces {sorted(left)}")
