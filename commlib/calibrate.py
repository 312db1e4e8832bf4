"""``python -m commlib calibrate``: measure this machine for the cost model and write its calibration file.

Run it under ``mpiexec -n 2`` or more (on 1 rank only the host parts are
measured). Rank 0 measures, the others help with ping-pongs or wait (asleep,
not spinning), and rank 0 writes one JSON file into the cache directory (see
:mod:`commlib.calibration`). What is measured, each as a median of
interleaved samples:

* pack and unpack time of both host engines (``strided``, ``mpi``) on a grid
  of (packed bytes, block bytes) for 1, 2 and 3 levels (contiguous, vectors,
  3D subarrays; the strided shapes skip one block after each block); the
  strided engine's blocks of 1, 2, 4, 8 bytes (copied as words) and its
  other blocks (copied as opaque elements) make two tables;
* the one-way time of MPI sending the derived type itself (``send.native``),
  from a ping-pong, for the same shapes;
* contiguous point-to-point one-way time by bytes, and its alpha/beta fit,
  between two ranks of one node and, when the ranks span nodes, of two nodes;
* the pack strategy's fixed cost beyond pack + send + unpack (the interposer's
  buffers), from ping-pongs of small messages through :mod:`commlib.interposer.messages`;
* per message, ``native`` and ``pack`` in a nonblocking exchange between two
  ranks of one node with 4 messages in flight each way (``xchg`` tables, from
  16 KiB up), which the model uses for ``Isend``/``Irecv``: many messages in
  flight at once change what MPI's derived-type path costs;
* local reduction cost per byte (numpy add) by dtype, for the collectives.

The device packer is not measured (no GPU strategy is implemented yet); the
model predicts no GPU strategy without its tables.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from mpi4py import MPI

import datatypes
from datatypes import model as cost_model

from . import calibration
from .config import config

__all__ = [
    "FULL",
    "QUICK",
    "Plan",
    "Settings",
    "Shape",
    "calibrate",
    "concurrent_exchange",
    "host_times",
    "main",
    "native_exchange",
    "pack_exchange",
    "ping",
    "sleeping_barrier",
    "time_interleaved",
]

HOST_KINDS = ("pack.strided", "pack.mpi", "unpack.strided", "unpack.mpi")
REDUCE_DTYPES = ("float32", "float64", "int32", "int64")
TAG = 0x6D6F


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
class Shape:
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
        raise ValueError(f"Shape: at most 3 levels, got counts {self.counts}")

    def name(self) -> str:
        dims = "x".join(str(c) for c in self.counts)
        return f"L{self.levels} {self.nbytes}B block {self.block}" + (f" ({dims})" if dims else "")

    @classmethod
    def of(cls, nbytes: int, block: int, levels: int, gap: int = 2) -> Shape | None:
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
class Plan:
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

    def shapes(self) -> list[Shape]:
        out = []
        for levels in self.levels:
            if levels == 1:
                out += [Shape(n) for n in self.nbytes]
                continue
            for n in self.nbytes:
                for b in self.blocks:
                    k = n // b if levels == 2 else n // b // 4 * 4  # whole blocks; 3 levels: an even split
                    shape = Shape.of(k * b, b, levels)
                    if shape is not None:
                        out.append(replace(shape, nominal=n) if shape.nbytes != n else shape)
        return out

    def exchange_shapes(self) -> list[Shape]:
        """The strided shapes of the exchange tables: from ``exchange_min_bytes`` up, blocks ``exchange_blocks``."""
        return [
            s
            for s in self.shapes()
            if s.levels > 1 and s.row >= self.exchange_min_bytes and s.block in self.exchange_blocks
        ]

    def overhead_shapes(self) -> list[Shape]:
        block = next((b for b in self.blocks if b >= 64), self.blocks[-1])
        last = len(self.nbytes) - 1
        sizes = dict.fromkeys(self.nbytes[round(last * q / 4)] for q in range(5))  # 5 spread sizes, robust fit
        return [s for n in sizes if (s := Shape.of(n, block, 2)) is not None]


QUICK = Plan(
    nbytes=(1 << 10, 1 << 13, 1 << 16, 1 << 19),
    blocks=(1, 3, 8, 12, 64, 512),
    p2p_bytes=(8, 1 << 10, 1 << 13, 1 << 16, 1 << 19),
    settings=Settings(0.002, 5),
    reduce_bytes=1 << 18,
)
FULL = Plan(
    nbytes=tuple(1 << k for k in range(8, 23, 2)),
    blocks=(1, 2, 3, 4, 8, 12, 16, 64, 256, 1024, 4096),
    p2p_bytes=tuple(1 << k for k in range(0, 25, 3)),
    settings=Settings(0.005, 7),
)


# -- timing -----------------------------------------------------------------------------------------

Runner = Callable[[int], Any]


def _calls_for(run: Runner, target: float) -> int:
    """How many calls of ``run`` last about ``target`` seconds (one warm call first)."""
    run(1)
    t0 = time.perf_counter()
    run(1)
    one = max(time.perf_counter() - t0, 1e-7)
    return int(min(max(math.ceil(target / one), 1), 1 << 16))


def time_interleaved(runners: dict[str, Runner], settings: Settings) -> dict[str, float]:
    """Median seconds per call of each runner, the runners taking turns in every round."""
    calls = {name: _calls_for(run, settings.sample_time) for name, run in runners.items()}
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(settings.reps):
        for name, run in runners.items():
            t0 = time.perf_counter()
            run(calls[name])
            samples[name].append((time.perf_counter() - t0) / calls[name])
    return {name: settings.reduce(v) for name, v in samples.items()}


def ping(
    pair: MPI.Intracomm, exchanges: dict[str, Runner], settings: Settings, *, messages: int = 2
) -> dict[str, float]:
    """Seconds per message of each exchange (``run(k)``: k rounds of ``messages`` one-way messages), interleaved.

    The default is a round trip (two one-way messages). Collective over the
    two ranks of ``pair``; rank 0 of ``pair`` sets the loop counts and
    returns the medians (rank 1 returns an empty dict).
    """
    lead = pair.Get_rank() == 0
    calls = {}
    for name, run in exchanges.items():
        k = _calls_for(run, settings.sample_time) if lead else (run(1), run(1), 0)[2]
        calls[name] = pair.bcast(k, root=0)
    samples: dict[str, list[float]] = {name: [] for name in exchanges}
    for _ in range(settings.reps):
        for name, run in exchanges.items():
            t0 = time.perf_counter()
            run(calls[name])
            samples[name].append((time.perf_counter() - t0) / (messages * calls[name]))
    return {name: settings.reduce(v) for name, v in samples.items()} if lead else {}


def _random_bytes(n: int, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


def host_runners(shape: Shape, dt: MPI.Datatype, kinds: Iterable[str] = HOST_KINDS) -> dict[str, Runner]:
    """Runners packing/unpacking one object of ``dt`` through ``datatypes.pack``/``unpack`` with each engine."""
    extent = dt.Get_extent()[1]
    src = _random_bytes(max(extent, 1))
    packed = datatypes.pack(src, 1, dt, engine="mpi")
    out = np.empty_like(packed)
    dst = np.zeros_like(src)

    def packer(engine: str) -> Runner:
        def run(k: int) -> None:
            for _ in range(k):
                datatypes.pack(src, 1, dt, out=out, engine=engine)

        return run

    def unpacker(engine: str) -> Runner:
        def run(k: int) -> None:
            for _ in range(k):
                datatypes.unpack(packed, dst, 1, dt, engine=engine)

        return run

    makers = {"pack": packer, "unpack": unpacker}
    return {kind: makers[kind.split(".")[0]](kind.split(".")[1]) for kind in kinds}


def host_times(shape: Shape, settings: Settings, kinds: Iterable[str] = HOST_KINDS) -> dict[str, float]:
    """Median seconds of each host pack/unpack ``kind`` for one object of ``shape``."""
    dt = shape.make()
    try:
        return time_interleaved(host_runners(shape, dt, kinds), settings)
    finally:
        dt.Free()


def _exchange(pair: MPI.Intracomm, send: Callable[[], None], recv: Callable[[], None]) -> Runner:
    """k round trips: rank 0 of ``pair`` sends then receives, rank 1 receives then sends."""
    first, second = (send, recv) if pair.Get_rank() == 0 else (recv, send)

    def run(k: int) -> None:
        for _ in range(k):
            first()
            second()

    return run


def native_exchange(pair: MPI.Intracomm, dt: MPI.Datatype, buf: np.ndarray) -> Runner:
    """Round trips of one object of ``dt`` that MPI sends as a derived type."""
    peer, spec = 1 - pair.Get_rank(), [buf, 1, dt]
    return _exchange(pair, lambda: pair.Send(spec, peer, TAG), lambda: pair.Recv(spec, peer, TAG))


def contiguous_exchange(pair: MPI.Intracomm, buf: np.ndarray) -> Runner:
    """Round trips of ``buf`` as contiguous bytes."""
    peer, spec = 1 - pair.Get_rank(), [buf, MPI.BYTE]
    return _exchange(pair, lambda: pair.Send(spec, peer, TAG), lambda: pair.Recv(spec, peer, TAG))


def pack_exchange(pair: MPI.Intracomm, dt: MPI.Datatype, buf: np.ndarray) -> Runner:
    """Round trips the interposer's way: pack into a staging buffer, send contiguous, receive, unpack."""
    from .config import config
    from .interposer.messages import Packed, derived
    from .interposer.staging import StagingPool

    peer = 1 - pair.Get_rank()
    message = derived([buf, 1, dt], eager=True)
    if message is None or not message.packable:
        raise ValueError(f"calibrate: {dt} cannot be packed by commlib")
    staging = StagingPool(config.staging_bytes)  # as an interposer session stages them

    def send() -> None:
        pair.Send(Packed.for_send(message, staging).spec, peer, TAG)

    def recv() -> None:
        packed = Packed.for_recv(message, staging)
        pair.Recv(packed.spec, peer, TAG)
        packed.unpack()

    return _exchange(pair, send, recv)


# -- the run ----------------------------------------------------------------------------------------


def concurrent_exchange(pair: MPI.Intracomm, dt: MPI.Datatype, buf: np.ndarray, strategy: str, k: int) -> Runner:
    """Rounds in which both ranks send ``k`` objects of ``dt`` to each other at once (Isend/Irecv/Waitall).

    ``native`` hands MPI the derived type; ``pack`` stages every message the
    interposer's way (packed into reused buffers, unpacked after the wait).
    Each receive has a buffer of its own.
    """
    from .config import config
    from .interposer.messages import Packed, derived
    from .interposer.staging import StagingPool

    peer = 1 - pair.Get_rank()
    targets = [np.empty_like(buf) for _ in range(k)]
    waitall = MPI.Request.Waitall
    if strategy == "native":
        spec = [buf, 1, dt]

        def native_round() -> None:
            requests = [pair.Irecv([t, 1, dt], peer, TAG) for t in targets]
            waitall(requests + [pair.Isend(spec, peer, TAG) for _ in targets])

        return _rounds(native_round)
    message = derived([buf, 1, dt], eager=True)
    landings = [derived([t, 1, dt], eager=True) for t in targets]
    if message is None or not message.packable:
        raise ValueError(f"calibrate: {dt} cannot be packed by commlib")
    staging = StagingPool(config.staging_bytes)

    def packed_round() -> None:
        incoming = [Packed.for_recv(m, staging) for m in landings]
        requests = [pair.Irecv(p.spec, peer, TAG) for p in incoming]
        requests += [pair.Isend(Packed.for_send(message, staging).spec, peer, TAG) for _ in targets]
        waitall(requests)
        for p in incoming:
            p.unpack()

    return _rounds(packed_round)


def _rounds(one: Callable[[], None]) -> Runner:
    def run(k: int) -> None:
        for _ in range(k):
            one()

    return run


def sleeping_barrier(comm: MPI.Intracomm) -> None:
    """A barrier that sleeps instead of spinning, so waiting ranks leave the cores to the measuring ones."""
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(0.002)


def _nodes(comm: MPI.Intracomm) -> tuple[int, ...]:
    """The node number of every rank (``collectives.topology``'s detection: COMMLIB_NODE_ID or shared memory)."""
    try:
        from collectives.topology import topology
    except ImportError:
        names = comm.allgather(config.node_id or MPI.Get_processor_name())
        number = {name: k for k, name in enumerate(dict.fromkeys(names))}
        return tuple(number[name] for name in names)
    return topology(comm).node_of


def _pair(comm: MPI.Intracomm, partner: int | None) -> MPI.Intracomm | None:
    """A communicator of rank 0 and ``partner`` (collective; ``None`` on other ranks or without a partner)."""
    rank = comm.Get_rank()
    member = partner is not None and rank in (0, partner)
    pair = comm.Split(0 if member else MPI.UNDEFINED, 0 if rank == 0 else 1)
    return None if pair == MPI.COMM_NULL else pair


@dataclass
class _Progress:
    bar: Any = None
    notes: list[str] = field(default_factory=list)

    def step(self, what: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(what, refresh=False)
            self.bar.update(1)


def _host_tables(plan: Plan, progress: _Progress) -> dict[str, cost_model.Table]:
    points: dict[str, list[tuple[int, int, float]]] = {}
    for shape in plan.shapes():
        times = host_times(shape, plan.settings)
        for kind, t in times.items():
            block = 1 if shape.levels == 1 else shape.block
            if kind.endswith(".strided") and shape.levels > 1 and block not in cost_model.WORDS:
                kind += ".opaque"  # copied as opaque elements, not words: its own cost series
            points.setdefault(f"{kind}.{shape.levels}", []).append((shape.row, block, t))
        progress.step(shape.name())
    return {name: cost_model.Table.from_points(p) for name, p in points.items()}


def _reduce_betas(plan: Plan, progress: _Progress) -> dict[str, float]:
    out = {}
    for name in plan.reduce_dtypes:
        dtype = np.dtype(name)
        n = max(plan.reduce_bytes // dtype.itemsize, 1)
        a, b = np.ones(n, dtype), np.ones(n, dtype)

        def run(k: int, a: np.ndarray = a, b: np.ndarray = b) -> None:
            for _ in range(k):
                np.add(a, b, out=b)

        out[name] = time_interleaved({name: run}, plan.settings)[name] / a.nbytes
        progress.step(f"reduce {name}")
    return out


def interposer_costs(settings: Settings, types: int = 64) -> dict[str, float]:
    """commlib's own fixed costs, for the cost model's ``analysis`` and ``pack_piece`` constants.

    ``analysis``: what the interposer spends on a datatype met for the first
    time (its signature, canonical form, route and choice), over ``types``
    new subarray types of distinct signatures. ``pack_piece``: one more piece
    of a vector collective packed on its own (a small piece at a displacement).
    """
    from .interposer.decision import TypeInfo

    made = [MPI.BYTE.Create_subarray([16, 16, 16], [8, 8, 8], [i % 8, i // 8 % 8, 1]).Commit() for i in range(types)]
    model = cost_model.Model()  # a choice's cost, without loading the process's model before it is calibrated
    try:
        start = time.perf_counter()
        for dt in made:
            route = TypeInfo(dt, datatypes.signature(dt)).route(dt, 1, eager=True)
            model.choose("Isend", route.features)
        analysis = (time.perf_counter() - start) / types
    finally:
        for dt in made:
            dt.Free()
    piece = MPI.BYTE.Create_vector(4, 8, 64).Commit()
    src, out = np.zeros(1024, np.uint8), np.zeros(32, np.uint8)

    def pack_piece(k: int) -> None:
        for _ in range(k):
            datatypes.pack(src, 1, piece, out=out, displacement=256, engine="strided")

    try:
        per_piece = time_interleaved({"piece": pack_piece}, settings)["piece"]
    finally:
        piece.Free()
    return {"analysis": analysis, "pack_piece": per_piece}


def _pair_tables(pair: MPI.Intracomm, level: str, plan: Plan, progress: _Progress) -> dict[str, cost_model.Table]:
    """Contiguous and derived-type ping-pong tables between the two ranks of ``pair``."""
    p2p: list[tuple[int, int, float]] = []
    for n in plan.p2p_bytes:
        t = ping(pair, {"p2p": contiguous_exchange(pair, np.zeros(n, np.uint8))}, plan.settings)
        if t:
            p2p.append((n, 1, t["p2p"]))
        progress.step(f"{level} p2p {n}B")
    native: dict[int, list[tuple[int, int, float]]] = {}
    for shape in plan.shapes():
        if shape.levels == 1:
            continue
        dt = shape.make()
        try:
            buf = _random_bytes(dt.Get_extent()[1])
            t = ping(pair, {"native": native_exchange(pair, dt, buf)}, plan.settings)
        finally:
            dt.Free()
        if t:
            native.setdefault(shape.levels, []).append((shape.row, shape.block, t["native"]))
        progress.step(f"{level} native {shape.name()}")
    tables = {f"send.native.{level}.{lv}": cost_model.Table.from_points(p) for lv, p in native.items()}
    if p2p:
        tables[f"p2p.{level}"] = cost_model.Table.from_points(p2p)
    return tables


def _exchange_tables(pair: MPI.Intracomm, level: str, plan: Plan, progress: _Progress) -> dict[str, cost_model.Table]:
    """Seconds per message of ``native`` and ``pack`` with ``plan.exchange_messages`` in flight each way."""
    points: dict[tuple[str, int], list[tuple[int, int, float]]] = {}
    k = plan.exchange_messages
    for shape in plan.exchange_shapes():
        dt = shape.make()
        try:
            buf = _random_bytes(dt.Get_extent()[1])
            runners = {s: concurrent_exchange(pair, dt, buf, s, k) for s in ("native", "pack")}
            t = ping(pair, runners, plan.settings, messages=k)
        finally:
            dt.Free()
        for strategy, seconds in t.items():
            points.setdefault((strategy, shape.levels), []).append((shape.row, shape.block, seconds))
        progress.step(f"{level} exchange {shape.name()}")
    return {f"xchg.{s}.{level}.{lv}": cost_model.Table.from_points(p) for (s, lv), p in points.items()}


def _pack_overhead(
    pair: MPI.Intracomm, model: cost_model.Model, plan: Plan, progress: _Progress
) -> dict[str, float] | None:
    """The pack strategy's cost beyond pack + p2p + unpack, as fixed + per byte.

    Fitted to (measured ping of the interposer's pack path - that sum) at a
    few sizes, robustly (one noisy size must not set the constants): the
    median of the pairwise slopes, then the median intercept; both kept >= 0.
    """
    gaps = []
    previous = cost_model.current()
    cost_model.set_current(model)  # the interposer's pack path picks its engine with the new tables
    try:
        for shape in plan.overhead_shapes():
            dt = shape.make()
            try:
                t = ping(pair, {"pack": pack_exchange(pair, dt, _random_bytes(dt.Get_extent()[1]))}, plan.settings)
            finally:
                dt.Free()
            if t:
                f = shape.features
                e = model.engine_for(f.nbytes, f.block, f.levels)
                composite = model.pack_time(e, f) + model.p2p_time(f.nbytes, "intra") + model.unpack_time(e, f)
                gaps.append((f.nbytes, t["pack"] - composite))
            progress.step(f"pack overhead {shape.name()}")
    finally:
        cost_model.set_current(previous)
    if not gaps:
        return None
    slopes = [(g1 - g0) / (n1 - n0) for i, (n0, g0) in enumerate(gaps) for n1, g1 in gaps[i + 1 :] if n1 != n0]
    per_byte = max(statistics.median(slopes), 0.0) if slopes else 0.0
    fixed = max(statistics.median(g - per_byte * n for n, g in gaps), 0.0)
    return {"pack_overhead": fixed, "pack_overhead_byte": per_byte}


def _shared_model(pair: MPI.Intracomm, tables: dict[str, cost_model.Table]) -> cost_model.Model:
    """A model of rank 0's ``tables`` on both ranks of ``pair`` (both sides pack as it says)."""
    data = pair.bcast({k: t.to_json() for k, t in tables.items()} if pair.Get_rank() == 0 else None, root=0)
    return cost_model.Model({k: cost_model.Table.from_json(v) for k, v in data.items()})


def calibrate(comm: MPI.Intracomm, plan: Plan, *, progress: bool = True) -> dict[str, Any] | None:
    """Measure everything ``plan`` names (collective over ``comm``); rank 0 returns the calibration document."""
    rank, size = comm.Get_rank(), comm.Get_size()
    node_of = _nodes(comm)
    intra = next((r for r in range(1, size) if node_of[r] == node_of[0]), None)
    inter = next((r for r in range(1, size) if node_of[r] != node_of[0]), None)
    shapes = plan.shapes()
    strided = [s for s in shapes if s.levels > 1]
    pairs = [p for p in (intra, inter) if p is not None]
    total = (
        len(shapes)
        + len(plan.reduce_dtypes)
        + 1
        + len(pairs) * (len(plan.p2p_bytes) + len(strided))
        + (len(plan.overhead_shapes()) + len(plan.exchange_shapes()) if intra is not None else 0)
    )
    state = _Progress()
    if rank == 0 and progress:
        from tqdm import tqdm

        # disable=None: a bar on a terminal, nothing in a log file
        state.bar = tqdm(total=total, desc="commlib calibrate", unit="step", file=sys.stderr, leave=True, disable=None)
    tables: dict[str, cost_model.Table] = {}
    reduce_beta: dict[str, float] = {}
    overhead = None
    costs: dict[str, float] = {}
    try:
        if rank == 0:
            tables.update(_host_tables(plan, state))
            reduce_beta = _reduce_betas(plan, state)
            costs = interposer_costs(plan.settings)
            state.step("interposer costs")
        sleeping_barrier(comm)
        for level, partner in (("intra", intra), ("inter", inter)):
            pair = _pair(comm, partner)
            if pair is not None:
                tables.update(_pair_tables(pair, level, plan, state))
                if level == "intra":
                    overhead = _pack_overhead(pair, _shared_model(pair, tables), plan, state)
                    tables.update(_exchange_tables(pair, level, plan, state))
                pair.Free()
            sleeping_barrier(comm)
    finally:
        if state.bar is not None:
            state.bar.close()
    if rank != 0:
        return None
    nodes = max(node_of) + 1
    launch = {
        "size": size,
        "nodes": nodes,
        "ranks_per_node": [node_of.count(k) for k in range(nodes)],
        "pairs": {"intra": intra, "inter": inter},
    }
    doc = calibration.new_file(calibration.current_key(size), launch)
    doc["tables"] = {name: table.to_json() for name, table in sorted(tables.items())}
    doc["alpha_beta"] = {
        name[4:]: list(cost_model.fit_alpha_beta(table)) for name, table in tables.items() if name.startswith("p2p.")
    }
    doc["reduce_beta"] = reduce_beta
    doc["constants"] = {**costs, **(overhead or {})}
    doc["plan"] = {
        "nbytes": list(plan.nbytes),
        "blocks": list(plan.blocks),
        "p2p_bytes": list(plan.p2p_bytes),
        "sample_time": plan.settings.sample_time,
        "reps": plan.settings.reps,
        "statistic": plan.settings.statistic,
    }
    doc["not_measured"] = _not_measured(size, intra, inter)
    return doc


def _not_measured(size: int, intra: int | None, inter: int | None) -> list[str]:
    notes = []
    if size == 1:
        notes.append("point-to-point and derived-type sends: run under mpiexec -n 2 or more")
    elif intra is None:
        notes.append("intra-node pairs: rank 0 has no other rank on its node")
    if size > 1 and inter is None:
        notes.append("inter-node pairs: all ranks share one node")
    notes.append("device packer and GPU strategies (DEVICE, ONESHOT, STAGED): commlib has no device packer yet")
    return notes


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v, 0) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values) or list(values) != sorted(set(values)):
        raise argparse.ArgumentTypeError(f"expected increasing positive integers, got {text!r}")
    return values


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Measure this machine for commlib's cost model and write the calibration file "
        "(run under 'mpiexec -n 2' or more; 1 rank measures the host parts only).",
    )
    parser.add_argument("--quick", action="store_true", help="a small grid and short samples (under a minute)")
    parser.add_argument("--output", type=Path, help="write here instead of the cache directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--nbytes", type=_ints, help="packed bytes of the measured shapes (comma-separated)")
    parser.add_argument("--blocks", type=_ints, help="block bytes of the measured shapes")
    parser.add_argument("--p2p-bytes", type=_ints, help="sizes of the contiguous ping-pongs")
    parser.add_argument("--sample-time", type=float, help="seconds per timed sample")
    parser.add_argument("--reps", type=int, help="samples per measurement")
    parser.add_argument(
        "--statistic",
        choices=("median", "min"),
        default="median",
        help="reduce the samples to their median (default; a quiet machine) or minimum (a shared one)",
    )
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m commlib calibrate") -> int:
    """Entry point of ``python -m commlib calibrate``; returns the exit code."""
    args = _parser(prog).parse_args(argv)
    plan = QUICK if args.quick else FULL
    settings = plan.settings
    if (args.sample_time is not None and args.sample_time <= 0) or (args.reps is not None and args.reps < 1):
        print(f"{prog}: error: --sample-time must be > 0 and --reps >= 1", file=sys.stderr)
        return 2
    settings = Settings(args.sample_time or settings.sample_time, args.reps or settings.reps, args.statistic)
    plan = Plan(
        nbytes=args.nbytes or plan.nbytes,
        blocks=args.blocks or plan.blocks,
        p2p_bytes=args.p2p_bytes or plan.p2p_bytes,
        settings=settings,
        reduce_bytes=plan.reduce_bytes,
    )
    comm = MPI.COMM_WORLD
    start = time.perf_counter()
    doc = calibrate(comm, plan, progress=not args.no_progress)
    status = 0
    if comm.Get_rank() == 0 and doc is not None:
        key = calibration.CalibrationKey.from_json(doc["key"])
        path = calibration.save(doc, args.output or calibration.path_for(key))
        model = cost_model.Model.from_json(doc, source=str(path))
        print(f"calibrated {key.describe()} in {time.perf_counter() - start:.1f} s -> {path}")
        for level in ("intra", "inter"):
            if f"p2p.{level}" in model.tables:
                alpha, beta = model.alpha_beta(level)
                print(
                    f"  {level}: alpha {alpha * 1e6:.2f} us, beta {beta * 1e9:.3f} ns/B ({1 / beta / 1e9:.2f} GB/s)"
                    if beta > 0
                    else f"  {level}: alpha {alpha * 1e6:.2f} us"
                )
        for note in doc["not_measured"]:
            print(f"  not measured: {note}")
    return comm.bcast(status, root=0)
