"""Expert all-to-all on N ranks: dispatch + experts + combine against the weighted sum computed locally.

Every rank runs the same list of cases (random, skewed, empty and ``-1``
routings; default, balanced, unbalanced and layered placements; dedup on and
off; capacities; fp32, fp16 and fp64 payloads; a different output width;
rows handed to MPI gathered or through datatypes) and
checks, bitwise, that ``combine`` returns each token's weighted sum of
``f_e(x)`` over its kept experts, that every expert received exactly its
tokens in (source rank, token) order, that a token crossed to each rank at
most once, that capacity drops exactly the documented pairs, that the
straightforward mpi4py baseline agrees, and that ranks disagreeing on the row
width all raise instead of hanging. Prints ``OK on N ranks: C cases``.
"""

import math
import sys

import numpy as np
from mpi4py import MPI

from collectives.moe import combine, dispatch
from collectives.placement import Placement
from collectives.routing import ExpertMap
from commlib.bench.moe_mpi4py import naive_combine, naive_dispatch

comm = MPI.COMM_WORLD
P, me = comm.Get_size(), comm.Get_rank()


def expert_fn(e, rows):
    """A different, exactly reproducible function per expert."""
    return rows * rows.dtype.type(e + 1) + rows.dtype.type(e % 3)


def narrow_fn(e, rows):
    return rows[:, :1] * rows.dtype.type(e + 2)


def routing(rng, n, num_experts, k, kind):
    if kind == "skewed":
        p = 1.0 / np.arange(1, num_experts + 1) ** 2
        p /= p.sum()
        idx = np.array([rng.choice(num_experts, size=k, replace=False, p=p) for _ in range(n)]).reshape(n, k)
    else:
        idx = np.argsort(rng.random((n, num_experts)), axis=1)[:, :k]
    idx = idx.astype(np.int64)
    if kind == "holes":
        idx[rng.random((n, k)) < 0.3] = -1
    if kind == "none":
        idx[:] = -1
    return idx


def reference(x, idx, w, kept, fn, dtype):
    """Each token's sum over slots of weight * f_e(x), in slot order, accumulated as combine documents."""
    acc = np.result_type(dtype, np.float32) if np.dtype(dtype).itemsize < 4 else np.dtype(dtype)
    n, k = idx.shape
    out = np.zeros((n, fn(0, x[:0]).shape[1]), acc)
    weights = np.where(kept, w.astype(np.float64), 0.0).astype(acc)
    for slot in range(k):
        y = np.zeros(out.shape, dtype)
        for e in np.unique(idx[:, slot][kept[:, slot]]):
            rows = kept[:, slot] & (idx[:, slot] == e)
            y[rows] = fn(int(e), x[rows])
        term = y.astype(acc) * weights[:, slot, None]
        out = term if slot == 0 else out + term
    return out.astype(dtype)


def expected_kept(all_idx, num_experts, capacity):
    """The documented rule: per source and expert, pairs ranked by (slot, token), the first ``capacity`` kept."""
    idx = all_idx[me]
    kept = idx >= 0
    if capacity is None:
        return kept
    n, k = idx.shape
    for e in range(num_experts):
        ranked = [(slot, t) for slot in range(k) for t in range(n) if idx[t, slot] == e]
        for slot, t in ranked[capacity:]:
            kept[t, slot] = False
    return kept


def run_case(case, seed):
    num_experts, width = case["E"], case["M"]
    k = min(case["K"], num_experts)
    dtype = np.dtype(case.get("dtype", np.float32))
    rng = np.random.default_rng([seed, me])
    n = case["N"][me % len(case["N"])]
    x = np.zeros((n, width), dtype)
    x[:, 0] = me
    x[:, 1] = np.arange(n)
    x[:, 2:] = rng.standard_normal((n, width - 2)).astype(dtype)
    idx = routing(rng, n, num_experts, k, case.get("kind", "uniform"))
    w = rng.random((n, k)).astype(case.get("wdtype", np.float32))
    owner = case.get("owner")
    placement = None
    if owner == "balanced":
        placement = np.random.default_rng(seed).permutation(np.arange(num_experts) % P)
    elif owner == "unbalanced":
        placement = np.random.default_rng(seed).integers(0, P, num_experts)
    elif owner == "layered":
        layers = np.stack([np.random.default_rng(seed + i).permutation(np.arange(num_experts) % P) for i in range(3)])
        placement = Placement(layers, P)[1]
    emap = ExpertMap.contiguous(num_experts, P) if placement is None else ExpertMap.from_owner(placement, P)
    fn = narrow_fn if case.get("narrow") else expert_fn
    cf, dedup = case.get("cf"), case.get("dedup", True)

    pack = case["pack"]
    recv_x, info, handle = dispatch(x, idx, w, comm, num_experts, placement, cf, dedup=dedup, pack=pack)

    all_idx = comm.allgather(idx)
    capacity = None
    if cf is not None:
        capacity = math.ceil(cf * max(a.size for a in all_idx) / num_experts)
    assert info.capacity == capacity, (info.capacity, capacity)
    all_kept = comm.allgather(expected_kept(all_idx, num_experts, capacity))
    assert np.array_equal(handle.send.kept, all_kept[me]), "capacity kept the wrong pairs"
    dropped = np.bincount(idx[(idx >= 0) & ~all_kept[me]], minlength=num_experts)
    assert np.array_equal(info.dropped, dropped), (info.dropped, dropped)

    # Every local expert got exactly its kept pairs, by source rank; from each source first the tokens whose
    # lowest local expert here it is, then (with dedup) the tokens that arrived for a lower one; each in token order.
    assert np.array_equal(info.experts, emap.experts_of(me))
    for local, e in enumerate(info.experts):
        rows = recv_x[info.slice(local)]
        want = []
        for s in range(P):
            mine = [t for t in range(all_idx[s].shape[0]) if (all_idx[s][t] == e)[all_kept[s][t]].any()]
            here = [[x2 for x2 in all_idx[s][t][all_kept[s][t]] if emap.owner[x2] == me] for t in mine]
            lowest = [not dedup or emap.local[e] == min(emap.local[h] for h in hs) for hs in here]
            want += [(s, t) for t, low in zip(mine, lowest) if low] + [
                (s, t) for t, low in zip(mine, lowest) if not low
            ]
        got = [(int(a), int(b)) for a, b in rows[:, :2]]
        assert got == want, (e, got, want)
        assert info.counts[local].tolist() == [sum(1 for s2, _ in want if s2 == s) for s in range(P)]

    # Each token crosses to another rank once per rank (with dedup) or once per pair.
    dests = np.where(all_kept[me], emap.owner[np.where(idx >= 0, idx, 0)], -1)
    crossing = [(t, d) for t in range(n) for d in set(dests[t].tolist()) if d not in (-1, me)]
    rows_out = len(crossing) if dedup else int(((dests >= 0) & (dests != me)).sum())
    assert handle.dispatch_bytes == rows_out * width * dtype.itemsize, (handle.dispatch_bytes, rows_out)

    y = np.empty((recv_x.shape[0], fn(0, recv_x[:0]).shape[1]), dtype)
    for local, e in enumerate(info.experts):
        y[info.slice(local)] = fn(int(e), recv_x[info.slice(local)])
    out = combine(y, handle)
    ref = reference(x, idx, w, all_kept[me], fn, dtype)
    assert out.dtype == dtype and out.shape == ref.shape
    assert np.array_equal(out, ref), f"max diff {np.abs(out.astype(float) - ref.astype(float)).max()}"

    again = combine(y, dispatch(x, idx, w, comm, num_experts, placement, cf, dedup=dedup, pack=pack)[2])
    assert np.array_equal(again, out), "not deterministic"

    if case.get("naive"):
        ex, counts, nh = naive_dispatch(x, idx, w, comm, num_experts)
        bounds = np.concatenate(([0], np.cumsum(counts)))
        ny = np.empty((ex.shape[0], y.shape[1]), dtype)
        for local, e in enumerate(info.experts):
            ny[bounds[local] : bounds[local + 1]] = fn(int(e), ex[bounds[local] : bounds[local + 1]])
        np.testing.assert_allclose(naive_combine(ny, nh), out, rtol=1e-5, atol=1e-5)


def check_disagreement():
    """Ranks that pass different widths or capacity factors all raise (and do not hang)."""
    idx = np.zeros((3, 1), np.int64)
    w = np.ones((3, 1), np.float32)
    for kwargs, message in [
        ({"x": np.zeros((3, 4 + (me == P - 1)), np.float32)}, "disagree on the row width"),
        ({"capacity_factor": 1.0 if me == 0 else None}, "disagree on the capacity_factor"),
        ({"capacity_factor": 1.0 + (me == P - 1)}, "disagree on the capacity_factor"),
    ]:
        x = kwargs.pop("x", np.zeros((3, 4), np.float32))
        try:
            dispatch(x, idx, w, comm, 2 * P, **kwargs)
        except ValueError as err:
            assert message in str(err) and P > 1, err
            continue
        assert P == 1, f"no rank noticed: {message}"


CASES = [
    {"E": 2 * P, "K": 2, "M": 8, "N": [40, 0, 17, 33, 5], "naive": True},
    {"E": 2 * P, "K": 2, "M": 8, "N": [40, 0, 17, 33, 5], "dedup": False, "naive": True},
    {"E": 4 * P, "K": 3, "M": 5, "N": [60, 7, 0, 21], "kind": "skewed", "naive": True},
    {"E": 4 * P, "K": 4, "M": 6, "N": [30], "kind": "holes"},
    {"E": 3 * P, "K": 2, "M": 4, "N": [25, 3], "kind": "none"},
    {"E": 2 * P, "K": 2, "M": 4, "N": [0]},
    {"E": max(1, P - 1), "K": 1, "M": 3, "N": [13, 2, 0]},
    {"E": P + 3, "K": 2, "M": 4, "N": [20, 9]},
    {"E": 3 * P, "K": 3, "M": 6, "N": [50, 12, 31], "owner": "balanced"},
    {"E": 3 * P, "K": 3, "M": 6, "N": [50, 12, 31], "owner": "unbalanced", "kind": "holes"},
    {"E": 2 * P, "K": 2, "M": 6, "N": [22, 40], "owner": "layered"},
    {"E": 2 * P, "K": 2, "M": 8, "N": [64, 5, 31], "cf": 0.5},
    {"E": 2 * P, "K": 2, "M": 8, "N": [64, 5, 31], "cf": 1.0, "kind": "skewed"},
    {"E": 2 * P, "K": 3, "M": 8, "N": [64, 0, 31], "cf": 1.5, "kind": "holes", "dedup": False},
    {"E": 2 * P, "K": 2, "M": 8, "N": [30, 10], "dtype": np.float16},
    {"E": 2 * P, "K": 2, "M": 8, "N": [30, 10], "dtype": np.float64, "wdtype": np.float64, "cf": 0.75},
    {"E": 2 * P, "K": 2, "M": 8, "N": [30, 10], "narrow": True, "kind": "skewed"},
    {"E": 16, "K": 8, "M": 3, "N": [20, 11, 0], "kind": "holes", "owner": "unbalanced"},
]


def main():
    cases = 0
    for seed, case in enumerate(CASES):
        for pack in ("gather", "mpi"):
            run_case({**case, "pack": pack}, 1000 + seed)
            cases += 1
    check_disagreement()
    comm.Barrier()
    if me == 0:
        print(f"OK on {P} ranks: {cases} cases")
        sys.stdout.flush()


main()
