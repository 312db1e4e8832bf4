"""Affinity-aware expert placement: experts that consecutive layers route the same tokens to share a rank.

Tokens routed to expert ``i`` at layer ``l`` tend to go to a few experts at
layer ``l + 1`` (ExFlow's inter-layer affinity). When a token's next expert
lives on the rank (or node) of its current one, its hidden state need not
cross the network between the two layers. Given transition counts
``T[l, i, j]`` (tokens at expert ``i`` of layer ``l`` going to expert ``j`` of
layer ``l + 1``), :func:`place_experts` chooses each layer's owner ranks,
with exactly ``E / P`` experts per rank per layer, to minimise

    cost = sum_l sum_ij T[l, i, j] * (cross_rank(i, j) + node_weight * cross_node(i, j)),

where ``cross_node`` applies when ``ranks_per_node`` is given (ranks
``0 .. ranks_per_node - 1`` form node 0, and so on).

Method. With all other layers fixed, placing one layer is a linear
assignment of its experts to rank slots (``scipy.optimize.linear_sum_assignment``),
the gain of expert ``j`` on rank ``r`` being its transitions from and to the
neighbouring layers' experts on ``r`` (and on ``r``'s node). Sweeps over the
layers repeat this until no layer improves; every step is exact, so the cost
never rises. The sweeps start from two chains (each layer placed after the
layer before it, or after the layer after it) and can stall where two
adjacent layers would have to move together, so parts of each adjacent pair
are then re-solved jointly as a mixed integer program
(``scipy.optimize.milp``, HiGHS): the experts that two ranks hold in both
layers are shared out again among those two ranks, exactly (every
transition they take part in counts), rank pairs with the most transitions
between them first, each result kept only if the cost drops, until a round
improves nothing or the time limit is reached. This pays a few percent on
irregular traces (fanout above one, skewed popularity); on chain-like traces
the sweeps already find the optimum (``python -m commlib bench moe`` measures both).
The result is never worse than the contiguous placement: that placement is
a candidate too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Placement", "place_experts", "placement_cost", "transition_counts", "transition_fractions"]


@dataclass(frozen=True)
class Placement:
    """Owner rank of every expert of every layer: ``owner[layer, expert]``."""

    owner: np.ndarray  # [layers, E]
    num_ranks: int
    ranks_per_node: int | None = None

    def __post_init__(self) -> None:
        owner = np.array(self.owner, dtype=np.int64)
        if owner.ndim != 2 or owner.size == 0:
            raise ValueError(f"Placement: owner must be [layers, experts], got shape {owner.shape}")
        if owner.min() < 0 or owner.max() >= self.num_ranks:
            raise ValueError(f"Placement: owners {owner.min()}..{owner.max()} outside 0..{self.num_ranks - 1}")
        if self.ranks_per_node is not None and self.ranks_per_node < 1:
            raise ValueError(f"Placement: ranks_per_node must be >= 1, got {self.ranks_per_node}")
        owner.flags.writeable = False
        object.__setattr__(self, "owner", owner)

    @classmethod
    def contiguous(
        cls, num_layers: int, num_experts: int, num_ranks: int, ranks_per_node: int | None = None
    ) -> Placement:
        """Every layer in ``num_ranks`` contiguous groups of experts (the default of ``dispatch``)."""
        sizes = np.full(num_ranks, num_experts // num_ranks)
        sizes[: num_experts % num_ranks] += 1
        owner = np.repeat(np.arange(num_ranks), sizes)
        return cls(np.tile(owner, (num_layers, 1)), num_ranks, ranks_per_node)

    @property
    def num_layers(self) -> int:
        return int(self.owner.shape[0])

    @property
    def num_experts(self) -> int:
        return int(self.owner.shape[1])

    def __getitem__(self, layer: int) -> np.ndarray:
        """Layer ``layer``'s owner ranks, as ``dispatch`` takes them."""
        return self.owner[layer]

    def nodes(self) -> np.ndarray:
        """``[layers, E]`` node of every expert (each rank its own node without ``ranks_per_node``)."""
        return self.owner // (self.ranks_per_node or 1)


def transition_counts(trace: Any, num_experts: int) -> np.ndarray:
    """``[layers - 1, E, E]`` counts of layer-to-layer transitions in a routing trace.

    ``trace`` is ``[tokens, layers]`` expert ids, or ``[tokens, layers, k]`` for
    top-k routing (every pair of a token's experts at two consecutive layers
    counts once); ``-1`` entries are skipped.
    """
    trace = np.asarray(trace)
    if trace.ndim == 2:
        trace = trace[:, :, None]
    if trace.ndim != 3 or not np.issubdtype(trace.dtype, np.integer):
        raise ValueError(f"transition_counts: trace must be integer [tokens, layers(, k)], got {trace.shape}")
    if trace.size and (trace.min() < -1 or trace.max() >= num_experts):
        raise ValueError(f"transition_counts: ids {trace.min()}..{trace.max()} outside -1..{num_experts - 1}")
    layers, k = trace.shape[1], trace.shape[2]
    counts = np.zeros((max(layers - 1, 0), num_experts, num_experts), np.int64)
    for layer in range(layers - 1):
        for a in range(k):
            for b in range(k):
                src, dst = trace[:, layer, a], trace[:, layer + 1, b]
                ok = (src >= 0) & (dst >= 0)
                counts[layer] += np.bincount(
                    src[ok] * num_experts + dst[ok], minlength=num_experts * num_experts
                ).reshape(num_experts, num_experts)
    return counts


def _as_transitions(trace: Any, num_experts: int | None) -> np.ndarray:
    trace = np.asarray(trace)
    if trace.ndim == 3:
        if trace.shape[1] != trace.shape[2] or (num_experts is not None and trace.shape[1] != num_experts):
            raise ValueError(f"place_experts: transition counts must be [layers - 1, E, E], got {trace.shape}")
        if (trace < 0).any():
            raise ValueError("place_experts: transition counts must be non-negative")
        return trace.astype(np.float64)
    if trace.ndim != 2:
        raise ValueError(
            "place_experts: trace must be [tokens, layers] expert ids or [layers - 1, E, E] transition counts "
            f"(use transition_counts for top-k traces), got shape {trace.shape}"
        )
    if num_experts is None:
        num_experts = int(trace.max()) + 1 if trace.size else 1
    return transition_counts(trace, num_experts).astype(np.float64)


def placement_cost(placement: Placement, transitions: np.ndarray, node_weight: float = 4.0) -> float:
    """The objective: cross-rank transitions plus ``node_weight`` times cross-node ones."""
    fractions = _crossings(placement.owner, transitions, placement.ranks_per_node)
    cost = fractions[0]
    if placement.ranks_per_node is not None:
        cost += node_weight * fractions[1]
    return float(cost)


def _crossings(owner: np.ndarray, transitions: np.ndarray, ranks_per_node: int | None) -> tuple[float, float]:
    """Total (cross-rank, cross-node) transition counts."""
    rank_cross = node_cross = 0.0
    per = ranks_per_node or 1
    for layer in range(transitions.shape[0]):
        a, b = owner[layer], owner[layer + 1]
        rank_cross += float(transitions[layer][a[:, None] != b[None, :]].sum())
        node_cross += float(transitions[layer][(a // per)[:, None] != (b // per)[None, :]].sum())
    return rank_cross, node_cross


def transition_fractions(placement: Placement, trace: Any) -> dict[str, float]:
    """Fractions of token transitions that cross ranks and nodes under ``placement``.

    ``trace`` is a ``[tokens, layers(, k)]`` routing trace or ``[layers - 1, E, E]`` counts.
    """
    trace = np.asarray(trace)
    if (
        trace.ndim == 3
        and trace.shape[1] == trace.shape[2] == placement.num_experts
        and trace.shape[0] == (placement.num_layers - 1)
    ):
        transitions = trace.astype(np.float64)
    else:
        transitions = transition_counts(trace, placement.num_experts).astype(np.float64)
    if transitions.shape[0] != placement.num_layers - 1:
        raise ValueError(
            f"transition_fractions: {transitions.shape[0] + 1} layers of transitions, placement has "
            f"{placement.num_layers}"
        )
    total = float(transitions.sum())
    rank_cross, node_cross = _crossings(placement.owner, transitions, placement.ranks_per_node)
    if total == 0:
        return {"cross_rank": 0.0, "cross_node": 0.0, "transitions": 0.0}
    return {"cross_rank": rank_cross / total, "cross_node": node_cross / total, "transitions": total}


class _Problem:
    """The placement objective as gains (co-located transitions), with helpers for local moves."""

    def __init__(self, transitions: np.ndarray, num_ranks: int, ranks_per_node: int | None, node_weight: float):
        self.t = transitions
        self.layers = transitions.shape[0] + 1
        self.experts = transitions.shape[1]
        self.ranks = num_ranks
        self.per_rank = self.experts // num_ranks
        self.rpn = ranks_per_node
        self.node_weight = node_weight if ranks_per_node is not None else 0.0
        self.node_of = np.arange(num_ranks) // (ranks_per_node or num_ranks)
        self.num_nodes = int(self.node_of.max()) + 1

    def cost(self, owner: np.ndarray) -> float:
        rank_cross, node_cross = _crossings(owner, self.t, self.rpn)
        return rank_cross + self.node_weight * node_cross

    def _rank_gain(self, layer: int, owner: np.ndarray, skip: int | None = None) -> np.ndarray:
        """``[P, E]``: transitions of layer ``layer``'s expert ``j`` to/from neighbour experts on rank ``r``.

        The node term is folded in: a transition to a neighbour on another rank
        of ``r``'s node gains ``node_weight``, one on ``r`` itself ``1 + node_weight``.
        """
        gain = np.zeros((self.ranks, self.experts))
        onehot_neighbours = []
        if layer > 0 and layer - 1 != skip:
            onehot_neighbours.append((self.t[layer - 1].T, owner[layer - 1]))  # [j, i]
        if layer < self.layers - 1 and layer + 1 != skip:
            onehot_neighbours.append((self.t[layer], owner[layer + 1]))  # [j, m]
        for flows, owners in onehot_neighbours:
            on_rank = (owners[None, :] == np.arange(self.ranks)[:, None]).astype(np.float64)
            by_rank = on_rank @ flows.T  # by_rank[r, j] = sum of flows[j, i] over neighbours i on rank r
            gain += by_rank
            if self.node_weight:
                on_node = (self.node_of[None, :] == np.arange(self.num_nodes)[:, None]).astype(np.float64)
                gain += self.node_weight * (on_node @ by_rank)[self.node_of]
        return gain

    def assign(self, gain: np.ndarray) -> np.ndarray:
        """Owners maximising ``sum gain[owner[j], j]`` with ``per_rank`` experts per rank."""
        from scipy.optimize import linear_sum_assignment  # imported here: scipy.optimize is slow to import

        slots = np.repeat(np.arange(self.ranks), self.per_rank)
        rows, cols = linear_sum_assignment(gain[slots], maximize=True)
        owner = np.empty(self.experts, np.int64)
        owner[cols] = slots[rows]
        return owner

    def chain(self, owner: np.ndarray, forward: bool) -> np.ndarray:
        """Place each layer given only the layer before it (``forward``) or after it, the end layer fixed."""
        owner = owner.copy()
        order = range(1, self.layers) if forward else range(self.layers - 2, -1, -1)
        for layer in order:
            owner[layer] = self.assign(self._rank_gain(layer, owner, skip=layer + 1 if forward else layer - 1))
        return owner

    def sweep(self, owner: np.ndarray, deadline: float) -> np.ndarray:
        """Re-place one layer at a time, given its neighbours, until no layer improves."""
        best = self.cost(owner)
        while time.monotonic() < deadline:
            improved = False
            for layer in range(self.layers):
                trial = owner.copy()
                trial[layer] = self.assign(self._rank_gain(layer, owner))
                cost = self.cost(trial)
                if cost < best - 1e-9:
                    owner, best, improved = trial, cost, True
            if not improved:
                break
        return owner

    def _linear_gain(self, layer: int, owner: np.ndarray, free: np.ndarray) -> np.ndarray:
        """``[P, E]`` gain of layer ``layer``'s experts from neighbours that stay (``free`` ones excluded)."""
        masked = owner.copy()
        masked[free] = -1  # on no rank: contributes nothing
        return self._rank_gain(layer, masked)

    def subproblem(self, owner: np.ndarray, layer: int, ranks: np.ndarray, time_limit: float) -> np.ndarray | None:
        """Re-place the experts of ``ranks`` in layers ``layer`` and ``layer + 1`` jointly and exactly (a MILP).

        Experts elsewhere stay; the free ones are shared out among ``ranks``
        again, as many per rank as before. Returns the new owners, or ``None``
        when the solver found no solution in time.
        """
        from scipy import sparse
        from scipy.optimize import Bounds, LinearConstraint, milp

        q = ranks.size
        free_mask = np.zeros(owner.shape, bool)
        free_mask[layer : layer + 2] = np.isin(owner[layer : layer + 2], ranks)
        free = [np.flatnonzero(free_mask[layer + a]) for a in range(2)]
        gains = [self._linear_gain(layer + a, owner, free_mask)[ranks][:, free[a]].T for a in range(2)]  # [f, q]
        base = [0, free[0].size * q]
        nx = base[1] + free[1].size * q
        flows = self.t[layer][np.ix_(free[0], free[1])]
        src, dst = np.nonzero(flows)
        weight = flows[src, dst]
        nodes = np.unique(self.node_of[ranks])
        use_nodes = self.node_weight > 0 and nodes.size > 1
        per_pair = q + (nodes.size if use_nodes else 0)
        c = np.concatenate([-gains[0].reshape(-1), -gains[1].reshape(-1), np.zeros(per_pair * src.size)])
        rows, cols, vals, lower, upper = [], [], [], [], []

        def add(columns: list[int], coefs: list[float], lo: float, hi: float) -> None:
            rows.extend([len(lower)] * len(columns))
            cols.extend(columns)
            vals.extend(coefs)
            lower.append(lo)
            upper.append(hi)

        for a in range(2):
            for f in range(free[a].size):
                add([base[a] + f * q + r for r in range(q)], [1.0] * q, 1, 1)
            for r in range(q):
                need = float(np.count_nonzero(owner[layer + a][free[a]] == ranks[r]))
                add([base[a] + f * q + r for f in range(free[a].size)], [1.0] * free[a].size, need, need)
        col = nx
        groups = [[r] for r in range(q)]
        scales = [1.0] * q  # with all ranks on one node, the node term of a free pair is a constant
        if use_nodes:
            groups += [list(np.flatnonzero(self.node_of[ranks] == n)) for n in nodes]
            scales += [self.node_weight] * nodes.size
        for i, j, w in zip(src, dst, weight):
            for members, scale in zip(groups, scales):
                c[col] = -w * scale
                add([col] + [base[0] + i * q + r for r in members], [1.0] + [-1.0] * len(members), -np.inf, 0)
                add([col] + [base[1] + j * q + r for r in members], [1.0] + [-1.0] * len(members), -np.inf, 0)
                col += 1
        matrix = sparse.csr_array((vals, (rows, cols)), shape=(len(lower), c.size))
        result = milp(
            c,
            constraints=LinearConstraint(matrix, lower, upper),
            integrality=np.concatenate((np.ones(nx), np.zeros(c.size - nx))),
            bounds=Bounds(0, 1),
            options={"time_limit": max(time_limit, 0.01), "disp": False},
        )
        if result.x is None:
            return None
        trial = owner.copy()
        for a in range(2):
            x = result.x[base[a] : base[a] + free[a].size * q].reshape(free[a].size, q)
            trial[layer + a, free[a]] = ranks[x.argmax(axis=1)]
        balanced = all((np.bincount(trial[layer + a], minlength=self.ranks) == self.per_rank).all() for a in range(2))
        return trial if balanced else None

    def busiest_rank_pairs(self, owner: np.ndarray, layer: int) -> list[np.ndarray]:
        """Rank pairs by the transitions between them from layer ``layer`` to ``layer + 1``, heaviest first."""
        on = [(owner[layer + a][None, :] == np.arange(self.ranks)[:, None]).astype(np.float64) for a in range(2)]
        between = on[0] @ self.t[layer] @ on[1].T
        between = between + between.T
        a, b = np.triu_indices(self.ranks, 1)
        order = np.argsort(-between[a, b], kind="stable")
        return [np.array([a[i], b[i]]) for i in order if between[a[i], b[i]] > 0]


def place_experts(
    trace: Any,
    num_ranks: int,
    ranks_per_node: int | None = None,
    *,
    num_experts: int | None = None,
    node_weight: float = 4.0,
    refine: bool = True,
    time_limit: float = 10.0,
    max_subproblems: int | None = None,
) -> Placement:
    """A placement of every layer's experts, ``E / num_ranks`` per rank, that keeps routed tokens local.

    ``trace`` is a routing trace ``[tokens, layers]`` (expert ids, ``-1`` =
    none) or transition counts ``[layers - 1, E, E]`` (see
    :func:`transition_counts`, also for top-k traces). ``node_weight`` is
    the extra cost of a transition that crosses nodes, relative to one that
    only crosses ranks. ``refine`` runs the two-rank, two-layer MILP
    re-solves (module docstring) after the sweeps, at most ``max_subproblems``
    per layer pair and round (all rank pairs by default), until a round
    improves nothing or ``time_limit`` seconds have passed since the call
    began (it returns soon after).
    """
    transitions = _as_transitions(trace, num_experts)
    experts = transitions.shape[1]
    if num_ranks < 1 or experts % num_ranks:
        raise ValueError(f"place_experts: {experts} experts do not split evenly over {num_ranks} ranks")
    if ranks_per_node is not None and not 1 <= ranks_per_node <= num_ranks:
        raise ValueError(f"place_experts: ranks_per_node must be in 1..{num_ranks}, got {ranks_per_node}")
    if node_weight < 0:
        raise ValueError(f"place_experts: node_weight must be >= 0, got {node_weight}")
    deadline = time.monotonic() + time_limit
    problem = _Problem(transitions, num_ranks, ranks_per_node, node_weight)
    start = Placement.contiguous(problem.layers, experts, num_ranks, ranks_per_node).owner.copy()
    candidates = [problem.sweep(problem.chain(start, forward), deadline) for forward in (True, False)]
    owner = min(candidates, key=problem.cost)
    best = problem.cost(owner)
    if refine and problem.layers > 1 and num_ranks > 1:
        improved = True
        while improved and time.monotonic() < deadline:
            improved = False
            for layer in range(problem.layers - 1):
                for ranks in problem.busiest_rank_pairs(owner, layer)[:max_subproblems]:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    trial = problem.subproblem(owner, layer, ranks, left)
                    if trial is None:
                        continue
                    cost = problem.cost(trial)
                    if cost < best - 1e-9:
                        owner, best, improved = problem.sweep(trial, deadline), cost, True
                        best = problem.cost(owner)
    if problem.cost(start) <= best:
        owner = start
    return Placement(owner, num_ranks, ranks_per_node)
