"""Run on an emulated cluster: report where each rank landed and time transfers between and within nodes.

Rank 0 prints one ``RANK <r> NODE <COMMLIB_NODE_ID> HOST <processor name> SHARED <size>`` line
per rank, then ``INTER <bit/s>`` for ``nbytes`` sent to the first rank on another node and
``INTRA <bit/s>`` for ``nbytes`` sent to another rank on its own node (best of a few
repetitions; absent when there is no such rank), then ``OK cluster_placement on <n> ranks``.
"""

import os
import sys
import time

import numpy as np
from mpi4py import MPI

comm = MPI.COMM_WORLD
nbytes = int(sys.argv[1]) if len(sys.argv) > 1 else 1 << 21
node = int(os.environ["COMMLIB_NODE_ID"])
shared = comm.Split_type(MPI.COMM_TYPE_SHARED)
places = comm.allgather((node, MPI.Get_processor_name(), shared.Get_size()))
shared.Free()
if comm.rank == 0:
    for r, (n, host, size) in enumerate(places):
        print(f"RANK {r} NODE {n} HOST {host} SHARED {size}", flush=True)


def best_rate(peer: int | None) -> float | None:
    """Best bit/s of nbytes from rank 0 to ``peer`` (a collective over all ranks; None without a peer)."""
    if peer is None:
        return None
    buf = np.ones(nbytes, dtype=np.uint8)
    best = 0.0
    for _ in range(3):
        comm.Barrier()
        start = time.perf_counter()
        if comm.rank == 0:
            comm.Send(buf, dest=peer)
            comm.Recv(buf[:1], source=peer)
        elif comm.rank == peer:
            comm.Recv(buf, source=0)
            comm.Send(buf[:1], dest=0)
        best = max(best, nbytes * 8 / (time.perf_counter() - start))
    return best


def first(pred) -> int | None:
    return next((r for r, (n, _, _) in enumerate(places) if r != 0 and pred(n)), None)


inter = best_rate(first(lambda n: n != places[0][0]))
intra = best_rate(first(lambda n: n == places[0][0]))
if comm.rank == 0:
    if inter is not None:
        print(f"INTER {inter:.6g}")
    if intra is not None:
        print(f"INTRA {intra:.6g}")
    print(f"OK cluster_placement on {comm.size} ranks", flush=True)
