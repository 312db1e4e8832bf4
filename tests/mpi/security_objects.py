"""Object (``PyObject*``) arrays handed to commlib on every rank: nothing may be sent.

``security_objects.py MODE OUTDIR``: ``send`` (interposed, with COMMLIB_SPLIT=1,
rank 0 sends an object array to rank 1, which watches for anything arriving)
or ``dispatch-gather`` / ``dispatch-mpi`` (every rank dispatches object rows).
Each rank writes what happened to ``OUTDIR/rank-<r>.txt``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from mpi4py import MPI


def main() -> int:
    mode, out = sys.argv[1], Path(sys.argv[2])
    rank = MPI.COMM_WORLD.Get_rank()
    objects = np.array([object() for _ in range(1 << 16)], dtype=object)
    if mode == "send":
        import commlib

        commlib.interpose(monitor=False)
        comm = MPI.COMM_WORLD
        if rank == 0:
            try:
                comm.Send(objects, 1, tag=3)
                what = "sent"
            except Exception as exc:
                what = f"{type(exc).__name__}: {exc}"
        else:
            deadline, what = time.monotonic() + 1.5, "nothing arrived"
            while time.monotonic() < deadline:
                if MPI.Intracomm(MPI.COMM_WORLD).Iprobe(0, MPI.ANY_TAG):
                    what = "a message arrived"
                    break
                time.sleep(0.01)
    else:
        from collectives import dispatch

        x = objects[: 32 * 4].reshape(32, 4)
        idx = (np.arange(64).reshape(32, 2) % 4).astype(np.int64)
        try:
            dispatch(x, idx, np.ones((32, 2)), MPI.COMM_WORLD, 4, pack=mode.split("-")[1])
            what = "dispatched"
        except Exception as exc:
            what = f"{type(exc).__name__}: {exc}"
    (out / f"rank-{rank}.txt").write_text(what)
    MPI.COMM_WORLD.Barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main())
