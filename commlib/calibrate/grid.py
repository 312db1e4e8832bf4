"""What a calibration measures: strided shapes, the grid of sizes, and how samples are taken and reduced."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace

from mpi4py import MPI

from datatypes import model as cost_model

HOST_KINDS = ("pack.strided", "pack.mpi", "unpack.strided", "unpack.mpi")
REDUCE_DTYPES = ("float32", "float64", "int32", "int64")


@dataclass(frozen=True)
class Settings:
    """How long to time: each sample is a loop of calls lasting about ``sample_time`` s; ``reps`` samples.

    ``statistic`` reduces the samples: ``median`` (the typical time, on a
    quiet machine) or ``min`` (the uncontended time, on a shared one).
    """

    sample_time: float
    reps: int
    statistic: str = "median"

    def reduce(self, samples: list[float]) -> float:
        return min(samples) if self.statistic == "min" else statistics.median(samples)


@dataclass(frozen=True)
class StridedShape:
    """A strided byte shape: ``block`` bytes, repeated ``counts`` times per level, skipping (gap-1) x each level.

    No counts: one contiguous block. One count: ``Create_vector(c, block,
    gap*block)``. Two: a C-order subarray ``[c2, gap*c1, gap*block]`` of
    ``[c2, c1, block]``, which stays 3 levels after simplification.
    ``nominal`` is the grid size it stands for in a table, when its own byte
    count had to be rounded to whole blocks (by less than 4 blocks).
    """

    block: int
    counts: tuple[int, ...] = ()
    gap: int = 2
    nominal: int | None = None

    @property
    def row(self) -> int:
        """The table row (packed bytes) this shape is recorded in."""
        return self.nominal or self.nbytes

    @property
    def nbytes(self) -> int:
        return self.block * math.prod(self.counts)

    @property
    def levels(self) -> int:
        return 1 + len(self.counts)

    @property
    def features(self) -> cost_model.Features:
        return cost_model.Features(self.nbytes, self.block, self.levels)

    def make(self) -> MPI.Datatype:
        """A new committed datatype for one object (the caller frees it)."""
        if not self.counts:
            return MPI.BYTE.Create_contiguous(self.block).Commit()
        if len(self.counts) == 1:
            return MPI.BYTE.Create_vector(self.counts[0], self.block, self.gap * self.block).Commit()
        if len(self.counts) == 2:
            c1, c2 = self.counts
            sizes = [c2, self.gap * c1, self.gap * self.block]
            return MPI.BYTE.Create_subarray(sizes, [c2, c1, self.block], [0, 0, 0], order=MPI.ORDER_C).Commit()
        raise ValueError(f"StridedShape: at most 3 levels, got counts {self.counts}")

    def name(self) -> str:
        dims = "x".join(str(c) for c in self.counts)
        return f"L{self.levels} {self.nbytes}B block {self.block}" + (f" ({dims})" if dims else "")

    @classmethod
    def of(cls, nbytes: int, block: int, levels: int, gap: int = 2) -> StridedShape | None:
        """The shape of ``nbytes`` in blocks of ``block`` over ``levels`` levels, split evenly; ``None`` if none."""
        if levels == 1:
            return cls(nbytes) if nbytes >= 1 else None
        if block < 1 or nbytes % block:
            return None
        k = nbytes // block
        if levels == 2:
            return cls(block, (k,), gap) if k >= 2 else None
        c1 = 1 << (max(k.bit_length() - 1, 0) // 2)
        while c1 > 1 and k % c1:
            c1 //= 2
        c2 = k // c1
        return cls(block, (c1, c2), gap) if c1 >= 2 and c2 >= 2 else None


@dataclass(frozen=True)
class MeasurementGrid:
    """The measurement grid of one calibration run."""

    nbytes: tuple[int, ...]
    blocks: tuple[int, ...]
    p2p_bytes: tuple[int, ...]
    settings: Settings
    levels: tuple[int, ...] = (1, 2, 3)
    reduce_bytes: int = 1 << 20
    reduce_dtypes: tuple[str, ...] = REDUCE_DTYPES
    exchange_min_bytes: int = 16 << 10
    exchange_blocks: tuple[int, ...] = (8, 64, 256, 512, 1024, 4096)
    exchange_messages: int = 4

    def shapes(self) -> list[StridedShape]:
        out = []
        for levels in self.levels:
            if levels == 1:
                out += [StridedShape(n) for n in self.nbytes]
                continue
            for n in self.nbytes:
                for b in self.blocks:
                    k = n // b if levels == 2 else n // b // 4 * 4  # whole blocks; 3 levels: an even split
                    shape = StridedShape.of(k * b, b, levels)
                    if shape is not None:
                        out.append(replace(shape, nominal=n) if shape.nbytes != n else shape)
        return out

    def exchange_shapes(self) -> list[StridedShape]:
        """The strided shapes of the exchange tables: from ``exchange_min_bytes`` up, blocks ``exchange_blocks``."""
        return [
            s
            for s in self.shapes()
            if s.levels > 1 and s.row >= self.exchange_min_bytes and s.block in self.exchange_blocks
        ]

    def overhead_shapes(self) -> list[StridedShape]:
        block = next((b for b in self.blocks if b >= 64), self.blocks[-1])
        last = len(self.nbytes) - 1
        sizes = dict.fromkeys(self.nbytes[round(last * q / 4)] for q in range(5))  # 5 spread sizes, robust fit
        return [s for n in sizes if (s := StridedShape.of(n, block, 2)) is not None]


QUICK = MeasurementGrid(
    nbytes=(1 << 10, 1 << 13, 1 << 16, 1 << 19),
    blocks=(1, 3, 8, 12, 64, 512),
    p2p_bytes=(8, 1 << 10, 1 << 13, 1 << 16, 1 << 19),
    settings=Settings(0.002, 5),
    reduce_bytes=1 << 18,
)
FULL = MeasurementGrid(
    nbytes=tuple(1 << k for k in range(8, 23, 2)),
    blocks=(1, 2, 3, 4, 8, 12, 16, 64, 256, 1024, 4096),
    p2p_bytes=tuple(1 << k for k in range(0, 25, 3)),
    settings=Settings(0.005, 7),
)
