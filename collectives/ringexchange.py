"""Point-to-point machinery shared by the ring attention algorithms.

* :func:`ring_channels`: two private duplicates of a communicator, one per traffic direction,
  created once and cached on the communicator as an MPI attribute (freed with it).
* :func:`agree`: every rank checks, with one small ``Allgather``, that all ranks called the same
  operation with the same sizes, and all raise the same error otherwise (instead of hanging).
* :class:`RowLayout`: messages of row records (one record per sequence position holding several
  named fields of different dtypes), so that any run of rows is one contiguous buffer that can be
  sent, received and forwarded without repacking.
* :class:`RingExchange`: nonblocking sends and receives that account bytes per step, channel and
  peer, and time split into compute and waiting (:class:`RingStats`).

Buffers given to MPI are host (numpy) memory, and device (cupy) arrays are staged through it,
unless ``commlib.config.cuda_aware_mpi`` (``COMMLIB_CUDA_AWARE_MPI=1``) says MPI takes device buffers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from mpi4py import MPI

from .attention import array_namespace
from .settings import settings

__all__ = ["RingExchange", "RingStats", "RowLayout", "agree", "message_namespace", "open_channels", "ring_channels"]

_keyval: int | None = None


def _free_channels(comm: MPI.Comm, keyval: int, channels: Any) -> int:
    if not MPI.Is_finalized():
        for c in channels:
            c.Free()
    return MPI.SUCCESS


def ring_channels(comm: MPI.Intracomm) -> tuple[MPI.Intracomm, MPI.Intracomm]:
    """Two duplicates of ``comm`` private to the ring algorithms (collective on first use per ``comm``).

    They are cached as an attribute of ``comm`` and freed when ``comm`` is freed, so repeated calls
    cost nothing and user traffic on ``comm`` can never match the algorithms' messages.
    """
    global _keyval
    if _keyval is None:
        _keyval = MPI.Comm.Create_keyval(delete_fn=_free_channels)
    channels = comm.Get_attr(_keyval)
    if channels is None:
        channels = (comm.Dup(), comm.Dup())
        comm.Set_attr(_keyval, channels)
    return channels


def agree(comm: MPI.Intracomm, op: str, signature: dict[str, int]) -> None:
    """Raise the same ``ValueError`` on every rank unless all ranks passed the same ``signature``."""
    mine = np.array(list(signature.values()), np.int64)
    every = np.empty((comm.Get_size(), len(mine)), np.int64)
    comm.Allgather(mine, every)
    differ = [i for i in range(len(mine)) if np.any(every[:, i] != every[0, i])]
    if differ:
        names = list(signature)
        detail = "; ".join(
            f"{names[i]}: " + ", ".join(f"rank {r}={every[r, i]}" for r in range(len(every))) for i in differ
        )
        raise ValueError(f"{op}: the ranks disagree on their arguments ({detail})")


def message_namespace(xp: Any) -> Any:
    """Where message buffers for arrays of ``xp`` live: on the device only with a CUDA-aware MPI."""
    return xp if xp is not np and settings.cuda_aware_mpi else np


def open_channels(op: str, comm: Any, signature: dict[str, int]) -> tuple[MPI.Intracomm, MPI.Intracomm]:
    """The ring channels of ``comm`` after checking that every rank passed ``signature``.

    A communicator of one rank needs no channel and no check: ``comm`` itself is returned twice.
    """
    if not isinstance(comm, MPI.Intracomm) or comm == MPI.COMM_NULL:
        raise TypeError(f"{op}: comm must be an mpi4py intracommunicator, got {comm!r}")
    if comm.Get_size() == 1:
        return (comm, comm)
    channels = ring_channels(comm)
    agree(channels[0], op, signature)
    return channels


@dataclass(frozen=True)
class RowLayout:
    """Records of named fields, one record per row: ``fields`` is ``(name, dtype, per-row shape)``."""

    fields: tuple[tuple[str, np.dtype, tuple[int, ...]], ...]
    offsets: tuple[int, ...]
    record: int  # bytes per row
    xp: Any = np  # where message buffers live: numpy (host), or cupy with a CUDA-aware MPI

    @classmethod
    def of(cls, *fields: tuple[str, Any, tuple[int, ...]], xp: Any = np) -> RowLayout:
        offsets, at, widest = [], 0, 1
        norm = []
        for name, dtype, shape in fields:
            dt = np.dtype(dtype)
            at = -(-at // dt.itemsize) * dt.itemsize
            offsets.append(at)
            at += dt.itemsize * int(np.prod(shape, dtype=np.int64))
            widest = max(widest, dt.itemsize)
            norm.append((name, dt, tuple(shape)))
        return cls(tuple(norm), tuple(offsets), -(-at // widest) * widest, xp)

    def empty(self, rows: int) -> Any:
        """A message buffer of ``rows`` records (uint8 ``[rows, record]``)."""
        return self.xp.empty((rows, self.record), np.uint8)

    def view(self, buf: np.ndarray, name: str) -> np.ndarray:
        """Field ``name`` of every row of ``buf``, as ``[rows, *shape]`` of its dtype (a view)."""
        for (fname, dt, shape), off in zip(self.fields, self.offsets):
            if fname == name:
                width = dt.itemsize * int(np.prod(shape, dtype=np.int64))
                return buf[:, off : off + width].view(dt).reshape(buf.shape[0], *shape)
        raise KeyError(name)

    def fill(self, buf: Any, **values: Any) -> Any:
        """Copy ``values`` (numpy or device arrays of shape ``[rows, *shape]``) into ``buf``; returns ``buf``."""
        for name, value in values.items():
            view = self.view(buf, name)
            on_device = not isinstance(value, np.ndarray) and hasattr(value, "get")
            view[...] = value.get() if on_device and isinstance(buf, np.ndarray) else value
        return buf


@dataclass
class RingStats:
    """What one call of a ring algorithm did on this rank, step by step.

    ``channels`` names the two channels (for TokenRing: queries one way, partial results the
    other); ``sent[t][c]`` is the bytes this rank handed to MPI on channel ``c`` during step ``t``
    and ``sent_to[t]`` the same by destination rank; ``compute_s[t]`` is the time in kernels,
    merges and packing, ``wait_s[t]`` the time inside MPI calls (posting, testing, waiting).
    """

    channels: tuple[str, ...] = ()
    compute_s: list[float] = field(default_factory=list)
    wait_s: list[float] = field(default_factory=list)
    sent: list[list[int]] = field(default_factory=list)
    sent_to: list[dict[int, int]] = field(default_factory=list)
    total_s: float = 0.0

    def reset(self, steps: int, channels: Sequence[str]) -> None:
        self.channels = tuple(channels)
        self.compute_s = [0.0] * steps
        self.wait_s = [0.0] * steps
        self.sent = [[0] * len(channels) for _ in range(steps)]
        self.sent_to = [{} for _ in range(steps)]
        self.total_s = 0.0


class RingExchange:
    """Nonblocking point-to-point on the ring channels, with byte and time accounting per step."""

    def __init__(self, comms: Sequence[MPI.Intracomm], steps: int, names: Sequence[str], stats: RingStats | None):
        self.comms = tuple(comms)
        self.stats = stats if stats is not None else RingStats()
        self.stats.reset(steps, names)
        self.step = 0
        self._sends: list[MPI.Request] = []
        self._active: list[MPI.Request] = []
        self._start = time.perf_counter()

    def isend(self, channel: int, buf: np.ndarray, dest: int, tag: int) -> MPI.Request:
        """Start sending ``buf`` (kept alive until :meth:`finish`) and count its bytes."""
        t0 = time.perf_counter()
        if not isinstance(buf, np.ndarray):  # a device buffer: what was written into it must be done
            array_namespace(buf).cuda.get_current_stream().synchronize()
        req = self.comms[channel].Isend(buf, dest, tag)
        self._sends.append(req)
        self._active.append(req)
        self.stats.sent[self.step][channel] += buf.nbytes
        to = self.stats.sent_to[self.step]
        to[dest] = to.get(dest, 0) + buf.nbytes
        self.stats.wait_s[self.step] += time.perf_counter() - t0
        return req

    def irecv(self, channel: int, buf: np.ndarray, source: int, tag: int) -> MPI.Request:
        t0 = time.perf_counter()
        req = self.comms[channel].Irecv(buf, source, tag)
        self._active.append(req)
        self.stats.wait_s[self.step] += time.perf_counter() - t0
        return req

    def wait(self, req: MPI.Request) -> None:
        t0 = time.perf_counter()
        req.Wait()
        self.stats.wait_s[self.step] += time.perf_counter() - t0

    def progress(self) -> None:
        """Let MPI move the transfers in flight (called between compute tiles)."""
        if self._active:
            MPI.Request.Testsome(self._active)
            self._active = [r for r in self._active if r != MPI.REQUEST_NULL]

    @contextmanager
    def compute(self) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stats.compute_s[self.step] += time.perf_counter() - t0

    def finish(self) -> RingStats:
        """Wait for every send, record the total time and return the stats."""
        t0 = time.perf_counter()
        MPI.Request.Waitall(self._sends)
        self._sends = []
        self._active = []
        self.stats.wait_s[self.step] += time.perf_counter() - t0
        self.stats.total_s = time.perf_counter() - self._start
        return self.stats
