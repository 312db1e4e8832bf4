"""Multi-rank check of collectives.allreduce against numpy references, for every algorithm, op and dtype.

Every rank can generate every rank's input (seeded by case and rank), so each
computes the reference itself: exact for integers, booleans, MIN and MAX,
within a bound of the summation/product rounding for floating point. Half the
cases run twice, and both results must be the same bytes; at the end all ranks
compare digests of every result: every rank must hold the same bits.

Usage: ``allreduce_cases.py [--algorithms A ...] [--quick] [--node-id-mod K]``;
``--node-id-mod K`` places rank r on node ``r % K`` (interleaved nodes).
Prints ``OK allreduce on N ranks: C cases`` when everything matches.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import sys

import numpy as np
from mpi4py import MPI

from collectives import allreduce_cost as cost
from collectives.allreduce import ALGORITHMS, allreduce, handles, plan, try_allreduce
from collectives.allreduce_hierarchical import node_root, shard_parallel
from collectives.reduction import reducer
from collectives.topology import release, topology

OPS = ["SUM", "PROD", "MIN", "MAX", "LAND", "LOR", "LXOR", "BAND", "BOR", "BXOR"]
DTYPES = ["i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8", "g", "c8", "c16", "G", "?"]
COUNTS = [1, 2, 3, 5, 7, 16, 37, 1000, 4099]


def _inputs(case: int, size: int, dtype: np.dtype, op: str, count: int) -> list[np.ndarray]:
    out = []
    for r in range(size):
        rng = np.random.default_rng([case, r])
        if dtype.kind == "b":
            x = rng.random(count) < 0.7
        elif dtype.kind in "iu":
            lo, hi = (-3, 4) if op in ("LAND", "LOR", "LXOR") else (-60, 61)
            if dtype.kind == "u":
                lo = 0
            x = rng.integers(lo, hi, count).astype(dtype)
            if op in ("LAND", "LOR", "LXOR"):
                x[rng.random(count) < 0.3] = 0
        elif dtype.kind == "f":
            x = (rng.random(count) + 0.5 if op == "PROD" else rng.standard_normal(count) * 10).astype(dtype)
        else:
            re, im = rng.random(count) + 0.5, rng.random(count) - 0.5
            x = (re + 1j * im).astype(dtype)
        out.append(x)
    return out


def _reference(xs: list[np.ndarray], op: str) -> np.ndarray:
    fn = {
        "SUM": np.add,
        "PROD": np.multiply,
        "MIN": np.minimum,
        "MAX": np.maximum,
        "LAND": np.logical_and,
        "LOR": np.logical_or,
        "LXOR": np.logical_xor,
        "BAND": np.bitwise_and,
        "BOR": np.bitwise_or,
        "BXOR": np.bitwise_xor,
    }[op]
    dtype = xs[0].dtype
    if dtype.kind in "fc" and op in ("SUM", "PROD"):
        wide = np.clongdouble if dtype.kind == "c" else np.longdouble
        acc = xs[0].astype(wide)
        for x in xs[1:]:
            acc = fn(acc, x.astype(wide))
        return acc
    acc = xs[0].copy()
    for x in xs[1:]:
        acc = fn(acc, x).astype(dtype)
    return acc


def _significant(y: np.ndarray) -> bytes:
    """The bytes of ``y`` that carry value: x87 extended types have padding that nobody defines."""
    if y.dtype.kind in "fc" and y.dtype.itemsize in (16, 32) and np.finfo(y.dtype).nmant == 63:
        parts = y.view(np.longdouble) if y.dtype.kind == "c" else y
        return parts.view(np.uint8).reshape(-1, 16)[:, :10].tobytes()
    return y.tobytes()


def _close(y: np.ndarray, xs: list[np.ndarray], ref: np.ndarray, op: str) -> bool:
    if y.dtype.kind not in "fc" or op not in ("SUM", "PROD"):
        return y.dtype == xs[0].dtype and np.array_equal(y, ref)
    eps = float(np.finfo(y.dtype).eps)
    p = len(xs)
    if op == "SUM":
        bound = 4 * p * eps * sum(np.abs(x.astype(ref.dtype)) for x in xs)
    else:
        bound = 8 * p * eps * np.abs(ref)
    # the elementwise result is rounded to the dtype once more at the end
    bound = bound + 2 * eps * np.abs(ref) + (float(np.finfo(y.dtype).tiny) if y.dtype.kind == "f" else 0.0)
    return bool(np.all(np.abs(y.astype(ref.dtype) - ref) <= bound))


def _run_cases(comm: MPI.Intracomm, algorithms: list[str], quick: bool) -> tuple[int, list[str], list[str]]:
    rank, size = comm.Get_rank(), comm.Get_size()
    digests: list[str] = []
    failures: list[str] = []
    case = 0
    counts = itertools.cycle(COUNTS if not quick else COUNTS[:7])
    for alg in algorithms:
        for op_name, code in itertools.product(OPS, DTYPES):
            dtype = np.dtype(code)
            op = getattr(MPI, op_name)
            datatype = MPI.Datatype.fromcode(code)
            if reducer(op, datatype) is None:
                continue
            if quick and case % 3:
                case += 1
                continue
            count = next(counts)
            in_place = case % 2 == 1
            xs = _inputs(case, size, dtype, op_name, count)
            ref = _reference(xs, op_name)
            results = []
            for _ in range(2 if case % 4 < 2 else 1):
                y = np.full(count, 7, dtype)
                if in_place:
                    y[...] = xs[rank]
                    allreduce(comm, MPI.IN_PLACE, y, op, alg)
                else:
                    x = xs[rank].copy()
                    allreduce(comm, x, y, op, alg)
                    if not np.array_equal(x, xs[rank]):
                        failures.append(f"{alg} {op_name} {code} n={count}: sendbuf modified")
                results.append(y)
            label = f"{alg} {op_name} {code} n={count} {'in place' if in_place else 'out of place'}"
            if len(results) == 2 and _significant(results[0]) != _significant(results[1]):
                failures.append(f"{label}: two calls gave different bits")
            if not _close(results[0], xs, ref, op_name):
                err = np.max(np.abs(results[0].astype(ref.dtype) - ref))
                failures.append(f"{label}: differs from the numpy reference (max abs error {err})")
            digests.append(hashlib.sha256(_significant(results[0])).hexdigest())
            case += 1
    failures += _pipelined_cases(comm, digests)
    return case, [*failures, *_spec_cases(comm, algorithms, digests)], digests


def _pipelined_cases(comm: MPI.Intracomm, digests: list[str]) -> list[str]:
    """Both hierarchical variants in segments (also more segments than elements), in place and not."""
    rank, size = comm.Get_rank(), comm.Get_size()
    topo = topology(comm)
    failures = []
    for k, (variant, segments, count, op_name, code) in enumerate(
        itertools.product((node_root, shard_parallel), (2, 3, 5), (2, 37, 1001), ("SUM", "MAX", "BXOR"), ("f8", "i4"))
    ):
        dtype, op = np.dtype(code), getattr(MPI, op_name)
        red = reducer(op, MPI.Datatype.fromcode(code))
        if red is None:
            continue
        xs = _inputs(10_000 + k, size, dtype, op_name, count)
        ref = _reference(xs, op_name)
        y = xs[rank].copy()
        send = None if k % 2 else xs[rank].copy()
        variant(topo, send, y, red, MPI.Datatype.fromcode(code), op, "native", segments)
        if not _close(y, xs, ref, op_name):
            failures.append(f"{variant.__name__} segments={segments} {op_name} {code} n={count}: wrong result")
        digests.append(hashlib.sha256(y.tobytes()).hexdigest())
    return failures


def _spec_cases(comm: MPI.Intracomm, algorithms: list[str], digests: list[str]) -> list[str]:
    """mpi4py buffer-spec forms, counts of 0, and what goes to MPI untouched."""
    rank, size = comm.Get_rank(), comm.Get_size()
    failures = []
    expected = sum(range(1, size + 1))
    contiguous3 = MPI.DOUBLE.Create_contiguous(3).Commit()
    try:
        for alg in algorithms:
            a = np.full(12, rank + 1.0)
            out = np.zeros(16)
            allreduce(comm, [a, 10, MPI.DOUBLE], [out, (10, 2), MPI.DOUBLE], MPI.SUM, alg)
            if not (np.all(out[2:12] == expected) and np.all(out[:2] == 0) and np.all(out[12:] == 0)):
                failures.append(f"{alg}: [buf, count, dt] / [buf, (count, displ), dt] gave {out}")
            out = np.zeros(12)
            allreduce(comm, [a, 3, 1, MPI.DOUBLE], [out, 3, 2, MPI.DOUBLE], MPI.SUM, alg)
            if not (np.all(out[2:5] == expected) and np.all(out[:2] == 0) and np.all(out[5:] == 0)):
                failures.append(f"{alg}: [buf, count, displ, dt] gave {out}")
            if try_allreduce(comm, [a, 2, contiguous3], [out, 2, contiguous3], MPI.SUM, alg) is not NotImplemented:
                failures.append(f"{alg}: took a derived datatype, which MPI's operations do not define")
            raw = bytearray(np.arange(8, dtype=np.int32) * (rank + 1))
            allreduce(comm, MPI.IN_PLACE, [raw, MPI.INT], MPI.SUM, alg)
            if not np.array_equal(np.frombuffer(raw, np.int32), np.arange(8) * expected):
                failures.append(f"{alg}: bytearray with [buf, MPI.INT] gave {np.frombuffer(raw, np.int32)}")
            grid = np.asfortranarray(np.arange(6.0).reshape(2, 3) * (rank + 1))
            res = np.empty_like(grid)
            allreduce(comm, grid, res, MPI.MAX, alg)
            if not np.array_equal(res, np.arange(6.0).reshape(2, 3) * size):
                failures.append(f"{alg}: Fortran-ordered 2-D arrays gave {res}")
            empty = np.zeros(0)
            allreduce(comm, np.zeros(0), empty, MPI.SUM, alg)
            ours = size > 1 and plan(comm, a.nbytes, alg)[0] != "native"
            if (try_allreduce(comm, a, np.empty_like(a), MPI.SUM, alg) is None) != ours:
                failures.append(f"{alg}: try_allreduce should {'run it' if ours else 'hand it to MPI'}")
            digests.append(hashlib.sha256(out.tobytes()).hexdigest())
        # what commlib leaves to MPI still works through allreduce, and try_allreduce declines it
        user = MPI.Op.Create(lambda x, y, dt: None, commute=False)
        try:
            for op in (user, MPI.MAXLOC):
                buf = np.array([rank + 1.0, rank], dtype=np.float64)
                spec = [buf, 1, MPI.DOUBLE_INT] if op is MPI.MAXLOC else buf
                if (
                    handles(comm, MPI.IN_PLACE, spec, op)
                    or try_allreduce(comm, MPI.IN_PLACE, spec, op) is not NotImplemented
                ):
                    failures.append(f"op {op}: should be left to MPI")
            pair = np.zeros(1, dtype=np.dtype([("v", "f8"), ("i", "i4")], align=True))
            pair["v"], pair["i"] = rank * 1.5, rank
            res = np.zeros_like(pair)
            allreduce(comm, [pair, MPI.DOUBLE_INT], [res, MPI.DOUBLE_INT], MPI.MAXLOC, "star")
            if res["i"][0] != size - 1 or res["v"][0] != (size - 1) * 1.5:
                failures.append(f"MAXLOC through MPI gave {res}")
        finally:
            user.Free()
    finally:
        contiguous3.Free()
    return failures


def main() -> int:
    parser = argparse.ArgumentParser()
    # hierarchical-levels has its own cases (hierarchy_cases.py), on shapes with levels above the node
    parser.add_argument("--algorithms", nargs="+", default=[a for a in ALGORITHMS if a != "hierarchical-levels"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--node-id-mod", type=int, default=0)
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if args.node_id_mod:
        topology(comm, method="env", node_id=f"node-{rank % args.node_id_mod}")  # any name
    cases, failures, digests = _run_cases(comm, args.algorithms, args.quick)
    every = comm.allgather(digests)
    if any(d != every[0] for d in every):
        first = next(k for k in range(len(digests)) if len({d[k] for d in every}) > 1)
        failures.append(f"ranks hold different bits from result {first} on")
    topo = topology(comm)
    shape = f"nodes {[len(m) for m in topo.nodes]} by {topo.method}"
    plans = {alg: plan(comm, 1 << 20, alg)[0] for alg in ("auto", "hierarchical")}
    if cost.Shape(topo.node_of).n_nodes == 1 and plans["auto"] != "native":
        failures.append(f"auto picked {plans['auto']} on one node")
    release(comm)
    all_failures = comm.gather(failures, root=0)
    if rank == 0:
        flat = [f"rank {r}: {f}" for r, fs in enumerate(all_failures) for f in fs]
        if flat:
            print("\n".join(flat[:40]), file=sys.stderr)
            return 1
        everything = hashlib.sha256("".join(digests).encode()).hexdigest()[:16]
        print(f"OK allreduce on {size} ranks: {cases} cases, {shape}, 1 MiB plans {plans}, results {everything}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
