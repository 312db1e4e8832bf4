"""One calibration run over the ranks: rank 0 measures with a partner per level, and makes the document."""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from mpi4py import MPI

import datatypes
from datatypes import model as cost_model

from .. import calibration
from ..config import config
from .grid import MeasurementGrid, Settings
from .timing import (
    concurrent_exchange,
    contiguous_exchange,
    host_times,
    native_exchange,
    pack_exchange,
    ping,
    random_bytes,
    time_interleaved,
)


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


def _host_tables(plan: MeasurementGrid, progress: _Progress) -> dict[str, cost_model.Table]:
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


def _reduce_betas(plan: MeasurementGrid, progress: _Progress) -> dict[str, float]:
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
    from ..interposer.decision import TypeInfo

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


def _pair_tables(
    pair: MPI.Intracomm, level: str, plan: MeasurementGrid, progress: _Progress
) -> dict[str, cost_model.Table]:
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
            buf = random_bytes(dt.Get_extent()[1])
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


def _exchange_tables(
    pair: MPI.Intracomm, level: str, plan: MeasurementGrid, progress: _Progress
) -> dict[str, cost_model.Table]:
    """Seconds per message of ``native`` and ``pack`` with ``plan.exchange_messages`` in flight each way."""
    points: dict[tuple[str, int], list[tuple[int, int, float]]] = {}
    k = plan.exchange_messages
    for shape in plan.exchange_shapes():
        dt = shape.make()
        try:
            buf = random_bytes(dt.Get_extent()[1])
            runners = {s: concurrent_exchange(pair, dt, buf, s, k) for s in ("native", "pack")}
            t = ping(pair, runners, plan.settings, messages=k)
        finally:
            dt.Free()
        for strategy, seconds in t.items():
            points.setdefault((strategy, shape.levels), []).append((shape.row, shape.block, seconds))
        progress.step(f"{level} exchange {shape.name()}")
    return {f"xchg.{s}.{level}.{lv}": cost_model.Table.from_points(p) for (s, lv), p in points.items()}


def _pack_overhead(
    pair: MPI.Intracomm, model: cost_model.Model, plan: MeasurementGrid, progress: _Progress
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
                t = ping(pair, {"pack": pack_exchange(pair, dt, random_bytes(dt.Get_extent()[1]))}, plan.settings)
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


def calibrate(comm: MPI.Intracomm, plan: MeasurementGrid, *, progress: bool = True) -> dict[str, Any] | None:
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
