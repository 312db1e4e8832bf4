"""Receives too small for their message, interposed: an error, and no byte written past the buffer.

Run under ``mpiexec -n N python -m commlib`` (any N >= 1). Each rank sends a
message to its right neighbour that is larger than the receive its left
neighbour posts, at sizes below and above the eager limits, through ``Recv``
and ``Sendrecv``; the receive buffer is a window of a larger array.
"""

import numpy as np
from mpi4py import MPI

import commlib.interposer.comm

world = MPI.COMM_WORLD
rank, size = world.Get_rank(), world.Get_size()
right, left = (rank + 1) % size, (rank - 1) % size
assert isinstance(world, commlib.interposer.comm.Intracomm), "run under python -m commlib"

for nbytes in (100, 10_000, 1 << 20):
    message = np.full(nbytes, 7, np.uint8)
    for op in ("Recv", "Sendrecv"):
        memory = np.zeros(nbytes + 64, np.uint8)
        window = memory[:16]
        status = MPI.Status()
        try:
            if op == "Recv":
                request = world.Isend(message, right, 3)
                try:
                    world.Recv([window, MPI.BYTE], left, 3, status)
                finally:
                    request.Wait()
            else:
                world.Sendrecv(message, right, 3, [window, MPI.BYTE], left, 3, status)
        except MPI.Exception as exc:
            assert exc.Get_error_class() == MPI.ERR_TRUNCATE, (op, nbytes, exc)
        else:
            raise AssertionError(f"{op} of {nbytes} bytes into 16 did not fail")
        assert not memory[16:].any(), f"{op}: {int(np.count_nonzero(memory[16:]))} bytes written past the buffer"
        world.Barrier()
    fits = np.zeros(nbytes, np.uint8)  # a receive that fits still arrives whole, with its status
    world.Sendrecv(message, right, 4, fits, left, 4, status)
    assert np.array_equal(fits, message) and status.Get_count(MPI.BYTE) == nbytes and status.Get_source() == left

world.Barrier()
if rank == 0:
    print(f"OK on {size} ranks")
