"""A bounded TCP throughput probe between two emulated nodes.

``python -m commlib.cluster.tcpprobe recv ADDRESS STREAMS`` listens on ADDRESS (an
ephemeral port, printed as ``PORT <n>``), takes STREAMS connections, reads
them to the end and prints ``BYTES <n> SECONDS <t>`` (first byte to last).
``python -m commlib.cluster.tcpprobe send ADDRESS PORT NBYTES STREAMS [SOURCE]``
sends NBYTES in total over STREAMS parallel connections, optionally bound to
the local address SOURCE (to pick one of several paths). Both ends give up
after ``--timeout`` seconds. :meth:`commlib.cluster.EmulatedCluster.measure_throughput`
runs one end in each node's namespace; the probe measures the links without
MPI in the way.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time

__all__ = ["receive", "send", "main"]

_CHUNK = 1 << 20


def receive(address: str, streams: int, *, timeout: float, announce=print) -> tuple[int, float]:
    """Accept ``streams`` connections on ``address``, drain them; return (bytes, seconds from first byte)."""
    with socket.create_server((address, 0), backlog=streams) as server:
        server.settimeout(timeout)
        announce(f"PORT {server.getsockname()[1]}", flush=True)
        deadline = time.monotonic() + timeout
        conns = [server.accept()[0] for _ in range(streams)]
    totals = [0] * streams
    first: list[float] = []

    def drain(i: int) -> None:
        conn = conns[i]
        with conn:
            conn.settimeout(max(0.1, deadline - time.monotonic()))
            buf = bytearray(_CHUNK)
            while True:
                n = conn.recv_into(buf)
                if n == 0:
                    return
                if not first:
                    first.append(time.perf_counter())
                totals[i] += n

    threads = [threading.Thread(target=drain, args=(i,), daemon=True) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    end = time.perf_counter()
    if any(t.is_alive() for t in threads):
        raise TimeoutError(f"tcpprobe recv: streams did not finish within {timeout:g} s")
    return sum(totals), (end - first[0]) if first else 0.0


def send(address: str, port: int, nbytes: int, streams: int, *, source: str | None, timeout: float) -> None:
    """Send ``nbytes`` in total over ``streams`` connections to ``address:port``."""
    shares = [nbytes // streams + (1 if i < nbytes % streams else 0) for i in range(streams)]
    errors: list[BaseException] = []

    def push(share: int) -> None:
        try:
            src = (source, 0) if source else None
            with socket.create_connection((address, port), timeout=timeout, source_address=src) as conn:
                payload = memoryview(bytearray(_CHUNK))
                left = share
                while left > 0:
                    conn.sendall(payload[: min(left, _CHUNK)])
                    left -= min(left, _CHUNK)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=push, args=(s,), daemon=True) for s in shares]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    if errors:
        raise errors[0]
    if any(t.is_alive() for t in threads):
        raise TimeoutError(f"tcpprobe send: streams did not finish within {timeout:g} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m commlib.cluster.tcpprobe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=60.0)
    sub = parser.add_subparsers(dest="role", required=True)
    recv = sub.add_parser("recv")
    recv.add_argument("address")
    recv.add_argument("streams", type=int)
    snd = sub.add_parser("send")
    snd.add_argument("address")
    snd.add_argument("port", type=int)
    snd.add_argument("nbytes", type=int)
    snd.add_argument("streams", type=int)
    snd.add_argument("source", nargs="?")
    ns = parser.parse_args(argv)
    if ns.role == "recv":
        total, seconds = receive(ns.address, ns.streams, timeout=ns.timeout)
        print(f"BYTES {total} SECONDS {seconds:.6f}", flush=True)
    else:
        send(ns.address, ns.port, ns.nbytes, ns.streams, source=ns.source, timeout=ns.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
