"""Minimal splitting: the fewest equal subflows per flow that reach the spraying bound; splitting over paths."""

from __future__ import annotations

import math
import time

import numpy as np

from ..coloring import equitable_coloring
from .leafspine import LeafSpine
from .plans import SpinePlan, cross_leaf, host_loads, with_local
from .traffic import Collective


def _minimal_k(topo: LeafSpine, coll: Collective, unit: float, out_deg: np.ndarray, in_deg: np.ndarray) -> int:
    """Smallest k whose equitable colouring reaches the congestion of ideal spraying (k = S always does)."""
    S = topo.spines
    cap = topo.spine_gbps * 1e9 / 8
    host = float((host_loads(topo, coll) / (topo.host_gbps * 1e9 / 8)).max(initial=0.0))
    deg = max(int(out_deg.max(initial=0)), int(in_deg.max(initial=0)))
    target = max(host, deg * unit / S / cap)
    for k in range(1, S + 1):
        if math.ceil(k * deg / S) * unit / k / cap <= target * (1 + 1e-12):
            return k
    return S


def _pieces_from_units(topo: LeafSpine, idx, ls, ld, y: np.ndarray, k: int, unit: float):
    """Hand each flow of a leaf pair ``k`` consecutive units of that pair's spine sequence; merge repeats."""
    L, S = topo.leaves, topo.spines
    pair = ls * L + ld
    order = np.argsort(pair, kind="stable")
    flows_sorted = idx[order]
    counts = y.reshape(L * L, S)
    units_per_pair = counts.sum(axis=1)
    spine_seq = np.repeat(np.tile(np.arange(S), L * L), counts.ravel())
    pair_of_unit = np.repeat(np.arange(L * L), units_per_pair)
    unit_start = np.concatenate([[0], np.cumsum(units_per_pair)[:-1]])
    flow_start = np.searchsorted(pair[order], np.arange(L * L))
    rank = np.arange(len(spine_seq)) - unit_start[pair_of_unit]
    flow = flows_sorted[flow_start[pair_of_unit] + rank // k]
    key = flow.astype(np.int64) * S + spine_seq
    new = np.concatenate([[True], key[1:] != key[:-1]])
    starts = np.nonzero(new)[0]
    sizes = np.diff(np.append(starts, len(key))) * unit
    return flow[starts], spine_seq[starts], sizes


def minimal_split(topo: LeafSpine, coll: Collective, k: int | None = None) -> SpinePlan:
    """Split each cross-leaf flow into ``k`` subflows pinned to spines, minimising the maximum link load.

    Equal-sized flows (a collective step): the ``k * m_ij`` equal units between leaves ``i`` and ``j``
    are coloured with spines equitably, so every uplink and downlink carries at most
    ``ceil(k * degree / S)`` units; ``k=None`` picks the smallest ``k`` at which the maximum congestion
    equals ideal spraying's. Unequal sizes fall back to :func:`plan_paths`' greedy water-filling
    on the leaf pairs' aggregate demand.
    """
    t = time.perf_counter()
    idx, ls, ld = cross_leaf(topo, coll)
    L, S = topo.leaves, topo.spines
    if k is not None and not 1 <= k <= S:
        raise ValueError(f"minimal_split: k must be in 1..{S} (spines), got {k}")
    sizes = coll.nbytes[idx]
    if len(idx) == 0:
        empty = np.zeros(0, np.int64)
        return SpinePlan(
            "split",
            np.zeros((L, S)),
            np.zeros((S, L)),
            k or 1,
            0,
            lambda: with_local(topo, coll, empty, empty, np.zeros(0)),
        )
    if not np.all(sizes == sizes[0]):
        return _greedy_split(topo, coll, idx, ls, ld, k or S, t)
    m = np.bincount(ls * L + ld, minlength=L * L).reshape(L, L)
    if k is None:
        k = _minimal_k(topo, coll, float(sizes[0]), m.sum(axis=1), m.sum(axis=0))
    unit = float(sizes[0]) / k
    y = equitable_coloring(m * k, S)
    up = y.sum(axis=1).astype(float) * unit  # (L, S): summed over destination leaves
    down = y.sum(axis=0).T.astype(float) * unit  # (S, L)
    pieces = lambda: with_local(topo, coll, *_pieces_from_units(topo, idx, ls, ld, y, k, unit))  # noqa: E731
    subflows = len(idx) if k == 1 else len(_pieces_from_units(topo, idx, ls, ld, y, k, unit)[0])
    plan = SpinePlan("split", up, down, k, subflows, pieces)
    plan.seconds = time.perf_counter() - t
    return plan


def _greedy_split(topo: LeafSpine, coll: Collective, idx, ls, ld, k: int, t0: float) -> SpinePlan:
    """Unequal sizes: water-fill each leaf pair's demand (largest first) over its k least-loaded spines."""
    L, S = topo.leaves, topo.spines
    pair = ls * L + ld
    demand = np.bincount(pair, weights=coll.nbytes[idx], minlength=L * L)
    up, down = np.zeros((L, S)), np.zeros((S, L))
    share = np.zeros((L * L, S))
    for p in np.argsort(-demand, kind="stable"):
        if demand[p] <= 0:
            break
        i, j = divmod(int(p), L)
        level = np.maximum(up[i], down[:, j])
        x = _water_fill(level, np.ones(S), float(demand[p]), k)
        share[p] = x
        up[i] += x
        down[:, j] += x
    order = np.argsort(pair, kind="stable")

    def pieces():
        flow_out, spine_out, bytes_out = [], [], []
        bounds = np.searchsorted(pair[order], np.arange(L * L + 1))
        for p in np.nonzero(demand > 0)[0]:
            members = idx[order[bounds[p] : bounds[p + 1]]]
            f, s, b = _cut(members, coll.nbytes[members], share[p])
            flow_out.append(f)
            spine_out.append(s)
            bytes_out.append(b)
        return with_local(topo, coll, np.concatenate(flow_out), np.concatenate(spine_out), np.concatenate(bytes_out))

    plan = SpinePlan("split", up, down, k, int((share > 0).sum() + len(idx) - np.count_nonzero(demand)), pieces)
    plan.seconds = time.perf_counter() - t0
    return plan


def _water_fill(level: np.ndarray, rate: np.ndarray, amount: float, k: int) -> np.ndarray:
    """Bytes per path that raise the ``k`` lowest path levels (in seconds; ``rate`` bytes/s) to one common level."""
    best = np.argsort(level, kind="stable")[:k]
    lv, rt = level[best], rate[best]
    out = np.zeros(len(level))
    # try filling the first n paths, n = 1..k: the common level reaches lv[n-1] .. lv[n]
    for n in range(1, len(best) + 1):
        target = (amount + float((lv[:n] * rt[:n]).sum())) / float(rt[:n].sum())
        if n == len(best) or target <= lv[n]:
            out[best[:n]] = np.maximum(target - lv[:n], 0.0) * rt[:n]
            break
    return out * (amount / out.sum()) if out.sum() > 0 else out


def _cut(members: np.ndarray, sizes: np.ndarray, per_path: np.ndarray):
    """Lay the flows end to end and cut at the per-path amounts: each flow gets consecutive pieces."""
    paths = np.nonzero(per_path > 0)[0]
    bounds = np.concatenate([[0.0], np.cumsum(per_path[paths])])
    fb = np.concatenate([[0.0], np.cumsum(sizes)])
    bounds[-1] = fb[-1]
    cuts = np.unique(np.concatenate([bounds, fb]))
    mids = (cuts[:-1] + cuts[1:]) / 2
    keep = cuts[1:] - cuts[:-1] > 0
    flow = members[np.searchsorted(fb, mids, side="right") - 1][keep]
    path = paths[np.minimum(np.searchsorted(bounds, mids, side="right") - 1, len(paths) - 1)][keep]
    return flow, path, (cuts[1:] - cuts[:-1])[keep]


def plan_paths(nbytes: np.ndarray, paths: list[list[list[int]]], capacity: np.ndarray, k: int | None = None):
    """Assign flows to measured candidate paths: ``paths[f]`` lists flow ``f``'s paths as link-id lists.

    Flows go largest first; each is water-filled over its ``k`` (default: all) candidate paths of
    lowest bottleneck level (seconds of queued bytes on the path's busiest link), split in
    proportion to the paths' bottleneck capacities. Returns ``(shares, link bytes)`` where
    ``shares[f]`` gives the bytes of flow ``f`` on each of its candidate paths.
    """
    capacity = np.asarray(capacity, dtype=np.float64)
    nbytes = np.asarray(nbytes, dtype=np.float64)
    if len(paths) != len(nbytes):
        raise ValueError(f"plan_paths: {len(nbytes)} flows but {len(paths)} candidate path lists")
    load = np.zeros(len(capacity))
    shares: list[np.ndarray] = [np.zeros(len(p)) for p in paths]
    for f in np.argsort(-nbytes, kind="stable"):
        cand = paths[f]
        if not cand:
            raise ValueError(f"plan_paths: flow {f} has no candidate path")
        level = np.array([max(load[h] / capacity[h] for h in p) if p else 0.0 for p in cand])
        rate = np.array([min(capacity[h] for h in p) if p else np.inf for p in cand])
        x = _water_fill(level, rate, float(nbytes[f]), k or len(cand))
        shares[f] = x
        for amount, p in zip(x, cand):
            for h in p:
                load[h] += amount
    return shares, load
