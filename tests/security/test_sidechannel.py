"""Attacks on the monitor's side channel (loopback only): reading before authenticating, thread and memory
exhaustion, nested JSON, weak tokens, a listener exposed beyond the node."""

from __future__ import annotations

import contextlib
import hmac
import json
import secrets
import socket
import struct
import threading
import time

import pytest

from transport import rendezvous, sidechannel
from transport.sidechannel import SideChannel, SideChannelError, ask

TOKEN = "5ca1ab1e" * 4


@pytest.fixture
def server():
    calls = []
    channel = SideChannel("127.0.0.1", TOKEN)
    channel.handle("echo", lambda req: calls.append(req) or {"got": req.get("x")})
    channel.start()
    channel.calls = calls
    yield channel
    channel.stop()


def _peer(channel: SideChannel, token: str = TOKEN) -> dict:
    return {"rank": 1, "address": channel.address, "port": channel.port, "token": token}


def _authenticate(sock: socket.socket, token: str) -> None:
    """The client's half of the handshake, where the server starts one (an older server expects none)."""
    sock.settimeout(1.0)
    try:
        hello = sock.recv(24, socket.MSG_PEEK)
    except TimeoutError:
        return
    if not hello.startswith(sidechannel.MAGIC):
        return
    hello = sock.recv(24)
    mine = secrets.token_bytes(16)
    sock.sendall(mine + hmac.new(token.encode(), b"client" + hello[8:] + mine, "sha256").digest())
    assert len(sock.recv(32)) == 32


def test_nothing_of_size_is_read_before_the_peer_authenticates(server):
    """The old server read (and parsed) up to 64 MiB from anyone before looking at the token."""
    sock = socket.create_connection((server.address, server.port), timeout=5)
    sent, refused = 0, False
    chunk = b"\x01" * (1 << 16)
    try:
        sock.sendall(struct.pack("!I", 32 << 20))
        while sent < 32 << 20:
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:
        refused = True
    finally:
        sock.close()
    assert refused and sent < 8 << 20, f"the server took {sent} bytes from an unauthenticated client"


def test_a_wrong_token_is_refused_before_any_request_is_parsed(server):
    with pytest.raises(SideChannelError, match="rank 1"):
        ask(_peer(server, "0" * 32), "echo", 2.0, x=1)
    assert server.calls == []
    assert ask(_peer(server), "echo", 2.0, x=2) == {"got": 2}


def test_the_token_is_compared_in_constant_time(server, monkeypatch):
    compared = []
    real = hmac.compare_digest
    monkeypatch.setattr(sidechannel.hmac, "compare_digest", lambda a, b: compared.append(1) or real(a, b))
    assert ask(_peer(server), "echo", 2.0, x=3) == {"got": 3}
    assert len(compared) >= 2  # the server checks the client's proof, the client the server's


def test_tokens_are_128_bit():
    tokens = {rendezvous.new_token() for _ in range(100)}
    assert len(tokens) == 100 and all(len(bytes.fromhex(t)) == 16 for t in tokens)


def test_idle_connections_cost_no_thread_and_do_not_lock_out_the_job(server):
    """The old server started one thread per connection: 300 idle connections gave 302 threads."""
    before = threading.active_count()
    idle = [socket.create_connection((server.address, server.port), timeout=5) for _ in range(300)]
    try:
        time.sleep(0.5)
        assert threading.active_count() <= before + 2
        assert ask(_peer(server), "echo", 3.0, x=4) == {"got": 4}  # the job's own request still gets through
    finally:
        for sock in idle:
            sock.close()


def test_requests_are_capped_at_a_few_kib(server):
    sock = socket.create_connection((server.address, server.port), timeout=5)
    with sock:
        _authenticate(sock, TOKEN)
        body = json.dumps({"q": "echo", "token": TOKEN, "x": "y" * (1 << 20)}).encode()
        try:
            sock.sendall(struct.pack("!I", len(body)) + body)
            sock.settimeout(5)
            answer = sock.recv(1 << 16)
        except OSError:
            answer = b""
    assert answer == b"" and server.calls == []


def test_nested_json_from_a_token_holder_kills_no_thread(server):
    errors = []
    hook, threading.excepthook = threading.excepthook, lambda args: errors.append(args.exc_value)
    try:
        depth = 2000
        head = json.dumps({"q": "echo", "token": TOKEN})[:-1]
        body = (head + ', "x": ' + "[" * depth + "]" * depth + "}").encode()
        with socket.create_connection((server.address, server.port), timeout=5) as sock:
            _authenticate(sock, TOKEN)
            sock.sendall(struct.pack("!I", len(body)) + body)
            sock.settimeout(5)
            with contextlib.suppress(OSError):  # the server may close the connection or answer an error
                sock.recv(1 << 16)
        time.sleep(0.3)
    finally:
        threading.excepthook = hook
    assert errors == []
    assert ask(_peer(server), "echo", 2.0, x=5) == {"got": 5}


def test_memory_stays_bounded_under_large_claimed_requests(server):
    """Four clients announcing 64 MiB each took the old server from 18 to 343 MiB."""

    def rss() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) * 1024

    start = rss()
    socks = []
    for _ in range(4):
        sock = socket.create_connection((server.address, server.port), timeout=5)
        with contextlib.suppress(OSError):  # refused early: what matters is what the server kept
            sock.sendall(struct.pack("!I", 64 << 20) + b"\x00" * (16 << 20))
        socks.append(sock)
    time.sleep(0.5)
    grown = rss() - start
    for sock in socks:
        sock.close()
    assert grown < 32 << 20, f"the server grew by {grown >> 20} MiB"


def test_a_single_node_job_listens_on_loopback_only(monkeypatch):
    monkeypatch.delenv("COMMLIB_NODE_ID", raising=False)
    monkeypatch.setenv("MPI_LOCALNRANKS", "4")
    assert rendezvous.choose_address("", world_size=4) == "127.0.0.1"
    monkeypatch.setenv("MPI_LOCALNRANKS", "2")  # half the ranks elsewhere: the others must reach this one
    assert rendezvous.single_node(4) is False
    monkeypatch.setenv("COMMLIB_NODE_ID", "0")  # emulated nodes in namespaces: never loopback
    monkeypatch.setenv("MPI_LOCALNRANKS", "4")
    assert rendezvous.single_node(4) is False
