"""Measured times on a log2-spaced (bytes, block) grid, and the interpolation between them.

A :class:`Table` holds seconds measured at grid points (packed bytes and
block bytes in powers of two, as TEMPI measures). Between them it
interpolates bilinearly, in one of two spaces:

``affine`` (default)
    in (bytes, 1/block, seconds): exact for the cost of a copy or a message,
    fixed + per byte + per block (``a + c*n + d*n/b``), whatever the grid
    step. Outside the grid: clamped along the block axis; along the bytes
    axis the outermost segment's slope (at least 0) continues, never below
    proportional scaling toward zero bytes.
``log``
    in (log2 bytes, log2 block, log2 seconds), TEMPI's way: exact for power
    laws; between grid points 32x apart it overestimates a fixed + per-byte
    cost by up to a third (the accuracy benchmark reports both). Outside the
    grid the outermost log-log slope continues, kept between 0 and 1.

Tables travel as JSON (:meth:`Table.to_json`).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["INTERPOLATIONS", "Table"]

INTERPOLATIONS = ("affine", "log")
MAX_COORDINATE = 1 << 62  # bytes or block bytes of a grid point, at most
MIN_SECONDS, MAX_SECONDS = 1e-12, 1e6  # a measured time outside these is not a measurement


def _positive_ints(values: Any, what: str) -> list[int]:
    if not isinstance(values, list) or not values:
        raise ValueError(f"{what} must be a non-empty list")
    out = []
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_COORDINATE:
            raise ValueError(f"{what} must hold positive integers up to 2**62, got {v!r:.40}")
        out.append(v)
    if any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"{what} must be strictly increasing")
    return out


class Table:
    """Seconds measured on a grid of (packed bytes, block bytes), interpolated between (see the module).

    ``seconds[i][j]`` is the time at ``nbytes[i]``, ``blocks[j]``; ``None``
    marks a cell not measured (a block longer than the message, a shape that
    does not exist), which takes the value of the nearest measured block of
    its row. A single block column makes a table of bytes alone.
    """

    def __init__(
        self,
        nbytes: Sequence[int],
        blocks: Sequence[int],
        seconds: Sequence[Sequence[float | None]],
        *,
        interpolation: str = "affine",
    ):
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"Table: interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
        nbytes = _positive_ints(list(nbytes), "Table: nbytes")
        blocks = _positive_ints(list(blocks), "Table: blocks")
        if not isinstance(seconds, (list, tuple)) or len(seconds) != len(nbytes):
            raise ValueError(f"Table: seconds must have one row per nbytes value ({len(nbytes)})")
        self.interpolation = interpolation
        self.nbytes: list[int] = []
        self.blocks = blocks
        self.seconds: list[list[float | None]] = []
        log = interpolation == "log"
        self._x: list[float] = []
        self._z: list[list[float]] = []
        for n, row in zip(nbytes, seconds):
            if not isinstance(row, (list, tuple)) or len(row) != len(blocks):
                raise ValueError(f"Table: row for {n} bytes must have {len(blocks)} values")
            clean: list[float | None] = []
            for t in row:
                if t is None:
                    clean.append(None)
                elif isinstance(t, (int, float)) and not isinstance(t, bool) and MIN_SECONDS <= t <= MAX_SECONDS:
                    clean.append(float(t))
                else:
                    raise ValueError(
                        f"Table: times must be positive finite numbers ({MIN_SECONDS:g} to {MAX_SECONDS:g} s) or null, "
                        f"got {t!r:.40}"
                    )
            known = [j for j, t in enumerate(clean) if t is not None]
            if not known:
                continue
            filled: list[float] = [clean[min(known, key=lambda k: (abs(k - j), -k))] for j in range(len(blocks))]  # type: ignore[misc]
            self.nbytes.append(n)
            self.seconds.append(clean)
            self._x.append(math.log2(n) if log else float(n))
            self._z.append([math.log2(t) for t in filled] if log else filled)
        if not self._x:
            raise ValueError("Table: no measured value")
        # block coordinate, increasing: log2 b, or -1/b (the per-block cost is linear in 1/b)
        self._y = [math.log2(b) if log else -1.0 / b for b in blocks]

    def _row(self, i: int, y: float) -> float:
        ys, zs = self._y, self._z[i]
        if len(ys) == 1 or y <= ys[0]:
            return zs[0]
        if y >= ys[-1]:
            return zs[-1]
        j = bisect.bisect_right(ys, y) - 1
        w = (y - ys[j]) / (ys[j + 1] - ys[j])
        return zs[j] + w * (zs[j + 1] - zs[j])

    def __call__(self, nbytes: float, block: float) -> float:
        """Predicted seconds for ``nbytes`` packed bytes in blocks of ``block`` bytes."""
        log = self.interpolation == "log"
        x = math.log2(max(nbytes, 1)) if log else float(max(nbytes, 0))
        y = math.log2(max(block, 1)) if log else -1.0 / max(block, 1)
        xs = self._x
        if len(xs) == 1:
            z = self._row(0, y)
            return 2.0**z if log else z * (1.0 if x >= xs[0] else max(x, 1.0) / xs[0])
        i = min(max(bisect.bisect_right(xs, x) - 1, 0), len(xs) - 2)
        z0, z1 = self._row(i, y), self._row(i + 1, y)
        slope = (z1 - z0) / (xs[i + 1] - xs[i])
        if log:
            if x < xs[0]:
                return 2.0 ** (z0 + min(max(slope, 0.0), 1.0) * (x - xs[0]))
            if x > xs[-1]:
                return 2.0 ** (z1 + min(max(slope, 0.0), 1.0) * (x - xs[-1]))
            return 2.0 ** (z0 + slope * (x - xs[i]))
        if x < xs[0]:
            return max(z0 + max(slope, 0.0) * (x - xs[0]), z0 * max(x, 1.0) / xs[0])
        if x > xs[-1]:
            return z1 + max(slope, 0.0) * (x - xs[-1])
        return z0 + slope * (x - xs[i])

    def points(self) -> list[tuple[int, int, float]]:
        """The measured cells as (bytes, block, seconds)."""
        return [(n, b, t) for n, row in zip(self.nbytes, self.seconds) for b, t in zip(self.blocks, row) if t]

    def to_json(self) -> dict[str, Any]:
        return {"nbytes": list(self.nbytes), "blocks": list(self.blocks), "seconds": [list(r) for r in self.seconds]}

    @classmethod
    def from_json(cls, data: Any, *, interpolation: str = "affine") -> Table:
        if not isinstance(data, dict):
            raise ValueError("Table: expected an object with nbytes, blocks, seconds")
        return cls(data.get("nbytes"), data.get("blocks"), data.get("seconds"), interpolation=interpolation)  # type: ignore[arg-type]

    @classmethod
    def from_points(cls, points: Iterable[tuple[int, int, float]], *, interpolation: str = "affine") -> Table:
        """A table from measured (bytes, block, seconds) points on any grid."""
        cells = {(n, b): t for n, b, t in points}
        ns = sorted({n for n, _ in cells})
        bs = sorted({b for _, b in cells})
        return cls(ns, bs, [[cells.get((n, b)) for b in bs] for n in ns], interpolation=interpolation)
