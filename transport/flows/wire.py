"""The split message on the wire: its header, the bytes each channel carries, the buffers it may use."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..truncation import Truncated

MAX_CHANNELS = 16
MAGIC = (0x636F6D6D6C696273, 0x706C697466726D31)  # "commlibs", "plitfrm1"
FIXED = 4  # magic, magic, total bytes, sequence number
HEADER_BYTES = 8 * (FIXED + MAX_CHANNELS)
MAGIC_BYTES = np.array(MAGIC, dtype="<u8").tobytes()
GO, DISCARD = b"\x00", b"\x01"  # clear-to-send answers: send the parts, or the receive was truncated


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


def byte_view(buf: Any, op: str, writable: bool) -> memoryview:
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
    return count == HEADER_BYTES and bytes(view[:16]) == MAGIC_BYTES
