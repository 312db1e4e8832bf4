"""Flow placement in a leaf-spine fabric: random ECMP vs minimal splitting vs ideal packet spraying.

The flows of one collective step start together, have equal sizes, and the
step ends with its slowest flow. Routing each flow whole along a random spine
(ECMP hashing) lets flows collide on one uplink while others idle. Ideal
packet spraying spreads every flow evenly over all spines: its loads are the
fractional optimum, a lower bound for any routing. Minimal splitting cuts
each flow into ``k`` equal subflows, each pinned to one spine, chosen by a
planner: with equal sizes it reaches the spraying bound with the smallest
``k`` that can (:func:`minimal_split`, exact by equitable bipartite edge
colouring, see :mod:`transport.coloring`).

Metrics per policy: the maximum link congestion (bytes over capacity, the
seconds the busiest link needs; the step's completion time if every flow's
subflows are paced to finish together, and a lower bound for any transport)
and the completion time under max-min fair sharing (:mod:`transport.maxmin`).
``python -m commlib fabric`` runs the comparison at scale (:func:`main`).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .coloring import equitable_coloring
from .maxmin import Incidence, completion_time

__all__ = [
    "Collective",
    "LeafSpine",
    "Plan",
    "alltoall",
    "ecmp",
    "evaluate",
    "main",
    "minimal_split",
    "plan_paths",
    "ring",
    "spray",
]

SPRAYED = -2  # spine of a piece that is spread evenly over every spine
LOCAL = -1  # spine of a piece that stays inside its leaf


@dataclass(frozen=True)
class LeafSpine:
    """A two-tier Clos: ``leaves`` leaf switches of ``hosts_per_leaf`` hosts, each leaf linked to every spine.

    Links are directed; capacities in Gbit/s (host<->leaf and leaf<->spine, each direction).
    Link ids: host uplinks ``[0, N)``, host downlinks ``[N, 2N)``, leaf->spine ``2N + l*S + s``,
    spine->leaf ``2N + L*S + l*S + s``.
    """

    leaves: int
    hosts_per_leaf: int
    spines: int
    host_gbps: float = 100.0
    spine_gbps: float = 100.0

    def __post_init__(self) -> None:
        for name in ("leaves", "hosts_per_leaf", "spines"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"LeafSpine: {name} must be a positive integer, got {value!r}")
        if not (self.host_gbps > 0 and self.spine_gbps > 0):
            raise ValueError(f"LeafSpine: capacities must be > 0, got {self.host_gbps}, {self.spine_gbps} Gbit/s")

    @property
    def hosts(self) -> int:
        return self.leaves * self.hosts_per_leaf

    @property
    def n_links(self) -> int:
        return 2 * self.hosts + 2 * self.leaves * self.spines

    def leaf(self, host: np.ndarray) -> np.ndarray:
        return np.asarray(host) // self.hosts_per_leaf

    def capacity(self) -> np.ndarray:
        """Bytes per second of every link, by link id."""
        n, ls = self.hosts, self.leaves * self.spines
        return np.concatenate([np.full(2 * n, self.host_gbps), np.full(2 * ls, self.spine_gbps)]) * 1e9 / 8

    def describe(self) -> str:
        ratio = self.hosts_per_leaf * self.host_gbps / (self.spines * self.spine_gbps)
        return (
            f"{self.hosts} hosts = {self.leaves} leaves x {self.hosts_per_leaf}, {self.spines} spines, "
            f"{self.host_gbps:g}/{self.spine_gbps:g} Gbit/s, oversubscription {ratio:g}:1"
        )


@dataclass(frozen=True)
class Collective:
    """The flows of one step of a collective (``steps`` identical steps over the same connections)."""

    name: str
    src: np.ndarray
    dst: np.ndarray
    nbytes: np.ndarray
    steps: int = 1

    def __post_init__(self) -> None:
        if not (len(self.src) == len(self.dst) == len(self.nbytes)):
            raise ValueError(f"Collective {self.name}: src, dst and nbytes lengths differ")
        if (np.asarray(self.nbytes) < 0).any():
            raise ValueError(f"Collective {self.name}: flow sizes must be >= 0")

    def __len__(self) -> int:
        return len(self.src)


def _placement(topo: LeafSpine, placement: str, rng: np.random.Generator) -> np.ndarray:
    """Host of each rank: ``linear`` fills leaves in order, ``random`` is a random permutation (a scattered job)."""
    if placement == "linear":
        return np.arange(topo.hosts)
    if placement == "random":
        return rng.permutation(topo.hosts)
    raise ValueError(f"placement must be 'linear' or 'random', got {placement!r}")


def ring(topo: LeafSpine, message_bytes: float, placement: str = "random", seed: int = 0) -> Collective:
    """Ring allreduce of ``message_bytes`` per rank: 2(N-1) steps, each rank sends N-th chunks to the next rank."""
    n = topo.hosts
    if n < 2:
        raise ValueError(f"ring: needs at least 2 hosts, got {n}")
    host = _placement(topo, placement, np.random.default_rng(seed))
    src, dst = host, np.roll(host, -1)
    return Collective("ring", src, dst, np.full(n, message_bytes / n), steps=2 * (n - 1))


def alltoall(topo: LeafSpine, message_bytes: float, placement: str = "random", seed: int = 0) -> Collective:
    """All-to-all of ``message_bytes`` per rank: every rank sends an N-th to every other rank, all at once."""
    n = topo.hosts
    if n < 2:
        raise ValueError(f"alltoall: needs at least 2 hosts, got {n}")
    host = _placement(topo, placement, np.random.default_rng(seed))
    a, b = np.divmod(np.arange(n * n, dtype=np.int64), n)
    off = a != b
    return Collective("alltoall", host[a[off]], host[b[off]], np.full(int(off.sum()), message_bytes / n))


COLLECTIVES: dict[str, Callable[..., Collective]] = {"ring": ring, "alltoall": alltoall}


@dataclass
class Plan:
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


def _cross(topo: LeafSpine, coll: Collective) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of the cross-leaf flows and their source and destination leaves."""
    ls, ld = topo.leaf(coll.src), topo.leaf(coll.dst)
    idx = np.nonzero((ls != ld) & (coll.nbytes > 0))[0]
    return idx, ls[idx], ld[idx]


def _tier(topo: LeafSpine, leaf_src: np.ndarray, leaf_dst: np.ndarray, spine: np.ndarray, nbytes: np.ndarray):
    L, S = topo.leaves, topo.spines
    up = np.bincount(leaf_src * S + spine, weights=nbytes, minlength=L * S).reshape(L, S)
    down = np.bincount(spine * L + leaf_dst, weights=nbytes, minlength=L * S).reshape(S, L)
    return up, down


def _with_local(topo: LeafSpine, coll: Collective, flow, spine, nbytes):
    """Add the intra-leaf flows (which use host links only) to a cross-leaf piece list."""
    local = np.nonzero((topo.leaf(coll.src) == topo.leaf(coll.dst)) & (coll.nbytes > 0))[0]
    return (
        np.concatenate([flow, local]),
        np.concatenate([spine, np.full(len(local), LOCAL)]),
        np.concatenate([nbytes, coll.nbytes[local]]),
    )


def ecmp(topo: LeafSpine, coll: Collective, seed: int = 0) -> Plan:
    """Each flow hashed, whole, onto a uniformly random spine (one draw per connection, kept for every step)."""
    t = time.perf_counter()
    idx, ls, ld = _cross(topo, coll)
    spine = np.random.default_rng(seed).integers(topo.spines, size=len(idx))
    up, down = _tier(topo, ls, ld, spine, coll.nbytes[idx])
    plan = Plan("ecmp", up, down, 1, len(idx), lambda: _with_local(topo, coll, idx, spine, coll.nbytes[idx]))
    plan.seconds = time.perf_counter() - t
    return plan


def spray(topo: LeafSpine, coll: Collective) -> Plan:
    """Ideal packet spraying: every flow spread evenly over all spines (the fractional optimum)."""
    t = time.perf_counter()
    idx, ls, ld = _cross(topo, coll)
    L, S = topo.leaves, topo.spines
    out = np.bincount(ls, weights=coll.nbytes[idx], minlength=L) / S
    into = np.bincount(ld, weights=coll.nbytes[idx], minlength=L) / S
    up, down = np.repeat(out[:, None], S, axis=1), np.repeat(into[None, :], S, axis=0)
    plan = Plan(
        "spray",
        up,
        down,
        S,
        len(idx) * S,
        lambda: _with_local(topo, coll, idx, np.full(len(idx), SPRAYED), coll.nbytes[idx]),
    )
    plan.seconds = time.perf_counter() - t
    return plan


def _host_loads(topo: LeafSpine, coll: Collective) -> np.ndarray:
    n = topo.hosts
    return np.concatenate(
        [
            np.bincount(coll.src, weights=coll.nbytes, minlength=n),
            np.bincount(coll.dst, weights=coll.nbytes, minlength=n),
        ]
    )


def link_loads(topo: LeafSpine, coll: Collective, plan: Plan) -> np.ndarray:
    """Bytes on every link (by link id) when ``coll`` is routed by ``plan``."""
    return np.concatenate([_host_loads(topo, coll), plan.up.ravel(), plan.down.T.ravel()])


def max_congestion(topo: LeafSpine, coll: Collective, plan: Plan) -> float:
    """Seconds the busiest link needs for its bytes: ``max(load / capacity)``."""
    return float((link_loads(topo, coll, plan) / topo.capacity()).max())


def _minimal_k(topo: LeafSpine, coll: Collective, unit: float, out_deg: np.ndarray, in_deg: np.ndarray) -> int:
    """Smallest k whose equitable colouring reaches the congestion of ideal spraying (k = S always does)."""
    S = topo.spines
    cap = topo.spine_gbps * 1e9 / 8
    host = float((_host_loads(topo, coll) / (topo.host_gbps * 1e9 / 8)).max(initial=0.0))
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


def minimal_split(topo: LeafSpine, coll: Collective, k: int | None = None) -> Plan:
    """Split each cross-leaf flow into ``k`` subflows pinned to spines, minimising the maximum link load.

    Equal-sized flows (a collective step): the ``k * m_ij`` equal units between leaves ``i`` and ``j``
    are coloured with spines equitably, so every uplink and downlink carries at most
    ``ceil(k * degree / S)`` units; ``k=None`` picks the smallest ``k`` at which the maximum congestion
    equals ideal spraying's. Unequal sizes fall back to :func:`plan_paths`' greedy water-filling
    on the leaf pairs' aggregate demand.
    """
    t = time.perf_counter()
    idx, ls, ld = _cross(topo, coll)
    L, S = topo.leaves, topo.spines
    if k is not None and not 1 <= k <= S:
        raise ValueError(f"minimal_split: k must be in 1..{S} (spines), got {k}")
    sizes = coll.nbytes[idx]
    if len(idx) == 0:
        empty = np.zeros(0, np.int64)
        return Plan(
            "split",
            np.zeros((L, S)),
            np.zeros((S, L)),
            k or 1,
            0,
            lambda: _with_local(topo, coll, empty, empty, np.zeros(0)),
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
    pieces = lambda: _with_local(topo, coll, *_pieces_from_units(topo, idx, ls, ld, y, k, unit))  # noqa: E731
    subflows = len(idx) if k == 1 else len(_pieces_from_units(topo, idx, ls, ld, y, k, unit)[0])
    plan = Plan("split", up, down, k, subflows, pieces)
    plan.seconds = time.perf_counter() - t
    return plan


def _greedy_split(topo: LeafSpine, coll: Collective, idx, ls, ld, k: int, t0: float) -> Plan:
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
        return _with_local(topo, coll, np.concatenate(flow_out), np.concatenate(spine_out), np.concatenate(bytes_out))

    plan = Plan("split", up, down, k, int((share > 0).sum() + len(idx) - np.count_nonzero(demand)), pieces)
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


def incidence(topo: LeafSpine, coll: Collective, flow: np.ndarray, spine: np.ndarray) -> Incidence:
    """Links of each piece (pinned: 2 or 4 links; sprayed: host links plus 1/S of every spine link)."""
    n, L, S = topo.hosts, topo.leaves, topo.spines
    src, dst = coll.src[flow], coll.dst[flow]
    ls, ld = topo.leaf(src), topo.leaf(dst)
    piece = np.arange(len(flow))
    rows, links, weights = [piece, piece], [src, n + dst], [np.ones(len(flow))] * 2
    pin = np.nonzero(spine >= 0)[0]
    rows += [pin, pin]
    links += [2 * n + ls[pin] * S + spine[pin], 2 * n + L * S + ld[pin] * S + spine[pin]]
    weights += [np.ones(len(pin))] * 2
    spr = np.nonzero(spine == SPRAYED)[0]
    if len(spr):
        s = np.tile(np.arange(S), len(spr))
        r = np.repeat(spr, S)
        rows += [r, r]
        links += [2 * n + ls[r] * S + s, 2 * n + L * S + ld[r] * S + s]
        weights += [np.full(len(r), 1.0 / S)] * 2
    return Incidence(np.concatenate(rows), np.concatenate(links), np.concatenate(weights), len(flow), topo.n_links)


def evaluate(topo: LeafSpine, coll: Collective, plan: Plan, *, maxmin_limit: int = 0, progress=None) -> dict:
    """Max congestion (seconds and bytes) and max-min step completion time of ``coll`` routed by ``plan``.

    The max-min simulation runs when the pieces' link incidences number at most ``maxmin_limit``;
    otherwise ``step_maxmin_s`` is ``None`` (the fluid figure ``step_fluid_s`` always exists).
    """
    loads = link_loads(topo, coll, plan)
    fluid = float((loads / topo.capacity()).max())
    out = {
        "policy": plan.policy,
        "k": plan.k,
        "subflows": plan.subflows,
        "plan_s": plan.seconds,
        "max_load_bytes": float(loads.max()),
        "max_tier_load_bytes": float(max(plan.up.max(initial=0), plan.down.max(initial=0))),
        "step_fluid_s": fluid,
        "step_maxmin_s": None,
    }
    per_piece = 2 + 2 * topo.spines if plan.policy == "spray" else 4
    pieces_estimate = plan.subflows // topo.spines if plan.policy == "spray" else plan.subflows
    if 2 * len(coll) + per_piece * pieces_estimate <= maxmin_limit:
        flow, spine, nbytes = plan.pieces()
        inc = incidence(topo, coll, flow, spine)
        if progress is not None:
            progress.reset(total=len(flow))
            progress.set_description(f"{coll.name} {plan.policy} max-min")
        finish = completion_time(inc, topo.capacity(), nbytes, progress=progress)
        out["step_maxmin_s"] = float(finish.max(initial=0.0))
    return out


# ------------------------------------------------------------------------- CLI
def _size(text: str) -> float:
    units = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "kb": 1e3, "mb": 1e6}
    t = text.strip().lower()
    num = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    try:
        return float(num) * units[t[len(num) :]]
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a size such as 64MiB or 1e6, got {text!r}") from None


def _run_case(topo, name, message, placement, seeds, k, maxmin_limit, bar, inner) -> dict:
    """Every policy on ``seeds`` placements of collective ``name``; ``bar`` counts evaluations."""
    rows: dict[str, list[dict]] = {"ecmp": [], "split": [], "spray": []}
    for seed in range(seeds):
        bar.set_description(f"{name} seed {seed}")
        coll = COLLECTIVES[name](topo, message, placement=placement, seed=seed)
        plans = (ecmp(topo, coll, seed=1000 + seed), minimal_split(topo, coll, k), spray(topo, coll))
        for policy, plan in zip(("ecmp", "split", "spray"), plans):
            res = evaluate(topo, coll, plan, maxmin_limit=maxmin_limit, progress=inner)
            res["steps"] = coll.steps
            rows[policy].append(res)
            bar.update(1)
    return rows


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main(argv: list[str] | None = None, prog: str = "python -m commlib fabric") -> int:
    """``python -m commlib fabric``: max congestion and completion time of ECMP, minimal splitting, spraying."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=128, help="leaf switches (128)")
    parser.add_argument("--hosts-per-leaf", type=int, default=32, help="hosts per leaf (32)")
    parser.add_argument("--spines", type=int, default=32, help="spine switches (32)")
    parser.add_argument("--host-gbps", type=float, default=400.0, help="host link capacity, Gbit/s (400)")
    parser.add_argument("--spine-gbps", type=float, default=400.0, help="leaf-spine link capacity, Gbit/s (400)")
    parser.add_argument("--collectives", nargs="+", default=["ring", "alltoall"], choices=sorted(COLLECTIVES))
    parser.add_argument("--bytes", type=_size, default=_size("256MiB"), help="message bytes per rank (256MiB)")
    parser.add_argument("--placement", default="random", choices=["random", "linear"], help="rank placement (random)")
    parser.add_argument("--seeds", type=int, default=5, help="placements x ECMP hash draws (5)")
    parser.add_argument("--k", type=int, default=None, help="subflows per flow (default: the minimal k)")
    parser.add_argument(
        "--maxmin-limit",
        type=int,
        default=None,
        help="also simulate max-min fair sharing for cases of at most this many flow-link incidences "
        "(default 0 = never; 100000 with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="a small fabric (256 hosts), 2 seeds")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--json", default="results/fabric.json", help="where to write the results")
    args = parser.parse_args(argv)
    if args.quick:
        args.leaves, args.hosts_per_leaf, args.spines, args.seeds = 16, 16, 8, 2
    if args.maxmin_limit is None:
        args.maxmin_limit = 100_000 if args.quick else 0
    try:
        topo = LeafSpine(args.leaves, args.hosts_per_leaf, args.spines, args.host_gbps, args.spine_gbps)
    except ValueError as exc:
        parser.error(str(exc))
    from tqdm import tqdm

    print(
        f"fabric: {topo.describe()}; {args.bytes / 2**20:g} MiB per rank; "
        f"placement {args.placement}; {args.seeds} seeds"
    )
    header = (
        f"{'collective':<10} {'policy':<6} {'k':>3} {'subflows':>10} {'max cong ms':>12} {'x spray':>8} "
        f"{'worst x':>8} {'step max-min ms':>16} {'collective ms':>14}"
    )
    results = []
    lines = []
    total = len(args.collectives) * args.seeds * 3
    quiet = args.no_progress
    with (
        tqdm(total=total, unit="plan", disable=True if quiet else None, leave=False, file=sys.stderr) as bar,
        tqdm(total=0, unit="flow", disable=quiet or not args.maxmin_limit, leave=False, file=sys.stderr) as inner,
    ):
        for name in args.collectives:
            rows = _run_case(topo, name, args.bytes, args.placement, args.seeds, args.k, args.maxmin_limit, bar, inner)
            for policy in ("ecmp", "split", "spray"):
                rs = rows[policy]
                ratios = [r["step_fluid_s"] / sp["step_fluid_s"] for r, sp in zip(rs, rows["spray"])]
                cong = _median([r["step_fluid_s"] for r in rs])
                mm = _median([r["step_maxmin_s"] for r in rs])
                steps = rs[0]["steps"]
                total = cong * steps
                summary = {
                    "collective": name,
                    "policy": policy,
                    "k": _median([r["k"] for r in rs]),
                    "subflows": _median([r["subflows"] for r in rs]),
                    "max_congestion_s": cong,
                    "vs_spray": _median(ratios),
                    "vs_spray_worst": max(ratios),
                    "step_maxmin_s": mm,
                    "collective_s": total,
                    "collective_maxmin_s": mm * steps if mm is not None else None,
                    "steps": steps,
                    "runs": rs,
                }
                results.append(summary)
                mm_text = f"{mm * 1e3:16.4f}" if mm is not None else f"{'-':>16}"
                lines.append(
                    f"{name:<10} {policy:<6} {summary['k']:>3g} {summary['subflows']:>10.0f} {cong * 1e3:12.3f} "
                    f"{summary['vs_spray']:7.3f}x {summary['vs_spray_worst']:7.3f}x {mm_text} {total * 1e3:13.1f}"
                )
    print(header)
    print("\n".join(lines))
    print(
        "max cong = seconds the busiest link needs for its bytes (median over seeds); x spray / worst x = that, "
        "relative to ideal spraying on the same placement (median / worst seed); step max-min = slowest flow under "
        "max-min fair sharing (-: not simulated, see --maxmin-limit); collective = steps x max cong (subflows paced "
        "to finish together)"
    )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    meta = {"topology": topo.describe(), "bytes": args.bytes, "placement": args.placement, "seeds": args.seeds}
    Path(args.json).write_text(
        json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%S"), **meta, "rows": results}, indent=1)
    )
    print(f"Wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
