"""Synthetic MoE routing traces with tunable inter-layer affinity, for tests and benchmarks.

A token routed to expert ``e`` at layer ``l`` goes, with probability
``affinity``, to one of ``e``'s ``fanout`` preferred experts at layer ``l + 1``
(chosen uniformly), and otherwise to an expert drawn from that layer's
popularity distribution (uniform, or Zipf-like with ``skew > 0``). The
preferred experts are a random permutation of the next layer's experts taken
in overlapping windows, so every expert is preferred by exactly ``fanout``
experts of the layer before and no placement is favoured by numbering:
``affinity = 0`` gives independent layers, ``affinity = 1`` deterministic
chains. The model (successors, popularity) and the tokens have separate
seeds, so a placement computed on one sample can be judged on another.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["AffinityModel", "synthetic_trace"]


@dataclass(frozen=True)
class AffinityModel:
    """A random router: ``successors[l, e]`` are ``e``'s preferred experts at layer ``l + 1``."""

    affinity: float
    successors: np.ndarray  # [layers - 1, E, fanout]
    popularity: np.ndarray  # [layers, E] probabilities of the non-affine choice

    @classmethod
    def random(
        cls, num_layers: int, num_experts: int, affinity: float, *, fanout: int = 1, skew: float = 0.0, seed: int = 0
    ) -> AffinityModel:
        if num_layers < 1 or num_experts < 1:
            raise ValueError(f"AffinityModel: need layers >= 1 and experts >= 1, got {num_layers}, {num_experts}")
        if not 0.0 <= affinity <= 1.0:
            raise ValueError(f"AffinityModel: affinity must be in [0, 1], got {affinity}")
        if not 1 <= fanout <= num_experts:
            raise ValueError(f"AffinityModel: fanout must be in [1, {num_experts}], got {fanout}")
        if skew < 0:
            raise ValueError(f"AffinityModel: skew must be >= 0, got {skew}")
        rng = np.random.default_rng(seed)
        window = np.arange(num_experts)[:, None] + np.arange(fanout)[None, :]
        successors = np.zeros((num_layers - 1, num_experts, fanout), np.int64)
        for layer in range(num_layers - 1):
            successors[layer] = rng.permutation(num_experts)[window % num_experts]
        weights = 1.0 / np.arange(1, num_experts + 1) ** skew
        popularity = np.stack([rng.permutation(weights) for _ in range(num_layers)])
        popularity /= popularity.sum(axis=1, keepdims=True)
        return cls(float(affinity), successors, popularity)

    @property
    def num_layers(self) -> int:
        return int(self.popularity.shape[0])

    @property
    def num_experts(self) -> int:
        return int(self.popularity.shape[1])

    def _chain(self, first: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        tokens = first.size
        trace = np.empty((tokens, self.num_layers), np.int64)
        trace[:, 0] = first
        fanout = self.successors.shape[2]
        for layer in range(1, self.num_layers):
            affine = rng.random(tokens) < self.affinity
            pick = rng.integers(0, fanout, tokens)
            preferred = self.successors[layer - 1, trace[:, layer - 1], pick]
            drawn = rng.choice(self.num_experts, size=tokens, p=self.popularity[layer])
            trace[:, layer] = np.where(affine, preferred, drawn)
        return trace

    def sample(self, num_tokens: int, *, k: int = 1, seed: int = 0) -> np.ndarray:
        """``[tokens, layers]`` expert ids (``k == 1``), or ``[tokens, layers, k]`` distinct ids per layer.

        With ``k > 1`` every slot follows its own chain; an id that repeats one
        of the token's earlier slots at a layer is replaced by a uniformly
        random id the token does not use there yet.
        """
        if num_tokens < 0 or not 1 <= k <= self.num_experts:
            raise ValueError(f"sample: need tokens >= 0 and 1 <= k <= {self.num_experts}, got {num_tokens}, {k}")
        rng = np.random.default_rng(seed)
        chains = [
            self._chain(rng.choice(self.num_experts, size=num_tokens, p=self.popularity[0]), rng) for _ in range(k)
        ]
        if k == 1:
            return chains[0]
        trace = np.stack(chains, axis=2)
        for slot in range(1, k):
            for layer in range(self.num_layers):
                row = trace[:, layer, :]
                clash = np.flatnonzero((row[:, :slot] == row[:, slot, None]).any(axis=1))
                while clash.size:  # redraw until distinct: each draw succeeds with probability >= 1/E
                    row[clash, slot] = rng.integers(0, self.num_experts, clash.size)
                    again = (row[clash, :slot] == row[clash, slot, None]).any(axis=1)
                    clash = clash[again]
        return trace


def synthetic_trace(
    num_tokens: int,
    num_layers: int,
    num_experts: int,
    affinity: float,
    *,
    k: int = 1,
    fanout: int = 1,
    skew: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """One sample of :meth:`AffinityModel.random`'s router (model and tokens both from ``seed``)."""
    model = AffinityModel.random(num_layers, num_experts, affinity, fanout=fanout, skew=skew, seed=seed)
    return model.sample(num_tokens, k=k, seed=seed + 1)
