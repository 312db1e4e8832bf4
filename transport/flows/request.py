"""The request of a split send or receive: the header, the clear-to-send, the parts, the status."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from mpi4py import MPI

from .channels import MPIPending, Pending
from .wire import DISCARD, is_header

if TYPE_CHECKING:
    from .splitter import Splitter


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
        self._cts_answer = bytearray(1)  # what the receiver cleared: GO or DISCARD
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
        if bytes(self._cts_answer) == DISCARD:
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
        if plain and all(isinstance(p, MPIPending) for p in plain):
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


def wait_all(requests: Sequence[SplitRequest], statuses: Sequence[MPI.Status | None] | None = None) -> None:
    """Complete every request, testing them all in turn (a receive must progress for a peer's send to finish)."""
    statuses = list(statuses) if statuses is not None else [None] * len(requests)
    done = [False] * len(requests)
    while not all(done):
        for i, req in enumerate(requests):
            if not done[i]:
                done[i] = req.Test(statuses[i])
