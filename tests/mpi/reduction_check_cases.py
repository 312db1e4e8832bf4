"""Allreduces MPI may get wrong, through commlib: the results must be numpy's exact ones.

Run under ``mpiexec -n N python -m mpi4py`` (direct calls of ``collectives.allreduce``) or
``python -m commlib`` (the interposed ``COMM_WORLD.Allreduce``). Every rank draws every rank's
contribution from one seed, so each can compute the exact result (numpy: C's wrapping integer
arithmetic, NaN-propagating maximum and minimum) and compare. Also reports how many elements MPI's
own ``Allreduce`` gets wrong on the same data (the evidence of what commlib protects from).

``--inject R`` makes rank R alone believe that MPI gets ``SUM`` on int32 arrays wrong (a pair
both MPICH and Open MPI reduce correctly): every rank must still agree, route it to ring or star,
and the warning must be printed once. Exits non-zero on any mismatch.
"""

import argparse
import sys

import numpy as np
from mpi4py import MPI

from collectives import reduction_check
from collectives.allreduce import allreduce, plan
from collectives.bufspec import datatype_of
from commlib.config import config

parser = argparse.ArgumentParser()
parser.add_argument("--inject", type=int, default=-1)
parser.add_argument("--algorithms", nargs="*", default=["auto", "native", "hierarchical"])
args = parser.parse_args()

world = MPI.COMM_WORLD
rank, size = world.Get_rank(), world.Get_size()
plain = MPI.Intracomm(world)  # never interposed: MPI's own Allreduce
interposed = type(world) is not MPI.Intracomm
N = 1031  # past the vectorised loops, with a tail
failures = []


def contributions(dtype):
    rng = np.random.default_rng(20)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=(size, N), dtype=dtype, endpoint=True)
    x = rng.integers(-50, 50, size=(size, N)).astype(dtype)
    x[rng.random((size, N)) < 0.2] = np.nan  # NaN on some ranks only, at every position somewhere
    return x


def wrong(got, want):
    """Indices where ``got`` differs from ``want`` (NaN equals NaN)."""
    equal = got == want
    if got.dtype.kind == "f":
        equal |= np.isnan(got) & np.isnan(want)
    return np.flatnonzero(~equal)


INT32 = datatype_of(np.dtype(np.int32))  # what mpi4py sends int32 arrays as (MPI_INT)
calls = {"n": 0}
if args.inject == rank:

    def faulty(op, x, acc, datatype):
        calls["n"] += 1
        op.Reduce_local([x, datatype], [acc, datatype])
        if op == MPI.SUM and datatype == INT32:
            acc[:1] += 1  # the injected fault

    reduction_check.local_faults(reduce_local=faulty)
    probed = calls["n"]

CASES = [(np.int8, "SUM"), (np.uint8, "SUM"), (np.int16, "SUM"), (np.uint16, "SUM")]
CASES += [(np.float32, "MAX"), (np.float32, "MIN"), (np.float64, "MAX"), (np.float64, "MIN")]
CASES += [(np.int32, "SUM"), (np.int64, "PROD")]
UFUNC = {"SUM": np.add, "PROD": np.multiply, "MAX": np.maximum, "MIN": np.minimum}
report = []
for dtype, op_name in CASES:
    x = contributions(dtype)
    op = getattr(MPI, op_name)
    exact = UFUNC[op_name].reduce(x, axis=0, dtype=x.dtype)  # C arithmetic: no widening
    mpi_out = np.empty(N, dtype)
    MPI.Comm.Allreduce(plain, x[rank], mpi_out, op)
    mpi_wrong = wrong(mpi_out, exact).size
    name = f"{np.dtype(dtype).name} {op_name}"
    want = exact if config.reduction_check else mpi_out  # off: MPI's result, untouched
    if interposed:
        out = np.empty(N, dtype)
        world.Allreduce(x[rank], out, op)
        runs = {"interposed": out}
        inplace = x[rank].copy()
        world.Allreduce(MPI.IN_PLACE, inplace, op)
        runs["interposed in place"] = inplace
    else:
        runs = {}
        for alg in args.algorithms:
            out = np.empty(N, dtype)
            allreduce(world, x[rank], out, op, alg)
            runs[alg] = out
    for how, out in runs.items():
        bad = wrong(out, want)
        if bad.size:
            failures.append(f"{name} ({how}): {bad.size} elements differ from the expected, first {bad[:3].tolist()}")
    report.append(f"{name}: MPI's own {mpi_wrong}/{N} wrong")
    if size > 1 and mpi_wrong and config.reduction_check:
        pair = (op_name, datatype_of(np.dtype(dtype)).Get_name())
        verdict = reduction_check.agreed(world)
        if verdict is None or not any(f[:2] == pair for f in verdict.faults):
            failures.append(f"{name}: MPI got {mpi_wrong} elements wrong, yet the agreed verdict does not name {pair}")

verdict = reduction_check.agreed(world)
if size > 1 and config.reduction_check:
    if verdict is None:
        failures.append("no verdict agreed on COMM_WORLD after its allreduces")
    elif args.inject >= 0:
        if not any(f[:2] == ("SUM", INT32.Get_name()) for f in verdict.faults):
            failures.append(f"the fault injected on rank {args.inject} is not in the agreed verdict {verdict.faults}")
        chosen = plan(world, 4 * N, "native", op=MPI.SUM, datatype=np.int32)[0]
        if chosen not in ("ring", "star"):
            failures.append(f"SUM on int32 goes to {chosen}, not to commlib's ring or star")
        if args.inject == rank and calls["n"] != probed:
            failures.append(f"MPI's reductions were probed again after the first allreduce ({calls['n']} calls)")
if size == 1 and verdict:
    failures.append(f"one rank reduces nothing, yet the verdict is {verdict.faults}")
if not config.reduction_check and verdict is not None:
    failures.append("COMMLIB_REDUCTION_CHECK=0, yet MPI's reductions were checked")

if failures:
    for f in failures:
        print(f"rank {rank}: {f}", file=sys.stderr)
    world.Abort(1)
if rank == 0:
    kind = "interposed" if interposed else "direct"
    print(f"OK reduction check on {size} ranks ({kind}): " + "; ".join(report), flush=True)
