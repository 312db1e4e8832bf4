"""Attacks on the flow splitter's path-pinned TCP channels (loopback only): an impostor connecting first,
and a peer that breaks the framing (huge lengths, sizes that fit no receive, floods of early parts,
repeated tags)."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from commlib.mpirun import run
from transport.sockets import SocketChannel, handshake

SCRIPT = Path(__file__).parent.parent / "mpi" / "security_paths.py"
FRAME = struct.Struct("<qq")


@pytest.mark.mpi
def test_an_impostor_that_connects_first_does_not_become_the_peer():
    assert "OK paths" in run(2, [str(SCRIPT)], timeout=90).stdout


def test_only_the_peer_address_with_the_secret_is_accepted():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    expected = b"h" * handshake._HELLO.size
    got: list = []
    worker = threading.Thread(
        target=lambda: got.append(handshake._accept_peer(listener, "127.0.0.3", expected, time.monotonic() + 5, "t")),
        daemon=True,
    )
    worker.start()
    intruders = []
    for source, hello in (("127.0.0.2", expected), ("127.0.0.3", b"x" * len(expected)), ("127.0.0.3", b"")):
        sock = socket.create_connection(("127.0.0.1", port), source_address=(source, 0), timeout=5)
        sock.sendall(hello)
        intruders.append(sock)
    time.sleep(0.3)
    assert not got
    peer = socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.3", 0), timeout=5)
    peer.sendall(expected)
    worker.join(5)
    try:
        assert got and got[0].getpeername() == peer.getsockname()
        for sock in intruders[:2]:  # closed by the listener
            sock.settimeout(2)
            try:
                assert sock.recv(1) == b""
            except ConnectionResetError:
                pass
    finally:
        for sock in [*intruders, peer, *got, listener]:
            sock.close()


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.settimeout(10)
    channel = SocketChannel(b, 0, "victim", timeout=20)
    yield a, channel
    channel.close()
    a.close()


def _fails_fast(pending, within: float = 3.0) -> BaseException:
    t0 = time.monotonic()
    with pytest.raises(ConnectionError) as info:
        pending.wait()
    assert time.monotonic() - t0 < within, "the receive waited out its timeout instead of failing with the channel"
    return info.value


def test_a_huge_length_fails_the_channel_and_its_receives(pair):
    raw, channel = pair
    pending = channel.irecv(memoryview(bytearray(4)), 0, 1)
    raw.sendall(FRAME.pack(2, 1 << 50))
    _fails_fast(pending)
    after = channel.irecv(memoryview(bytearray(4)), 0, 3)
    _fails_fast(after)


def test_a_frame_that_does_not_fit_its_receive_fails_that_receive(pair):
    raw, channel = pair
    pending = channel.irecv(memoryview(bytearray(4)), 0, 3)
    raw.sendall(FRAME.pack(3, 8) + b"12345678")
    error = _fails_fast(pending)
    assert "carries 8 bytes" in str(error)


def test_an_early_frame_that_does_not_fit_its_receive_fails_the_channel(pair):
    raw, channel = pair
    raw.sendall(FRAME.pack(6, 8) + b"12345678")
    time.sleep(0.3)
    error = _fails_fast(channel.irecv(memoryview(bytearray(4)), 0, 6))
    assert "carried 8 bytes" in str(error)
    _fails_fast(channel.irecv(memoryview(bytearray(4)), 0, 7))


def test_early_parts_are_capped(pair):
    raw, channel = pair
    pending = channel.irecv(memoryview(bytearray(4)), 0, -7)
    chunk = b"\0" * (1 << 20)
    with contextlib.suppress(OSError):  # the channel may close the connection mid-flood: that is the point
        for tag in range(70):  # 70 MiB for receives never posted: beyond the 64 MiB kept
            raw.sendall(FRAME.pack(tag, len(chunk)) + chunk)
    _fails_fast(pending, within=10.0)


def test_a_repeated_tag_fails_the_channel(pair):
    raw, channel = pair
    raw.sendall(FRAME.pack(4, 3) + b"one" + FRAME.pack(4, 3) + b"two")
    time.sleep(0.3)
    got = bytearray(3)
    first = channel.irecv(memoryview(got), 0, 4)
    with pytest.raises(ConnectionError, match="twice"):
        first.wait()
        channel.irecv(memoryview(bytearray(3)), 0, 4).wait()
