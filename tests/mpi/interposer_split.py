"""Large point-to-point messages of an interposed program travel split when ``COMMLIB_SPLIT=1``.

Run under ``python -m commlib`` with ``COMMLIB_SPLIT=1`` on every rank: blocking
and nonblocking messages of many sizes (small, exactly a header's size, large,
odd) around the ring arrive intact with the right status, and the splitter of
``COMM_WORLD`` shows that it sent split messages.
"""

import sys

import numpy as np
from mpi4py import MPI

from transport import flows

world = MPI.COMM_WORLD
rank, size = world.Get_rank(), world.Get_size()
right, left = (rank + 1) % size, (rank - 1) % size
splitter = flows.splitter_for(world)
if splitter is None:
    sys.exit(f"rank {rank}: COMM_WORLD has no splitter (COMMLIB_SPLIT=1 not in effect)")


def data(n, salt):
    return ((np.arange(n, dtype=np.int64) * 131 + salt) % 251).astype(np.uint8)


sizes = [0, 1, flows.HEADER_BYTES, (1 << 20) + 3, 3 << 20]
for round_ in range(3):
    for n in sizes:
        # blocking, with a status
        got = np.zeros(n + 16, np.uint8)
        st = MPI.Status()
        req = world.Isend(data(n, rank + round_), right, 7)
        world.Recv(got, left, 7, st)
        req.Wait()
        intact = np.array_equal(got[:n], data(n, left + round_))
        if not intact or st.Get_count(MPI.BYTE) != n or st.Get_source() != left:
            sys.exit(f"rank {rank}: blocking message of {n} bytes arrived wrong (count {st.Get_count(MPI.BYTE)})")
        # nonblocking both ways, completed by the class-level Waitall
        a, b = np.zeros(n, np.uint8), np.zeros(n, np.uint8)
        reqs = [world.Irecv(a, left, 1), world.Irecv(b, right, 2)]
        reqs += [world.Isend(data(n, 3 * rank), right, 1), world.Isend(data(n, 5 * rank), left, 2)]
        MPI.Request.Waitall(reqs)
        if not (np.array_equal(a, data(n, 3 * left)) and np.array_equal(b, data(n, 5 * right))):
            sys.exit(f"rank {rank}: nonblocking message of {n} bytes arrived wrong")

if size > 1 and not any(splitter.estimator.measured(peer)[1] for peer in {left, right}):
    sys.exit(f"rank {rank}: no message was split")
world.Barrier()
if rank == 0:
    print(f"interposer_split: OK on {size} ranks")
