"""A plan judged: link loads, the busiest link's seconds, and the step's completion time under max-min sharing."""

from __future__ import annotations

import numpy as np

from ..maxmin import Incidence, completion_time
from .leafspine import LeafSpine
from .plans import SPRAYED, SpinePlan, link_loads
from .traffic import Collective


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


def evaluate(topo: LeafSpine, coll: Collective, plan: SpinePlan, *, maxmin_limit: int = 0, progress=None) -> dict:
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
