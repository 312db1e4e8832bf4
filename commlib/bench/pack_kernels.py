"""Copy-kernel ablation: how the strided packer should copy one block.

For 2D strided shapes, times numpy's copy of the same blocks two ways, in
the same run, interleaved:

* ``lanes``: each block as ``block / w`` unsigned words of the widest width
  ``w`` (8, 4, 2, 1) dividing the block and the stride: a 2D word array;
* ``element``: each block as one opaque ``V{block}`` element (numpy moves it
  with memcpy, or one word when the block is 1, 2, 4 or 8 bytes): what
  ``datatypes.pack`` does.

Prints a table and writes ``results/pack_kernels.json``.
Usage: ``python -m commlib bench pack-kernels [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

BLOCKS = (2, 4, 8, 12, 16, 24, 32, 48, 64, 128, 256)
CASES = (("in cache: 64 KiB, stride 2 x block", 64 << 10, None), ("1 MiB, stride 512", 1 << 20, 512))


def _median_time(fn, reps: int = 15, calls: int = 5) -> float:
    samples = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - t) / calls)
    return statistics.median(samples)


def _kernels(src: np.ndarray, out: np.ndarray, nblocks: int, block: int, stride: int) -> dict:
    w = next(w for w in (8, 4, 2, 1) if block % w == 0 and stride % w == 0)
    lane = np.dtype(f"u{w}")
    lanes_src = np.ndarray((nblocks, block // w), lane, buffer=src, strides=(stride, w))
    lanes_out = out.view(lane).reshape(nblocks, block // w)
    item = np.dtype(f"u{block}") if block in (1, 2, 4, 8) else np.dtype(f"V{block}")
    elem_src = np.ndarray((nblocks,), item, buffer=src, strides=(stride,))
    elem_out = out.view(item)
    return {
        f"lanes (u{w})": lambda: np.copyto(lanes_out, lanes_src),
        "element": lambda: np.copyto(elem_out, elem_src),
    }


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run the copy-kernel ablation; returns the exit code."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default="results/pack_kernels.json")
    args = parser.parse_args(argv)
    rows = []
    print(f"{'case':38s} {'block':>5s} {'lanes GB/s':>11s} {'element GB/s':>13s} {'element/lanes':>14s}")
    for title, packed, fixed_stride in CASES:
        for block in BLOCKS:
            stride = fixed_stride or 2 * block
            nblocks = packed // block
            src = np.random.default_rng(block).integers(0, 256, (nblocks - 1) * stride + block, dtype=np.uint8)
            out = np.empty(nblocks * block, np.uint8)
            kernels = _kernels(src, out, nblocks, block, stride)
            times = {name: [] for name in kernels}
            for _ in range(3):  # interleave the kernels
                for name, fn in kernels.items():
                    times[name].append(_median_time(fn))
            med = {name: statistics.median(t) for name, t in times.items()}
            (lanes_name, t_lanes), (_, t_elem) = med.items()
            rows.append({"case": title, "block": block, "lanes": lanes_name, "median_s": med})
            print(
                f"{title:38s} {block:5d} {nblocks * block / t_lanes / 1e9:11.2f} "
                f"{nblocks * block / t_elem / 1e9:13.2f} {t_lanes / t_elem:13.2f}x"
            )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": rows}, indent=1))
    print(f"Wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
