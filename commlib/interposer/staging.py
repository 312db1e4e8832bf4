"""Staging buffers for packed messages, reused instead of allocated per call.

A packed message lives in a contiguous buffer for as long as MPI may read or
write it. Allocating a fresh large buffer per call is slow: glibc hands large
freed blocks back to the kernel, so every new one is faulted in again page by
page (for a halo exchange's 768 KiB faces that made packing 8 times slower
than the copy itself). A :class:`StagingPool` keeps buffers of power-of-two
sizes from :data:`MIN_POOLED` bytes up and hands a buffer out again only when
nothing but the pool refers to it: mpi4py holds the buffer of a nonblocking
or persistent request until the request completes (a freed request: until
the request object goes), and commlib's staging objects hold theirs until
they have unpacked, so a buffer in use is never handed out twice. Each interposer session owns one pool
(``COMMLIB_STAGING_BYTES`` caps what it keeps; past the cap, buffers are
allocated per call as before).
"""

from __future__ import annotations

import sys
import threading

import numpy as np

__all__ = ["MIN_POOLED", "StagingPool", "staging_buffer"]

MIN_POOLED = 32 << 10  # smaller buffers come from the allocator's free lists, which is cheaper than a lookup
_FREE = 3  # sys.getrefcount of a pooled block nobody uses: the bucket, the loop variable, the argument


class StagingPool:
    """Reusable uint8 buffers for packed messages, at most ``max_bytes`` of them kept."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"StagingPool: max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.held = 0  # bytes of the buffers kept
        self._buckets: dict[int, list[np.ndarray]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        busy = sum(sys.getrefcount(b) > _FREE for bucket in self._buckets.values() for b in bucket)
        return f"StagingPool(held={self.held}, max_bytes={self.max_bytes}, in use={busy})"

    def take(self, nbytes: int) -> np.ndarray:
        """A uint8 array of ``nbytes`` (contents undefined) that nothing else uses.

        The caller keeps it, or a view of it, for as long as the data are in
        use; the block returns to service when the last reference goes.
        """
        if nbytes < MIN_POOLED or nbytes > self.max_bytes:
            return np.empty(nbytes, np.uint8)
        size = 1 << (nbytes - 1).bit_length()
        with self._lock:
            bucket = self._buckets.get(size)
            if bucket is None:
                bucket = self._buckets[size] = []
            for block in bucket:
                if sys.getrefcount(block) <= _FREE:
                    return block[:nbytes]
            if self.held + size > self.max_bytes:
                return np.empty(nbytes, np.uint8)
            block = np.empty(size, np.uint8)
            bucket.append(block)
            self.held += size
            return block[:nbytes]

    def clear(self) -> None:
        """Forget every buffer (those in use stay valid for their holders)."""
        with self._lock:
            self._buckets.clear()
            self.held = 0


def staging_buffer(nbytes: int, staging: StagingPool | None) -> np.ndarray:
    """A uint8 buffer of ``nbytes`` for a packed message: from ``staging``, or allocated when it is ``None``."""
    return np.empty(nbytes, np.uint8) if staging is None else staging.take(nbytes)
