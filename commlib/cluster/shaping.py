"""Link shaping with ``tc``: rate strings, and the qdiscs that put a node rate and per-peer rates on one device.

A device with only a node rate gets ``tbf rate R burst B latency 50ms``;
one with per-peer overrides gets an ``htb`` tree: a parent class at the node
rate, a default class for other traffic, and one class per peer selected by a
``u32`` filter on the destination address, each at the slower of the peer and
node rates (unclassified traffic is unshaped when there is no node rate).

The bucket ``B`` is :func:`burst_for`: 64 KiB, or 2 ms of traffic at rate R
when that is more. A fixed 64 KiB bucket starves TCP at Gbit rates (the bucket
refills faster than the host schedules the qdisc: about 0.5-0.9 of 1 Gbit/s,
0.3 of 10 Gbit/s here, varying with load), while 2 ms keeps single-stream TCP
at 0.95-0.96 of the rate from 10 Mbit/s to 1 Gbit/s. The price: a message of
up to B bytes on an idle link passes at host speed.
"""

from __future__ import annotations

import re

from .netns import ClusterError, tool

__all__ = [
    "BURST_SECONDS",
    "LATENCY",
    "MIN_BURST",
    "Rate",
    "burst_for",
    "parse_rate",
    "rate_text",
    "shape_device",
    "slowest",
]

Rate = str | int | float
MIN_BURST = 64 * 1024
BURST_SECONDS = 0.002
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


def burst_for(rate: str, burst: str | None = None) -> str:
    """The token-bucket size for ``rate``: ``burst`` when given, else :data:`MIN_BURST` bytes or
    :data:`BURST_SECONDS` of traffic, the larger."""
    if burst is not None:
        return burst
    return f"{max(MIN_BURST, int(parse_rate(rate, 'burst_for') / 8 * BURST_SECONDS))}b"


def slowest(*rates: str | None) -> str | None:
    """The lowest of the given rates, ``None`` when none is given."""
    given = [r for r in rates if r is not None]
    return min(given, key=lambda r: parse_rate(r, "slowest")) if given else None


def _clear(ns: str, dev: str) -> None:
    if "qdisc noqueue" not in tool("tc", "-n", ns, "qdisc", "show", "dev", dev).stdout:
        tool("tc", "-n", ns, "qdisc", "del", "dev", dev, "root", check=False)


def _htb_class(ns: str, dev: str, parent: str, classid: str, rate: str, burst: str | None) -> None:
    burst = burst_for(rate, burst)
    spec = ["rate", rate, "ceil", rate, "burst", burst, "cburst", burst, "quantum", _QUANTUM]
    tool("tc", "-n", ns, "class", "add", "dev", dev, "parent", parent, "classid", classid, "htb", *spec)


def shape_device(ns: str, dev: str, rate: str | None, peers: dict[str, str], burst: str | None = None) -> None:
    """Shape egress of ``dev`` in ``ns``: ``rate`` overall (``None``: no limit), ``peers[address]`` per destination.

    ``burst`` (a tc size such as ``"64kb"``) overrides :func:`burst_for`'s bucket.
    """
    if not peers:
        if rate is None:
            _clear(ns, dev)
        else:
            tbf = ["tbf", "rate", rate, "burst", burst_for(rate, burst), "latency", LATENCY]
            tool("tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", *tbf)
        return
    _clear(ns, dev)
    tool("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10" if rate else "0")
    parent = "1:"
    if rate is not None:
        _htb_class(ns, dev, "1:", "1:1", rate, burst)
        _htb_class(ns, dev, "1:1", "1:10", rate, burst)
        parent = "1:1"
    for k, (address, peer_rate) in enumerate(sorted(peers.items())):
        classid = f"1:{0x100 + k:x}"
        _htb_class(ns, dev, parent, classid, slowest(peer_rate, rate), burst)
        match = ["u32", "match", "ip", "dst", f"{address}/32", "flowid", classid]
        tool("tc", "-n", ns, "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1", *match)
    if not tool("tc", "-n", ns, "filter", "show", "dev", dev).stdout.strip():
        raise ClusterError(f"shape_device: u32 filters on {dev} in {ns} did not take effect")
