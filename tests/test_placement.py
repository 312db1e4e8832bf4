"""Affinity-aware expert placement and the synthetic affinity traces."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collectives.placement import (
    Placement,
    place_experts,
    placement_cost,
    transition_counts,
    transition_fractions,
)
from collectives.traces import AffinityModel, synthetic_trace


def assert_valid(placement, layers, experts, ranks):
    assert placement.owner.shape == (layers, experts)
    for layer in range(layers):
        assert np.bincount(placement[layer], minlength=ranks).tolist() == [experts // ranks] * ranks


@st.composite
def problems(draw):
    ranks = draw(st.sampled_from([1, 2, 3, 4]))
    experts = ranks * draw(st.integers(1, 3))
    layers = draw(st.integers(1, 4))
    rpn = draw(st.sampled_from([None, 1, 2]))
    rpn = None if rpn is None or rpn > ranks else rpn
    affinity = draw(st.sampled_from([0.0, 0.5, 0.9, 1.0]))
    fanout = draw(st.integers(1, experts))
    seed = draw(st.integers(0, 2**31))
    trace = synthetic_trace(draw(st.sampled_from([0, 5, 200])), layers, experts, affinity, fanout=fanout, seed=seed)
    return trace, experts, ranks, rpn


@settings(deadline=None, max_examples=max(30, settings.default.max_examples // 15))
@given(problems(), st.booleans())
def test_placement_is_balanced_and_never_worse_than_contiguous(problem, refine):
    trace, experts, ranks, rpn = problem
    layers = trace.shape[1]
    placement = place_experts(trace, ranks, rpn, num_experts=experts, refine=refine, time_limit=1.0)
    assert_valid(placement, layers, experts, ranks)
    assert placement.ranks_per_node == rpn
    transitions = transition_counts(trace, experts)
    contiguous = Placement.contiguous(layers, experts, ranks, rpn)
    assert placement_cost(placement, transitions) <= placement_cost(contiguous, transitions)


def test_perfect_chains_are_placed_with_no_crossing():
    model = AffinityModel.random(5, 16, 1.0, seed=4)
    trace = model.sample(2000, seed=1)
    placement = place_experts(trace, 4, 2, num_experts=16, refine=False)
    assert transition_fractions(placement, trace)["cross_rank"] == 0.0
    assert transition_fractions(Placement.contiguous(5, 16, 4, 2), trace)["cross_node"] > 0.3


def test_strong_affinity_cuts_cross_node_transitions_on_a_held_out_trace():
    model = AffinityModel.random(6, 32, 0.9, fanout=2, seed=7)
    placement = place_experts(model.sample(20000, seed=1), 8, 2, num_experts=32, time_limit=3.0)
    held_out = model.sample(20000, seed=2)
    before = transition_fractions(Placement.contiguous(6, 32, 8, 2), held_out)
    after = transition_fractions(placement, held_out)
    assert after["cross_node"] <= 0.6 * before["cross_node"]
    assert after["cross_rank"] < before["cross_rank"]


def test_milp_refinement_improves_on_the_sweeps_where_they_stall():
    model = AffinityModel.random(4, 16, 0.7, fanout=2, seed=5)
    transitions = transition_counts(model.sample(5000, seed=1), 16)
    swept = place_experts(transitions, 4, 2, refine=False)
    refined = place_experts(transitions, 4, 2, refine=True, time_limit=120.0, max_subproblems=1)
    assert_valid(refined, 4, 16, 4)
    assert placement_cost(refined, transitions) < 0.97 * placement_cost(swept, transitions)


def test_transition_counts_of_top1_and_topk_traces():
    trace = np.array([[0, 1, 2], [0, 1, 1], [2, -1, 0]])
    counts = transition_counts(trace, 3)
    assert counts.shape == (2, 3, 3)
    assert counts[0, 0, 1] == 2 and counts[0].sum() == 2  # the -1 breaks token 2's transitions
    assert counts[1, 1, 2] == 1 and counts[1, 1, 1] == 1 and counts[1].sum() == 2
    topk = np.array([[[0, 1], [2, 3]]])  # one token, two layers, two experts each: 4 pairs
    assert transition_counts(topk, 4)[0][np.ix_([0, 1], [2, 3])].tolist() == [[1, 1], [1, 1]]


def test_transition_fractions_count_rank_and_node_crossings():
    placement = Placement(np.array([[0, 1, 2, 3], [1, 0, 3, 2]]), 4, ranks_per_node=2)
    trace = np.array([[0, 1], [0, 0], [2, 3], [3, 0]])  # same rank, other rank same node, same rank, other node
    fractions = transition_fractions(placement, trace)
    assert fractions == {"cross_rank": 0.5, "cross_node": 0.25, "transitions": 4.0}
    counts = transition_counts(trace, 4)
    assert transition_fractions(placement, counts) == fractions
    assert placement_cost(placement, counts, node_weight=4.0) == 2 + 4 * 1


def test_synthetic_traces_follow_the_affinity_model():
    model = AffinityModel.random(4, 8, 1.0, fanout=2, seed=3)
    trace = model.sample(500, seed=0)
    assert trace.shape == (500, 4) and trace.min() >= 0 and trace.max() < 8
    for layer in range(3):
        preferred = model.successors[layer, trace[:, layer]]
        assert (preferred == trace[:, layer + 1, None]).any(axis=1).all()
    # every expert is preferred by exactly `fanout` experts of the layer before
    assert (np.bincount(model.successors.reshape(3, -1)[0], minlength=8) == 2).all()
    independent = synthetic_trace(20000, 2, 8, 0.0, seed=1)
    assert abs(transition_fractions(Placement.contiguous(2, 8, 8), independent)["cross_rank"] - 7 / 8) < 0.02
    topk = synthetic_trace(300, 3, 6, 0.9, k=3, seed=2)
    assert topk.shape == (300, 3, 3)
    assert (np.sort(topk, axis=2)[:, :, 1:] != np.sort(topk, axis=2)[:, :, :-1]).all()
    skewed = synthetic_trace(5000, 1, 8, 0.0, skew=2.0, seed=0)
    assert np.bincount(skewed[:, 0], minlength=8).max() > 0.5 * 5000


def test_placement_layers_feed_dispatch():
    placement = place_experts(synthetic_trace(100, 3, 8, 0.9, seed=0), 4, num_experts=8, refine=False)
    assert placement[1].shape == (8,) and not placement[1].flags.writeable
    assert placement.nodes().shape == (3, 8)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: place_experts(np.zeros((5, 2), np.int64), 3, num_experts=4), "do not split evenly"),
        (lambda: place_experts(np.zeros((5, 2), np.int64), 2, 3, num_experts=4), "ranks_per_node must be in 1..2"),
        (lambda: place_experts(np.zeros((1, 4, 3)), 2), r"\[layers - 1, E, E\]"),
        (lambda: place_experts(np.zeros(5, np.int64), 2), "trace must be"),
        (lambda: place_experts(np.zeros((5, 2), np.int64), 2, num_experts=4, node_weight=-1), "node_weight"),
        (lambda: transition_counts(np.array([[0, 5]]), 4), "outside -1..3"),
        (lambda: Placement(np.array([[0, 2]]), 2), "outside 0..1"),
        (lambda: AffinityModel.random(2, 4, 1.5), "affinity must be in"),
        (lambda: AffinityModel.random(2, 4, 0.5, fanout=5), "fanout must be in"),
    ],
)
def test_bad_input_is_rejected(call, message):
    with pytest.raises(ValueError, match=message):
        call()
