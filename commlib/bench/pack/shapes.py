"""The benchmarked datatypes: TEMPI's 2D byte matrices and 3D subarrays, and the cache lines they touch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from mpi4py import MPI

import datatypes

STRIDE_2D = 512
BLOCKS_2D = (1, 2, 4, 8, 32, 64, 128, 256, 512)
OBJECTS_2D = (1 << 10, 1 << 20, 4 << 20)
SHAPES_3D = ((1, 512, 512), (8, 512, 512), (64, 256, 256), (512, 64, 64), (256, 1024, 16))  # block B, rows, planes
LINE = 64  # bytes of a cache line: a strided read costs whole lines


@dataclass(frozen=True)
class PackShape:
    """One benchmarked datatype: a 2D vector or a 3D subarray of bytes, with its constructor's parameters."""

    kind: str  # "2D" or "3D"
    name: str
    block: int  # contiguous bytes per block
    params: dict[str, Any]

    def make(self) -> MPI.Datatype:
        """A new committed datatype for one object of this shape (the caller frees it)."""
        if self.kind == "2D":
            p = self.params
            return MPI.BYTE.Create_vector(p["nblocks"], p["block"], p["stride"]).Commit()
        p = self.params
        return MPI.BYTE.Create_subarray(p["sizes"], p["subsizes"], p["starts"], order=MPI.ORDER_C).Commit()


def _bytes_name(n: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return f"{n}B"


def shapes(quick: bool = False) -> list[PackShape]:
    """The benchmarked shapes; ``quick`` leaves out the 4 MiB 2D objects."""
    out = []
    for obj in OBJECTS_2D:
        if quick and obj > (1 << 20):
            continue
        for block in BLOCKS_2D:
            params = {"nblocks": obj // block, "block": block, "stride": STRIDE_2D, "object_bytes": obj}
            out.append(PackShape("2D", f"2D {_bytes_name(obj)} block {block}", block, params))
    for block, rows, planes in SHAPES_3D:
        params = {
            "sizes": [planes, rows, 2 * block],
            "subsizes": [planes, rows, block],
            "starts": [0, 0, 0],
            "object_bytes": planes * rows * block,
        }
        out.append(PackShape("3D", f"3D {block}x{rows}x{planes}", block, params))
    return out


def lines_touched(canonical: datatypes.StridedBlock | None) -> int:
    """Distinct 64-byte cache lines one object's type map touches (its buffer taken as line-aligned)."""
    if canonical is None or canonical.is_empty:
        return 0
    starts = canonical.block_offsets()
    first, last = starts // LINE, (starts + canonical.block - 1) // LINE
    if canonical.block <= LINE:  # a block spans at most two lines
        return int(np.unique(np.concatenate((first, last))).size)
    spans = np.sort(np.stack((first, last), axis=1), axis=0)  # blocks in address order
    ends = np.maximum.accumulate(spans[:, 1])
    overlap = np.maximum(0, ends[:-1] - spans[1:, 0] + 1)  # lines a block shares with those before it
    return int((spans[:, 1] - spans[:, 0] + 1).sum() - np.minimum(overlap, spans[1:, 1] - spans[1:, 0] + 1).sum())
