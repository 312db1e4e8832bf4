"""The timed methods (MPI_Pack, the strided and auto engines, memcpy, the traffic limit), sampled in turns."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

import datatypes

from .shapes import LINE, PackShape, lines_touched

METHODS = ("mpi", "strided", "auto", "memcpy")  # and "traffic", the limit (not a pack method)

Runner = Callable[[int], None]


class BenchError(RuntimeError):
    """The benchmark cannot go on (wrong packed bytes, bad settings)."""


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
    """One method's timing on one shape: median and best seconds per call, samples, calls per sample, timed seconds."""

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


def _verify(shape: PackShape, dt: MPI.Datatype, src: np.ndarray, outs: dict[str, np.ndarray], size: int) -> None:
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


def run_shape(shape: PackShape, rng: np.random.Generator, min_time: float, min_reps: int, sample_time: float) -> dict:
    """Every method on ``shape``: outputs checked to agree, then timed in turns; one row of the results."""
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
