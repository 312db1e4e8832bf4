"""Pack benchmark: ``MPI_Pack`` against commlib's packer and against memcpy.

One process (``MPI.COMM_SELF``). For each shape one object of an MPI derived
datatype is packed from a source buffer of exactly the type's extent (random
bytes) into a preallocated output buffer by

* ``mpi``: ``dt.Pack(src, out, 0, COMM_SELF)`` through mpi4py (the baseline),
* ``strided``: ``datatypes.pack(src, 1, dt, out=out, engine="strided")``,
* ``auto``: ``datatypes.pack(src, 1, dt, out=out)``, the engine the API picks,
* ``memcpy``: ``np.copyto(dst, src2)`` of the same number of contiguous bytes,
* ``traffic``: memcpy moving the shape's memory traffic - every 64-byte
  line the type map touches, read, plus the packed bytes, written - half
  read and half written: the memory-traffic limit a packer can reach. An
  engine's ``pct_traffic_limit`` is that time over its own.

The shapes are TEMPI's 2D byte matrix (``MPI.BYTE.Create_vector(n, block,
512)``) and five 3D C-order uint8 subarrays that take half of the fastest
dimension. A sample times a loop of calls sized so that every method's
sample lasts about as long; the methods take turns within each round so
that machine noise hits them alike, and the reported time is the median
per-call time. Each sample is preceded by untimed calls of the same method,
so that all are timed in steady state: buffers stay in cache where they fit
(the same source is packed again and again), as in a loop that packs one
halo. Outputs of the three pack methods are checked to be byte-identical
once per shape.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import socket
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import mpi4py
import numpy as np
from mpi4py import MPI

import datatypes
from commlib import __version__
from commlib.config import config

__all__ = ["main"]

METHODS = ("mpi", "strided", "auto", "memcpy")  # and "traffic", the limit (not a pack method)
STRIDE_2D = 512
BLOCKS_2D = (1, 2, 4, 8, 32, 64, 128, 256, 512)
OBJECTS_2D = (1 << 10, 1 << 20, 4 << 20)
SHAPES_3D = ((1, 512, 512), (8, 512, 512), (64, 256, 256), (512, 64, 64), (256, 1024, 16))  # block B, rows, planes
BIG_BLOCK = 256  # blocks of at least this many bytes should pack near memcpy speed
LINE = 64  # bytes of a cache line: a strided read costs whole lines
BIG_OBJECT = 1 << 20  # objects of at least this many bytes: the pack engine against the memory-traffic limit
SMALL_OBJECT = 64 << 10  # objects below this: auto must never be slower than MPI_Pack

Runner = Callable[[int], None]


class BenchError(RuntimeError):
    """The benchmark cannot go on (wrong packed bytes, bad settings)."""


@dataclass(frozen=True)
class Shape:
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


def shapes(quick: bool = False) -> list[Shape]:
    """The benchmarked shapes; ``quick`` leaves out the 4 MiB 2D objects."""
    out = []
    for obj in OBJECTS_2D:
        if quick and obj > (1 << 20):
            continue
        for block in BLOCKS_2D:
            params = {"nblocks": obj // block, "block": block, "stride": STRIDE_2D, "object_bytes": obj}
            out.append(Shape("2D", f"2D {_bytes_name(obj)} block {block}", block, params))
    for block, rows, planes in SHAPES_3D:
        params = {
            "sizes": [planes, rows, 2 * block],
            "subsizes": [planes, rows, block],
            "starts": [0, 0, 0],
            "object_bytes": planes * rows * block,
        }
        out.append(Shape("3D", f"3D {block}x{rows}x{planes}", block, params))
    return out


def _random_bytes(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random bytes, generated in chunks (no full-size temporary)."""
    buf = np.empty(n, np.uint8)
    chunk = 1 << 24
    bitgen = rng.bit_generator
    for lo in range(0, n, chunk):
        piece = buf[lo : lo + chunk]
        words = bitgen.random_raw((piece.nbytes + 7) // 8).view(np.uint8)
        piece[:] = words[: piece.nbytes]
    return buf


def _timed(run: Runner, n: int) -> float:
    t0 = time.perf_counter()
    run(n)
    return time.perf_counter() - t0


def _per_call(run: Runner, floor: float, tries: int = 3) -> float:
    """Rough seconds per call: the best of ``tries`` loops that last at least ``floor`` seconds each."""
    n = 1
    while True:
        el = _timed(run, n)
        if el >= floor or n >= 1 << 24:
            break
        n *= 10 if el < floor / 20 else 2
    return min([el] + [_timed(run, n) for _ in range(tries - 1)]) / n


@dataclass
class Measurement:
    median: float  # seconds per call
    best: float
    samples: int
    inner: int  # calls per sample
    total: float  # seconds spent in timed loops


def measure(runners: dict[str, Runner], min_time: float, min_reps: int, sample_time: float) -> dict[str, Measurement]:
    """Round-robin timing of ``runners``; per-call times are the median over samples.

    Each sample is one loop of ``inner`` calls. ``inner`` is set per method so
    that all samples last about ``max(sample_time, slowest single call)``;
    rounds go on until every method has ``min_reps`` samples and ``min_time``
    seconds of timed calls. Each sample follows ``inner // 2`` (at least one)
    untimed calls of the same method, so that every method is timed in its
    own steady state (data in cache where it fits) however much the method
    before it disturbed: with multi-MiB buffers the cache takes several calls
    to settle, and without the warm-up a method's time depends on its place
    in the round.
    """
    est = {m: _per_call(run, sample_time / 10) for m, run in runners.items()}
    target = max(sample_time, max(est.values()))
    inner = {m: max(1, round(target / est[m])) for m in runners}
    warm = {m: max(1, inner[m] // 2) for m in runners}
    times: dict[str, list[float]] = {m: [] for m in runners}
    total = dict.fromkeys(runners, 0.0)
    rounds = 0
    while rounds < min_reps or min(total.values()) < min_time:
        for m, run in runners.items():
            run(warm[m])  # warm-up, untimed
            el = _timed(run, inner[m])
            times[m].append(el / inner[m])
            total[m] += el
        rounds += 1
    return {
        m: Measurement(statistics.median(times[m]), min(times[m]), len(times[m]), inner[m], total[m]) for m in runners
    }


def _runners(
    dt: MPI.Datatype, src: np.ndarray, outs: dict[str, np.ndarray], msrc: np.ndarray, traffic: tuple
) -> dict[str, Runner]:
    """One loop per method; each call does exactly the named operation into preallocated memory.

    ``traffic`` is memcpy between two buffers of half the shape's memory
    traffic: what moving that many bytes costs (the memory-traffic limit).
    """
    comm = MPI.COMM_SELF
    mpi_pack = dt.Pack
    pack = datatypes.pack
    copyto = np.copyto
    o_mpi, o_strided, o_auto, o_memcpy = (outs[m] for m in METHODS)

    def mpi(n: int) -> None:
        for _ in range(n):
            mpi_pack(src, o_mpi, 0, comm)

    def strided(n: int) -> None:
        for _ in range(n):
            pack(src, 1, dt, out=o_strided, engine="strided")

    def auto(n: int) -> None:
        for _ in range(n):
            pack(src, 1, dt, out=o_auto)

    def memcpy(n: int) -> None:
        for _ in range(n):
            copyto(o_memcpy, msrc)

    t_dst, t_src = traffic

    def limit(n: int) -> None:
        for _ in range(n):
            copyto(t_dst, t_src)

    return {"mpi": mpi, "strided": strided, "auto": auto, "memcpy": memcpy, "traffic": limit}


def _verify(shape: Shape, dt: MPI.Datatype, src: np.ndarray, outs: dict[str, np.ndarray], size: int) -> None:
    """Pack once with each engine into zeroed buffers; all must give MPI's bytes."""
    for m in ("mpi", "strided", "auto"):
        outs[m].fill(0)
    pos = dt.Pack(src, outs["mpi"], 0, MPI.COMM_SELF)
    if pos != size:
        raise BenchError(f"{shape.name}: MPI_Pack wrote {pos} bytes, expected {size}")
    datatypes.pack(src, 1, dt, out=outs["strided"], engine="strided")
    datatypes.pack(src, 1, dt, out=outs["auto"])
    for m in ("strided", "auto"):
        if not np.array_equal(outs[m], outs["mpi"]):
            bad = int(np.flatnonzero(outs[m] != outs["mpi"])[0])
            raise BenchError(f"{shape.name}: {m} engine output differs from MPI_Pack (first at byte {bad} of {size})")


def run_shape(shape: Shape, rng: np.random.Generator, min_time: float, min_reps: int, sample_time: float) -> dict:
    dt = shape.make()
    try:
        lb, extent = dt.Get_extent()
        size = dt.Get_size()
        if lb != 0 or datatypes.packed_size(1, dt) != size or size != shape.params["object_bytes"]:
            raise BenchError(f"{shape.name}: unexpected type (lb {lb}, size {size}, extent {extent})")
        src = _random_bytes(rng, extent)  # exactly one object's extent: mpi4py infers count 1
        msrc = _random_bytes(rng, size)
        outs = {m: np.zeros(size, np.uint8) for m in METHODS}
        _verify(shape, dt, src, outs, size)
        canonical = datatypes.canonicalize(dt)
        engine = datatypes.choose_engine(1, dt)
        lines = lines_touched(canonical)
        traffic = lines * LINE + size  # the type map's cache lines read, the packed bytes written
        half = max(traffic // 2, 1)
        limit_buffers = (np.zeros(half, np.uint8), _random_bytes(rng, half))
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            res = measure(_runners(dt, src, outs, msrc, limit_buffers), min_time, min_reps, sample_time)
        finally:
            if gc_was_enabled:
                gc.enable()
    finally:
        dt.Free()
    med = {m: res[m].median for m in METHODS}
    limit = res["traffic"].median  # memcpy moving the same traffic (half read, half written)
    return {
        "name": shape.name,
        "kind": shape.kind,
        "block": shape.block,
        "params": shape.params,
        "packed_bytes": size,
        "extent_bytes": extent,
        "canonical": repr(canonical),
        "auto_engine": engine,
        "median_s": med,
        "best_s": {m: res[m].best for m in METHODS},
        "samples": {m: res[m].samples for m in METHODS},
        "calls_per_sample": {m: res[m].inner for m in METHODS},
        "gbps": {m: size / med[m] / 1e9 for m in METHODS},
        "speedup_strided_vs_mpi": med["mpi"] / med["strided"],
        "speedup_auto_vs_mpi": med["mpi"] / med["auto"],
        "strided_pct_memcpy": 100.0 * med["memcpy"] / med["strided"],
        "lines_touched": lines,
        "traffic_bytes": traffic,
        "traffic_limit_s": limit,
        "pct_traffic_limit": {m: 100.0 * limit / med[m] for m in ("mpi", "strided", "auto")},
    }


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


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def summarize(rows: list[dict]) -> dict:
    groups = {"2D": [r for r in rows if r["kind"] == "2D"], "3D": [r for r in rows if r["kind"] == "3D"], "all": rows}
    speedup = {
        g: {
            "shapes": len(rs),
            "strided_vs_mpi": _median([r["speedup_strided_vs_mpi"] for r in rs]),
            "auto_vs_mpi": _median([r["speedup_auto_vs_mpi"] for r in rs]),
        }
        for g, rs in groups.items()
    }
    big = [r["strided_pct_memcpy"] for r in rows if r["block"] >= BIG_BLOCK]
    slower = [
        {
            "name": r["name"],
            "speedup_strided_vs_mpi": r["speedup_strided_vs_mpi"],
            "auto_engine": r["auto_engine"],
            "speedup_auto_vs_mpi": r["speedup_auto_vs_mpi"],
        }
        for r in rows
        if r["speedup_strided_vs_mpi"] < 1.0
    ]
    big_objects = [r for r in rows if r["packed_bytes"] >= BIG_OBJECT]
    traffic = {}
    for m in ("strided", "auto"):
        pct = [r["pct_traffic_limit"][m] for r in big_objects]
        traffic[m] = {"min": min(pct), "median": _median(pct)} if pct else {}
    small = [r for r in rows if r["packed_bytes"] < SMALL_OBJECT]
    return {
        "traffic_limit_big_objects": {"min_bytes": BIG_OBJECT, "shapes": len(big_objects), **traffic},
        "small_objects_auto_vs_mpi": {
            "max_bytes": SMALL_OBJECT,
            "shapes": len(small),
            "worst": min((r["speedup_auto_vs_mpi"] for r in small), default=None),
            "worst_shape": min(small, key=lambda r: r["speedup_auto_vs_mpi"])["name"] if small else None,
        },
        "median_speedup": speedup,
        "strided_pct_memcpy_big_blocks": {
            "min_block": BIG_BLOCK,
            "shapes": len(big),
            "min": min(big) if big else None,
            "median": _median(big),
        },
        "strided_slower_than_mpi": slower,
    }


def _fmt(x: float | None, spec: str, suffix: str = "") -> str:
    return "-" if x is None else f"{x:{spec}}{suffix}"


def format_table(rows: list[dict]) -> str:
    """One row per shape: GB/s of each method, the engine auto chose, speedups and strided as % of memcpy."""
    cols = f"{'MPI':>7} {'strided':>7} {'auto':>7} {'engine':<7} {'memcpy':>7}"
    top = f"{'':<22} {'':>9} {' GB/s ':-^{len(cols)}} {' speedup vs MPI ':-^16} {'strided':>8}"
    head = f"{'shape':<22} {'packed B':>9} {cols} {'strided':>7} {'auto':>8} {'%memcpy':>8}"
    lines = [top, head, "-" * len(head)]
    kind = None
    for r in rows:
        if kind is not None and r["kind"] != kind:
            lines.append("")
        kind = r["kind"]
        g = r["gbps"]
        lines.append(
            f"{r['name']:<22} {r['packed_bytes']:>9} {g['mpi']:>7.2f} {g['strided']:>7.2f} {g['auto']:>7.2f}"
            f" {r['auto_engine']:<7} {g['memcpy']:>7.2f} {r['speedup_strided_vs_mpi']:>6.2f}x"
            f" {r['speedup_auto_vs_mpi']:>7.2f}x {r['strided_pct_memcpy']:>7.1f}%"
        )
    lines.append("GB/s = packed bytes / median time per call / 1e9; speedup = MPI time / time; engine: auto's choice")
    lines.append(
        "memory-traffic limit: memcpy moving the same traffic (the 64-byte lines the type map touches + packed bytes)"
    )
    return "\n".join(lines)


def format_summary(summary: dict) -> str:
    sp = summary["median_speedup"]
    labels = {"2D": "2D matrix", "3D": "3D subarrays", "all": "all"}
    lines = ["Median speedup over MPI_Pack:", f"  {'':<28} {'strided':>8} {'auto':>8}"]
    for g, label in labels.items():
        s = sp[g]
        lines.append(
            f"  {label + ' (' + str(s['shapes']) + ' shapes)':<28}"
            f" {_fmt(s['strided_vs_mpi'], '8.2f', 'x')} {_fmt(s['auto_vs_mpi'], '8.2f', 'x')}"
        )
    big = summary["strided_pct_memcpy_big_blocks"]
    lines.append(
        f"Strided as % of memcpy, blocks >= {big['min_block']} B ({big['shapes']} shapes):"
        f" min {_fmt(big['min'], '.1f', '%')}, median {_fmt(big['median'], '.1f', '%')}"
    )
    traffic = summary["traffic_limit_big_objects"]
    for m in ("strided", "auto"):
        t = traffic[m]
        lines.append(
            f"{m} as % of the memory-traffic limit, objects >= {traffic['min_bytes'] >> 20} MiB ({traffic['shapes']}"
            f" shapes): min {_fmt(t.get('min'), '.1f', '%')}, median {_fmt(t.get('median'), '.1f', '%')}"
        )
    small = summary["small_objects_auto_vs_mpi"]
    lines.append(
        f"auto vs MPI_Pack, objects < {small['max_bytes'] >> 10} KiB ({small['shapes']} shapes): worst"
        f" {_fmt(small['worst'], '.2f', 'x')} ({small['worst_shape']})"
    )
    slower = summary["strided_slower_than_mpi"]
    lines.append(f"Strided slower than MPI_Pack ({len(slower)} shapes):")
    for s in slower:
        lines.append(
            f"  {s['name']:<22} strided {s['speedup_strided_vs_mpi']:.2f}x;"
            f" auto chose {s['auto_engine']} ({s['speedup_auto_vs_mpi']:.2f}x)"
        )
    if not slower:
        lines.append("  none")
    return "\n".join(lines)


class _Progress:
    """A one-line counter on stderr, rewritten in place on a terminal."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total = total
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.width = 0

    def show(self, i: int, label: str) -> None:
        if not self.enabled:
            return
        text = f"[{i}/{self.total}] {label}"
        if self.tty:
            sys.stderr.write("\r" + text.ljust(self.width))
            self.width = len(text)
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()


def _environment() -> dict:
    return {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "mpi4py": mpi4py.__version__,
        "commlib": __version__,
        "mpi_library": MPI.Get_library_version().strip().splitlines()[0].strip(),
    }


def _parser(prog: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Time MPI_Pack, commlib's strided and auto pack engines and memcpy on 2D and 3D strided shapes "
        "(one process, MPI.COMM_SELF); print a table and a summary and write JSON.",
    )
    p.add_argument("--quick", action="store_true", help="fewer repetitions and no 4 MiB 2D shapes (about 10-30 s)")
    p.add_argument(
        "--min-time",
        type=float,
        default=None,
        metavar="S",
        help="timed seconds per method and shape, at least (default 0.2, 0.05 with --quick)",
    )
    p.add_argument("--min-reps", type=int, default=5, metavar="N", help="samples per method and shape, at least (5)")
    p.add_argument("--seed", type=int, default=12345, help="random seed of the buffer contents (12345)")
    p.add_argument(
        "--json", default="results/pack.json", metavar="PATH", help="where to write the results (results/pack.json)"
    )
    p.add_argument("--no-json", action="store_true", help="do not write JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress counter on stderr")
    return p


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run the pack benchmark; returns the exit code."""
    args = _parser(prog).parse_args(argv)
    min_time = args.min_time if args.min_time is not None else (0.05 if args.quick else 0.2)
    if min_time < 0 or args.min_reps < 1:
        print("error: --min-time must be >= 0 and --min-reps >= 1", file=sys.stderr)
        return 2
    sample_time = max(min_time / 20, 1e-3)
    todo = shapes(args.quick)
    settings = {
        "quick": args.quick,
        "min_time_s": min_time,
        "min_reps": args.min_reps,
        "sample_time_s": sample_time,
        "seed": args.seed,
        "shapes": len(todo),
        "stride_2d": STRIDE_2D,
        "pack_engine": config.pack_engine,
        "pack_min_bytes": config.pack_min_bytes,
        "pack_min_block": config.pack_min_block,
    }
    env = _environment()
    rng = np.random.default_rng(args.seed)
    progress = _Progress(len(todo), enabled=not args.no_progress)
    rows = []
    t0 = time.perf_counter()
    try:
        for i, shape in enumerate(todo, 1):
            progress.show(i, shape.name)
            rows.append(run_shape(shape, rng, min_time, args.min_reps, sample_time))
    except BenchError as exc:
        progress.done()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    progress.done()
    elapsed = time.perf_counter() - t0
    summary = summarize(rows)
    print(f"Pack benchmark: {env['mpi_library']}; numpy {env['numpy']}, mpi4py {env['mpi4py']}; host {env['host']}")
    print(f"min time {min_time} s, min reps {args.min_reps} per method and shape; median times per call")
    print()
    print(format_table(rows))
    print()
    print(format_summary(summary))
    if not args.no_json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {**env, "settings": settings, "elapsed_s": elapsed, "rows": rows, "summary": summary}
        path.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nWrote {path} ({len(rows)} shapes, {elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
