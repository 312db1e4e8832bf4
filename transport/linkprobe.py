"""Node-to-node latency and bandwidth matrix over the side channel, and where it is bad.

One rank per node (the lowest) represents its node. For every ordered pair
of nodes ``(a, b)`` the coordinator asks ``a``'s representative to time a
round trip and a bulk transfer to ``b``'s representative's side channel
(:func:`measure`, run in ``a``'s side-channel thread; ``b`` runs
:func:`sink`), one pair at a time so that transfers do not share links.
These connections take the same network path as the job's traffic between
the two nodes.

:func:`localise` reads the matrix as C4 does: a slow node shows as a bad row
and column (every pair that involves it is slow), a slow link as a bad cell
(one pair slow, both of its nodes fine with everyone else). A cell is bad
when its bandwidth is ``ratio`` times below the reference (the median of the
better half of the cells), or its round trip ``rtt_ratio`` times above the
reference round trip (the median of the better half) and at least
``min_rtt`` seconds: queueing behind the job's own traffic adds
milliseconds on a busy link, and so does the probe's own answering thread
waiting for the GIL (5 ms switch interval) in a rank busy in Python; a
faulty link adds more. Pairs that could not be measured count neither way. It needs three nodes to tell a node from a
link; with two it reports the pair.
"""

from __future__ import annotations

import socket
import statistics
import time
from typing import Any

from .sidechannel import Peer, SideChannelError, ask, open_request, receive_message, send_message

__all__ = [
    "MAX_BYTES",
    "MAX_ROUNDS",
    "MAX_TIMEOUT",
    "clamp",
    "localise",
    "matrix",
    "measure",
    "probe_request",
    "records",
    "sink",
]

_CHUNK = 1 << 18
MAX_BYTES = 64 << 20  # bulk bytes of one probe, at most
MAX_ROUNDS = 64  # round trips of one probe, at most
MAX_TIMEOUT = 120.0  # seconds one probe may hold a side-channel worker, at most


def clamp(nbytes: Any, rounds: Any, timeout: Any) -> tuple[int, int, float]:
    """A probe's parameters as numbers within bounds (``ValueError`` for what is not a number)."""
    nbytes, rounds, timeout = int(nbytes), int(rounds), float(timeout)
    if timeout != timeout:  # NaN
        raise ValueError("link probe: timeout is not a number")
    return min(max(nbytes, 0), MAX_BYTES), min(max(rounds, 0), MAX_ROUNDS), min(max(timeout, 0.1), MAX_TIMEOUT)


def sink(request: dict, sock: socket.socket) -> None:
    """Stream handler: answer ``rounds`` one-byte pings, then read ``bytes`` bytes and acknowledge them.

    Every parameter is clamped (:func:`clamp`): a request cannot hold the
    worker longer than :data:`MAX_TIMEOUT` nor make it read more than
    :data:`MAX_BYTES`.
    """
    nbytes, rounds, timeout = clamp(request.get("bytes", 0), request.get("rounds", 0), request.get("timeout", 30.0))
    deadline = time.monotonic() + timeout
    for _ in range(rounds):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        if sock.recv(1) == b"":
            return
        sock.sendall(b"p")
    left = nbytes
    buf = bytearray(_CHUNK)
    while left > 0:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        n = sock.recv_into(buf, min(left, _CHUNK))
        if n == 0:
            return
        left -= n
    send_message(sock, {"received": nbytes})


def measure(target: Peer, nbytes: int, rounds: int, timeout: float) -> dict[str, Any]:
    """Round trip (best of ``rounds``) and bandwidth of ``nbytes`` from this process to ``target``'s sink."""
    nbytes, rounds, timeout = clamp(nbytes, rounds, timeout)
    deadline = time.monotonic() + timeout
    request = {"q": "sink", "rounds": rounds, "bytes": nbytes, "timeout": timeout}
    with open_request(target, request, timeout) as sock:
        rtts = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            sock.sendall(b"p")
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            if sock.recv(1) == b"":
                raise SideChannelError(f"rank {target['rank']}: link probe connection closed")
            rtts.append(time.perf_counter() - t0)
        payload = memoryview(bytearray(max(1, min(nbytes, _CHUNK))))
        t0 = time.perf_counter()
        left = nbytes
        while left > 0:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            n = min(left, len(payload))
            sock.sendall(payload[:n])
            left -= n
        receive_message(sock, deadline, limit=1024)
        seconds = max(time.perf_counter() - t0, 1e-9)
    return {"rtt": min(rtts) if rtts else None, "seconds": seconds, "bytes": nbytes, "bandwidth": nbytes / seconds}


def probe_request(request: dict, peers: dict[int, Peer], timeout: float) -> dict[str, Any]:
    """Serve a coordinator's ``probe`` request: measure to the *registered* peer of rank ``request["to"]``.

    The request names a rank, never an address: this rank connects only to
    side channels its own rendezvous (or MPI exchange) published, and with
    clamped parameters.
    """
    to = request.get("to")
    if not isinstance(to, int) or isinstance(to, bool) or to not in peers:
        raise ValueError(f"link probe: rank {to!r} is not a registered peer of this rank")
    return measure(peers[to], request.get("bytes", 0), request.get("rounds", 0), timeout)


def matrix(
    reps: dict[str, Peer],
    me: int,
    nbytes: int,
    rounds: int,
    timeout: float,
    repeats: int = 3,
    deadline: float | None = None,
) -> tuple[dict[tuple[str, str], dict[str, Any]], dict[str, str]]:
    """Measure every ordered pair of nodes (``reps``: node -> its representative's record), one pair at a time.

    Pairs that come out bad (or fail) are measured again, up to ``repeats``
    times in all, keeping the best bandwidth and round trip: noise only ever
    slows a transfer down, so the best of a few is the link's own figure.
    A node in two failed pairs is not asked again, and nothing starts after
    ``deadline`` (a ``time.monotonic()`` value): such pairs are reported as
    not measured, so one unresponsive node costs seconds, not minutes.
    """
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    failed: dict[str, str] = {}
    failures: dict[str, int] = {}

    def one(a: str, b: str) -> None:
        source, target = reps[a], reps[b]
        gone = [n for n in (a, b) if failures.get(n, 0) >= 2]
        if gone:
            failed[f"{a}->{b}"] = f"not measured: {gone[0]} failed twice already"
            return
        if deadline is not None and time.monotonic() >= deadline:
            failed[f"{a}->{b}"] = "not measured: the probe ran out of time"
            return
        try:
            if source.get("rank") == me:
                got = measure(target, nbytes, rounds, timeout)
            else:
                got = ask(source, "probe", 2 * timeout, to=target["rank"], bytes=nbytes, rounds=rounds)
        except (SideChannelError, OSError) as exc:
            failed[f"{a}->{b}"] = str(exc)
            for n in (a, b) if source.get("rank") != me else (b,):
                failures[n] = failures.get(n, 0) + 1
            return
        failed.pop(f"{a}->{b}", None)
        old = cells.get((a, b))
        if old is not None:
            got["bandwidth"] = max(got["bandwidth"], old["bandwidth"])
            rtts = [x for x in (got.get("rtt"), old.get("rtt")) if x is not None]
            got["rtt"] = min(rtts) if rtts else None
            got["repeats"] = old.get("repeats", 1) + 1
        cells[a, b] = got

    for a in reps:
        for b in reps:
            if a != b:
                one(a, b)
    for _ in range(repeats - 1):
        again = [tuple(pair) for pair in localise(cells)["bad"]] + [
            tuple(k.split("->")) for k, why in failed.items() if not why.startswith("not measured")
        ]
        if not again:
            break
        for a, b in again:
            one(a, b)
    return cells, failed


def localise(
    cells: dict[tuple[Any, Any], dict[str, float]], ratio: float = 3.0, rtt_ratio: float = 10.0, min_rtt: float = 0.02
) -> dict:
    """Slow nodes and slow links from ``{(node_a, node_b): {"bandwidth": B/s, "rtt": s}}`` (ordered pairs)."""
    nodes = sorted({n for pair in cells for n in pair}, key=str)
    if len(nodes) < 2 or not cells:
        return {"nodes": nodes, "slow_nodes": [], "slow_links": [], "reference": {}, "bad": []}
    bandwidths = sorted((c["bandwidth"] for c in cells.values()), reverse=True)
    rtts = sorted(c["rtt"] for c in cells.values() if c.get("rtt") is not None)
    ref_bw = statistics.median(bandwidths[: max(1, (len(bandwidths) + 1) // 2)])
    ref_rtt = statistics.median(rtts[: max(1, (len(rtts) + 1) // 2)]) if rtts else None
    bad = set()
    for pair, c in cells.items():
        slow_bw = c["bandwidth"] * ratio < ref_bw
        slow_rtt = ref_rtt is not None and c.get("rtt") is not None and c["rtt"] > max(rtt_ratio * ref_rtt, min_rtt)
        if slow_bw or slow_rtt:
            bad.add(pair)
    slow_nodes = []
    if len(nodes) >= 3:
        for n in nodes:
            mine = [pair for pair in cells if n in pair]
            others = {p for pair in mine for p in pair if p != n}
            if mine and len(others) >= 2 and all(pair in bad for pair in mine):
                slow_nodes.append(n)
    links = sorted(
        {tuple(sorted(pair, key=str)) for pair in bad if not (set(pair) & set(slow_nodes))},
        key=lambda pair: tuple(map(str, pair)),
    )
    return {
        "nodes": nodes,
        "slow_nodes": slow_nodes,
        "slow_links": [list(pair) for pair in links],
        "reference": {"bandwidth": ref_bw, "rtt": ref_rtt},
        "bad": [list(pair) for pair in sorted(bad, key=lambda pair: tuple(map(str, pair)))],
        "ambiguous": len(nodes) < 3 and bool(bad),
    }


def _mbit(bandwidth: float) -> str:
    return f"{bandwidth * 8 / 1e6:.0f} Mbit/s"


def records(
    result: dict, cells: dict[tuple[str, str], dict[str, Any]], nodes: int, known: set
) -> tuple[list[dict], set]:
    """The probe's note (the whole matrix) and an alarm for each slow node or link not in ``known``.

    Returns the records and what is known now: a fault is reported when it
    appears, not at every probe that still sees it.
    """
    ref = result["reference"]
    failed = result.get("failed", {})
    summary = (
        f"link probe over {nodes} node{'s' if nodes != 1 else ''}: reference "
        + (_mbit(ref["bandwidth"]) if ref.get("bandwidth") else "none")
        + (f", rtt {ref['rtt'] * 1e6:.0f} us" if ref.get("rtt") else "")
        + (f"; slow nodes {result['slow_nodes']}" if result["slow_nodes"] else "")
        + (f"; slow links {result['slow_links']}" if result["slow_links"] else "")
        + (f"; not measured: {', '.join(sorted(failed))}" if failed else "")
    )
    matrix = {f"{a}->{b}": c for (a, b), c in cells.items()}
    out = [{"kind": "links", "lines": [summary], "matrix": matrix, **result}]
    now = {("node", n) for n in result["slow_nodes"]} | {("link", tuple(p)) for p in result["slow_links"]}
    for node in result["slow_nodes"]:
        if ("node", node) in known:
            continue
        worst = min(c["bandwidth"] for (a, b), c in cells.items() if node in (a, b))
        out.append(
            {
                "kind": "slow-node",
                "node": node,
                "lines": [
                    f"SLOW NODE: {node}: every link to it is slow (bad row and column of the matrix), "
                    f"down to {_mbit(worst)} vs {_mbit(ref['bandwidth'])} elsewhere"
                ],
            }
        )
    for a, b in result["slow_links"]:
        if ("link", (a, b)) in known:
            continue
        worst = min(cells[p]["bandwidth"] for p in ((a, b), (b, a)) if p in cells)
        ambiguous = " (two nodes only: the link or one of its nodes)" if result.get("ambiguous") else ""
        out.append(
            {
                "kind": "slow-link",
                "link": [a, b],
                "lines": [
                    f"SLOW LINK: {a} <-> {b}: {_mbit(worst)} vs {_mbit(ref['bandwidth'])} elsewhere "
                    f"(one bad cell of the matrix){ambiguous}"
                ],
            }
        )
    return out, now
