"""A :class:`SocketChannel`: one connected socket as a channel of framed, tagged parts, with its two threads."""

from __future__ import annotations

import contextlib
import fcntl
import queue
import socket
import struct
import termios
import threading
import time

_FRAME = struct.Struct("<qq")  # tag, bytes
MAX_UNEXPECTED = 64 << 20  # default cap on bytes a channel buffers for receives not yet posted


class ChannelProtocolError(ConnectionError):
    """The peer broke the channel's framing: a frame that fits no receive, a repeated tag, too many early bytes."""


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
