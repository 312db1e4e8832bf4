"""Multi-rank check of the collectives over hierarchies of any depth, on many emulated shapes in one launch.

Every shape is a duplicate of ``COMM_WORLD`` with its own node ids and levels
(two and three levels, uneven, interleaved, a level inside the node). On
each, at every depth, the allreduce, reduce-scatter (block and vector) and
allgather (block and vector) run in place and not, for a rotating share of
every (op, dtype) pair the allreduce supports (all of them on the first
three-level shape), against numpy references; allreduce results are compared
across ranks and between two calls, bit for bit. Then the interposer's
``Reduce_scatter*``/``Allgather*`` and ``Allreduce`` with ``auto`` on the levels, and
the errors. Prints ``OK hierarchy on N ranks: C cases`` when everything matches.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import sys

import numpy as np
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from allreduce_cases import DTYPES, OPS, _close, _inputs, _reference, _significant  # noqa: E402

import commlib.interposer.comm  # noqa: E402
from collectives import hierarchical_calls as hc  # noqa: E402
from collectives.allreduce import allreduce, plan  # noqa: E402
from collectives.hierarchical_allreduce import allreduce_levels  # noqa: E402
from collectives.hierarchy import hierarchy  # noqa: E402
from collectives.reduction import reducer  # noqa: E402
from collectives.reduction_check import local_faults  # noqa: E402
from collectives.settings import settings  # noqa: E402
from collectives.topology import release, topology  # noqa: E402

PAIRS = [
    (op, code)
    for op, code in itertools.product(OPS, DTYPES)
    if reducer(getattr(MPI, op), MPI.Datatype.fromcode(code)) is not None
]


def shapes(p: int) -> list[tuple[str, list, list]]:
    """(label, node id per rank, levels per rank) of every shape tried on ``p`` ranks."""
    return [
        ("racks of 2-rank nodes", [r // 2 for r in range(p)], [[("rack", r // 4)] for r in range(p)]),
        ("nodes only", [r // 3 for r in range(p)], [[] for _ in range(p)]),
        ("interleaved", [r % 3 for r in range(p)], [[("rack", (r % 3) % 2)] for r in range(p)]),
        ("uneven racks", [r // 3 for r in range(p)], [[("rack", min(r // 3, 1))] for r in range(p)]),
        (
            "socket, node, rack",
            [0] * p,
            [[("socket", r // 2), ("node", r // 4), ("rack", r // 6)] for r in range(p)],
        ),
    ]


class Checker:
    def __init__(self, comm: MPI.Intracomm) -> None:
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.failures: list[str] = []
        self.digests: list[str] = []
        self.cases = 0

    def expect(self, ok: bool, label: str) -> None:
        self.cases += 1
        if not ok:
            self.failures.append(label)


def _allreduce_case(ck: Checker, h, depth: int, op_name: str, code: str, case: int) -> None:
    dtype, op, datatype = np.dtype(code), getattr(MPI, op_name), MPI.Datatype.fromcode(code)
    if local_faults().get((op_name, datatype.Get_name()), "nan") != "nan":
        return  # a pair this MPI reduces wrongly: collectives.allreduce never gives it to these steps
    count = (1, 7, 37, 1000)[case % 4]
    xs = _inputs(case, ck.size, dtype, op_name, count)
    ref = _reference(xs, op_name)
    segments = 1 + case % 3
    results = []
    for _ in range(2 if case % 2 else 1):
        y = xs[ck.rank].copy()
        send = None if case % 2 else xs[ck.rank].copy()
        allreduce_levels(h.view(depth), send, y, datatype, op, segments)
        results.append(y)
    label = f"allreduce depth {depth} {op_name} {code} n={count} segments={segments}"
    ck.expect(_close(results[0], xs, ref, op_name), f"{label}: differs from the reference")
    ck.expect(len(results) == 1 or _significant(results[0]) == _significant(results[1]), f"{label}: bits differ")
    ck.digests.append(hashlib.sha256(_significant(results[0])).hexdigest())


def _reduce_scatter_case(ck: Checker, comm, depth: int, op_name: str, code: str, case: int) -> None:
    dtype, op = np.dtype(code), getattr(MPI, op_name)
    p, rank = ck.size, ck.rank
    counts = [(case + 2 * r) % 4 for r in range(p)] if case % 3 else [3] * p
    total = sum(counts)
    xs = _inputs(case, p, dtype, op_name, total)
    ref = _reference(xs, op_name)
    lo = sum(counts[:rank])
    mine = slice(lo, lo + counts[rank])
    in_place = case % 2 == 0
    block = counts == [3] * p
    label = (
        f"reduce_scatter{'_block' if block else ''} depth {depth} {op_name} {code} counts={counts} in_place={in_place}"
    )
    if in_place:
        y = xs[rank].copy()
        args = (MPI.IN_PLACE, y)
    else:
        y = np.full(counts[rank], 5, dtype)
        args = (xs[rank].copy(), y)
    segments = 1 + case % 3
    label += f" segments={segments}"
    if block:
        hc.reduce_scatter_block(comm, *args, op, "hierarchical", levels=depth, segments=segments)
    else:
        hc.reduce_scatter(comm, *args, counts, op, "hierarchical", levels=depth, segments=segments)
    got = y[: counts[rank]]
    ck.expect(_close(got, [x[mine] for x in xs], ref[mine], op_name), f"{label}: differs from the reference")


def _allgather_case(ck: Checker, comm, depth: int, code: str, case: int) -> None:
    dtype = np.dtype(code)
    p, rank = ck.size, ck.rank
    xs = _inputs(case, p, dtype, "SUM", 4 + case % 3)
    if case % 2:
        counts = [(case + r) % 3 for r in range(p)]
        displs = [int(d) + 2 * r for r, d in enumerate(np.cumsum([0, *counts[:-1]]))]
        want = np.full(displs[-1] + counts[-1] + 1, 9, dtype)
        for r in range(p):
            want[displs[r] : displs[r] + counts[r]] = xs[r][: counts[r]]
        y = np.full_like(want, 9)
        send = MPI.IN_PLACE if case % 4 == 1 else xs[rank][: counts[rank]].copy()
        if send is MPI.IN_PLACE:
            y[displs[rank] : displs[rank] + counts[rank]] = xs[rank][: counts[rank]]
        spec = [y, (counts, displs), MPI.Datatype.fromcode(code)]
        hc.allgatherv(comm, send, spec, "hierarchical", levels=depth, segments=1 + case % 3)
        label = f"allgatherv depth {depth} {code} counts={counts} segments={1 + case % 3}"
    else:
        want = np.concatenate(xs)
        y = np.zeros_like(want)
        if case % 4 == 2:
            y[rank * xs[0].size : (rank + 1) * xs[0].size] = xs[rank]
        send = MPI.IN_PLACE if case % 4 == 2 else xs[rank].copy()
        hc.allgather(comm, send, y, "hierarchical", levels=depth, segments=1 + case // 2 % 3)
        label = f"allgather depth {depth} {code} segments={1 + case // 2 % 3}"
    ck.expect(_significant(y) == _significant(want), f"{label}: differs")


def _shape_cases(ck: Checker, world: MPI.Intracomm, label: str, node_of: list, levels: list, share: int) -> str:
    comm = world.Dup()
    try:
        topology(comm, method="env", node_id=f"n{node_of[ck.rank]}")
        h = hierarchy(comm, levels=[(n, str(i)) for n, i in levels[ck.rank]])
        case = 1000 * share
        for depth in range(h.depth + 1):
            for k, (op_name, code) in enumerate(PAIRS):
                if (k + depth) % share:
                    continue
                case += 1
                _allreduce_case(ck, h, depth, op_name, code, case)
                _reduce_scatter_case(ck, comm, depth, op_name, code, case)
            for code in DTYPES:
                case += 1
                _allgather_case(ck, comm, depth, code, case)
        return f"{label}: levels {list(h.names)} shards {list(h.shards)}"
    finally:
        release(comm)
        comm.Free()


def _interposed_cases(ck: Checker, world: MPI.Intracomm) -> None:
    """The interposer's Reduce_scatter_block / Reduce_scatter / Allgather(v) and Allreduce on a 3-level comm."""
    p, rank = ck.size, ck.rank
    comm = world.Dup()
    topology(comm, method="env", node_id=f"n{rank // 2}")
    hierarchy(comm, levels=[("rack", str(rank // 4))])
    wrapped = commlib.interposer.comm.wrap(comm)
    before = (settings.reduce_scatter, settings.allgather)
    try:
        settings.reduce_scatter, settings.allgather = "hierarchical", "hierarchical"
        x = np.arange(4 * p, dtype=np.float64) + rank
        y = np.zeros(4)
        wrapped.Reduce_scatter_block(x, y, MPI.SUM)
        want = sum(np.arange(4 * p, dtype=np.float64) + r for r in range(p))[4 * rank : 4 * rank + 4]
        ck.expect(np.array_equal(y, want), f"interposed Reduce_scatter_block gave {y}")
        counts = [r % 3 for r in range(p)]
        z = np.zeros(max(counts[rank], 1), np.int64)
        wrapped.Reduce_scatter(np.ones(sum(counts), np.int64), z, counts, MPI.SUM)
        ck.expect(np.all(z[: counts[rank]] == p), f"interposed Reduce_scatter gave {z}")
        g = np.zeros(3 * p, np.int16)
        wrapped.Allgather(np.full(3, rank, np.int16), g)
        ck.expect(np.array_equal(g, np.repeat(np.arange(p), 3)), f"interposed Allgather gave {g}")
        gv = np.zeros(sum(counts), np.float32)
        wrapped.Allgatherv(np.full(counts[rank], rank, np.float32), [gv, counts])
        ck.expect(np.array_equal(gv, np.repeat(np.arange(p), counts)), f"interposed Allgatherv gave {gv}")
        a = np.arange(1 << 13, dtype=np.float64) * (rank + 1)
        out = np.empty_like(a)
        allreduce(comm, a, out, MPI.SUM, "hierarchical-levels")
        ck.expect(np.array_equal(out, np.arange(1 << 13) * (p * (p + 1) // 2)), "hierarchical-levels allreduce")
        ck.expect(plan(comm, 1 << 20, "hierarchical-levels")[0] == "hierarchical-levels", "plan of -levels")
        for bad in (lambda: hc.reduce_scatter_block(comm, np.zeros(3 * p + 1), np.zeros(3)),
                    lambda: hc.allgather(comm, np.zeros(2), np.zeros(2 * p + 1), "hierarchical")):  # fmt: skip
            try:
                bad()
                ck.expect(False, "a size mismatch was not refused")
            except ValueError as exc:
                ck.expect("elements" in str(exc) and "float64" in str(exc), f"unclear error: {exc}")
    finally:
        settings.reduce_scatter, settings.allgather = before
        release(comm)
        comm.Free()


def main() -> int:
    world = MPI.COMM_WORLD
    ck = Checker(world)
    described = []
    for k, (label, node_of, levels) in enumerate(shapes(ck.size)):
        described.append(_shape_cases(ck, world, label, node_of, levels, 1 if k == 0 else 7))
    _interposed_cases(ck, world)
    every = world.allgather(ck.digests)
    ck.expect(all(d == every[0] for d in every), "ranks hold different allreduce bits")
    failures = world.gather(ck.failures, root=0)
    if ck.rank == 0:
        flat = [f"rank {r}: {f}" for r, fs in enumerate(failures) for f in fs]
        if flat:
            print("\n".join(flat[:40]), file=sys.stderr)
            return 1
        digest = hashlib.sha256("".join(ck.digests).encode()).hexdigest()[:16]
        print(f"OK hierarchy on {ck.size} ranks: {ck.cases} cases; {'; '.join(described)}; results {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
