"""The two-rank body of ``python -m commlib bench strided`` (see :mod:`commlib.bench.strided`).

``strided_worker.py ROUNDS SIZES...``: for every layout and size, ping-pongs
between ranks 0 and 1 of a strided view, three ways taking turns in every
round: ``commlib`` (the view itself through a wrapped communicator),
``copy`` (what a user writes without commlib: ``np.ascontiguousarray`` and
``Send``, ``Recv`` into a contiguous array and a copy into the view) and
``control`` (``copy`` again). Rank 0 prints one JSON line per cell with the
per-round times of one message (half a ping-pong).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from mpi4py import MPI

from commlib.interposer.comm import wrap
from commlib.interposer.session import Session

LAYOUTS = {"8 B blocks": 8, "64 B blocks": 64, "512 B blocks": 512}  # bytes per block; blocks every 2x that


def _views(nbytes: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """A send view and a receive view of ``nbytes`` in blocks of ``block`` bytes, every other block."""
    per = block // 8
    rows = max(1, nbytes // block)
    send = np.arange(rows * 2 * per, dtype=np.float64).reshape(rows, 2 * per)[:, :per]
    recv = np.zeros((rows, 2 * per))[:, per:]
    return send, recv


def main() -> None:
    rounds, sizes = int(sys.argv[1]), [int(s) for s in sys.argv[2:]]
    world = MPI.COMM_WORLD
    rank = world.Get_rank()
    ours = wrap(world.Dup(), Session())
    plain = world.Dup()
    peer = 1 - rank

    def by_commlib(send: np.ndarray, recv: np.ndarray) -> None:
        if rank == 0:
            ours.Send(send, peer, 1)
            ours.Recv(recv, peer, 1)
        else:
            ours.Recv(recv, peer, 1)
            ours.Send(send, peer, 1)

    def by_copy(send: np.ndarray, recv: np.ndarray) -> None:
        tmp = np.empty(recv.shape, recv.dtype)
        if rank == 0:
            plain.Send(np.ascontiguousarray(send), peer, 2)
            plain.Recv(tmp, peer, 2)
        else:
            plain.Recv(tmp, peer, 2)
            plain.Send(np.ascontiguousarray(send), peer, 2)
        np.copyto(recv, tmp)

    ways = {"commlib": by_commlib, "copy": by_copy, "control": by_copy}
    for layout, block in LAYOUTS.items():
        for nbytes in sizes:
            if nbytes < block:
                continue
            send, recv = _views(nbytes, block)
            reps = max(2, min(400, int(2e6 // nbytes)))
            for way in ways.values():  # warm up, and check that each way moves the data
                recv[...] = 0
                way(send, recv)
                assert np.array_equal(recv, send), (layout, nbytes)
            before = dict(ours._session.calls)
            samples: dict[str, list[float]] = {name: [] for name in ways}
            names = list(ways)
            for r in range(rounds):
                for name in names[r % 3 :] + names[: r % 3]:
                    way = ways[name]
                    world.Barrier()
                    start = time.perf_counter()
                    for _ in range(reps):
                        way(send, recv)
                    samples[name].append((time.perf_counter() - start) / (2 * reps))
            routes = {
                f"{op} {choice}": n - before.get((op, choice), 0) for (op, choice), n in ours._session.calls.items()
            }
            if rank == 0:
                cell = {"layout": layout, "block": block, "bytes": send.nbytes, "reps": reps, "samples_s": samples}
                cell["routes"] = {k: n for k, n in routes.items() if n}
                print("CELL " + json.dumps(cell), flush=True)


if __name__ == "__main__":
    main()
