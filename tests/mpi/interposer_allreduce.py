"""``Comm.Allreduce`` of an interposed program runs commlib's algorithm and gives MPI's answer.

Run under ``python -m commlib`` with ``COMMLIB_ALLREDUCE`` set; checks the
result against a numpy reference, the same bits on every rank, in place and
not, on ``COMM_WORLD`` and on a derived communicator, and that the report
names the algorithm that ran.
"""

import sys
import zlib

import numpy as np
from mpi4py import MPI

import commlib

world = MPI.COMM_WORLD
rank, size = world.Get_rank(), world.Get_size()
expected_algorithm = sys.argv[1]

for comm in (world, world.Dup()):
    for dtype in (np.float64, np.int32):
        x = (np.arange(5000) % 97 + rank).astype(dtype)
        out = np.empty_like(x)
        comm.Allreduce(x, out, op=MPI.SUM)
        want = sum((np.arange(5000) % 97 + r).astype(np.float64) for r in range(size))
        if not np.allclose(out, want):
            sys.exit(f"rank {rank}: Allreduce {dtype.__name__} differs from the reference")
        inplace = x.copy()
        comm.Allreduce(MPI.IN_PLACE, [inplace, MPI.Datatype.fromcode(np.dtype(dtype).char)], op=MPI.MAX)
        if not np.array_equal(inplace, (np.arange(5000) % 97 + size - 1).astype(dtype)):
            sys.exit(f"rank {rank}: in-place MAX differs from the reference")
        digests = comm.allgather(zlib.crc32(out.tobytes()))
        if len(set(digests)) != 1:
            sys.exit(f"rank {rank}: ranks hold different bits: {digests}")
    if comm is not world:
        comm.Free()

report = commlib.active_session().report()
if f"Allreduce: {expected_algorithm}" not in report:
    sys.exit(f"rank {rank}: expected {expected_algorithm} in the report, got:\n{report}")
world.Barrier()
if rank == 0:
    print(f"interposer_allreduce: OK on {size} ranks ({expected_algorithm})")
