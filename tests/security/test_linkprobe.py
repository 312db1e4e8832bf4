"""Attacks through the link probe (loopback only): making a rank connect anywhere, holding a worker with huge
rounds, bytes or timeouts."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time

import pytest

from transport import linkprobe
from transport.monitor import Monitor


def test_a_probe_request_cannot_send_a_rank_to_an_arbitrary_address():
    """A token holder used to pass a whole peer record: the rank connected to any host:port and streamed to it."""
    trap = socket.create_server(("127.0.0.1", 0))
    trap.settimeout(0.5)
    target = {"rank": 9, "address": "127.0.0.1", "port": trap.getsockname()[1], "token": "x" * 32}
    monitor = Monitor(timeout=0.5)
    outcome: list = []

    def probe() -> None:
        try:
            outcome.append(monitor._probe_request({"to": target, "bytes": 1 << 30, "rounds": 1}))
        except Exception as exc:
            outcome.append(exc)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    try:
        with pytest.raises(TimeoutError):
            trap.accept()[0].close()  # nobody may come
        worker.join(5.0)
        assert outcome and isinstance(outcome[0], ValueError) and "not a registered peer" in str(outcome[0])
    finally:
        trap.close()
        monitor.stop()


def _sink(request: dict) -> tuple[socket.socket, threading.Thread]:
    mine, theirs = socket.socketpair()
    worker = threading.Thread(target=lambda: _quiet(linkprobe.sink, request, theirs), daemon=True)
    worker.start()
    mine.settimeout(5)
    return mine, worker


def _quiet(fn, *args) -> None:
    try:
        fn(*args)
    except OSError:
        pass
    finally:
        args[-1].close()


def _ack(sock: socket.socket) -> dict:
    (n,) = struct.unpack("!I", sock.recv(4))
    return json.loads(sock.recv(n))


def test_rounds_are_clamped():
    sock, worker = _sink({"rounds": 10**9, "bytes": 10, "timeout": 5})
    with sock:
        for _ in range(linkprobe.MAX_ROUNDS):
            sock.sendall(b"p")
            assert sock.recv(1) == b"p"
        sock.sendall(b"0123456789")  # past the clamp these are the bulk bytes, not pings
        assert _ack(sock) == {"received": 10}
    worker.join(5)


def test_bytes_are_clamped(monkeypatch):
    monkeypatch.setattr(linkprobe, "MAX_BYTES", 1000)
    sock, worker = _sink({"rounds": 0, "bytes": 10**15, "timeout": 5})
    with sock:
        sock.sendall(b"x" * 1000)
        assert _ack(sock) == {"received": 1000}
    worker.join(5)


def test_the_timeout_is_clamped(monkeypatch):
    monkeypatch.setattr(linkprobe, "MAX_TIMEOUT", 0.5)
    t0 = time.monotonic()
    sock, worker = _sink({"rounds": 1, "bytes": 0, "timeout": 1e9})
    with sock:
        worker.join(10)  # the client sends nothing: the sink gives up at the clamped timeout
    assert not worker.is_alive() and time.monotonic() - t0 < 5


@pytest.mark.parametrize("bad", [{"bytes": "lots"}, {"rounds": None}, {"timeout": float("nan")}])
def test_malformed_parameters_are_refused(bad):
    with pytest.raises((ValueError, TypeError)):
        linkprobe.clamp(bad.get("bytes", 1), bad.get("rounds", 1), bad.get("timeout", 1.0))
