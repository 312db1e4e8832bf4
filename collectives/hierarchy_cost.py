"""Alpha-beta cost of the hierarchical collectives and of MPI's own, on a :class:`~collectives.hierarchy.Hierarchy`.

Every level has a link (:func:`level_links`): level 0's joins the ranks of a
node (the model's ``intra`` figures), level ``k``'s the sub-domains of one
level-k domain (``inter`` unless ``COMMLIB_LEVEL_LINKS`` names it). A message
between two ranks whose innermost common domain is at level ``j`` crosses the
links of levels ``1..j`` of the sender's (and the receiver's) enclosing
domains; the messages of one step that cross the same link share it, so a
step costs ``max(alpha + (bytes through the link) * beta)`` over the links it
uses. MPI's algorithms are played step by step on the actual placement of
ranks (MPICH's documented choices: recursive doubling or Rabenseifner for
allreduce, recursive halving or pairwise exchange for reduce-scatter,
recursive doubling or ring for allgather), and so are the steps of the
hierarchical ones, all concurrent step communicators of a level at once.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from . import allreduce_cost as cost
from .hierarchy import Hierarchy

__all__ = ["LevelCosts", "best", "choose", "level_costs", "parse_links", "predict"]

OPERATIONS = ("allreduce", "reduce_scatter", "allgather")
LONG_MSG = 512 << 10  # MPICH's reduce-scatter and allgather long-message thresholds (total bytes)
MARGIN = 0.9
MAX_SEGMENTS = 8
_RATE = re.compile(r"^\s*([0-9.eE+-]+)\s*(gbit|mbit|kbit|bit)\s*$", re.I)
_BITS = {"gbit": 1e9, "mbit": 1e6, "kbit": 1e3, "bit": 1.0}


@dataclass(frozen=True)
class LevelCosts:
    """A link per level (level 0: inside the node), the local reduction and the per-call cost."""

    links: tuple[cost.Link, ...]
    reduce: float
    call: float


def _seconds_per_byte(text: str, what: str) -> float:
    m = _RATE.match(text)
    if m is not None:
        bits = float(m.group(1)) * _BITS[m.group(2).lower()]
        if bits <= 0:
            raise ValueError(f"{what}: rate {text!r} must be positive")
        return 8.0 / bits
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{what}: {text!r} is not a non-negative number")
    return value


def parse_links(text: str) -> dict[str, cost.Link]:
    """``"rack=30e-6/1gbit,world=30e-6/2.5e-8"`` as ``{name: Link}`` (beta in s/byte or as a rate)."""
    out: dict[str, cost.Link] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, figures = item.partition("=")
        alpha, slash, beta = figures.partition("/")
        what = f"COMMLIB_LEVEL_LINKS item {item!r}"
        if not sep or not slash or not name.strip():
            raise ValueError(f"{what}: expected name=alpha/beta (e.g. 'rack=30e-6/1gbit')")
        try:
            out[name.strip()] = cost.Link(_seconds_per_byte(alpha.strip(), what), _seconds_per_byte(beta.strip(), what))
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}") from None
    return out


def level_costs(h: Hierarchy, base: cost.Costs, links: dict[str, cost.Link] | None = None) -> LevelCosts:
    """Figures per level of ``h``: ``links`` by level name where given, else ``base``'s intra (level 0) or inter."""
    links = links or {}
    per = [links.get(name, base.intra if k == 0 else base.inter) for k, name in enumerate(h.names)]
    return LevelCosts(tuple(per), base.reduce, base.call)


def _common_level(h: Hierarchy, a: int, b: int) -> int:
    for j in range(h.depth):
        if h.domain_of[j][a] == h.domain_of[j][b]:
            return j
    return h.depth


def _step(pairs: Sequence[tuple[int, int]], nbytes: float, h: Hierarchy, c: LevelCosts) -> float:
    """One step in which every ``(a, b)`` sends ``nbytes`` from a to b: the busiest link decides."""
    if not pairs or nbytes < 0:
        return 0.0
    load: Counter = Counter()
    for a, b in pairs:
        j = _common_level(h, a, b)
        if j == 0:
            load[(0, "in", b)] += 1
            continue
        for i in range(1, j + 1):
            load[(i, "out", h.domain_of[i - 1][a])] += 1
            load[(i, "in", h.domain_of[i - 1][b])] += 1
    return max(c.links[key[0]].alpha + n * nbytes * c.links[key[0]].beta for key, n in load.items())


def _rounds(op: str, group_size: int, m: float) -> list[tuple[list[tuple[int, int]], float, float]]:
    """MPI's algorithm for ``op`` on ``m`` bytes among positions ``0..g-1``: (pairs, bytes, bytes reduced) per round."""
    g = group_size
    if g <= 1:
        return []
    pof2 = 1 << (g.bit_length() - 1)
    if op == "allgather":  # m: the gathered total
        if m < LONG_MSG and pof2 == g:
            return [
                ([(r, r ^ mask) for r in range(g)], m / g * mask, 0.0)
                for mask in (1 << k for k in range(g.bit_length() - 1))
            ]
        return [([(r, (r + 1) % g) for r in range(g)], m / g, 0.0)] * (g - 1)
    if op == "reduce_scatter":
        if m >= LONG_MSG or pof2 != g:
            return [([(r, (r + i) % g) for r in range(g)], m / g, m / g) for i in range(1, g)]
        masks = [pof2 >> (k + 1) for k in range(g.bit_length() - 1)]
        return [([(r, r ^ mask) for r in range(g)], m * mask / pof2, m * mask / pof2) for mask in masks]
    rem = g - pof2
    real = [2 * i + 1 for i in range(rem)] + list(range(2 * rem, g))
    fold = [([(2 * i, 2 * i + 1) for i in range(rem)], m, m)] if rem else []
    masks = [1 << k for k in range(pof2.bit_length() - 1)]
    if m <= cost.SHORT_MSG:
        steps = [([(real[i], real[i ^ mk]) for i in range(pof2)], m, m) for mk in masks]
    else:
        rs = [([(real[i], real[i ^ mk]) for i in range(pof2)], m / (2 * mk), m / (2 * mk)) for mk in masks]
        ag = [([(real[i], real[i ^ mk]) for i in range(pof2)], m / (2 * mk), 0.0) for mk in reversed(masks)]
        steps = rs + ag
    unfold = [([(2 * i + 1, 2 * i) for i in range(rem)], m, 0.0)] if rem else []
    return fold + steps + unfold


def _play(op: str, groups: Sequence[Sequence[int]], m: float, h: Hierarchy, c: LevelCosts) -> float:
    """Seconds of MPI's ``op`` run at once in every group (ranks in communicator order), ``m`` bytes each."""
    groups = [g for g in groups if len(g) > 1]
    if not groups:
        return 0.0
    rounds = [_rounds(op, len(g), m) for g in groups]
    total = c.call
    for k in range(max(len(r) for r in rounds)):
        pairs = [(g[a], g[b]) for g, r in zip(groups, rounds) if k < len(r) for a, b in r[k][0]]
        nbytes = max(r[k][1] for r in rounds if k < len(r))
        reduced = max(r[k][2] for r in rounds if k < len(r))
        total += _step(pairs, nbytes, h, c) + reduced * c.reduce
    return total


def _groups(h: Hierarchy, level: int) -> list[list[int]]:
    """The members of every step communicator of ``level``, in communicator order."""
    found: dict[tuple, list[int]] = {}
    domain = h.domain_of[level] if level < h.depth else (0,) * h.size
    for r in range(h.size):
        if h.participates(level, r):
            found.setdefault((domain[r], *(h.index[k][r] for k in range(level))), []).append(r)
    return [sorted(g, key=lambda r: h.index[level][r]) for g in found.values()]


def _stages(op: str, n: float, full: Hierarchy, view: Hierarchy, c: LevelCosts) -> list[float]:
    """Seconds of each step of the hierarchical ``op`` on ``n`` bytes with ``view``'s levels (links: ``full``'s)."""
    down: list[float] = []
    m = n
    for level in range(view.depth):
        kind = "allgather" if op == "allgather" else "reduce_scatter"
        down.append(_play(kind, _groups(view, level), m, full, c) + c.call + m * c.reduce)
        m /= view.shards[level]
    top = "allreduce" if op == "allreduce" else op
    world = [_play(top, _groups(view, view.depth), m, full, c) + c.call]
    if op == "allreduce":
        m2 = n
        up = []
        for level in range(view.depth):
            up.append(_play("allgather", _groups(view, level), m2, full, c) + c.call)
            m2 /= view.shards[level]
        return down + world + up[::-1]
    return down + world


def predict(op: str, nbytes: int, h: Hierarchy, c: LevelCosts, depth: int | None = None, segments: int = 1) -> float:
    """Predicted seconds of ``op`` on ``nbytes`` (the whole vector: the input of a reduce-scatter, the output of
    an allgather): MPI's own with ``depth=None``, else commlib's with the innermost ``depth`` levels."""
    if op not in OPERATIONS:
        raise ValueError(f"hierarchy cost: unknown operation {op!r} (choose from {', '.join(OPERATIONS)})")
    n = float(nbytes)
    if depth is None:
        return _play(op, [list(range(h.size))], n, h, c)
    view = h.view(depth)
    stages = _stages(op, n / segments, h, view, c)
    copies = 0.0 if op == "allreduce" else n * c.reduce  # the permutation into class order
    return sum(stages) + (segments - 1) * max(stages, default=0.0) + copies


def best(op: str, nbytes: int, h: Hierarchy, c: LevelCosts, depth: int | None = None) -> tuple[int, int]:
    """``(depth, segments)`` of the fastest hierarchical ``op`` (at ``depth`` if given, else any depth >= 1)."""
    if h.depth == 0:
        return 0, 1
    found = (math.inf, 1, 1)
    for d in range(1, h.depth + 1) if depth is None else (min(depth, h.depth),):
        segments = 1
        while segments <= MAX_SEGMENTS and (segments == 1 or nbytes / segments >= cost.MIN_SEGMENT):
            seconds = predict(op, nbytes, h, c, d, segments)
            if seconds < found[0]:
                found = (seconds, d, segments)
            segments *= 2
    return found[1], found[2]


def choose(op: str, nbytes: int, h: Hierarchy, c: LevelCosts, margin: float = MARGIN) -> tuple[int, int]:
    """``(depth, segments)`` for ``op`` on ``nbytes``: ``depth`` 0 is MPI's own call, kept unless the best
    hierarchical one is predicted to take at most ``margin`` of its time and save ``allreduce_cost.MIN_SAVING``."""
    if h.depth == 0 or h.size == 1 or nbytes < cost.MIN_BYTES:
        return 0, 1
    native = predict(op, nbytes, h, c)
    depth, segments = best(op, nbytes, h, c)
    seconds = predict(op, nbytes, h, c, depth, segments)
    if seconds > margin * native or native - seconds < cost.MIN_SAVING:
        return 0, 1
    return depth, segments
