"""``python -m commlib calibrate``: measure this machine for the cost model and write its calibration file.

Run it under ``mpiexec -n 2`` or more (on 1 rank only the host parts are
measured). Rank 0 measures, the others help with ping-pongs or wait (asleep,
not spinning), and rank 0 writes one JSON file into the cache directory (see
:mod:`commlib.calibration`). What is measured, each as a median of
interleaved samples:

* pack and unpack time of both host engines (``strided``, ``mpi``) on a grid
  of (packed bytes, block bytes) for 1, 2 and 3 levels (contiguous, vectors,
  3D subarrays; the strided shapes skip one block after each block); the
  strided engine's blocks of 1, 2, 4, 8 bytes (copied as words) and its
  other blocks (copied as opaque elements) make two tables;
* the one-way time of MPI sending the derived type itself (``send.native``),
  from a ping-pong, for the same shapes;
* contiguous point-to-point one-way time by bytes, and its alpha/beta fit,
  between two ranks of one node and, when the ranks span nodes, of two nodes;
* the pack strategy's fixed cost beyond pack + send + unpack (the interposer's
  buffers), from ping-pongs of small messages through :mod:`commlib.interposer.messages`;
* per message, ``native`` and ``pack`` in a nonblocking exchange between two
  ranks of one node with 4 messages in flight each way (``xchg`` tables, from
  16 KiB up), which the model uses for ``Isend``/``Irecv``: many messages in
  flight at once change what MPI's derived-type path costs;
* local reduction cost per byte (numpy add) by dtype, for the collectives.

The device packer is not measured (no GPU strategy is implemented yet); the
model predicts no GPU strategy without its tables.

The package: :mod:`.grid` (what is measured: shapes, sizes, sampling),
:mod:`.timing` (the timed operations), :mod:`.run` (the run over the ranks
and the document it makes), :mod:`.cli` (the command).
"""

from .cli import main
from .grid import FULL, QUICK, MeasurementGrid, Settings, StridedShape
from .run import calibrate, sleeping_barrier
from .timing import concurrent_exchange, host_times, native_exchange, pack_exchange, ping, time_interleaved

__all__ = [
    "FULL",
    "QUICK",
    "MeasurementGrid",
    "Settings",
    "StridedShape",
    "calibrate",
    "concurrent_exchange",
    "host_times",
    "main",
    "native_exchange",
    "pack_exchange",
    "ping",
    "sleeping_barrier",
    "time_interleaved",
]
