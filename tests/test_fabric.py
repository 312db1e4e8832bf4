"""Leaf-spine flow placement (transport.fabric): minimal splitting vs spraying vs ECMP, max-min, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from transport import fabric as F
from transport.fabric.plans import tier_loads

TOPOLOGIES = [
    F.LeafSpine(4, 4, 4),  # 1:1
    F.LeafSpine(8, 8, 4),  # 2:1 oversubscribed
    F.LeafSpine(6, 5, 3),  # odd sizes, spines not a power of two
    F.LeafSpine(5, 7, 7, host_gbps=100, spine_gbps=50),
    F.LeafSpine(3, 6, 5),
]


# ----------------------------------------------------- the paper's claims
def _cases():
    for topo in TOPOLOGIES:
        for seed in range(3):
            yield topo, F.ring(topo, 1 << 20, placement="random", seed=seed)
            yield topo, F.alltoall(topo, 1 << 20, placement="random", seed=seed)
        yield topo, F.ring(topo, 1 << 20, placement="linear")


@pytest.mark.parametrize("topo,coll", list(_cases()), ids=lambda x: getattr(x, "name", None) or "")
def test_minimal_split_equals_spraying_and_never_exceeds_ecmp(topo, coll):
    split = F.minimal_split(topo, coll)
    spray = F.max_congestion(topo, coll, F.spray(topo, coll))
    assert F.max_congestion(topo, coll, split) == pytest.approx(spray, rel=1e-12)
    assert 1 <= split.k <= topo.spines
    for seed in range(20):
        assert F.max_congestion(topo, coll, split) <= F.max_congestion(topo, coll, F.ecmp(topo, coll, seed)) * (
            1 + 1e-12
        )


@pytest.mark.parametrize("topo", TOPOLOGIES, ids=lambda t: t.describe().split(",")[0])
def test_k_is_minimal_and_forced_k_meets_the_ceiling(topo):
    coll = F.ring(topo, 1 << 20, seed=1)
    split = F.minimal_split(topo, coll)
    spray = F.max_congestion(topo, coll, F.spray(topo, coll))
    ls, ld = topo.leaf(coll.src), topo.leaf(coll.dst)
    cross = ls != ld
    deg = max(np.bincount(ls[cross], minlength=topo.leaves).max(), np.bincount(ld[cross], minlength=topo.leaves).max())
    unit_bytes = coll.nbytes[0]
    for k in range(1, topo.spines + 1):
        plan = F.minimal_split(topo, coll, k=k)
        tier = max(plan.up.max(), plan.down.max())
        assert tier == pytest.approx(math.ceil(k * deg / topo.spines) * unit_bytes / k)
        if k < split.k:
            assert F.max_congestion(topo, coll, plan) > spray * (1 + 1e-12)
    with pytest.raises(ValueError, match="k must be in 1"):
        F.minimal_split(topo, coll, k=topo.spines + 1)


def test_ecmp_collides_where_splitting_does_not():
    topo = F.LeafSpine(16, 16, 16)
    ratios = []
    for seed in range(5):
        coll = F.ring(topo, 1 << 20, seed=seed)
        ratios.append(
            F.max_congestion(topo, coll, F.ecmp(topo, coll, seed)) / F.max_congestion(topo, coll, F.spray(topo, coll))
        )
    assert min(ratios) >= 2.0  # 15-16 flows per leaf on 16 spines: some spine takes several


@pytest.mark.parametrize("topo,coll", list(_cases())[:12], ids=lambda x: getattr(x, "name", None) or "")
def test_pieces_reassemble_flows_and_match_the_link_loads(topo, coll):
    for plan in (F.minimal_split(topo, coll), F.ecmp(topo, coll, 3), F.spray(topo, coll)):
        flow, spine, nbytes = plan.pieces()
        per_flow = np.bincount(flow, weights=nbytes, minlength=len(coll))
        assert np.allclose(per_flow, coll.nbytes)
        local = topo.leaf(coll.src[flow]) == topo.leaf(coll.dst[flow])
        assert ((spine == F.LOCAL) == local).all()
        pinned = spine >= 0
        if pinned.any():
            up, down = tier_loads(topo, topo.leaf(coll.src[flow][pinned]), topo.leaf(coll.dst[flow][pinned]),
                               spine[pinned], nbytes[pinned])  # fmt: skip
            assert np.allclose(up, plan.up) and np.allclose(down, plan.down)
        if plan.policy == "split":
            # each flow's pieces sit on distinct spines, at most k of them
            key = flow[pinned] * topo.spines + spine[pinned]
            assert len(np.unique(key)) == len(key)
            assert np.bincount(flow[pinned]).max(initial=0) <= plan.k
            assert plan.subflows == int(pinned.sum())


def test_unequal_flows_use_the_greedy_planner():
    topo = F.LeafSpine(6, 4, 4)
    rng = np.random.default_rng(0)
    ring = F.ring(topo, 1 << 20, seed=0)
    sizes = rng.integers(1, 100, size=len(ring)).astype(float) * 1000
    coll = F.Collective("uneven", ring.src, ring.dst, sizes)
    split = F.minimal_split(topo, coll)
    spray = F.max_congestion(topo, coll, F.spray(topo, coll))
    ecmps = [F.max_congestion(topo, coll, F.ecmp(topo, coll, s)) for s in range(20)]
    got = F.max_congestion(topo, coll, split)
    assert spray <= got * (1 + 1e-12) and got <= np.median(ecmps)
    flow, spine, nbytes = split.pieces()
    assert np.allclose(np.bincount(flow, weights=nbytes, minlength=len(coll)), sizes)
    assert np.allclose(split.up.sum(), sizes[topo.leaf(coll.src) != topo.leaf(coll.dst)].sum())


def test_plan_paths_splits_in_proportion_to_capacity():
    # one flow, two disjoint measured paths of 1 and 3 units: 1/4 and 3/4 of the bytes
    shares, load = F.plan_paths(np.array([400.0]), [[[0], [1]]], np.array([1.0, 3.0]))
    assert np.allclose(shares[0], [100.0, 300.0]) and np.allclose(load, [100.0, 300.0])
    # k=1 keeps a flow whole, on the emptier path
    shares, _ = F.plan_paths(np.array([5.0, 4.0]), [[[0], [1]], [[0], [1]]], np.array([1.0, 1.0]), k=1)
    assert sorted(np.count_nonzero(s) for s in shares) == [1, 1] and np.argmax(shares[0]) != np.argmax(shares[1])
    with pytest.raises(ValueError, match="2 candidate path lists"):
        F.plan_paths(np.array([1.0]), [[[0]], [[0]]], np.array([1.0]))


def test_topology_and_collective_validation():
    with pytest.raises(ValueError, match="spines must be a positive integer"):
        F.LeafSpine(2, 2, 0)
    with pytest.raises(ValueError, match="capacities must be > 0"):
        F.LeafSpine(2, 2, 2, host_gbps=0)
    with pytest.raises(ValueError, match="placement must be"):
        F.ring(F.LeafSpine(2, 2, 2), 1.0, placement="diagonal")
    with pytest.raises(ValueError, match="at least 2 hosts"):
        F.alltoall(F.LeafSpine(1, 1, 1), 1.0)
    coll = F.alltoall(F.LeafSpine(2, 3, 2), 600.0, placement="linear")
    assert len(coll) == 30 and np.allclose(coll.nbytes, 100.0)
    assert not (coll.src == coll.dst).any()


# ------------------------------------------------------------------ max-min
@pytest.mark.parametrize("policy", ["ecmp", "split", "spray"])
def test_max_min_completion_is_never_below_the_fluid_bound(policy):
    topo = F.LeafSpine(4, 4, 2)
    coll = F.ring(topo, 1 << 20, seed=2)
    plan = {"ecmp": lambda: F.ecmp(topo, coll, 0), "split": lambda: F.minimal_split(topo, coll)}.get(
        policy, lambda: F.spray(topo, coll)
    )()
    res = F.evaluate(topo, coll, plan, maxmin_limit=10**6)
    assert res["step_maxmin_s"] >= res["step_fluid_s"] * (1 - 1e-9)
    assert F.evaluate(topo, coll, plan)["step_maxmin_s"] is None  # off by default


# ---------------------------------------------------------------------- CLI
def test_fabric_cli_quick(tmp_path, capsys):
    out = tmp_path / "fabric.json"
    assert F.main(["--quick", "--no-progress", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ring" in text and "alltoall" in text and "x spray" in text
    rows = json.loads(out.read_text())["rows"]
    by = {(r["collective"], r["policy"]): r for r in rows}
    for name in ("ring", "alltoall"):
        assert by[name, "split"]["vs_spray"] == pytest.approx(1.0)
        assert by[name, "ecmp"]["vs_spray"] >= 1.0
    assert by["ring", "split"]["step_maxmin_s"] is not None


def test_fabric_cli_rejects_a_bad_topology(capsys):
    with pytest.raises(SystemExit):
        F.main(["--spines", "0", "--no-progress"])
    assert "spines must be a positive integer" in capsys.readouterr().err
