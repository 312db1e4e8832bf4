"""Flow splitting between two ranks: one large message cut into subflows over channels that finish together.

A *channel* is an independent stream between two ranks: a duplicated
communicator (:class:`CommChannel`; MPICH may map it onto its own virtual
communication interface and so its own connection) or a transport of the
project's own pinned to one network path (:mod:`transport.sockets`). A
:class:`Splitter` holds the channels of one communicator, learns each
channel's throughput online, and cuts a message into parts sized in
proportion to those throughputs, so that all parts finish at the same time.

Wire format. The sender first sends a header of :data:`HEADER_BYTES` bytes on
the communicator itself, with the user's tag (so it matches like the user's
message would: source, tag, ANY_SOURCE, ANY_TAG and order all behave): two
magic words, the total size, a sequence number and the bytes carried by each
channel. Part ``c`` then travels on channel ``c`` with the sequence number as
its tag, so receives posted in any order pair with the right parts. The
receiver receives into the user's buffer as for a plain message; a message of
exactly :data:`HEADER_BYTES` bytes beginning with the magic words is a header,
and the parts follow into the same buffer. A plain message that happens to be
exactly such bytes is sent as a one-part split message, so the rule is exact.

A split message longer than the receive buffer behaves as in MPI: the
receive fails with :class:`SplitTruncated` (an ``MPI.Exception`` of class
``MPI.ERR_TRUNCATE``) and the send completes. The receiver consumes the
parts into scratch memory of their own size (never a truncating receive:
Open MPI 5.0 writes a truncated rendezvous message past the receive buffer)
or, on channels that wait for a clear-to-send, answers with a
"discard" instead, and the sender sends no parts. Header fields are checked
as Python integers: sizes must be non-negative and sum to the total.
Buffers of Python objects (numpy ``object`` arrays) are refused before
anything is sent: their bytes are pointers, meaningless in another process.

Both sides must use a :class:`Splitter` (both interposed with
``COMMLIB_SPLIT=1``): a plain receiver would get the header as its message.
Programs that size receives by probing first (``Probe`` then ``Get_count``)
see the header's size for a split message, so they must not enable splitting.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
from mpi4py import MPI

from .settings import settings
from .truncation import Truncated

__all__ = [
    "HEADER_BYTES",
    "MAX_CHANNELS",
    "Channel",
    "CommChannel",
    "SplitRequest",
    "SplitTruncated",
    "Splitter",
    "ThroughputEstimator",
    "attach",
    "detach",
    "is_header",
    "split_irecv",
    "split_isend",
    "split_recv",
    "split_send",
    "split_sizes",
    "splitter_for",
    "wait_all",
    "worth_splitting",
]

MAX_CHANNELS = 16
_MAGIC = (0x636F6D6D6C696273, 0x706C697466726D31)  # "commlibs", "plitfrm1"
_FIXED = 4  # magic, magic, total bytes, sequence number
HEADER_BYTES = 8 * (_FIXED + MAX_CHANNELS)
_MAGIC_BYTES = np.array(_MAGIC, dtype="<u8").tobytes()
_MIN_TIMED = 64 << 10  # parts smaller than this do not update the throughput estimates
_PART_COST = 10e-6  # seconds of Python and MPI bookkeeping per part posted
_GO, _DISCARD = b"\x00", b"\x01"  # clear-to-send answers: send the parts, or the receive was truncated


class SplitTruncated(Truncated):
    """A split message longer than the receive buffer (``MPI.ERR_TRUNCATE``, as MPI reports a plain one)."""


# ------------------------------------------------------------------ sizes
def split_sizes(nbytes: int, rates: Sequence[float]) -> np.ndarray:
    """Bytes per channel, proportional to ``rates``, summing exactly to ``nbytes`` (zero-rate channels get 0)."""
    rates = np.asarray(rates, dtype=np.float64)
    if nbytes < 0:
        raise ValueError(f"split_sizes: nbytes must be >= 0, got {nbytes}")
    if rates.ndim != 1 or len(rates) == 0 or not np.all(np.isfinite(rates)) or (rates < 0).any() or rates.sum() <= 0:
        raise ValueError(f"split_sizes: rates must be finite, non-negative, not all zero, got {rates.tolist()}")
    bounds = np.floor(np.cumsum(rates) / rates.sum() * nbytes + 0.5).astype(np.int64)
    bounds[-1] = nbytes
    return np.diff(np.concatenate([[0], bounds]))


def _byte_view(buf: Any, op: str, writable: bool) -> memoryview:
    """A flat byte view of a contiguous buffer, or a clear error naming ``op`` before anything is sent."""
    try:
        view = memoryview(buf)
    except TypeError:
        raise TypeError(
            f"{op}: expected a contiguous buffer (numpy array, bytearray, ...), got {type(buf).__name__}"
        ) from None
    if "O" in view.format:
        raise TypeError(
            f"{op}: buffer of Python objects (format {view.format!r}, {view.nbytes} bytes) cannot be sent as "
            "bytes: its elements are pointers into this process; send a numeric array"
        )
    if not view.c_contiguous:
        raise ValueError(f"{op}: buffer must be C-contiguous, got shape {view.shape} strides {view.strides}")
    if writable and view.readonly:
        raise ValueError(f"{op}: receive buffer of {view.nbytes} bytes is read-only")
    return view.cast("B") if view.ndim != 1 or view.format != "B" else view


def is_header(view: memoryview | bytes, count: int) -> bool:
    """Whether a received message of ``count`` bytes in ``view`` is a split-message header."""
    return count == HEADER_BYTES and bytes(view[:16]) == _MAGIC_BYTES


# ------------------------------------------------------------- channels
class Pending(Protocol):
    """One part in flight: ``test()`` without blocking, ``wait()`` until done."""

    def test(self) -> bool: ...

    def wait(self) -> None: ...


class Channel(Protocol):
    """An independent stream to the peers of one communicator.

    ``rendezvous``: parts may be sent only once the receiver has posted its receives (it
    then answers a split header with an empty clear-to-send part, tag ``-1 - tag``, on
    the first channel used): for transports that would otherwise buffer early data, and
    so that the header never queues behind the parts on a shared path.
    """

    name: str
    rendezvous: bool

    def isend(self, view: memoryview, peer: int, tag: int) -> Pending: ...

    def irecv(self, view: memoryview, peer: int, tag: int) -> Pending: ...

    def close(self) -> None: ...


def _discard(channel: Channel, nbytes: int, peer: int, tag: int) -> Pending:
    """Consume a part of ``nbytes`` without keeping it (a truncated receive): ``channel.discard`` where it
    has one, else a receive into scratch memory."""
    discard = getattr(channel, "discard", None)
    if discard is not None:
        return discard(nbytes, peer, tag)
    return channel.irecv(memoryview(bytearray(nbytes)), peer, tag)


class _MPIPending:
    __slots__ = ("request",)

    def __init__(self, request: MPI.Request) -> None:
        self.request = request

    def test(self) -> bool:
        return self.request.Test()

    def wait(self) -> None:
        self.request.Wait()


class CommChannel:
    """A channel on its own duplicated communicator (parts are tagged with the message's sequence number)."""

    rendezvous = False  # MPI matches early parts itself

    def __init__(self, comm: MPI.Comm, name: str = "comm") -> None:
        self.comm = comm
        self.name = name

    def isend(self, view: memoryview, peer: int, tag: int) -> Pending:
        return _MPIPending(self.comm.Isend([view, MPI.BYTE], peer, tag))

    def irecv(self, view: memoryview, peer: int, tag: int) -> Pending:
        return _MPIPending(self.comm.Irecv([view, MPI.BYTE], peer, tag))

    def close(self) -> None:
        if self.comm != MPI.COMM_NULL:
            self.comm.Free()


# ----------------------------------------------------------- estimates
class ThroughputEstimator:
    """Per peer: each channel's throughput in a split, and the unsplit throughput; bounded memory.

    Estimates are exponentially weighted averages (weight ``smoothing`` for each new
    sample) of bytes per second; a peer with no sample yet gets ``prior``. At most
    ``max_peers`` peers are remembered (the least recently used is dropped).
    """

    def __init__(self, channels: int, prior: float, smoothing: float = 0.3, max_peers: int = 1024) -> None:
        if channels < 1 or not prior > 0 or not 0 < smoothing <= 1 or max_peers < 1:
            raise ValueError(
                f"ThroughputEstimator: channels={channels}, prior={prior}, smoothing={smoothing}, "
                f"max_peers={max_peers} out of range"
            )
        self.channels, self.prior, self.smoothing, self.max_peers = channels, float(prior), smoothing, max_peers
        self._peers: OrderedDict[int, np.ndarray] = OrderedDict()  # peer -> [unsplit, channel 0..k-1]

    def _row(self, peer: int) -> np.ndarray:
        row = self._peers.get(peer)
        if row is None:
            row = np.full(1 + self.channels, np.nan)
            self._peers[peer] = row
            if len(self._peers) > self.max_peers:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(peer)
        return row

    def channel_rates(self, peer: int) -> np.ndarray:
        """Bytes/s of each channel when used together; an unmeasured channel is taken to be as fast
        as the measured ones on average (the prior when none is)."""
        row = self._peers.get(peer)
        if row is None:
            return np.full(self.channels, self.prior)
        rates = row[1:]
        seen = ~np.isnan(rates)
        return np.where(seen, rates, rates[seen].mean() if seen.any() else self.prior)

    def unsplit_rate(self, peer: int) -> float:
        """Bytes/s of an unsplit message to ``peer`` (prior where unmeasured)."""
        row = self._peers.get(peer)
        return self.prior if row is None or np.isnan(row[0]) else float(row[0])

    def measured(self, peer: int) -> tuple[bool, bool]:
        """Whether (unsplit, split) throughput to ``peer`` has been measured yet."""
        row = self._peers.get(peer)
        if row is None:
            return False, False
        return not np.isnan(row[0]), bool(np.any(~np.isnan(row[1:])))

    def _update(self, row: np.ndarray, i: int, rate: float) -> None:
        row[i] = rate if np.isnan(row[i]) else (1 - self.smoothing) * row[i] + self.smoothing * rate

    def observe_split(self, peer: int, sizes: Sequence[int], seconds: Sequence[float]) -> None:
        """Record a split transfer: channel ``c`` moved ``sizes[c]`` bytes in ``seconds[c]``."""
        row = self._row(peer)
        for c, (n, t) in enumerate(zip(sizes, seconds)):
            if n >= _MIN_TIMED and t > 0:
                self._update(row, 1 + c, n / t)

    def observe_unsplit(self, peer: int, nbytes: int, seconds: float) -> None:
        if nbytes >= _MIN_TIMED and seconds > 0:
            self._update(self._row(peer), 0, nbytes / seconds)


# ------------------------------------------------------------- requests
class SplitRequest:
    """A split (or plain) transfer in flight: ``Wait``/``Test`` like an MPI request.

    ``request`` is the first MPI request (the header, or the plain message); a caller that
    needs an ``MPI.Request`` (the interposer's completion actions) can wait on it and then
    call :meth:`finish`, which completes the rest (blocking).
    """

    def __init__(self, splitter: Splitter, request: MPI.Request, *, receive: bool, view: memoryview) -> None:
        self.splitter = splitter
        self.request = request
        self._receive = receive
        self._view = view
        self._parts: list[Pending] = []
        self._sizes: list[int] = []
        self._done_at: list[float | None] = []
        self._status = MPI.Status()
        self._first_done = False
        self._complete = False
        self._start = time.perf_counter()
        self._peer = -1
        self._nbytes = view.nbytes
        self._split = False
        self._deferred: Callable[[], list[Pending]] | None = None
        self._cts: Pending | None = None
        self._cts_answer = bytearray(1)  # what the receiver cleared: _GO or _DISCARD
        self._discarded = False  # the receiver truncated: the parts were never sent
        self._error: MPI.Exception | None = None  # raised when the request completes

    # -- internal phases
    def _parts_posted(self, parts: list[Pending]) -> None:
        self._parts = parts
        self._done_at = [None] * len(parts)

    def _launch(self) -> None:
        """The receiver answered: post the deferred parts (their clock starts now), or none if it truncated."""
        post, self._deferred = self._deferred, None
        self._start = time.perf_counter()
        if bytes(self._cts_answer) == _DISCARD:
            self._discarded = True
            self._parts_posted([])
            return
        self._parts_posted(post())

    def _after_first(self) -> None:
        """The first request completed: a receive may turn out to be a header and post its parts now."""
        self._first_done = True
        if self._receive:
            count = self._status.Get_count(MPI.BYTE)
            if is_header(self._view, count):
                self.splitter._receive_parts(self, self._status.Get_source())
            else:
                self._nbytes = count

    def _poll_parts(self) -> bool:
        if self._deferred is not None:
            if not self._cts.test():
                return False
            self._launch()
        now = None
        for i, part in enumerate(self._parts):
            if self._done_at[i] is None and part.test():
                now = now or time.perf_counter()
                self._done_at[i] = getattr(part, "done_at", None) or now
        return all(t is not None for t in self._done_at)

    def _finish(self) -> None:
        self._complete = True
        if self._receive:
            if self._error is not None:
                self._status.Set_error(MPI.ERR_TRUNCATE)
                self._status.Set_elements(MPI.BYTE, 0)
                raise self._error
            if self._split:
                self._status.Set_elements(MPI.BYTE, self._nbytes)
            return
        if self._discarded:
            return
        if self._split:
            seconds = [0.0] * len(self._sizes)
            used = [c for c, size in enumerate(self._sizes) if size]
            for c, t in zip(used, self._done_at):
                seconds[c] = t - self._start
            self.splitter.estimator.observe_split(self._peer, self._sizes, seconds)
        elif self._nbytes >= self.splitter.min_bytes:
            self.splitter.estimator.observe_unsplit(self._peer, self._nbytes, time.perf_counter() - self._start)

    # -- MPI-like interface
    def Test(self, status: MPI.Status | None = None) -> bool:
        """Progress without blocking; True (and ``status`` filled) once everything arrived or left."""
        if not self._complete:
            if not self._first_done:
                if not self.request.Test(self._status):
                    return False
                self._after_first()
            if not self._poll_parts():
                return False
            self._finish()
        if status is not None:
            _copy_status(self._status, status)
        return True

    def Wait(self, status: MPI.Status | None = None) -> bool:
        """Block until complete; fill ``status`` (source, tag, and the whole message's size)."""
        if not self._complete:
            if not self._first_done:
                self.request.Wait(self._status)
                self._after_first()
            self.finish()
        if status is not None:
            _copy_status(self._status, status)
        return True

    def finish(self, status: MPI.Status | None = None) -> None:
        """Complete the parts after :attr:`request` has completed; blocking.

        Called by :meth:`Wait`, or by a caller that completed :attr:`request` itself: it passes
        that request's ``status`` (required for a receive: its size tells a header from a
        plain message), which is then updated to describe the whole message.
        """
        if self._complete:
            if status is not None:
                _copy_status(self._status, status)
            return
        if not self._first_done:
            if status is None and self._receive:
                raise ValueError("SplitRequest.finish: a receive needs the status of its completed first request")
            if status is not None:
                _copy_status(status, self._status)
            self._after_first()
        if self._deferred is not None:
            self._cts.wait()
            self._launch()
        pending = [i for i, t in enumerate(self._done_at) if t is None]
        plain = [self._parts[i] for i in pending]
        if plain and all(isinstance(p, _MPIPending) for p in plain):
            reqs = [self._parts[i].request for i in pending]
            for _ in pending:  # Waitany: each part's own completion time
                j = MPI.Request.Waitany(reqs)
                self._done_at[pending[j]] = time.perf_counter()
        else:
            for i in pending:  # a part that records its own completion time (sockets) keeps it
                self._parts[i].wait()
                self._done_at[i] = getattr(self._parts[i], "done_at", None) or time.perf_counter()
        self._finish()
        if status is not None:
            _copy_status(self._status, status)

    def cancel(self) -> None:
        """Withdraw a receive whose first message has not arrived (an error path: nothing stays posted).

        A receive that already matched a message, or a send, is completed instead.
        """
        if self._complete:
            return
        if self._receive and not self._first_done:
            self.request.Cancel()
            self.request.Wait()
            self._complete = True
            return
        self.Wait()

    @property
    def nbytes(self) -> int:
        """Bytes of the whole message (known to a receive once it completed)."""
        return self._nbytes

    @property
    def parts(self) -> list[int]:
        """Bytes per channel, zero for an unused one (empty for a plain message)."""
        return list(self._sizes)


def _copy_status(src: MPI.Status, dst: MPI.Status) -> None:
    dst.Set_source(src.Get_source())
    dst.Set_tag(src.Get_tag())
    dst.Set_error(src.Get_error())
    dst.Set_elements(MPI.BYTE, src.Get_count(MPI.BYTE))


# -------------------------------------------------------------- splitter
def _model_rate(model: Any, level: str) -> tuple[float, float]:
    """(alpha seconds, bytes/s) from a cost model with ``alpha_beta(level)``, else textbook figures."""
    if model is None:
        try:
            from datatypes.model import current

            model = current()
        except Exception:  # the model is optional: no module, no calibration, or a broken one
            model = None
    if model is not None:
        try:
            alpha, beta = model.alpha_beta(level)
            if alpha >= 0 and beta > 0:
                return float(alpha), 1.0 / float(beta)
        except Exception:
            pass
    return 20e-6, 1.25e9


class Splitter:
    """Split large messages to peers of ``comm`` over ``channels``; see the module docstring.

    ``min_bytes``: smaller messages always go plain. ``model``: an object with
    ``alpha_beta(level)`` (see :mod:`datatypes.model`) giving the per-message cost and
    the prior throughput; default: the process's model, else textbook figures.
    ``explore``: every ``explore``-th large message to a peer takes the mode (split or
    unsplit) the estimates do not prefer, so both stay measured; 0 never explores.
    """

    def __init__(
        self,
        comm: MPI.Comm,
        channels: Sequence[Channel],
        *,
        min_bytes: int = 1 << 20,
        model: Any = None,
        level: str = "inter",
        explore: int = 16,
        owns_channels: bool = False,
    ) -> None:
        if not 1 <= len(channels) <= MAX_CHANNELS:
            raise ValueError(f"Splitter: needs 1..{MAX_CHANNELS} channels, got {len(channels)}")
        if min_bytes < 0 or explore < 0:
            raise ValueError(f"Splitter: min_bytes={min_bytes} and explore={explore} must be >= 0")
        self.comm = _plain(comm)  # the header must not go through an interposer (it would split it again)
        self.channels = list(channels)
        self.min_bytes = max(int(min_bytes), HEADER_BYTES + 1)
        self.alpha, prior = _model_rate(model, level)
        self.estimator = ThroughputEstimator(len(self.channels), prior)
        self.explore = explore
        self._owns = owns_channels
        tag_ub = comm.Get_attr(MPI.TAG_UB) if comm != MPI.COMM_NULL else None
        self._tag_space = max(int(tag_ub or 32767), 32767) + 1
        self._seq_out: dict[int, int] = {}
        self._count: dict[int, int] = {}

    @classmethod
    def dup(cls, comm: MPI.Comm, channels: int = 2, **kwargs: Any) -> Splitter:
        """Collective over ``comm``: a splitter whose channels are ``channels`` duplicates of it."""
        if not 1 <= channels <= MAX_CHANNELS:
            raise ValueError(f"Splitter.dup: channels must be in 1..{MAX_CHANNELS}, got {channels}")
        dups = [CommChannel(_plain(comm).Dup(), name=f"dup{c}") for c in range(channels)]
        return cls(comm, dups, owns_channels=True, **kwargs)

    def close(self) -> None:
        """Free the channels this splitter made (collective for duplicated communicators)."""
        if self._owns:
            for ch in self.channels:
                ch.close()
        self.channels = []

    # -- decisions
    def plan(self, nbytes: int, peer: int) -> np.ndarray | None:
        """Bytes per channel for a message of ``nbytes`` to ``peer``, or ``None`` to send it plain.

        Splitting pays when the predicted ``alpha + k * part cost + nbytes / sum(channel rates)``
        (``alpha``: one more message, the header) beats ``nbytes / unsplit rate`` by 2%; channels
        are taken fastest first, as many as shorten the prediction. With ``explore``, a mode not
        yet measured for this peer is tried once, and every ``explore``-th message takes the other.
        """
        if nbytes < self.min_bytes or len(self.channels) < 1:
            return None
        rates = self.estimator.channel_rates(peer)
        order = np.argsort(-rates, kind="stable")
        best_k, best_t, acc = 0, nbytes / self.estimator.unsplit_rate(peer), 0.0
        for k, c in enumerate(order, start=1):
            acc += rates[c]
            t = self.alpha + _PART_COST * k + nbytes / acc
            if t < best_t * 0.98:
                best_k, best_t = k, t
        n = self._count.get(peer, 0) + 1
        self._count[peer] = n
        if self.explore:
            unsplit_seen, split_seen = self.estimator.measured(peer)
            if split_seen and not unsplit_seen:
                best_k = 0
            elif unsplit_seen and not split_seen:
                best_k = len(order)
            elif unsplit_seen and n % self.explore == 0:
                best_k = len(order) if best_k == 0 else 0
        if best_k == 0:
            return None
        use = np.zeros(len(self.channels))
        use[order[:best_k]] = rates[order[:best_k]]
        return split_sizes(nbytes, use)

    def worth_splitting(self, nbytes: int, peer: int) -> bool:
        """Whether a message of ``nbytes`` to ``peer`` would be split now (does not count as a decision)."""
        if nbytes < self.min_bytes:
            return False
        saved = dict(self._count)
        try:
            return self.plan(nbytes, peer) is not None
        finally:
            self._count = saved

    # -- sending
    def Isend(self, buf: Any, dest: int, tag: int = 0, *, sizes: Sequence[int] | None = None) -> SplitRequest:
        """Send ``buf`` (contiguous) to ``dest``: split when :meth:`plan` says so, else plain.

        ``sizes`` forces the bytes per channel (a zero skips a channel); ``sizes=[]`` forces plain.
        """
        view = _byte_view(buf, "split_isend", writable=False)
        n = view.nbytes
        if sizes is not None:
            parts = None if len(sizes) == 0 else np.asarray(sizes, dtype=np.int64)
            if parts is not None and (
                len(parts) > len(self.channels) or any(int(v) < 0 for v in parts) or sum(int(v) for v in parts) != n
            ):
                raise ValueError(
                    f"split_isend: sizes {list(sizes)} must be >= 0, at most {len(self.channels)} entries, sum {n}"
                )
            if parts is not None and n < HEADER_BYTES:
                raise ValueError(f"split_isend: a split message needs at least {HEADER_BYTES} bytes, got {n}")
        else:
            parts = self.plan(n, dest)
        if parts is None and is_header(view, n):
            parts = np.array([n])  # plain bytes that look like a header travel as a one-part split message
        if parts is None:
            started = time.perf_counter()
            req = SplitRequest(self, self.comm.Isend([view, MPI.BYTE], dest, tag), receive=False, view=view)
            req._start = started
            req._peer = dest
            return req
        seq = self._seq_out.get(dest, 0)
        self._seq_out[dest] = seq + 1
        header = np.zeros(_FIXED + MAX_CHANNELS, dtype="<i8")
        header[:2] = np.array(_MAGIC, dtype="<u8").view("<i8")
        header[2], header[3] = n, seq
        header[_FIXED : _FIXED + len(parts)] = parts
        req = SplitRequest(self, self.comm.Isend([header, MPI.BYTE], dest, tag), receive=False, view=view)
        req._header = header  # keep alive until sent
        channel_tag = seq % self._tag_space

        def post() -> list[Pending]:
            pending, offset = [], 0
            for c, size in enumerate(parts):
                if size:
                    pending.append(self.channels[c].isend(view[offset : offset + size], dest, channel_tag))
                offset += size
            return pending

        used = [self.channels[c] for c in np.nonzero(parts)[0]]
        req._peer, req._nbytes, req._split = dest, n, True
        req._sizes = [int(s) for s in parts] + [0] * (len(self.channels) - len(parts))
        if any(getattr(ch, "rendezvous", False) for ch in used):
            # wait for the receiver's clear-to-send before the parts: the header then never queues behind them
            req._cts = used[0].irecv(memoryview(req._cts_answer), dest, -1 - channel_tag)
            req._deferred = post
        else:
            req._parts_posted(post())
        return req

    def Send(self, buf: Any, dest: int, tag: int = 0, *, sizes: Sequence[int] | None = None) -> None:
        """Blocking :meth:`Isend`; updates the channel throughput estimates."""
        self.Isend(buf, dest, tag, sizes=sizes).Wait()

    # -- receiving
    def Irecv(self, buf: Any, source: int = MPI.ANY_SOURCE, tag: int = MPI.ANY_TAG) -> SplitRequest:
        """Receive into ``buf`` (contiguous) a plain or split message."""
        view = _byte_view(buf, "split_irecv", writable=True)
        return SplitRequest(self, self.comm.Irecv([view, MPI.BYTE], source, tag), receive=True, view=view)

    def Recv(
        self, buf: Any, source: int = MPI.ANY_SOURCE, tag: int = MPI.ANY_TAG, status: MPI.Status | None = None
    ) -> None:
        """Blocking :meth:`Irecv`; ``status`` reports the whole message's size."""
        self.Irecv(buf, source, tag).Wait(status)

    def Sendrecv(
        self,
        sendbuf: Any,
        dest: int,
        sendtag: int = 0,
        recvbuf: Any = None,
        source: int = MPI.ANY_SOURCE,
        recvtag: int = MPI.ANY_TAG,
        status: MPI.Status | None = None,
    ) -> None:
        """One step of a collective: send to ``dest`` and receive from ``source`` at once, each split if it pays."""
        if recvbuf is None:
            raise ValueError("split_sendrecv: recvbuf is required")
        _byte_view(sendbuf, "split_sendrecv", writable=False)  # a bad send buffer fails before the receive is posted
        rreq = self.Irecv(recvbuf, source, recvtag)
        try:
            sreq = self.Isend(sendbuf, dest, sendtag)
        except BaseException:
            rreq.cancel()
            raise
        wait_all([rreq, sreq], [status, None])

    def _receive_parts(self, req: SplitRequest, source: int) -> None:
        header = np.frombuffer(bytes(req._view[:HEADER_BYTES]), dtype="<i8")
        n, seq = int(header[2]), int(header[3])
        sizes = [int(v) for v in header[_FIXED:]]  # Python integers: a sum cannot wrap
        k = len(self.channels)
        if n < 0 or seq < 0 or any(v < 0 for v in sizes) or sum(sizes) != n or any(sizes[k:]):
            raise ValueError(
                f"split_irecv: corrupt header from rank {source}: {n} bytes in parts {sizes} over {k} channels"
            )
        channel_tag = seq % self._tag_space
        used = [c for c in range(k) if sizes[c]]
        req._peer, req._nbytes, req._split = source, n, True
        req._sizes = sizes[:k]
        rendezvous = any(getattr(self.channels[c], "rendezvous", False) for c in used)
        if n > req._view.nbytes:
            req._error = SplitTruncated(
                f"split_irecv: message of {n} bytes from rank {source} (tag {req._status.Get_tag()}) does not fit "
                f"the receive buffer of {req._view.nbytes} bytes (MPI_ERR_TRUNCATE)"
            )
            if rendezvous:  # the sender waits for our answer: tell it to send nothing
                req._parts_posted([])
                req._cts = self.channels[used[0]].isend(memoryview(_DISCARD), source, -1 - channel_tag)
            else:  # the parts are on their way: consume them so that the sender completes
                req._parts_posted([_discard(self.channels[c], sizes[c], source, channel_tag) for c in used])
            return
        pending, offset = [], 0
        for c in range(k):
            if sizes[c]:
                view = req._view[offset : offset + sizes[c]]
                pending.append(self.channels[c].irecv(view, source, channel_tag))
            offset += sizes[c]
        req._parts_posted(pending)
        if rendezvous:  # clear to send: parts are posted
            req._cts = self.channels[used[0]].isend(memoryview(_GO), source, -1 - channel_tag)


def wait_all(requests: Sequence[SplitRequest], statuses: Sequence[MPI.Status | None] | None = None) -> None:
    """Complete every request, testing them all in turn (a receive must progress for a peer's send to finish)."""
    statuses = list(statuses) if statuses is not None else [None] * len(requests)
    done = [False] * len(requests)
    while not all(done):
        for i, req in enumerate(requests):
            if not done[i]:
                done[i] = req.Test(statuses[i])


def _plain(comm: MPI.Comm) -> MPI.Comm:
    """``comm`` as mpi4py's own class on the same handle, so that no interposer intercepts the channels' traffic."""
    for cls in (MPI.Intercomm, MPI.Intracomm):
        if isinstance(comm, cls):
            return cls(comm)
    return MPI.Comm(comm)


# ----------------------------------------------- per-communicator registry
_registry: dict[int, Splitter] = {}


def attach(comm: MPI.Comm, channels: int | None = None, **kwargs: Any) -> Splitter:
    """Collective over ``comm``: make its :class:`Splitter` (``COMMLIB_SPLIT_CHANNELS`` duplicates by default)."""
    key = MPI.Comm.py2f(comm)
    if key in _registry:
        return _registry[key]
    kwargs.setdefault("min_bytes", settings.split_min_bytes)
    splitter = Splitter.dup(comm, channels or settings.split_channels, **kwargs)
    _registry[key] = splitter
    return splitter


def detach(comm: MPI.Comm) -> None:
    """Collective over ``comm``: free its splitter's channels (call before freeing ``comm``)."""
    splitter = _registry.pop(MPI.Comm.py2f(comm), None)
    if splitter is not None:
        splitter.close()


def splitter_for(comm: MPI.Comm) -> Splitter | None:
    """The splitter :func:`attach` made for ``comm``, if any."""
    return _registry.get(MPI.Comm.py2f(comm))


def _need(comm: MPI.Comm, op: str) -> Splitter:
    splitter = splitter_for(comm)
    if splitter is None:
        raise ValueError(f"{op}: no splitter attached to this communicator (call transport.flows.attach(comm) first)")
    return splitter


def worth_splitting(nbytes: int, comm: MPI.Comm, peer: int) -> bool:
    """Whether a contiguous message of ``nbytes`` to ``peer`` on ``comm`` should go through :func:`split_send`.

    False unless ``COMMLIB_SPLIT`` is on and ``comm`` has a splitter. Note: with splitting on, a
    plain message of exactly :data:`HEADER_BYTES` bytes must go through :func:`split_send` too
    (it checks whether the bytes look like a header).
    """
    if not settings.split:
        return False
    splitter = splitter_for(comm)
    return splitter is not None and (nbytes == HEADER_BYTES or splitter.worth_splitting(nbytes, peer))


def split_isend(comm: MPI.Comm, buf: Any, dest: int, tag: int = 0) -> SplitRequest:
    """Nonblocking split send on ``comm``'s attached splitter."""
    return _need(comm, "split_isend").Isend(buf, dest, tag)


def split_send(comm: MPI.Comm, buf: Any, dest: int, tag: int = 0) -> None:
    """Blocking split send on ``comm``'s attached splitter."""
    _need(comm, "split_send").Send(buf, dest, tag)


def split_irecv(comm: MPI.Comm, buf: Any, source: int = MPI.ANY_SOURCE, tag: int = MPI.ANY_TAG) -> SplitRequest:
    """Nonblocking receive of a plain or split message on ``comm``'s attached splitter."""
    return _need(comm, "split_irecv").Irecv(buf, source, tag)


def split_recv(
    comm: MPI.Comm, buf: Any, source: int = MPI.ANY_SOURCE, tag: int = MPI.ANY_TAG, status: MPI.Status | None = None
) -> None:
    """Blocking receive of a plain or split message on ``comm``'s attached splitter."""
    _need(comm, "split_recv").Recv(buf, source, tag, status)
