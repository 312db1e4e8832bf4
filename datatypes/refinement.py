"""Online refinement of the cost model: multiplicative corrections learned from observed times.

Observed and predicted times are compared per bucket (operation family,
strategy, level, levels, log2 bytes, log2 block). A bucket keeps the last
``window`` values of log(observed / predicted), so memory is bounded, and
corrects predictions by a low quantile of them (the 25th percentile by
default): what distorts an observed time - waiting for a peer that is late,
preemption, a page fault - only ever adds time, so a low quantile ignores
it where a mean or even a median would follow it; a single low outlier moves
the quantile by one rank only.
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict, deque
from typing import Any

__all__ = ["Bucket", "Refinement"]

Bucket = tuple[str, str, str, int, int, int]  # op class, strategy, level, levels, log2 bytes, log2 block


class Refinement:
    """Per-bucket multiplicative corrections learned from observed times.

    A bucket keeps the last ``window`` values of log(observed / predicted),
    each clipped to +-``clip``; its factor is exp(q * n / (n + prior_weight))
    for n samples whose ``quantile`` is q (shrunk toward 1 while samples are
    few). At most ``max_buckets`` buckets are kept, least recently updated
    dropped first.
    """

    def __init__(
        self,
        max_buckets: int = 512,
        window: int = 32,
        prior_weight: float = 2.0,
        clip: float = math.log(64),
        quantile: float = 0.25,
    ):
        if max_buckets < 1 or window < 1 or prior_weight < 0 or clip <= 0 or not 0 <= quantile <= 1:
            raise ValueError(
                "Refinement: max_buckets and window must be >= 1, prior_weight >= 0, clip > 0, 0 <= quantile <= 1"
            )
        self.max_buckets, self.window, self.prior_weight, self.clip = max_buckets, window, prior_weight, clip
        self.quantile = quantile
        self._samples: OrderedDict[Bucket, deque[float]] = OrderedDict()  # arrival order
        self._sorted: dict[Bucket, list[float]] = {}  # the same samples, sorted (for the median)
        self._factor: dict[Bucket, float] = {}

    def __len__(self) -> int:
        return len(self._samples)

    def factor(self, bucket: Bucket) -> float:
        return self._factor.get(bucket, 1.0)

    def samples(self, bucket: Bucket) -> int:
        return len(self._samples.get(bucket, ()))

    def add(self, bucket: Bucket, log_ratio: float) -> float:
        """Record one log ratio; returns the bucket's new factor."""
        samples = self._samples.get(bucket)
        if samples is None:
            samples = self._samples[bucket] = deque()
            ordered = self._sorted[bucket] = []
            if len(self._samples) > self.max_buckets:
                old, _ = self._samples.popitem(last=False)
                del self._sorted[old]
                self._factor.pop(old, None)
        else:
            self._samples.move_to_end(bucket)
            ordered = self._sorted[bucket]
        value = min(max(log_ratio, -self.clip), self.clip)
        samples.append(value)
        bisect.insort(ordered, value)
        if len(samples) > self.window:
            del ordered[bisect.bisect_left(ordered, samples.popleft())]
        n = len(ordered)
        position = self.quantile * (n - 1)
        low = int(position)
        value = ordered[low] if low + 1 >= n else ordered[low] + (position - low) * (ordered[low + 1] - ordered[low])
        factor = math.exp(value * n / (n + self.prior_weight))
        self._factor[bucket] = factor
        return factor

    def to_json(self) -> list[list[Any]]:
        return [[*bucket, list(samples)] for bucket, samples in self._samples.items()]

    def load(self, data: Any) -> None:
        """Replay saved buckets (a list as :meth:`to_json` writes); ``ValueError`` when malformed."""
        if not isinstance(data, list):
            raise ValueError("refinement: expected a list of buckets")
        for entry in data:
            if not (isinstance(entry, list) and len(entry) == 7 and isinstance(entry[6], list)):
                raise ValueError(f"refinement: malformed bucket {entry!r:.80}")
            op, strategy, level, levels, x, y, samples = entry
            if not (isinstance(op, str) and isinstance(strategy, str) and isinstance(level, str)):
                raise ValueError(f"refinement: malformed bucket {entry!r:.80}")
            if not all(isinstance(v, int) and not isinstance(v, bool) and abs(v) <= 1 << 16 for v in (levels, x, y)):
                raise ValueError(f"refinement: malformed bucket {entry!r:.80}")
            for s in samples[-self.window :]:
                if not isinstance(s, (int, float)) or isinstance(s, bool) or not math.isfinite(s):
                    raise ValueError(f"refinement: malformed sample {s!r}")
                self.add((op, strategy, level, levels, x, y), float(s))
