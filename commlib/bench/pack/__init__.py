"""Pack benchmark: ``MPI_Pack`` against commlib's packer and against memcpy.

One process (``MPI.COMM_SELF``). For each shape one object of an MPI derived
datatype is packed from a source buffer of exactly the type's extent (random
bytes) into a preallocated output buffer by

* ``mpi``: ``dt.Pack(src, out, 0, COMM_SELF)`` through mpi4py (the baseline),
* ``strided``: ``datatypes.pack(src, 1, dt, out=out, engine="strided")``,
* ``auto``: ``datatypes.pack(src, 1, dt, out=out)``, the engine the API picks,
* ``memcpy``: ``np.copyto(dst, src2)`` of the same number of contiguous bytes,
* ``traffic``: memcpy moving the shape's memory traffic - every 64-byte
  line the type map touches, read, plus the packed bytes, written - half
  read and half written: the memory-traffic limit a packer can reach. An
  engine's ``pct_traffic_limit`` is that time over its own.

The shapes are TEMPI's 2D byte matrix (``MPI.BYTE.Create_vector(n, block,
512)``) and five 3D C-order uint8 subarrays that take half of the fastest
dimension. A sample times a loop of calls sized so that every method's
sample lasts about as long; the methods take turns within each round so
that machine noise hits them alike, and the reported time is the median
per-call time. Each sample is preceded by untimed calls of the same method,
so that all are timed in steady state: buffers stay in cache where they fit
(the same source is packed again and again), as in a loop that packs one
halo. Outputs of the three pack methods are checked to be byte-identical
once per shape.

The package: :mod:`.shapes` (what is packed), :mod:`.measure` (the timed
methods and their check), :mod:`.report` (table and summary), :mod:`.cli`.
"""

from .cli import main

__all__ = ["main"]
