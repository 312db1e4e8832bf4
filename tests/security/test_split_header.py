"""Attacks on the flow splitter's header (in one process, over COMM_SELF and socket pairs): part sizes that
wrap a 64-bit sum, and split messages larger than the receive buffer, which must truncate as MPI does
(the receiver fails, the sender completes) instead of leaving the sender waiting forever."""

from __future__ import annotations

import time

import numpy as np
import pytest
from mpi4py import MPI

from transport.flows import HEADER_BYTES, MAX_CHANNELS, Splitter, wire


class _Model:
    def alpha_beta(self, level: str) -> tuple[float, float]:
        return 10e-6, 1e-9


@pytest.fixture
def splitter():
    sp = Splitter.dup(MPI.COMM_SELF, 3, min_bytes=1024, model=_Model(), explore=0)
    yield sp
    sp.close()


def _header(total: int, seq: int, sizes: list[int]) -> np.ndarray:
    words = [*np.array(wire.MAGIC, dtype="<u8").view("<i8").tolist(), total, seq]
    words += [s - (1 << 64) if s >= 1 << 63 else s for s in sizes] + [0] * (MAX_CHANNELS - len(sizes))
    return np.array(words, dtype="<i8")


def _settle(request, seconds: float = 3.0) -> bool:
    """Test ``request`` until it completes (True), raises, or ``seconds`` pass (False)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if request.Test():
            return True
    return False


@pytest.mark.parametrize(
    "sizes",
    [
        [(1 << 63) - 1, (1 << 63) - 1, 18],  # wraps to 16 in int64
        [1 << 63, 1 << 63, 16],  # two "negative" words that wrap to 0
        [-1, 17],
    ],
)
def test_part_sizes_are_summed_without_wrapping(splitter, sizes):
    header = _header(16, 0, sizes)
    assert header.nbytes == HEADER_BYTES
    out = np.zeros(HEADER_BYTES + 40, np.uint8)
    request = splitter.Irecv(out, 0, 9)
    MPI.COMM_SELF.Send([header, MPI.BYTE], 0, 9)
    with pytest.raises(ValueError, match="corrupt header"):
        _settle(request)


def test_a_split_message_too_large_truncates_and_the_sender_completes(splitter):
    data = np.arange(30_000, dtype=np.uint8)
    send = splitter.Isend(data, 0, 4, sizes=[10_000, 10_000, 10_000])
    memory = np.zeros(16_000, np.uint8)  # the receive buffer and what lies beyond it
    with pytest.raises(MPI.Exception) as info:
        _settle(splitter.Irecv(memory[:12_000], 0, 4))
    assert info.value.Get_error_class() == MPI.ERR_TRUNCATE and "does not fit" in str(info.value)
    assert _settle(send), "the sender still waits for a receiver that gave up"
    assert not memory[12_000:].any(), "bytes were written past the receive buffer"
    out = np.zeros(30_000, np.uint8)  # the channels are clean: the next message arrives whole
    send = splitter.Isend(data, 0, 5, sizes=[1, 2, 29_997])
    received = splitter.Irecv(out, 0, 5)
    assert _settle(received) and _settle(send) and np.array_equal(out, data)


def test_truncation_over_rendezvous_channels_sends_no_parts(socket_loops):
    sp = Splitter(MPI.COMM_SELF, socket_loops, min_bytes=1024, model=_Model(), explore=0)
    data = np.arange(50_000, dtype=np.uint8)
    send = sp.Isend(data, 0, 6, sizes=[25_000, 25_000])
    with pytest.raises(MPI.Exception, match="does not fit the receive buffer of 1000"):
        _settle(sp.Irecv(np.zeros(1000, np.uint8), 0, 6))
    assert _settle(send), "the sender still waits for a clear-to-send"
    out = np.zeros(50_000, np.uint8)
    send, received = sp.Isend(data, 0, 7, sizes=[100, 49_900]), sp.Irecv(out, 0, 7)
    deadline = time.monotonic() + 5
    done = [False, False]
    while not all(done) and time.monotonic() < deadline:
        done = [done[0] or send.Test(), done[1] or received.Test()]
    assert all(done) and np.array_equal(out, data)
