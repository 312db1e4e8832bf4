"""Ranks exchange derived-type data in a ring, packing with commlib on one side.

Run under ``mpiexec -n N python -m mpi4py``; exits non-zero on any mismatch.
Checks that commlib's packed bytes are what MPI's derived-type receive expects
(and the reverse), for strided and non-strided types, at any rank count.
"""

import numpy as np
from mpi4py import MPI

import datatypes

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
right, left = (rank + 1) % size, (rank - 1) % size

types = {
    "vector": MPI.DOUBLE.Create_vector(64, 3, 7),
    "subarray_f": MPI.INT.Create_subarray([9, 8, 7], [4, 5, 3], [2, 1, 3], order=MPI.ORDER_FORTRAN),
    "struct_uniform": MPI.Datatype.Create_struct([2, 2], [0, 24], [MPI.FLOAT, MPI.FLOAT]),
    "indexed_irregular": MPI.SHORT.Create_indexed([1, 3, 2], [0, 5, 11]),
}
for name, dt in types.items():
    dt.Commit()
    count = 3
    true_lb, true_extent = dt.Get_true_extent()
    nbytes = true_lb + true_extent + (count - 1) * dt.Get_extent()[1] + 16

    def source(r, nbytes=nbytes):
        return (np.arange(nbytes, dtype=np.int64) * 7 + r * 131).astype(np.uint8)

    # commlib packs -> plain bytes on the wire -> MPI receives into the derived type
    packed = datatypes.pack(source(rank), count, dt)
    got = np.zeros(nbytes, np.uint8)
    comm.Sendrecv([packed, MPI.BYTE], right, 1, [got, count, dt], left, 1)
    expected = np.zeros(nbytes, np.uint8)
    datatypes.unpack(datatypes.pack(source(left), count, dt, engine="mpi"), expected, count, dt, engine="mpi")
    assert np.array_equal(got, expected), f"rank {rank}: {name}: derived-type receive of commlib-packed bytes"

    # MPI sends the derived type -> plain bytes on the wire -> commlib unpacks
    wire = np.zeros(count * dt.Get_size(), np.uint8)
    comm.Sendrecv([source(rank), count, dt], right, 2, [wire, MPI.BYTE], left, 2)
    mine = np.zeros(nbytes, np.uint8)
    datatypes.unpack(wire, mine, count, dt)
    assert np.array_equal(mine, expected), f"rank {rank}: {name}: commlib unpack of a derived-type send"
    dt.Free()

comm.Barrier()
if rank == 0:
    print(f"pack_exchange: {len(types)} datatypes OK on {size} ranks")
