"""Link shaping with ``tc``: rate strings, and the qdiscs that put a node rate and per-peer rates on one device.

A device with only a node rate gets ``tbf rate R burst 64kb latency 50ms``;
one with per-peer overrides gets an ``htb`` tree: a parent class at the node
rate, a default class for other traffic, and one class per peer selected by a
``u32`` filter on the destination address, each at the slower of the peer and
node rates (unclassified traffic is unshaped when there is no node rate).
"""

from __future__ import annotations

import re

from commlib.netns import ClusterError, tool

__all__ = ["BURST", "LATENCY", "Rate", "parse_rate", "rate_text", "shape_device", "slowest"]

Rate = str | int | float
BURST = "64kb"
LATENCY = "50ms"
# htb's per-class quantum: bytes a class may send per round; the default (rate / r2q) overflows at Gbit rates.
_QUANTUM = "60000"
_UNITS = {
    "": 1.0,
    "bit": 1.0,
    "kbit": 1e3,
    "mbit": 1e6,
    "gbit": 1e9,
    "tbit": 1e12,
    "bps": 8.0,
    "kbps": 8e3,
    "mbps": 8e6,
    "gbps": 8e9,
    "tbps": 8e12,
}
_RATE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$")


def parse_rate(rate: Rate | None, what: str) -> float | None:
    """Bits per second of a tc rate (``"1gbit"``, ``"100mbit"``, ``"10mbps"`` = bytes, or a number of bit/s)."""
    if rate is None:
        return None
    if isinstance(rate, bool) or not isinstance(rate, (str, int, float)):
        raise TypeError(f"{what}: rate must be a tc rate string or bit/s number, got {type(rate).__name__}")
    if isinstance(rate, (int, float)):
        bits = float(rate)
    else:
        m = _RATE.match(rate.lower())
        if m is None or m.group(2) not in _UNITS:
            raise ValueError(f"{what}: rate {rate!r} is not a tc rate (e.g. '1gbit', '100mbit', '500kbit')")
        bits = float(m.group(1)) * _UNITS[m.group(2)]
    if not bits >= 8:
        raise ValueError(f"{what}: rate {rate!r} must be at least 8 bit/s")
    return bits


def rate_text(rate: Rate | None) -> str | None:
    """The rate as tc takes it (numbers become ``<n>bit``)."""
    if rate is None:
        return None
    if isinstance(rate, str):
        return rate.strip().lower()
    return f"{int(rate)}bit"


def slowest(*rates: str | None) -> str | None:
    """The lowest of the given rates, ``None`` when none is given."""
    given = [r for r in rates if r is not None]
    return min(given, key=lambda r: parse_rate(r, "slowest")) if given else None


def _clear(ns: str, dev: str) -> None:
    if "qdisc noqueue" not in tool("tc", "-n", ns, "qdisc", "show", "dev", dev).stdout:
        tool("tc", "-n", ns, "qdisc", "del", "dev", dev, "root", check=False)


def shape_device(ns: str, dev: str, rate: str | None, peers: dict[str, str]) -> None:
    """Shape egress of ``dev`` in ``ns``: ``rate`` overall (``None``: no limit), ``peers[address]`` per destination."""
    if not peers:
        if rate is None:
            _clear(ns, dev)
        else:
            tool(
                "tc",
                "-n",
                ns,
                "qdisc",
                "replace",
                "dev",
                dev,
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                BURST,
                "latency",
                LATENCY,
            )
        return
    _clear(ns, dev)
    tc = ("tc", "-n", ns)
    shape = ("burst", BURST, "cburst", BURST, "quantum", _QUANTUM)
    tool(*tc, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10" if rate else "0")
    parent = "1:"
    if rate is not None:
        tool(
            *tc, "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb", "rate", rate, "ceil", rate, *shape
        )
        tool(
            *tc,
            "class",
            "add",
            "dev",
            dev,
            "parent",
            "1:1",
            "classid",
            "1:10",
            "htb",
            "rate",
            rate,
            "ceil",
            rate,
            *shape,
        )
        parent = "1:1"
    for k, (address, peer_rate) in enumerate(sorted(peers.items())):
        classid = f"1:{0x100 + k:x}"
        eff = slowest(peer_rate, rate)
        tool(
            *tc,
            "class",
            "add",
            "dev",
            dev,
            "parent",
            parent,
            "classid",
            classid,
            "htb",
            "rate",
            eff,
            "ceil",
            eff,
            *shape,
        )
        tool(
            *tc,
            "filter",
            "add",
            "dev",
            dev,
            "parent",
            "1:",
            "protocol",
            "ip",
            "prio",
            "1",
            "u32",
            "match",
            "ip",
            "dst",
            f"{address}/32",
            "flowid",
            classid,
        )
    if not tool(*tc, "filter", "show", "dev", dev).stdout.strip():
        raise ClusterError(f"shape_device: u32 filters on {dev} in {ns} did not take effect")
