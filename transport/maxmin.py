"""Max-min fair fluid simulation: when does the last of a set of flows that start together finish?

Each flow crosses a set of links, with a weight per link (1 for a flow pinned
to one path; ``1/S`` on each of ``S`` parallel links for an ideally sprayed
flow, which sends the same share of its packets down every path). At every
instant the rates are the max-min fair allocation (progressive filling: all
unfrozen flows grow at the same rate until some link is full; the flows on it
freeze). When a flow finishes, the rest are re-allocated. This is the fluid
model of TCP-like fair sharing the collective-completion figures use: the
collective ends when its slowest flow does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Incidence", "max_min_rates", "completion_time"]

_EPS = 1e-9


@dataclass(frozen=True)
class Incidence:
    """Sparse flow-by-link incidence: entry ``k`` says flow ``flow[k]`` uses link ``link[k]`` with ``weight[k]``."""

    flow: np.ndarray
    link: np.ndarray
    weight: np.ndarray
    n_flows: int
    n_links: int

    def __post_init__(self) -> None:
        if not (len(self.flow) == len(self.link) == len(self.weight)):
            raise ValueError(
                f"Incidence: flow, link and weight lengths differ ({len(self.flow)}, {len(self.link)}, "
                f"{len(self.weight)})"
            )
        if len(self.flow) and (self.flow.min() < 0 or self.flow.max() >= self.n_flows):
            raise ValueError(f"Incidence: flow index out of range 0..{self.n_flows - 1}")
        if len(self.link) and (self.link.min() < 0 or self.link.max() >= self.n_links):
            raise ValueError(f"Incidence: link index out of range 0..{self.n_links - 1}")


def max_min_rates(inc: Incidence, capacity: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
    """Max-min fair rates of the ``active`` flows (all by default) on links of ``capacity``; others get 0."""
    capacity = np.asarray(capacity, dtype=np.float64)
    if capacity.shape != (inc.n_links,):
        raise ValueError(f"max_min_rates: capacity has shape {capacity.shape}, expected ({inc.n_links},)")
    active = np.ones(inc.n_flows, bool) if active is None else np.asarray(active, bool)
    rate = np.zeros(inc.n_flows)
    keep = active[inc.flow]
    flow, link, weight = inc.flow[keep], inc.link[keep], inc.weight[keep]
    remaining = capacity.copy()
    unfrozen = active.copy()
    level = 0.0
    while len(flow):
        load = np.bincount(link, weights=weight, minlength=inc.n_links)
        used = load > 0
        if not used.any():  # flows on no link at all: unbounded; treat as instantaneous
            rate[unfrozen] = np.inf
            break
        share = np.full(inc.n_links, np.inf)
        share[used] = remaining[used] / load[used]
        step = max(float(share.min()), 0.0)
        level += step
        remaining[used] -= step * load[used]
        full = used & (share <= step * (1 + _EPS) + _EPS * 1e-3)
        frozen = np.zeros(inc.n_flows, bool)
        frozen[flow[full[link]]] = True
        rate[frozen] = level
        unfrozen &= ~frozen
        keep = unfrozen[flow]
        flow, link, weight = flow[keep], link[keep], weight[keep]
    return rate


def completion_time(inc: Incidence, capacity: np.ndarray, nbytes: np.ndarray, progress=None) -> np.ndarray:
    """Finish time of each flow (bytes ``nbytes``, all starting at 0) under max-min fair sharing.

    Event-driven: rates are re-computed after every batch of flows that finish together.
    ``progress`` (a tqdm-like object with ``update``) is advanced by the number of flows that finish.
    """
    remaining = np.asarray(nbytes, dtype=np.float64).copy()
    if remaining.shape != (inc.n_flows,):
        raise ValueError(f"completion_time: nbytes has shape {remaining.shape}, expected ({inc.n_flows},)")
    finish = np.zeros(inc.n_flows)
    active = remaining > 0
    now = 0.0
    while active.any():
        rate = max_min_rates(inc, capacity, active)
        with np.errstate(divide="ignore"):
            left = np.where(active, remaining / np.where(rate > 0, rate, np.nan), np.inf)
        left = np.nan_to_num(left, nan=np.inf)
        dt = float(left.min())
        if not np.isfinite(dt):
            raise ValueError("completion_time: some flows get no rate at all (a link of zero capacity?)")
        done = active & (left <= dt * (1 + 1e-9))
        now += dt
        remaining[active] -= rate[active] * dt
        finish[done] = now
        remaining[done] = 0.0
        active &= ~done
        if progress is not None:
            progress.update(int(done.sum()))
    return finish
