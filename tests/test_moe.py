"""Expert all-to-all: routing plans (simulated exchange at 1-5 ranks), dispatch/combine on one rank, errors.

The multi-rank runs over MPI are in tests/mpi/moe_cases.py (launched at the end of this file).
"""

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mpi4py import MPI

from collectives.moe import RecvInfo, combine, dispatch, release_buffers
from collectives.moe.combining import _weighted_sum
from collectives.placement import Placement
from collectives.routing import ExpertMap, plan_receive, plan_send, row_runs

SELF = MPI.COMM_SELF


@st.composite
def routings(draw):
    """Per-rank routing tables for 1-5 ranks: uniform or skewed ids, ``-1`` holes, empty ranks, any placement."""
    ranks = draw(st.integers(1, 5))
    experts = draw(st.integers(1, 12))
    k = draw(st.integers(1, min(4, experts)))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    skew = draw(st.sampled_from([0.0, 2.0]))
    holes = draw(st.sampled_from([0.0, 0.3, 1.0]))
    p = 1.0 / np.arange(1, experts + 1) ** skew
    p /= p.sum()
    tables = []
    for _ in range(ranks):
        n = draw(st.sampled_from([0, 1, 5, 23]))
        idx = np.array([rng.choice(experts, size=k, replace=False, p=p) for _ in range(n)], np.int64).reshape(n, k)
        idx[rng.random((n, k)) < holes] = -1
        tables.append(idx)
    owner = draw(st.sampled_from(["contiguous", "random"]))
    emap = (
        ExpertMap.contiguous(experts, ranks)
        if owner == "contiguous"
        else ExpertMap.from_owner(rng.integers(0, ranks, experts), ranks)
    )
    capacity = draw(st.sampled_from([None, 1, 3]))
    dedup = draw(st.booleans())
    return tables, emap, capacity, dedup


def simulate(xs, tables, emap, capacity, dedup):
    """dispatch + (expert e: rows * (e + 1)) + combine, with numpy copies standing in for the exchanges."""
    ranks = emap.num_ranks
    plans = [plan_send(idx, emap, capacity=capacity, dedup=dedup) for idx in tables]
    outs = []
    received = []
    for d in range(ranks):
        primaries = np.stack([plans[s].primaries[d] for s in range(ranks)])
        extras = np.stack([plans[s].extras[d] for s in range(ranks)])
        layout = plan_receive(primaries, extras)
        recv = np.full((layout.num_rows, xs[0].shape[1]), np.nan)
        extra_index = []
        for s, plan in enumerate(plans):
            start = plan.send_counts[:d].sum()
            rows = plan.send_rows[start : start + plan.send_counts[d]]
            block = xs[s][rows]
            at = 0
            for local in range(primaries.shape[1]):
                count = primaries[s, local]
                recv[layout.offsets[local, s] : layout.offsets[local, s] + count] = block[at : at + count]
                at += count
            x_start = plan.extra_counts[:d].sum()
            extra_index.append(plan.extra_index[x_start : x_start + plan.extra_counts[d]])
        copy_from, copy_to = layout.copies(np.concatenate(extra_index))
        recv[copy_to] = recv[copy_from]
        assert not np.isnan(recv).any()
        bounds = layout.expert_bounds
        y = recv.copy()
        for local, e in enumerate(emap.experts_of(d)):
            y[bounds[local] : bounds[local + 1]] *= e + 1
        received.append((layout, y))
    for s, plan in enumerate(plans):
        n, k = tables[s].shape
        returned = np.zeros((n * k, xs[s].shape[1]))
        at = 0
        for d in range(ranks):
            layout, y = received[d]
            rows = np.concatenate(
                [
                    y[layout.offsets[ll, s] : layout.offsets[ll, s] + layout.counts[ll, s]]
                    for ll in range(layout.counts.shape[0])
                ]
            )
            returned[plan.return_slots[at : at + rows.shape[0]]] = rows
            at += rows.shape[0]
        assert at == plan.return_slots.size
        weights = np.where(plan.kept, 1.0 + np.arange(k), 0.0)
        outs.append(_weighted_sum(np, returned, None, weights, np.dtype(np.float64)))
    return plans, outs


@settings(deadline=None, max_examples=max(50, settings.default.max_examples // 5))  # each example: a whole exchange
@given(routings())
def test_simulated_exchange_gives_each_tokens_weighted_expert_outputs(case):
    tables, emap, capacity, dedup = case
    xs = [np.random.default_rng(r).standard_normal((idx.shape[0], 3)) for r, idx in enumerate(tables)]
    plans, outs = simulate(xs, tables, emap, capacity, dedup)
    for idx, x, plan, out in zip(tables, xs, plans, outs):
        n, k = idx.shape
        kept = plan.kept
        assert not (kept & (idx < 0)).any()
        if capacity is None:
            assert np.array_equal(kept, idx >= 0)
        else:
            assert (np.bincount(idx[kept], minlength=emap.num_experts) <= capacity).all()
            assert plan.dropped.sum() == (idx >= 0).sum() - kept.sum()
        ref = np.zeros_like(x)
        for slot in range(k):
            factor = np.where(kept[:, slot], (idx[:, slot] + 1) * (1.0 + slot), 0.0)
            ref += factor[:, None] * x
        np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
        # A token travels once per destination with dedup, once per pair without.
        sent = plan.send_counts
        dests = np.where(kept, emap.owner[np.where(idx >= 0, idx, 0)], -1)
        for d in range(emap.num_ranks):
            start = sent[:d].sum()
            rows = plan.send_rows[start : start + sent[d]]
            pairs = int((dests == d).sum())
            tokens = int((dests == d).any(axis=1).sum())
            assert rows.size == (tokens if dedup else pairs)
            if dedup:
                assert np.unique(rows).size == rows.size


def test_capacity_keeps_first_choices_then_earlier_tokens():
    idx = np.array([[0, 1], [1, 0], [0, 1], [1, 0], [0, -1]])
    plan = plan_send(idx, ExpertMap.contiguous(2, 1), capacity=2)
    # expert 0: slot-0 pairs of tokens 0, 2, 4, then slot-1 pairs of tokens 1, 3 -> keeps tokens 0 and 2
    # expert 1: slot-0 pairs of tokens 1, 3, then slot-1 pairs of tokens 0, 2 -> keeps tokens 1 and 3
    want = np.array([[True, False], [True, False], [True, False], [True, False], [False, False]])
    assert np.array_equal(plan.kept, want)
    assert plan.dropped.tolist() == [3, 2]


def test_expert_map_numbers_local_experts_in_global_order():
    emap = ExpertMap.from_owner([2, 0, 2, 1, 0], 3)
    assert emap.local.tolist() == [0, 0, 1, 0, 1]
    assert emap.experts_of(2).tolist() == [0, 2]
    assert ExpertMap.contiguous(5, 2).owner.tolist() == [0, 0, 0, 1, 1]
    assert ExpertMap.contiguous(2, 3).num_local.tolist() == [1, 1, 0]
    assert emap.digest() != ExpertMap.from_owner([2, 0, 2, 0, 1], 3).digest()


def test_row_runs_merges_consecutive_rows():
    starts, lengths = row_runs(np.array([4, 5, 6, 9, 3, 4]))
    assert starts.tolist() == [4, 9, 3] and lengths.tolist() == [3, 1, 2]
    assert row_runs(np.array([], np.int64))[0].size == 0


def identity_round_trip(x, idx, w, **kwargs):
    recv_x, info, handle = dispatch(x, idx, w, SELF, kwargs.pop("num_experts", 4), **kwargs)
    return recv_x, info, handle, combine(recv_x.copy(), handle)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize("dedup", [True, False])
@pytest.mark.parametrize("pack", ["gather", "mpi"])
def test_one_rank_identity_experts_give_the_weighted_sum_bitwise(dtype, dedup, pack):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 7)).astype(dtype)
    idx = np.argsort(rng.random((50, 4)), axis=1)[:, :2]
    idx[::7, 1] = -1
    w = rng.random((50, 2)).astype(np.float32)
    recv_x, info, handle, out = identity_round_trip(x, idx, w, dedup=dedup, pack=pack)
    acc = np.float32 if dtype == np.float16 else dtype
    weights = np.where(idx >= 0, w, 0).astype(acc)
    ref = x.astype(acc) * weights[:, :1] + x.astype(acc) * weights[:, 1:]
    assert out.dtype == dtype and np.array_equal(out, ref.astype(dtype))
    assert isinstance(info, RecvInfo) and len(info) == 4 and info.num_rows == recv_x.shape[0] == (idx >= 0).sum()
    assert handle.dispatch_bytes == 0  # nothing leaves a single rank


def test_one_rank_edge_cases():
    # no tokens
    _, info, _, out = identity_round_trip(np.zeros((0, 3), np.float32), np.zeros((0, 2), np.int64), np.zeros((0, 2)))
    assert out.shape == (0, 3) and info.num_rows == 0
    # every slot empty: zero output, no rows
    x = np.ones((4, 3), np.float32)
    _, info, _, out = identity_round_trip(x, np.full((4, 2), -1), np.ones((4, 2)))
    assert info.num_rows == 0 and not out.any()
    # capacity: experts keep ceil(cf * N * K / E) pairs
    idx = np.zeros((8, 1), np.int64)
    _, info, handle, out = identity_round_trip(x[:1].repeat(8, 0), idx, np.ones((8, 1)), capacity_factor=1.0)
    assert info.capacity == 2 and info.dropped.tolist() == [6, 0, 0, 0]
    assert out[:2].all() and not out[2:].any()
    # a strided x, and combine after the scratch buffers were released
    wide = np.arange(4 * 6, dtype=np.float32).reshape(4, 6)
    recv_x, _, handle = dispatch(wide[:, ::2], np.array([[0], [1], [2], [3]]), np.ones((4, 1)), SELF, 4)
    release_buffers()
    assert np.array_equal(combine(recv_x, handle), wide[:, ::2])
    # a one-layer Placement object and an owner array are both accepted
    for placement in (Placement(np.zeros((1, 4), np.int64), 1), np.zeros(4, np.int64)):
        _, info, _, out = identity_round_trip(x, np.array([[3], [1], [0], [2]]), np.ones((4, 1)), placement=placement)
        assert info.experts.tolist() == [0, 1, 2, 3] and np.array_equal(out, x)


def test_weighted_sum_in_chunks_matches_one_pass(monkeypatch):
    import collectives.moe.combining as moe

    rng = np.random.default_rng(0)
    rows = rng.standard_normal((30 * 3 + 1, 5)).astype(np.float16)
    rows[-1] = 0
    w = rng.random((30, 3))
    positions = rng.permutation(30 * 3).reshape(30, 3)
    positions[::4, 2] = 30 * 3  # the zero row: a missing pair
    w[::4, 2] = 0
    whole = _weighted_sum(np, rows, positions, w, np.dtype(np.float16))
    in_place = np.empty((30 * 3, 5), np.float16)
    in_place[np.arange(30 * 3)] = rows[positions.reshape(-1)]
    assert np.array_equal(_weighted_sum(np, in_place, None, w, np.dtype(np.float16)), whole)
    monkeypatch.setattr(moe, "_CHUNK_BYTES", 40)
    assert np.array_equal(_weighted_sum(np, rows, positions, w, np.dtype(np.float16)), whole)
    assert np.array_equal(_weighted_sum(np, in_place, None, w, np.dtype(np.float16)), whole)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"x": np.zeros(4)}, "x must be a"),
        ({"idx": np.zeros((3, 2), np.int64)}, "topk_idx must be"),
        ({"idx": np.zeros((4, 2))}, "integer expert ids"),
        ({"idx": np.full((4, 2), 4)}, "ids 4..4"),
        ({"idx": np.array([[0, 1], [2, 2], [0, -1], [-1, -1]])}, "row 1 names an expert twice"),
        ({"w": np.zeros((4, 1))}, "topk_weights has shape"),
        ({"w": np.zeros((4, 2), np.int64)}, "floating point"),
        ({"num_experts": 0}, "num_experts must be"),
        ({"placement": np.zeros(3, np.int64)}, "placement has 3 experts"),
        ({"placement": np.array([0, 1, 0, 0])}, "names ranks 0..1 on 1 ranks"),
        ({"placement": Placement(np.zeros((2, 4), np.int64), 1)}, "placement of 2 layers"),
        ({"capacity_factor": 0.0}, "capacity_factor must be > 0"),
        ({"pack": "memcpy"}, "pack must be one of gather, mpi"),
    ],
)
def test_dispatch_rejects_bad_input_before_communicating(kwargs, message):
    args = {"x": np.zeros((4, 3)), "idx": np.zeros((4, 2), np.int64), "w": np.ones((4, 2)), "num_experts": 4}
    args["idx"][:, 1] = 1
    args.update(kwargs)
    extra = {k: v for k, v in args.items() if k in ("placement", "capacity_factor", "pack")}
    with pytest.raises(ValueError, match=message):
        dispatch(args["x"], args["idx"], args["w"], SELF, args["num_experts"], **extra)


def test_combine_rejects_bad_outputs():
    x = np.ones((4, 3), np.float32)
    idx = np.array([[0], [1], [2], [3]])
    recv_x, _, handle = dispatch(x, idx, np.ones((4, 1)), SELF, 4)
    with pytest.raises(ValueError, match=r"y must be \[4, features >= 1\]"):
        combine(recv_x[:3], handle)
    with pytest.raises(ValueError, match="floating point"):
        combine(recv_x.astype(np.int32), handle)
    with pytest.raises(ValueError, match="MoEHandle"):
        combine(recv_x, object())


@pytest.mark.mpi
@pytest.mark.parametrize("nprocs", [1, 2, 3, 4, 5])
def test_dispatch_combine_across_ranks(mpirun, nprocs):
    script = Path(__file__).parent / "mpi" / "moe_cases.py"
    result = mpirun(nprocs, [str(script)], timeout=240)
    assert f"OK on {nprocs} ranks: 36 cases" in result.stdout


@pytest.mark.mpi
def test_moe_layer_example_matches_its_local_evaluation(mpirun):
    example = Path(__file__).parent.parent / "examples" / "moe_layer.py"
    result = mpirun(3, [str(example), "--tokens", "300", "--shuffle", "--capacity-factor", "1.25"], timeout=180)
    assert "moe_layer: 3 ranks" in result.stdout and result.stdout.rstrip().endswith("OK")


@pytest.mark.mpi
def test_moe_benchmark_quick_run_writes_json(tmp_path, capsys):
    from commlib.bench.moe import main

    out = tmp_path / "moe.json"
    args = ["--quick", "--parts", "exchange", "placement", "--iters", "2", "--dtypes", "float16"]
    assert main([*args, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "straightforward mpi4py" in table and "node cut" in table
    data = json.loads(out.read_text())
    (row,) = data["exchange"]
    assert row["ok"] and set(row["median_s"]) == {"dedup", "typed", "replicated", "mpi4py"}
    assert row["bytes"]["dedup"]["dispatch"] < row["bytes"]["replicated"]["dispatch"]
    assert {p["fanout"] for p in data["placement"]} == {1, 2}
    assert all(
        p["fractions"]["milp"]["cross_node"] <= p["fractions"]["contiguous"]["cross_node"] for p in data["placement"]
    )
