"""A side channel between ranks that works while MPI does not: small authenticated TCP requests with short timeouts.

Each rank runs a :class:`SideChannel` server on one TCP port. The server
thread does not touch MPI, so it answers while the rank's main thread is
blocked inside an MPI call (mpi4py releases the GIL there) or busy in Python
(the GIL is shared every few milliseconds). A rank that is stopped
(``SIGSTOP``), dead or unreachable does not answer: every client call gives
up after its timeout, and the caller reports that as a finding.

Protocol. Every rank has a random 128-bit token, published only through the
job's private rendezvous directory (or MPI). Nothing of size is read before
the peer has proved that it holds the target's token:

1. server -> client: ``MAGIC`` and a fresh 16-byte nonce ``Ns``;
2. client -> server: a nonce ``Nc`` and ``HMAC-SHA256(token, "client" Ns Nc)``;
   the server checks it with :func:`hmac.compare_digest` and closes the
   connection on a mismatch;
3. server -> client: ``HMAC-SHA256(token, "server" Ns Nc)``, by which the
   client knows it reached the rank it meant (not a process that took over
   a dead rank's port);
4. client -> server: one request, a 4-byte length and a JSON object of at
   most :data:`MAX_REQUEST` bytes; server -> client: one JSON answer,
   computed by the handler registered for the request's query.

Until step 4 completes a connection costs no thread: one selector thread
accepts and authenticates up to :data:`MAX_PENDING` connections at once,
each within :data:`AUTH_SECONDS`, and hands authenticated requests to a
fixed pool of :data:`WORKERS` daemon threads through a queue of
:data:`QUEUE` places; what does not fit is closed. Handlers may also take
over the connection after the request (``stream`` handlers), which the link
probe uses to time a bulk transfer. The channel authenticates but does not
encrypt: answers (call states, Python stacks) are readable on the wire.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import queue
import secrets
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

__all__ = [
    "AUTH_SECONDS",
    "MAX_PENDING",
    "MAX_REPLY",
    "MAX_REQUEST",
    "QUEUE",
    "WORKERS",
    "Peer",
    "SideChannel",
    "SideChannelError",
    "ask",
    "ask_many",
    "open_request",
    "receive_message",
    "send_message",
]

_HEADER = struct.Struct("!I")
MAGIC = b"cmlside2"
_NONCE = 16
_MAC = 32
MAX_REQUEST = 4096  # bytes of one request's JSON
MAX_REPLY = 64 << 20  # bytes of one answer (read only from a server that proved it holds the token)
MAX_PENDING = 64  # connections being authenticated at once; the oldest is dropped beyond
AUTH_SECONDS = 2.0  # for a client to authenticate and send its request
WORKERS = 4  # threads answering authenticated requests
QUEUE = 16  # authenticated requests waiting for a worker; more are closed

Peer = dict  # a rendezvous record: {"rank", "address", "port", "token", ...}
Handler = Callable[[dict], Any]
StreamHandler = Callable[[dict, socket.socket], Any]


class SideChannelError(RuntimeError):
    """A peer did not answer in time, refused the request, or answered nonsense."""


def _mac(token: str, label: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    return hmac.new(token.encode(), label + server_nonce + client_nonce, hashlib.sha256).digest()


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


def _encode(message: Any) -> bytes:
    data = json.dumps(message, separators=(",", ":"), default=str).encode()
    return _HEADER.pack(len(data)) + data


def send_message(sock: socket.socket, message: Any) -> None:
    """Send one length-prefixed JSON message."""
    sock.sendall(_encode(message))


def receive_message(sock: socket.socket, deadline: float, limit: int = MAX_REPLY) -> Any:
    """Receive one length-prefixed JSON message of at most ``limit`` bytes (``SideChannelError`` beyond)."""
    (n,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size, deadline))
    if n > limit:
        raise SideChannelError(f"message of {n} B exceeds {limit} B")
    try:
        return json.loads(_recv_exact(sock, n, deadline))
    except (ValueError, RecursionError) as exc:
        raise SideChannelError(f"malformed message ({type(exc).__name__})") from None


class _Pending:
    """A connection between accept and its authenticated request."""

    __slots__ = ("buf", "conn", "deadline", "need", "nonce", "stage")

    def __init__(self, conn: socket.socket, nonce: bytes, deadline: float) -> None:
        self.conn, self.nonce, self.deadline = conn, nonce, deadline
        self.buf = bytearray()
        self.stage = "proof"  # then "length", then "request"
        self.need = _NONCE + _MAC


class SideChannel:
    """The server end: a listening socket, a selector thread that authenticates, a bounded pool that answers."""

    def __init__(self, address: str, token: str, *, workers: int = WORKERS) -> None:
        if not token:
            raise ValueError("SideChannel: the token must not be empty")
        self.token = token
        self._handlers: dict[str, Handler] = {}
        self._streams: dict[str, StreamHandler] = {}
        self._server = socket.create_server((address, 0), backlog=64)
        self._server.setblocking(False)
        self.address, self.port = self._server.getsockname()[:2]
        self._stopped = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE)
        self._pending: dict[socket.socket, _Pending] = {}
        self._thread = threading.Thread(target=self._serve, name="commlib-sidechannel", daemon=True)
        self._workers = [
            threading.Thread(target=self._work, name=f"commlib-sidechannel-{i}", daemon=True) for i in range(workers)
        ]

    def handle(self, query: str, handler: Handler) -> None:
        """Answer ``{"q": query, ...}`` with ``handler(request)``."""
        self._handlers[query] = handler

    def handle_stream(self, query: str, handler: StreamHandler) -> None:
        """Let ``handler(request, sock)`` talk on the connection itself after the request."""
        self._streams[query] = handler

    def start(self) -> None:
        self._thread.start()
        for worker in self._workers:
            worker.start()

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(1.0)
        for _ in self._workers:
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)
        for s in (self._server, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                s.close()

    # -- the selector thread: accept and authenticate
    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._server, selectors.EVENT_READ, "accept")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stopped.is_set():
                now = time.monotonic()
                for pending in [p for p in self._pending.values() if p.deadline <= now]:
                    self._drop(sel, pending)
                wait = min([p.deadline for p in self._pending.values()], default=now + 1.0) - now
                for key, _ in sel.select(max(0.0, min(wait, 1.0))):
                    if key.data == "accept":
                        self._accept(sel)
                    elif key.data != "wake":
                        self._advance(sel, key.data)
        except Exception:  # the side channel never raises into the rank; it just stops answering
            pass
        finally:
            for pending in list(self._pending.values()):
                self._drop(sel, pending)
            sel.close()
            for s in (self._wake_r, self._wake_w, self._server):
                with contextlib.suppress(OSError):
                    s.close()

    def _accept(self, sel: selectors.BaseSelector) -> None:
        for _ in range(MAX_PENDING):
            try:
                conn, _ = self._server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(self._pending) >= MAX_PENDING:
                self._drop(sel, min(self._pending.values(), key=lambda p: p.deadline))
            nonce = secrets.token_bytes(_NONCE)
            try:
                conn.setblocking(False)
                if conn.send(MAGIC + nonce) != len(MAGIC) + _NONCE:
                    raise OSError("short write")
            except OSError:
                conn.close()
                continue
            pending = _Pending(conn, nonce, time.monotonic() + AUTH_SECONDS)
            self._pending[conn] = pending
            sel.register(conn, selectors.EVENT_READ, pending)

    def _drop(self, sel: selectors.BaseSelector, pending: _Pending) -> None:
        self._pending.pop(pending.conn, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            sel.unregister(pending.conn)
        with contextlib.suppress(OSError):
            pending.conn.close()

    def _advance(self, sel: selectors.BaseSelector, p: _Pending) -> None:
        """Read what has arrived for ``p``; never more than the current stage needs."""
        try:
            chunk = p.conn.recv(p.need - len(p.buf))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(sel, p)
            return
        p.buf += chunk
        if len(p.buf) < p.need:
            return
        data, p.buf = bytes(p.buf), bytearray()
        if p.stage == "proof":
            client_nonce, proof = data[:_NONCE], data[_NONCE:]
            if not hmac.compare_digest(proof, _mac(self.token, b"client", p.nonce, client_nonce)):
                self._drop(sel, p)
                return
            try:
                p.conn.send(_mac(self.token, b"server", p.nonce, client_nonce))
            except OSError:
                self._drop(sel, p)
                return
            p.stage, p.need = "length", _HEADER.size
        elif p.stage == "length":
            (n,) = _HEADER.unpack(data)
            if not 0 < n <= MAX_REQUEST:
                self._drop(sel, p)
                return
            p.stage, p.need = "request", n
        else:
            self._pending.pop(p.conn, None)
            with contextlib.suppress(KeyError, ValueError):
                sel.unregister(p.conn)
            try:
                self._queue.put_nowait((p.conn, data))
            except queue.Full:
                p.conn.close()

    # -- the workers: answer authenticated requests
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None or self._stopped.is_set():
                if item is not None:
                    item[0].close()
                return
            conn, data = item
            with conn:
                with contextlib.suppress(Exception):  # a bad request or a vanished client costs only itself
                    conn.setblocking(True)
                    conn.settimeout(5.0)
                    self._answer(conn, data)

    def _answer(self, conn: socket.socket, data: bytes) -> None:
        try:
            request = json.loads(data)
        except (ValueError, RecursionError):
            return
        if not isinstance(request, dict) or not isinstance(request.get("q"), str):
            return
        query = request["q"]
        if query in self._streams:
            self._streams[query](request, conn)
            return
        handler = self._handlers.get(query)
        if handler is None:
            send_message(conn, {"error": f"unknown query {query[:64]!r}"})
            return
        try:
            reply = handler(request)
        except Exception as exc:  # the asker gets the reason; the rank goes on
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        send_message(conn, reply)


def connect(peer: Peer, timeout: float) -> socket.socket:
    """A TCP connection to ``peer``'s side channel (``SideChannelError`` if none within ``timeout``)."""
    try:
        sock = socket.create_connection((peer["address"], peer["port"]), timeout=timeout)
    except OSError as exc:
        raise SideChannelError(f"rank {peer.get('rank')}: cannot connect ({exc})") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def open_request(peer: Peer, request: dict, timeout: float) -> socket.socket:
    """Connect to ``peer``, authenticate both ways, send ``request`` (``{"q": query, ...}``); the open socket.

    Raises :class:`SideChannelError` when the peer does not answer within
    ``timeout``, or does not prove that it holds ``peer["token"]``.
    """
    deadline = time.monotonic() + timeout
    data = _encode(request)
    if len(data) - _HEADER.size > MAX_REQUEST:
        raise SideChannelError(f"rank {peer.get('rank')}: request {request.get('q')!r} exceeds {MAX_REQUEST} B")
    sock = connect(peer, timeout)
    try:
        hello = _recv_exact(sock, len(MAGIC) + _NONCE, deadline)
        if hello[: len(MAGIC)] != MAGIC:
            raise SideChannelError(f"rank {peer.get('rank')}: not a commlib side channel")
        server_nonce, client_nonce = hello[len(MAGIC) :], secrets.token_bytes(_NONCE)
        token = str(peer["token"])
        sock.sendall(client_nonce + _mac(token, b"client", server_nonce, client_nonce))
        proof = _recv_exact(sock, _MAC, deadline)
        if not hmac.compare_digest(proof, _mac(token, b"server", server_nonce, client_nonce)):
            raise SideChannelError(f"rank {peer.get('rank')}: the side channel does not hold the rank's token")
        sock.sendall(data)
    except SideChannelError:
        sock.close()
        raise
    except (OSError, KeyError) as exc:
        sock.close()
        what = "no answer" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
        raise SideChannelError(f"rank {peer.get('rank')}: {what} within {timeout:g} s (refused or timed out)") from None
    return sock


def ask(peer: Peer, query: str, timeout: float, **fields: Any) -> Any:
    """Send ``{"q": query, **fields}`` to ``peer`` and return its answer, all within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    with open_request(peer, {"q": query, **fields}, timeout) as sock:
        try:
            reply = receive_message(sock, deadline)
        except (OSError, SideChannelError) as exc:
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
