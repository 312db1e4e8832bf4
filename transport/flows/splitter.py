"""The :class:`Splitter`: one communicator's channels, the decision to split, the posting of parts."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from mpi4py import MPI

from .channels import Channel, CommChannel, Pending, discard_part, plain_comm
from .estimates import ThroughputEstimator
from .request import SplitRequest, wait_all
from .wire import (
    DISCARD,
    FIXED,
    GO,
    HEADER_BYTES,
    MAGIC,
    MAX_CHANNELS,
    SplitTruncated,
    byte_view,
    is_header,
    split_sizes,
)

_PART_COST = 10e-6  # seconds of Python and MPI bookkeeping per part posted


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
        self.comm = plain_comm(comm)  # the header must not go through an interposer (it would split it again)
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
        dups = [CommChannel(plain_comm(comm).Dup(), name=f"dup{c}") for c in range(channels)]
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
        view = byte_view(buf, "split_isend", writable=False)
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
        header = np.zeros(FIXED + MAX_CHANNELS, dtype="<i8")
        header[:2] = np.array(MAGIC, dtype="<u8").view("<i8")
        header[2], header[3] = n, seq
        header[FIXED : FIXED + len(parts)] = parts
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
        view = byte_view(buf, "split_irecv", writable=True)
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
        byte_view(sendbuf, "split_sendrecv", writable=False)  # a bad send buffer fails before the receive is posted
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
        sizes = [int(v) for v in header[FIXED:]]  # Python integers: a sum cannot wrap
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
                req._cts = self.channels[used[0]].isend(memoryview(DISCARD), source, -1 - channel_tag)
            else:  # the parts are on their way: consume them so that the sender completes
                req._parts_posted([discard_part(self.channels[c], sizes[c], source, channel_tag) for c in used])
            return
        pending, offset = [], 0
        for c in range(k):
            if sizes[c]:
                view = req._view[offset : offset + sizes[c]]
                pending.append(self.channels[c].irecv(view, source, channel_tag))
            offset += sizes[c]
        req._parts_posted(pending)
        if rendezvous:  # clear to send: parts are posted
            req._cts = self.channels[used[0]].isend(memoryview(GO), source, -1 - channel_tag)
