"""Path-pinned connections between two ranks: addresses and secrets swapped over MPI, the peer authenticated."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import secrets
import selectors
import socket
import struct
import time
from collections.abc import Sequence

from mpi4py import MPI

from .channel import SocketChannel

_SECRET = 32
_HELLO = struct.Struct(f"<8sqqq{_SECRET}s")  # magic, path, lower rank, higher rank, the path's secret
_HELLO_MAGIC = b"cmlpath2"
_MAX_HANDSHAKES = 16  # connections being read at once while the listener waits for its peer


def check_address(address: str, op: str = "sockets") -> str:
    """``address`` if it is a loopback or private address, else a ``ValueError`` naming ``op``."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"{op}: {address!r} is not an IP address") from None
    if not (ip.is_loopback or ip.is_private) or ip.is_unspecified or ip.is_multicast:
        raise ValueError(f"{op}: only loopback or private addresses are allowed, got {address}")
    return address


def _same_host(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a.split("%")[0]) == ipaddress.ip_address(b.split("%")[0])
    except ValueError:
        return False


def _ack(secret: bytes) -> bytes:
    return hashlib.sha256(b"commlib path ack" + secret).digest()


def _accept_peer(listener: socket.socket, peer_host: str, expected: bytes, deadline: float, what: str) -> socket.socket:
    """The first connection from ``peer_host`` whose handshake equals ``expected``; every other one is closed.

    Reads up to :data:`_MAX_HANDSHAKES` handshakes at once (the oldest is
    dropped beyond), so connections that send nothing cannot hold the peer
    out; ``TimeoutError`` at ``deadline``.
    """
    sel = selectors.DefaultSelector()
    listener.setblocking(False)
    sel.register(listener, selectors.EVENT_READ, None)
    reading: dict[socket.socket, bytearray] = {}

    def drop(conn: socket.socket) -> None:
        reading.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            sel.unregister(conn)
        conn.close()

    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{what}: the peer did not connect with the right handshake in time")
            for key, _ in sel.select(min(left, 1.0)):
                if key.data is None:
                    try:
                        conn, addr = listener.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    if not _same_host(addr[0], peer_host):
                        conn.close()
                        continue
                    if len(reading) >= _MAX_HANDSHAKES:
                        drop(next(iter(reading)))
                    conn.setblocking(False)
                    reading[conn] = bytearray()
                    sel.register(conn, selectors.EVENT_READ, conn)
                    continue
                conn = key.data
                buf = reading[conn]
                try:
                    chunk = conn.recv(_HELLO.size - len(buf))
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    drop(conn)
                    continue
                buf += chunk
                if len(buf) < _HELLO.size:
                    continue
                if hmac.compare_digest(bytes(buf), expected):
                    reading.pop(conn)
                    sel.unregister(conn)
                    conn.setblocking(True)
                    return conn
                drop(conn)
    finally:
        for conn in list(reading):
            drop(conn)
        sel.close()


def connect_paths(
    comm: MPI.Comm, peer: int, addresses: Sequence[str], *, timeout: float = 30.0, tag: int = 7301
) -> list[SocketChannel]:
    """One :class:`SocketChannel` per path to ``peer``; both ranks call it (point-to-point over ``comm``).

    ``addresses[i]`` is this rank's own address on path ``i`` (the peer passes its own); both
    lists must be equally long. The lower rank listens on each of its addresses, the higher
    connects to them from its matching address, so connection ``i`` can only use path ``i``.
    """
    me = comm.Get_rank()
    if peer == me or not 0 <= peer < comm.Get_size():
        raise ValueError(f"connect_paths: peer {peer} must be another rank of the communicator (this is {me})")
    if not addresses:
        raise ValueError("connect_paths: needs at least one address")
    addresses = [check_address(a, "connect_paths") for a in addresses]
    deadline = time.monotonic() + timeout
    listeners: list[socket.socket] = []
    channels: list[SocketChannel] = []
    try:
        if me < peer:
            for a in addresses:
                s = socket.socket(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM)
                s.settimeout(timeout)
                s.bind((a, 0))
                s.listen(_MAX_HANDSHAKES)
                listeners.append(s)
            mine = [(a, s.getsockname()[1], secrets.token_bytes(_SECRET)) for a, s in zip(addresses, listeners)]
        else:
            mine = [(a, 0, b"") for a in addresses]
        theirs = comm.sendrecv(mine, dest=peer, sendtag=tag, source=peer, recvtag=tag)
        if not isinstance(theirs, list) or len(theirs) != len(mine):
            got = len(theirs) if isinstance(theirs, list) else theirs
            raise ValueError(f"connect_paths: rank {me} has {len(mine)} paths, rank {peer} has {got}")
        for entry in theirs:
            check_address(entry[0], "connect_paths")
        lo, hi = min(me, peer), max(me, peer)
        for i, (local, remote) in enumerate(zip(mine, theirs)):
            if me < peer:
                expected = _HELLO.pack(_HELLO_MAGIC, i, lo, hi, local[2])
                conn = _accept_peer(listeners[i], remote[0], expected, deadline, f"connect_paths: path {i}")
                conn.settimeout(timeout)
                conn.sendall(_ack(local[2]))
            else:
                secret = remote[2]
                if not (isinstance(secret, bytes) and len(secret) == _SECRET):
                    raise ConnectionError(f"connect_paths: rank {peer} sent no valid secret for path {i}")
                conn = socket.socket(socket.AF_INET6 if ":" in local[0] else socket.AF_INET, socket.SOCK_STREAM)
                try:
                    conn.settimeout(max(0.1, deadline - time.monotonic()))
                    conn.bind((local[0], 0))
                    conn.connect((remote[0], remote[1]))
                    conn.sendall(_HELLO.pack(_HELLO_MAGIC, i, lo, hi, secret))
                    ack = bytearray()
                    while len(ack) < _SECRET:
                        chunk = conn.recv(_SECRET - len(ack))
                        if not chunk:
                            raise ConnectionError(f"connect_paths: path {i} closed during the handshake")
                        ack += chunk
                    if not hmac.compare_digest(bytes(ack), _ack(secret)):
                        raise ConnectionError(f"connect_paths: path {i}: the listener did not acknowledge the secret")
                    conn.settimeout(timeout)
                except BaseException:
                    conn.close()
                    raise
            channels.append(SocketChannel(conn, peer, f"path{i}", timeout=max(timeout, 60.0)))
        comm.sendrecv(None, dest=peer, sendtag=tag, source=peer, recvtag=tag)  # both ends are up
        return channels
    except BaseException:
        for ch in channels:
            ch.close()
        raise
    finally:
        for s in listeners:
            s.close()
