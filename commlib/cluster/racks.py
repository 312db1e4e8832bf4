"""Emulated racks: emulated nodes on one bridge per rack, the racks joined through a core by slower uplinks.

Three levels with three rates on one machine. :class:`EmulatedRacks` is an
:class:`~commlib.cluster.EmulatedCluster` (same nodes, addresses, launches and
teardown) whose hub namespace holds a bridge ``br<k>`` per rack, with the
node links of rack ``k`` on it, and a core bridge ``brc`` joined to every rack
bridge by a veth pair ``u<k>`` (rack side) / ``c<k>`` (core side). A node's
``rate`` shapes its link to its rack switch (both ends), ``uplink_rate`` a
rack's uplink (egress of ``u<k>``: leaving the rack; of ``c<k>``: entering
it), and ``local_rate``, where given, the loopback device inside every node
(ranks of one node talk over it when MPI is kept off shared memory). Nodes
fill racks in order (node ``i`` in rack ``i * racks // nodes``); every rank
gets ``COMMLIB_TOPOLOGY=rack=<k>`` beside ``COMMLIB_NODE_ID``, so that
:mod:`collectives.hierarchy` sees the three levels.
"""

from __future__ import annotations

from .emulated import EmulatedCluster
from .netns import batch
from .shaping import Rate, parse_rate, rate_text, shape_device

__all__ = ["EmulatedRacks"]

_UPLINK_INDEX, _CORE_INDEX = 2000, 3000


class EmulatedRacks(EmulatedCluster):
    """``nodes`` emulated nodes in ``racks`` racks: node links at ``rate``, rack uplinks at ``uplink_rate``."""

    def __init__(
        self,
        nodes: int = 4,
        racks: int = 2,
        rate: Rate | None = "1gbit",
        uplink_rate: Rate | None = "200mbit",
        *,
        local_rate: Rate | None = None,
        name: str | None = None,
        burst: str | None = None,
    ) -> None:
        if not isinstance(racks, int) or not 1 <= racks <= nodes:
            raise ValueError(f"EmulatedRacks: racks must be an int in 1..nodes ({nodes}), got {racks!r}")
        parse_rate(uplink_rate, "EmulatedRacks uplink_rate")
        parse_rate(local_rate, "EmulatedRacks local_rate")
        self.racks = racks
        self.rack_of = [i * racks // nodes for i in range(nodes)]
        self.uplink_rate = rate_text(uplink_rate)
        self.local_rate = rate_text(local_rate)
        super().__init__(nodes=nodes, rate=rate, paths=1, name=name, burst=burst)
        if rate is None:  # the base class shapes only when a node rate is given
            self._shape_levels()

    def __repr__(self) -> str:
        base = super().__repr__()[len("<EmulatedCluster") : -1]
        uplinks, local = self.uplink_rate or "unshaped", self.local_rate or "unshaped"
        return f"<EmulatedRacks{base}, {self.racks} racks {self.rack_of}, uplinks={uplinks}, local={local}>"

    def _build(self) -> None:
        super()._build()
        hub = self.hub
        lines = [f"link add br{k} type bridge" for k in range(1, self.racks)]
        lines += [f"link set br{k} up" for k in range(1, self.racks)]
        lines += [f"link set p{i} master br{k}" for i, k in enumerate(self.rack_of)]
        if self.racks > 1:
            lines += ["link add brc type bridge", "link set brc up"]
            for k in range(self.racks):
                lines += [
                    f"link add u{k} index {_UPLINK_INDEX + k} type veth peer name c{k} index {_CORE_INDEX + k}",
                    f"link set u{k} master br{k} up",
                    f"link set c{k} master brc up",
                ]
        batch("ip", lines, hub)

    def _shape_levels(self) -> None:
        """The uplinks and loopback devices, to the rates in force."""
        if self.racks > 1:
            for k in range(self.racks):
                for dev in (f"u{k}", f"c{k}"):
                    shape_device(self.hub, dev, self.uplink_rate, {}, self.burst)
        for ns in self.namespaces:
            shape_device(ns, "lo", self.local_rate, {}, self.burst)

    def _reshape(self, *nodes: int) -> None:
        super()._reshape(*nodes)
        self._shape_levels()

    def node_env(self, node: int) -> dict[str, str]:
        """The environment of node ``node``'s ranks: its node id and its rack."""
        return {**super().node_env(node), "COMMLIB_TOPOLOGY": f"rack={self.rack_of[node]}"}
