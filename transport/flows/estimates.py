"""Online throughput estimates, per peer: each channel's in a split, and the unsplit one."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

_MIN_TIMED = 64 << 10  # parts smaller than this do not update the throughput estimates


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
