"""Path-pinned TCP channels between two ranks, bootstrapped over MPI.

MPI picks its own connections, so it cannot be told to send one part of a
message down one network path and the rest down another. A TCP connection
whose local end is bound to the address a host has on one path (its own
subnet, its own device) and whose remote end is the peer's address on that
path can only take that path. :func:`connect_paths` makes one such connection
per path between two ranks: the ranks swap their path addresses and listening
ports over MPI, the lower rank listens, the higher rank connects from its
path address, and a handshake checks that connection ``i`` joins the two
ranks on path ``i``. Each connection is a :class:`SocketChannel` (the
:class:`transport.flows.Channel` protocol) served by a sending and a
receiving thread, so parts on different paths move at once.

Only loopback and private addresses (RFC 1918, the RFC 2544 benchmarking
range of the emulated-cluster harness, ...) are accepted, and every blocking
step gives up after ``timeout`` seconds.
"""

from __future__ import annotations

import fcntl
import ipaddress
import queue
import socket
import struct
import termios
import threading
import time
from collections.abc import Sequence

from mpi4py import MPI

__all__ = ["SocketChannel", "check_address", "connect_paths"]

_FRAME = struct.Struct("<qq")  # tag, bytes
_HELLO = struct.Struct("<8sqqq")  # magic, path, lower rank, higher rank
_HELLO_MAGIC = b"cmlpath1"


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
    messages), so receives may be posted in any order without deadlock.
    """

    rendezvous = True  # wait for the receiver's clear-to-send, so parts land in posted buffers

    def __init__(self, sock: socket.socket, peer: int, name: str, *, timeout: float = 60.0) -> None:
        self.sock, self.peer, self.name, self.timeout = sock, peer, name, timeout
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
        if len(data) != view.nbytes:
            pending._complete(ValueError(f"tag {tag} carried {len(data)} bytes, receive expects {view.nbytes}"))
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
        with self._lock:
            if self._failure is None:
                self._failure = error
            posted, self._posted = list(self._posted.values()), {}
        for _, pending in posted:
            pending._complete(error)

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
            except OSError as exc:  # TimeoutError included
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
        try:
            while not self._closed:
                if not self._read_exact(memoryview(head), idle_ok=True):
                    self._fail(ConnectionError("connection closed by the peer"))
                    return
                tag, nbytes = _FRAME.unpack(head)
                with self._lock:
                    target = self._posted.pop(tag, None)
                if target is None:
                    data = bytearray(nbytes)
                    self._read_exact(memoryview(data), idle_ok=False)
                    with self._lock:
                        target = self._posted.pop(tag, None)
                        if target is None:
                            self._unexpected[tag] = data
                            continue
                    view, pending = target
                    view[:] = data
                    pending._complete()
                    continue
                view, pending = target
                if view.nbytes != nbytes:
                    raise ValueError(f"tag {tag} carries {nbytes} bytes, receive expects {view.nbytes}")
                self._read_exact(view, idle_ok=False)
                pending._complete()
        except (OSError, ValueError) as exc:
            if not self._closed:
                self._fail(exc)
            else:
                self._fail(ConnectionError("channel closed"))


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
    listeners: list[socket.socket] = []
    try:
        if me < peer:
            for a in addresses:
                s = socket.socket(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM)
                s.settimeout(timeout)
                s.bind((a, 0))
                s.listen(1)
                listeners.append(s)
            mine = [(a, s.getsockname()[1]) for a, s in zip(addresses, listeners)]
        else:
            mine = [(a, 0) for a in addresses]
        theirs = comm.sendrecv(mine, dest=peer, sendtag=tag, source=peer, recvtag=tag)
        if len(theirs) != len(mine):
            raise ValueError(f"connect_paths: rank {me} has {len(mine)} paths, rank {peer} has {len(theirs)}")
        for a, _ in theirs:
            check_address(a, "connect_paths")
        lo, hi = min(me, peer), max(me, peer)
        channels = []
        for i, (local, remote) in enumerate(zip(mine, theirs)):
            if me < peer:
                conn, _ = listeners[i].accept()
                conn.settimeout(timeout)
                hello = bytearray(_HELLO.size)
                view, got = memoryview(hello), 0
                while got < len(hello):
                    n = conn.recv_into(view[got:])
                    if n == 0:
                        raise ConnectionError(f"connect_paths: path {i} closed during the handshake")
                    got += n
                if _HELLO.unpack(hello) != (_HELLO_MAGIC, i, lo, hi):
                    raise ConnectionError(f"connect_paths: unexpected handshake on path {i}: {_HELLO.unpack(hello)}")
            else:
                conn = socket.socket(socket.AF_INET6 if ":" in local[0] else socket.AF_INET, socket.SOCK_STREAM)
                conn.settimeout(timeout)
                conn.bind((local[0], 0))
                conn.connect(tuple(remote))
                conn.sendall(_HELLO.pack(_HELLO_MAGIC, i, lo, hi))
            channels.append(SocketChannel(conn, peer, f"path{i}", timeout=max(timeout, 60.0)))
        comm.sendrecv(None, dest=peer, sendtag=tag, source=peer, recvtag=tag)  # both ends are up
        return channels
    finally:
        for s in listeners:
            s.close()
