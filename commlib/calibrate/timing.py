"""The timed operations: interleaved samples, ping-pongs, packing, and exchanges of derived-type messages."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from mpi4py import MPI

import datatypes

from ..config import config
from .grid import HOST_KINDS, Settings, StridedShape

TAG = 0x6D6F

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


def random_bytes(n: int, seed: int = 7) -> np.ndarray:
    """``n`` random bytes, the same ones for the same ``seed``."""
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


def host_runners(shape: StridedShape, dt: MPI.Datatype, kinds: Iterable[str] = HOST_KINDS) -> dict[str, Runner]:
    """Runners packing/unpacking one object of ``dt`` through ``datatypes.pack``/``unpack`` with each engine."""
    extent = dt.Get_extent()[1]
    src = random_bytes(max(extent, 1))
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


def host_times(shape: StridedShape, settings: Settings, kinds: Iterable[str] = HOST_KINDS) -> dict[str, float]:
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
    from ..interposer.messages import Packed, derived
    from ..interposer.staging import StagingPool

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


def concurrent_exchange(pair: MPI.Intracomm, dt: MPI.Datatype, buf: np.ndarray, strategy: str, k: int) -> Runner:
    """Rounds in which both ranks send ``k`` objects of ``dt`` to each other at once (Isend/Irecv/Waitall).

    ``native`` hands MPI the derived type; ``pack`` stages every message the
    interposer's way (packed into reused buffers, unpacked after the wait).
    Each receive has a buffer of its own.
    """
    from ..interposer.messages import Packed, derived
    from ..interposer.staging import StagingPool

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
