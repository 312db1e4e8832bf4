"""MAX and MIN with NaN and signed zeros: every algorithm must give the same bits, on every rank.

Element ``j`` of the vector holds pattern ``j``: one value per rank from
``{NaN, -0.0, +0.0, 1, 2}`` (all 5**p combinations), repeated to a small and
a large size (MPI picks different algorithms for them, and its result for a
NaN depends on the element's position). Each algorithm's result, in place and
not, must equal byte for byte the reference: ``MPI_Allreduce``'s on the same
inputs, except that an element with a NaN on any rank is NaN (numpy's rule)
and a zero takes the sign IEEE 754's maximum and minimum give it, which
commlib keeps whatever the MPI - unless ``COMMLIB_REDUCTION_CHECK=0``, where
commlib trusts MPI's result as it is. Also: overlapping send and
receive buffers are refused on every rank. Prints ``OK extrema on N ranks``
when everything matches.
"""

from __future__ import annotations

import itertools
import sys

import numpy as np
from mpi4py import MPI

from collectives.allreduce import allreduce
from commlib.config import config

ALGORITHMS = ["ring", "star", "hierarchical-root", "hierarchical-shard", "auto"]
VALUES = [np.nan, -0.0, 0.0, 1.0, 2.0]


def _significant(y: np.ndarray) -> bytes:
    if y.dtype.itemsize == 16 and np.finfo(y.dtype).nmant == 63:  # x87 extended: 6 bytes of padding
        return y.view(np.uint8).reshape(-1, 16)[:, :10].tobytes()
    return y.tobytes()


def main() -> int:
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    patterns = list(itertools.product(VALUES, repeat=size))
    failures, cases = [], 0
    for code, op_name, repeat in itertools.product(("f8", "f4", "f2", "g"), ("MAX", "MIN"), (1, 97)):
        op, dtype = getattr(MPI, op_name), np.dtype(code)
        mine = np.tile(np.array([p[rank] for p in patterns], dtype), repeat)
        plain = [mine, np.where(np.isnan(mine), 3, np.abs(mine)) + 1]  # with NaN and zeros; then numbers only
        for x in plain:
            native = np.empty_like(x)
            MPI.Intracomm(comm).Allreduce(x, native, op)
            if config.reduction_check:  # a NaN on any rank wins; a zero takes IEEE 754's sign (+0 is larger)
                flags = np.stack([np.isnan(x), (x == 0) & ~np.signbit(x), (x == 0) & np.signbit(x)]).astype(np.int8)
                seen = np.empty_like(flags)
                MPI.Intracomm(comm).Allreduce(flags, seen, MPI.MAX)
                zero = native == 0
                positive = seen[1] != 0 if op == MPI.MAX else seen[2] == 0
                native[zero] = np.where(positive[zero], 0.0, -0.0)
                native[seen[0] != 0] = np.nan
            for alg in ALGORITHMS:
                for in_place in (False, True):
                    y = x.copy() if in_place else np.full_like(x, 7)
                    allreduce(comm, MPI.IN_PLACE if in_place else x.copy(), y, op, alg)
                    cases += 1
                    if _significant(y) != _significant(native):
                        differ = [
                            j for j in range(len(y)) if _significant(y[j : j + 1]) != _significant(native[j : j + 1])
                        ]
                        j = differ[0]
                        failures.append(
                            f"{alg} {op_name} {code} n={len(x)} {'in place' if in_place else ''}: element {j} "
                            f"(inputs {patterns[j % len(patterns)]}) is {y[j]!r}, the reference {native[j]!r} "
                            f"({len(differ)} elements differ)"
                        )
    x = np.arange(8.0)
    for send, recv in ((x, x), (x[0:6], x[2:8]), (x[2:8], x[0:6])):
        try:
            allreduce(comm, send, recv, MPI.SUM, "ring")
            failures.append(f"overlapping buffers {send.__array_interface__['data']} were accepted")
        except MPI.Exception as exc:
            if exc.Get_error_class() != MPI.ERR_BUFFER or "overlap" not in str(exc) or not isinstance(exc, ValueError):
                failures.append(f"overlap reported as {exc!r}")
    if not np.array_equal(x, np.arange(8.0)):
        failures.append("a refused call touched the buffers")
    everyone = comm.allgather(failures)
    if rank == 0:
        for r, fails in enumerate(everyone):
            for line in fails[:10]:
                print(f"FAIL rank {r}: {line}", flush=True)
        if not any(everyone):
            print(f"OK extrema on {size} ranks: {cases} cases", flush=True)
    return 1 if any(everyone) else 0


if __name__ == "__main__":
    sys.exit(main())
