"""Expert routing (collectives.routing): send and receive plans, capacity, the expert map, row runs; a whole
exchange simulated on plans alone."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from mpi4py import MPI

from collectives.moe.combining import _weighted_sum
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
