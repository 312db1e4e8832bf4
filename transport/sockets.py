"""Path-pinned TCP channels between two ranks, bootstrapped over MPI.

MPI picks its own connections, so it cannot be told to send one part of a
message down one network path and the rest down another. A TCP connection
whose local end is bound to the address a host has on one path (its own
subnet, its own device) and whose remote end is the peer's address on that
path can only take that path. :func:`connect_paths` makes one such connection
per path between two ranks: the ranks swap their path addresses and listening
ports over MPI, the lower rank listens, the higher rank connects from its
path address. Each connection is a :class:`SocketChannel` (the
:class:`transport.flows.Channel` protocol) served by a sending and a
receiving thread, so parts on different paths move at once.

Who may connect. With the listening ports, the lower rank sends over MPI a
fresh random 256-bit secret per path. The listener keeps accepting until a
connection comes from the peer's own path address and its handshake carries
that path's secret (checked with :func:`hmac.compare_digest`), closing every
other connection, or until the deadline; it then acknowledges with a digest
of the secret, which the connecting rank checks. A process outside the job,
which never saw the MPI message, cannot become the peer.

What is trusted on the wire. Frames are ``(tag, bytes)``; a frame must fit
the receive posted for its tag exactly, or, arriving before its receive, the
channel's cap on buffered early bytes; a tag may be buffered once. Any
violation, and any exception in a channel's thread, fails the channel and
every operation pending on it with the reason.

Only loopback and private addresses (RFC 1918, the RFC 2544 benchmarking
range of the emulated-cluster harness, ...) are accepted, and every blocking
step gives up after ``timeout`` seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import ipaddress
import queue
import secrets
import selectors
import socket
import struct
import termios
import threading
import time
from collections.abc import Sequence

from mpi4py import MPI

__all__ = ["MAX_UNEXPECTED", "ChannelProtocolError", "SocketChannel", "check_address", "connect_paths"]

_FRAME = struct.Struct("<qq")  # tag, bytes
_SECRET = 32
_HELLO = struct.Struct(f"<8sqqq{_SECRET}s")  # magic, path, lower rank, higher rank, the path's secret
_HELLO_MAGIC = b"cmlpath2"
_MAX_HANDSHAKES = 16  # connections being read at once while the listener waits for its peer
MAX_UNEXPECTED = 64 << 20  # default cap on bytes a channel buffers for receives not yet posted


class ChannelProtocolError(ConnectionError):
    """The peer broke the channel's framing: a frame that fits no receive, a repeated tag, too many early bytes."""


def check_address(address: str, op: str = "sockets") -> str:
    """``address`` if it is a loopback or private address, else a ``ValueError`` naming ``op``."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"{op}: {address!r} is not an IP address") from None
    if not (ip.is_loopback or ip.is_private) or ip.is_unspecified or ip.is_multicast:
        raise ValueError(f"{op}: only loopback or private addresses are allowed, got {address}")
    return address


class _Pending:
    """A part in flight on a socket; completed (or failed) by the channel's thread."""

    __slots__ = ("_event", "error", "done_at", "timeout", "what")

    def __init__(self, timeout: float, what: str) -> None:
        self._event = threading.Event()
        self.error: BaseException | None = None
        self.done_at: float | None = None
        self.timeout, self.what = timeout, what

    def _complete(self, error: BaseException | None = None) -> None:
        self.error = error
        self.done_at = time.perf_counter()
        self._event.set()

    def _check(self) -> None:
        if self.error is not None:
            raise ConnectionError(f"{self.what} failed: {self.error}") from self.error

    def test(self) -> bool:
        if not self._event.is_set():
            return False
        self._check()
        return True

    def wait(self) -> None:
        if not self._event.wait(self.timeout):
            raise TimeoutError(f"{self.what} did not complete within {self.timeout:g} s")
        self._check()


class SocketChannel:
    """One TCP connection to one peer, on one path: parts are framed ``(tag, bytes)`` and matched by tag.

    A part that arrives before its receive is posted is kept (like MPI's unexpected
    messages), so receives may be posted in any order without deadlock, up to
    ``max_unexpected`` bytes in all; see the module docstring for what fails the channel.
    """

    rendezvous = True  # wait for the receiver's clear-to-send, so parts land in posted buffers

    def __init__(
        self, sock: socket.socket, peer: int, name: str, *, timeout: float = 60.0, max_unexpected: int = MAX_UNEXPECTED
    ) -> None:
        if max_unexpected < 0:
            raise ValueError(f"SocketChannel: max_unexpected must be >= 0, got {max_unexpected}")
        self.sock, self.peer, self.name, self.timeout = sock, peer, name, timeout
        self.max_unexpected = max_unexpected
        self._unexpected_bytes = 0
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(timeout)
        self._sends: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._posted: dict[int, tuple[memoryview, _Pending]] = {}
        self._unexpected: dict[int, bytearray] = {}
        self._closed = False
        self._failure: BaseException | None = None
        self._sender = threading.Thread(target=self._send_loop, name=f"{name}-send", daemon=True)
        self._receiver = threading.Thread(target=self._recv_loop, name=f"{name}-recv", daemon=True)
        self._sender.start()
        self._receiver.start()

    def __repr__(self) -> str:
        try:
            here, there = self.sock.getsockname()[:2], self.sock.getpeername()[:2]
        except OSError:
            here = there = "closed"
        return f"<SocketChannel {self.name} rank {self.peer}: {here} -> {there}>"

    # -- Channel protocol
    def isend(self, view: memoryview, peer: int, tag: int) -> _Pending:
        self._check_peer(peer, "isend")
        pending = _Pending(self.timeout, f"SocketChannel {self.name}: send of {view.nbytes} bytes to rank {peer}")
        if self._failure is not None:
            pending._complete(self._failure)
        else:
            self._sends.put((tag, view, pending))
        return pending

    def irecv(self, view: memoryview, peer: int, tag: int) -> _Pending:
        self._check_peer(peer, "irecv")
        pending = _Pending(self.timeout, f"SocketChannel {self.name}: receive of {view.nbytes} bytes from rank {peer}")
        with self._lock:
            if self._failure is not None:
                pending._complete(self._failure)
                return pending
            data = self._unexpected.pop(tag, None)
            if data is None:
                if tag in self._posted:
                    raise ValueError(f"SocketChannel {self.name}: a receive with tag {tag} is already posted")
                self._posted[tag] = (view, pending)
                return pending
            self._unexpected_bytes -= len(data)
        if len(data) != view.nbytes:
            error = ChannelProtocolError(
                f"SocketChannel {self.name}: tag {tag} carried {len(data)} bytes, its receive expects {view.nbytes}"
            )
            pending._complete(error)
            self._fail(error)
        else:
            view[:] = data
            pending._complete()
        return pending

    def close(self) -> None:
        """Stop the threads and close the connection (pending parts fail)."""
        if self._closed:
            return
        self._closed = True
        self._sends.put(None)
        self._sender.join(self.timeout)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._receiver.join(self.timeout)

    def _check_peer(self, peer: int, op: str) -> None:
        if peer != self.peer:
            raise ValueError(f"SocketChannel {self.name}.{op}: this channel joins rank {self.peer}, not rank {peer}")

    # -- threads
    def _fail(self, error: BaseException) -> None:
        """Fail every pending receive and the channel; hang up, so that the peer's sends fail too."""
        with self._lock:
            if self._failure is None:
                self._failure = error
            posted, self._posted = list(self._posted.values()), {}
            self._unexpected.clear()
            self._unexpected_bytes = 0
        for _, pending in posted:
            pending._complete(error)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def _send_loop(self) -> None:
        while True:
            item = self._sends.get()
            if item is None:
                return
            tag, view, pending = item
            if self._failure is not None:
                pending._complete(self._failure)
                continue
            try:
                self.sock.sendall(_FRAME.pack(tag, view.nbytes))
                self.sock.sendall(view)
                self._drain()
                pending._complete()
            except Exception as exc:  # a timeout, a reset, anything: this part and the channel fail
                pending._complete(exc)
                self._fail(exc)

    def _drain(self) -> None:
        """Wait until the peer has acknowledged every byte sent (Linux ``TIOCOUTQ``), so that a part's
        completion time is its delivery, not its hand-over to a send buffer of a few megabytes."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                queued = struct.unpack("i", fcntl.ioctl(self.sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
            except (OSError, AttributeError):
                return  # not available here: completion stays at hand-over
            if queued <= 0:
                return
            time.sleep(min(200e-6, queued / 1e9))
        raise TimeoutError(f"peer did not acknowledge the last bytes within {self.timeout:g} s")

    def _read_exact(self, view: memoryview, idle_ok: bool) -> bool:
        """Fill ``view``; False on orderly close before the first byte (or an idle timeout when ``idle_ok``)."""
        got = 0
        while got < view.nbytes:
            try:
                n = self.sock.recv_into(view[got:])
            except TimeoutError:
                if idle_ok and got == 0 and not self._closed:
                    continue  # no traffic for a while: not an error between messages
                raise
            if n == 0:
                if got == 0:
                    return False
                raise ConnectionError(f"connection closed after {got} of {view.nbytes} bytes")
            got += n
        return True

    def _recv_loop(self) -> None:
        head = bytearray(_FRAME.size)
        taken = None  # the receive being filled: failed along with the channel if anything goes wrong
        try:
            while not self._closed:
                if not self._read_exact(memoryview(head), idle_ok=True):
                    self._fail(ConnectionError("connection closed by the peer"))
                    return
                tag, nbytes = _FRAME.unpack(head)
                with self._lock:
                    taken = self._posted.pop(tag, None)
                    if taken is None:
                        self._reserve(tag, nbytes)
                if taken is None:
                    data = bytearray(nbytes)
                    self._read_exact(memoryview(data), idle_ok=False)
                    with self._lock:
                        taken = self._posted.pop(tag, None)
                        if taken is None:
                            self._unexpected[tag] = data
                            continue
                        self._unexpected_bytes -= nbytes
                    view, pending = taken
                    self._check_size(tag, nbytes, view)
                    view[:] = data
                else:
                    view, pending = taken
                    self._check_size(tag, nbytes, view)
                    self._read_exact(view, idle_ok=False)
                taken = None
                pending._complete()
        except Exception as exc:  # MemoryError included: the channel fails, nothing waits out its timeout
            error = ConnectionError("channel closed") if self._closed else exc
            if taken is not None:
                taken[1]._complete(error)
            self._fail(error)

    def _reserve(self, tag: int, nbytes: int) -> None:
        """Account for a frame that arrived before its receive (under the lock); raise if it may not be kept."""
        if tag in self._unexpected:
            raise ChannelProtocolError(f"SocketChannel {self.name}: tag {tag} arrived twice before its receive")
        if nbytes < 0 or nbytes > self.max_unexpected - self._unexpected_bytes:
            raise ChannelProtocolError(
                f"SocketChannel {self.name}: a frame of {nbytes} bytes for tag {tag} arrived before its receive, "
                f"beyond the {self.max_unexpected} bytes kept for early parts ({self._unexpected_bytes} in use)"
            )
        self._unexpected_bytes += nbytes

    def _check_size(self, tag: int, nbytes: int, view: memoryview) -> None:
        if nbytes != view.nbytes:
            raise ChannelProtocolError(
                f"SocketChannel {self.name}: tag {tag} carries {nbytes} bytes, its receive expects {view.nbytes}"
            )


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
