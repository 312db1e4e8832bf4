"""A side channel between ranks that works while MPI does not: small TCP requests with short timeouts.

Each rank runs a :class:`SideChannel` server (a daemon thread) on one TCP
port. A request is one length-prefixed JSON object carrying the target's
token and a query name; the server answers with one JSON object computed by
the handler registered for that query. The server thread does not touch MPI,
so it answers while the rank's main thread is blocked inside an MPI call
(mpi4py releases the GIL there) or busy in Python (the GIL is shared every
few milliseconds). A rank that is stopped (``SIGSTOP``), dead or unreachable
does not answer: every client call gives up after its timeout, and the
caller reports that as a finding.

Handlers may also take over the connection after the request (``stream``
handlers), which the link probe uses to time a bulk transfer.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["Peer", "SideChannel", "SideChannelError", "ask", "ask_many", "receive_message", "send_message"]

_HEADER = struct.Struct("!I")
MAX_MESSAGE = 64 << 20

Peer = dict  # a rendezvous record: {"rank", "address", "port", "token", ...}
Handler = Callable[[dict], Any]
StreamHandler = Callable[[dict, socket.socket], Any]


class SideChannelError(RuntimeError):
    """A peer did not answer in time, refused the request, or answered nonsense."""


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        sock.settimeout(left)
        chunk = sock.recv(min(n - len(chunks), 1 << 20))
        if not chunk:
            raise ConnectionError("connection closed")
        chunks += chunk
    return bytes(chunks)


def send_message(sock: socket.socket, message: Any) -> None:
    data = json.dumps(message, separators=(",", ":"), default=str).encode()
    sock.sendall(_HEADER.pack(len(data)) + data)


def receive_message(sock: socket.socket, deadline: float) -> Any:
    (n,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size, deadline))
    if n > MAX_MESSAGE:
        raise SideChannelError(f"message of {n} B exceeds {MAX_MESSAGE} B")
    return json.loads(_recv_exact(sock, n, deadline))


class SideChannel:
    """The server end: a listening socket and a daemon thread answering requests."""

    def __init__(self, address: str, token: str) -> None:
        self.token = token
        self._handlers: dict[str, Handler] = {}
        self._streams: dict[str, StreamHandler] = {}
        self._server = socket.create_server((address, 0), backlog=64)
        self.address, self.port = self._server.getsockname()[:2]
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="commlib-sidechannel", daemon=True)

    def handle(self, query: str, handler: Handler) -> None:
        """Answer ``{"q": query, ...}`` with ``handler(request)``."""
        self._handlers[query] = handler

    def handle_stream(self, query: str, handler: StreamHandler) -> None:
        """Let ``handler(request, sock)`` talk on the connection itself after the request."""
        self._streams[query] = handler

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        with contextlib.suppress(OSError):
            self._server.close()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(1.0)

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), name="commlib-sidechannel-conn", daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                request = receive_message(conn, time.monotonic() + 5.0)
                if not isinstance(request, dict) or request.get("token") != self.token:
                    return
                query = request.get("q")
                if query in self._streams:
                    self._streams[query](request, conn)
                    return
                handler = self._handlers.get(query)
                if handler is None:
                    send_message(conn, {"error": f"unknown query {query!r}"})
                    return
                try:
                    reply = handler(request)
                except Exception as exc:  # the asker gets the reason; the rank goes on
                    reply = {"error": f"{type(exc).__name__}: {exc}"}
                send_message(conn, reply)
            except (OSError, ValueError, SideChannelError):
                return


def connect(peer: Peer, timeout: float) -> socket.socket:
    """A connection to ``peer``'s side channel (``SideChannelError`` if none within ``timeout``)."""
    try:
        sock = socket.create_connection((peer["address"], peer["port"]), timeout=timeout)
    except OSError as exc:
        raise SideChannelError(f"rank {peer.get('rank')}: cannot connect ({exc})") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def ask(peer: Peer, query: str, timeout: float, **fields: Any) -> Any:
    """Send ``{"q": query, **fields}`` to ``peer`` and return its answer, all within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    sock = connect(peer, timeout)
    with sock:
        try:
            send_message(sock, {"q": query, "token": peer["token"], **fields})
            reply = receive_message(sock, deadline)
        except (OSError, ValueError) as exc:
            what = "no answer" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            raise SideChannelError(f"rank {peer.get('rank')}: {what} within {timeout:g} s") from None
    if isinstance(reply, dict) and "error" in reply:
        raise SideChannelError(f"rank {peer.get('rank')}: {reply['error']}")
    return reply


def ask_many(peers: Iterable[Peer], query: str, timeout: float, **fields: Any) -> dict[int, Any]:
    """:func:`ask` every peer at once; each answer, or the :class:`SideChannelError` instead, by rank."""
    peers = list(peers)
    out: dict[int, Any] = {}

    def one(peer: Peer) -> None:
        try:
            out[peer["rank"]] = ask(peer, query, timeout, **fields)
        except SideChannelError as exc:
            out[peer["rank"]] = exc

    threads = [threading.Thread(target=one, args=(p,), name="commlib-sidechannel-ask", daemon=True) for p in peers]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout + 1.0
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    for peer in peers:
        out.setdefault(peer["rank"], SideChannelError(f"rank {peer['rank']}: no answer within {timeout:g} s"))
    return out
