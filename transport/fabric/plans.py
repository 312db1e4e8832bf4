"""Where a policy sends the cross-leaf bytes (:class:`SpinePlan`), the ECMP and spraying policies, link loads."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .leafspine import LeafSpine
from .traffic import Collective

SPRAYED = -2  # spine of a piece that is spread evenly over every spine
LOCAL = -1  # spine of a piece that stays inside its leaf


@dataclass
class SpinePlan:
    """Where a policy sends the cross-leaf bytes: per uplink ``up[leaf, spine]`` and downlink ``down[spine, leaf]``.

    ``pieces()`` lists the subflows ``(flow index, spine or SPRAYED/LOCAL, bytes)`` (built on demand:
    an all-to-all of thousands of hosts has millions). ``k`` is the number of subflows per flow.
    """

    policy: str
    up: np.ndarray
    down: np.ndarray
    k: int
    subflows: int
    pieces: Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray]] = field(repr=False)
    seconds: float = 0.0


def cross_leaf(topo: LeafSpine, coll: Collective) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of the cross-leaf flows and their source and destination leaves."""
    ls, ld = topo.leaf(coll.src), topo.leaf(coll.dst)
    idx = np.nonzero((ls != ld) & (coll.nbytes > 0))[0]
    return idx, ls[idx], ld[idx]


def tier_loads(topo: LeafSpine, leaf_src: np.ndarray, leaf_dst: np.ndarray, spine: np.ndarray, nbytes: np.ndarray):
    """Bytes per uplink ``[leaf, spine]`` and downlink ``[spine, leaf]`` of pieces pinned to ``spine``."""
    L, S = topo.leaves, topo.spines
    up = np.bincount(leaf_src * S + spine, weights=nbytes, minlength=L * S).reshape(L, S)
    down = np.bincount(spine * L + leaf_dst, weights=nbytes, minlength=L * S).reshape(S, L)
    return up, down


def with_local(topo: LeafSpine, coll: Collective, flow, spine, nbytes):
    """Add the intra-leaf flows (which use host links only) to a cross-leaf piece list."""
    local = np.nonzero((topo.leaf(coll.src) == topo.leaf(coll.dst)) & (coll.nbytes > 0))[0]
    return (
        np.concatenate([flow, local]),
        np.concatenate([spine, np.full(len(local), LOCAL)]),
        np.concatenate([nbytes, coll.nbytes[local]]),
    )


def ecmp(topo: LeafSpine, coll: Collective, seed: int = 0) -> SpinePlan:
    """Each flow hashed, whole, onto a uniformly random spine (one draw per connection, kept for every step)."""
    t = time.perf_counter()
    idx, ls, ld = cross_leaf(topo, coll)
    spine = np.random.default_rng(seed).integers(topo.spines, size=len(idx))
    up, down = tier_loads(topo, ls, ld, spine, coll.nbytes[idx])
    plan = SpinePlan("ecmp", up, down, 1, len(idx), lambda: with_local(topo, coll, idx, spine, coll.nbytes[idx]))
    plan.seconds = time.perf_counter() - t
    return plan


def spray(topo: LeafSpine, coll: Collective) -> SpinePlan:
    """Ideal packet spraying: every flow spread evenly over all spines (the fractional optimum)."""
    t = time.perf_counter()
    idx, ls, ld = cross_leaf(topo, coll)
    L, S = topo.leaves, topo.spines
    out = np.bincount(ls, weights=coll.nbytes[idx], minlength=L) / S
    into = np.bincount(ld, weights=coll.nbytes[idx], minlength=L) / S
    up, down = np.repeat(out[:, None], S, axis=1), np.repeat(into[None, :], S, axis=0)
    plan = SpinePlan(
        "spray",
        up,
        down,
        S,
        len(idx) * S,
        lambda: with_local(topo, coll, idx, np.full(len(idx), SPRAYED), coll.nbytes[idx]),
    )
    plan.seconds = time.perf_counter() - t
    return plan


def host_loads(topo: LeafSpine, coll: Collective) -> np.ndarray:
    """Bytes on every host uplink, then every host downlink (the same under every policy)."""
    n = topo.hosts
    return np.concatenate(
        [
            np.bincount(coll.src, weights=coll.nbytes, minlength=n),
            np.bincount(coll.dst, weights=coll.nbytes, minlength=n),
        ]
    )


def link_loads(topo: LeafSpine, coll: Collective, plan: SpinePlan) -> np.ndarray:
    """Bytes on every link (by link id) when ``coll`` is routed by ``plan``."""
    return np.concatenate([host_loads(topo, coll), plan.up.ravel(), plan.down.T.ravel()])


def max_congestion(topo: LeafSpine, coll: Collective, plan: SpinePlan) -> float:
    """Seconds the busiest link needs for its bytes: ``max(load / capacity)``."""
    return float((link_loads(topo, coll, plan) / topo.capacity()).max())
