"""Alpha-beta cost of every allreduce algorithm, as pure functions of size, shape and link figures.

A message of ``m`` bytes over a link costs ``alpha + m * beta``; reducing
``m`` bytes locally costs ``m * reduce``; every MPI call commlib's Python
algorithms make costs ``call`` more (MPI's own allreduce makes one). Links
are per level: ``"intra"`` (ranks of one node) and ``"inter"`` (between
nodes). When several ranks of a node send off the node in the same step,
they share its link: the step costs ``alpha + (their bytes) * beta``.

``native`` is modelled as MPICH's documented flat choice - recursive doubling
up to 2 KiB, Rabenseifner's reduce-scatter +
allgather above, folding the ranks beyond a power of two in and out - played
step by step on the actual placement of ranks on nodes. :func:`choose` picks
``native`` unless another algorithm is predicted to take at most ``margin``
(0.75) of native's time and to save at least ``saving`` (100 us); on a single
node it always picks ``native``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from datatypes.model import node_local_over_network

from . import allreduce_algorithms as algorithms

__all__ = [
    "ALGORITHMS",
    "Costs",
    "Link",
    "Plan",
    "Shape",
    "choose",
    "costs_from_model",
    "default_costs",
    "hierarchical_variant",
    "plan_hierarchical",
    "predict",
    "predict_all",
]

SHORT_MSG = 2048  # MPICH's MPIR_CVAR_ALLREDUCE_SHORT_MSG_SIZE and reduce/bcast short thresholds
BCAST_SHORT = 12288  # MPICH's MPIR_CVAR_BCAST_SHORT_MSG_SIZE
MARGIN = 0.75
MIN_SAVING = 100e-6  # seconds: below this, timing noise and Python overhead outweigh the model's precision
# below this, the Python steps of any other algorithm cost more than MPI's whole call (measured: every
# algorithm lost to MPI at 16 KiB and below on one node and on emulated nodes, and won from 32 KiB up)
MIN_BYTES = 32 << 10
MIN_SEGMENT = 1 << 20  # bytes per segment of a pipelined hierarchical allreduce
MAX_SEGMENTS = 8


@dataclass(frozen=True)
class Link:
    alpha: float  # seconds per message
    beta: float  # seconds per byte


@dataclass(frozen=True)
class Costs:
    intra: Link
    inter: Link
    reduce: float  # seconds per byte of local reduction
    call: float  # seconds per MPI call made from Python

    def link(self, level: str) -> Link:
        return self.intra if level == "intra" else self.inter


@dataclass(frozen=True)
class Shape:
    """Where the ranks of a communicator are: ``node_of[r]`` is rank r's node (numbered 0, 1, ...)."""

    node_of: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.node_of)

    @property
    def n_nodes(self) -> int:
        return max(self.node_of) + 1

    @property
    def ppn(self) -> tuple[int, ...]:
        return tuple(self.node_of.count(n) for n in range(self.n_nodes))

    @classmethod
    def flat(cls, nodes: int) -> Shape:
        """One rank on each of ``nodes`` nodes."""
        return cls(tuple(range(nodes)))

    @classmethod
    def blocks(cls, ppn: tuple[int, ...] | list[int]) -> Shape:
        """Ranks placed node by node, ``ppn[k]`` on node k."""
        return cls(tuple(k for k, q in enumerate(ppn) for _ in range(q)))


# Figures measured on the development machine (2 cores shared with other jobs, MPICH 5.0.2 ch4,
# numpy 2): ping-pong minimum over samples for alpha, 1 MiB vs 4 MiB for beta; see the notes.
_SHM = Link(alpha=1.5e-6, beta=0.25e-9)  # shared memory
_LOOPBACK = Link(alpha=20e-6, beta=2.0e-9)  # MPICH over TCP loopback (MPIR_CVAR_NOLOCAL=1)
_NETWORK = Link(alpha=30e-6, beta=8.5e-9)  # TCP over a 1 Gbit/s link (0.94 Gbit/s of goodput)
_REDUCE = 0.25e-9  # numpy add of float64 out of cache
_CALL = 4e-6  # one mpi4py call from Python, with its argument handling


def default_costs() -> Costs:
    """commlib's documented defaults: shared memory inside a node (TCP loopback where MPI
    sends node-local messages through its network module: MPICH's ``MPIR_CVAR_NOLOCAL``,
    Open MPI without its ``sm`` transport), a 1 Gbit/s TCP network between nodes."""
    nolocal = node_local_over_network()
    return Costs(intra=_LOOPBACK if nolocal else _SHM, inter=_NETWORK, reduce=_REDUCE, call=_CALL)


def _figure(value: float, what: str) -> float:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"allreduce cost model: {what} gave {value}")
    return float(value)


def costs_from_model(model: object, base: Costs | None = None) -> Costs:
    """``base`` (the defaults) with both levels' alpha and beta from ``model.alpha_beta(level)``
    and, when the model has it, the reduction cost from ``model.reduce_beta("float64")``."""
    base = base or default_costs()
    levels = {}
    for level in ("intra", "inter"):
        alpha, beta = model.alpha_beta(level)  # type: ignore[attr-defined]
        what = f"alpha_beta({level!r}) = ({alpha}, {beta})"
        levels[level] = Link(_figure(alpha, what), _figure(beta, what))
    reduce = base.reduce
    if callable(getattr(model, "reduce_beta", None)):
        reduce = _figure(model.reduce_beta("float64"), "reduce_beta('float64')")  # type: ignore[attr-defined]
    return replace(base, intra=levels["intra"], inter=levels["inter"], reduce=reduce)


def _step(pairs: list[tuple[int, int]], nbytes: float, shape: Shape, c: Costs) -> float:
    """Time of one step in which every ``(a, b)`` pair sends ``nbytes`` from a to b (b may send back)."""
    if not pairs:
        return 0.0
    off_node = [0] * shape.n_nodes
    for a, b in pairs:
        if shape.node_of[a] != shape.node_of[b]:
            off_node[shape.node_of[a]] += 1
    if any(off_node):
        return c.inter.alpha + max(off_node) * nbytes * c.inter.beta
    return c.intra.alpha + nbytes * c.intra.beta


def _native(n: float, shape: Shape, c: Costs) -> float:
    p = shape.size
    if p == 1:
        return 0.0
    pof2 = 1 << (p.bit_length() - 1)
    rem = p - pof2
    # MPICH folds ranks 2i (i < rem) into 2i+1, then runs on pof2 "new" ranks
    real = [2 * i + 1 for i in range(rem)] + list(range(2 * rem, p))
    fold = [(2 * i, 2 * i + 1) for i in range(rem)]
    t = 2 * _step(fold, n, shape, c) + (n * c.reduce if rem else 0.0)
    masks = [1 << k for k in range(pof2.bit_length() - 1)]

    def exchange(mask: int, nbytes: float) -> float:
        pairs = [(real[i], real[i ^ mask]) for i in range(pof2)]
        return _step(pairs, nbytes, shape, c)

    if n <= SHORT_MSG:
        return t + sum(exchange(m, n) + n * c.reduce for m in masks)
    t += sum(exchange(m, n / (2 * m)) + n / (2 * m) * c.reduce for m in masks)  # reduce-scatter
    return t + sum(exchange(m, n / (2 * m)) for m in reversed(masks))  # allgather


def _ring(n: float, shape: Shape, c: Costs) -> float:
    p = shape.size
    if p == 1:
        return 0.0
    link = c.inter if shape.n_nodes > 1 else c.intra  # one edge per node boundary: no sharing
    chunk = n / p
    return 2 * (p - 1) * (link.alpha + chunk * link.beta + c.call) + (p - 1) * chunk * c.reduce


def _star(n: float, shape: Shape, c: Costs) -> float:
    p = shape.size
    if p == 1:
        return 0.0
    near = shape.node_of.count(shape.node_of[0]) - 1
    far = p - 1 - near
    one_way = max(
        c.inter.alpha + far * n * c.inter.beta if far else 0.0,
        c.intra.alpha + near * n * c.intra.beta if near else 0.0,
    )
    return 2 * one_way + (p - 1) * n * c.reduce + (3 * p - 2) * c.call


_FLAT: dict[str, Callable[[float, Shape, Costs], float]] = dict(zip(algorithms.FLAT, (_native, _ring, _star)))


def _best_flat(n: float, nodes: int, c: Costs) -> tuple[str, float]:
    """The cheapest flat algorithm among ``nodes`` ranks on distinct nodes."""
    shape = Shape.flat(nodes)
    return min(((name, fn(n, shape, c)) for name, fn in _FLAT.items()), key=lambda x: x[1])


def _lg(q: int) -> int:
    return max(0, math.ceil(math.log2(q))) if q > 1 else 0


def _node_reduce(n: float, q: int, c: Costs) -> float:
    a, b = c.intra.alpha, c.intra.beta
    if q == 1:
        return 0.0
    if n <= SHORT_MSG:
        return _lg(q) * (a + n * b + n * c.reduce)
    return 2 * _lg(q) * a + 2 * n * (q - 1) / q * b + n * (q - 1) / q * c.reduce


def _node_bcast(n: float, q: int, c: Costs) -> float:
    a, b = c.intra.alpha, c.intra.beta
    if q == 1:
        return 0.0
    if n < BCAST_SHORT:
        return _lg(q) * (a + n * b)
    return (_lg(q) + q - 1) * a + 2 * n * (q - 1) / q * b


@dataclass(frozen=True)
class Plan:
    """How a hierarchical variant runs: the flat algorithm between nodes, the segments, the predicted time."""

    algorithm: str
    inner: str
    segments: int
    seconds: float


def _stages(variant: str, n: float, shape: Shape, c: Costs) -> tuple[float, tuple[str, float], float]:
    """Time inside the node before, (flat algorithm, time) between nodes, time inside the node after."""
    q, s = max(shape.ppn), min(shape.ppn)
    a, b = c.intra.alpha, c.intra.beta
    if variant == "hierarchical-root":
        inner = _best_flat(n, shape.n_nodes, c) if shape.n_nodes > 1 else ("native", 0.0)
        return _node_reduce(n, q, c), inner, _node_bcast(n, q, c)
    shard = n / s
    before = after = 0.0
    if q > 1:
        before = _lg(q) * a + (q - 1) * shard * (b + c.reduce)
        after = _lg(q) * a + (n - shard) * b
    inner = ("native", 0.0)
    if shape.n_nodes > 1:  # s shards cross every node's link at once
        inner = _best_flat(shard, shape.n_nodes, replace(c, inter=Link(c.inter.alpha, c.inter.beta * s)))
    return before, inner, after


def plan_hierarchical(variant: str, nbytes: int, shape: Shape, costs: Costs) -> Plan:
    """The fastest way to run ``variant`` (``hierarchical-root`` or ``-shard``) for ``nbytes``.

    Pipelined in ``K`` segments of at least :data:`MIN_SEGMENT` bytes (native
    step between nodes only), three steps take ``t1 + t2 + t3`` for the first
    segment and ``max(t1, t2, t3)`` for each further one.
    """
    n = float(nbytes)
    before, (inner, between), after = _stages(variant, n, shape, costs)
    best = Plan(variant, inner, 1, before + between + after + 3 * costs.call)
    if inner != "native":
        return best
    k = 2
    while k <= MAX_SEGMENTS and n / k >= MIN_SEGMENT:
        t1, (_, t2), t3 = _stages(variant, n / k, shape, costs)
        seconds = t1 + t2 + t3 + (k - 1) * max(t1, t2, t3) + 5 * k * costs.call
        if seconds < best.seconds:
            best = Plan(variant, inner, k, seconds)
        k *= 2
    return best


def _hier_root(n: float, shape: Shape, c: Costs) -> float:
    return plan_hierarchical("hierarchical-root", int(n), shape, c).seconds


def _hier_shard(n: float, shape: Shape, c: Costs) -> float:
    return plan_hierarchical("hierarchical-shard", int(n), shape, c).seconds


_ALL: dict[str, Callable[[float, Shape, Costs], float]] = {
    **_FLAT,
    # on a node/network shape the levels allreduce is the shard one (its own model: collectives.hierarchy_cost)
    **dict(zip(algorithms.HIERARCHICAL, (_hier_root, _hier_shard, _hier_shard))),
}
ALGORITHMS = tuple(_ALL)  # the algorithms with a prediction of their own (not the choosers)


def predict(algorithm: str, nbytes: int, shape: Shape, costs: Costs) -> float:
    """Predicted seconds of ``algorithm`` for an allreduce of ``nbytes`` bytes on ``shape``."""
    if algorithm == "hierarchical":
        return min(_hier_root(nbytes, shape, costs), _hier_shard(nbytes, shape, costs))
    try:
        fn = _ALL[algorithm]
    except KeyError:
        raise ValueError(f"allreduce cost: unknown algorithm {algorithm!r} (choose from {', '.join(_ALL)})") from None
    return fn(float(nbytes), shape, costs)


def predict_all(nbytes: int, shape: Shape, costs: Costs) -> dict[str, float]:
    """Predicted seconds of every algorithm."""
    return {name: fn(float(nbytes), shape, costs) for name, fn in _ALL.items()}


def hierarchical_variant(nbytes: int, shape: Shape, costs: Costs) -> str:
    """``hierarchical-root`` or ``hierarchical-shard``, whichever is predicted faster."""
    root, shard = _hier_root(float(nbytes), shape, costs), _hier_shard(float(nbytes), shape, costs)
    return "hierarchical-root" if root <= shard else "hierarchical-shard"


def choose(nbytes: int, shape: Shape, costs: Costs, margin: float = MARGIN, saving: float = MIN_SAVING) -> str:
    """The algorithm ``auto`` runs: the cheapest, if it is predicted to take at most ``margin`` of
    ``native``'s time and to save at least ``saving`` seconds, else ``native`` (always below
    :data:`MIN_BYTES`, and on one node)."""
    if shape.n_nodes == 1 or shape.size == 1 or nbytes < MIN_BYTES:
        return "native"
    times = predict_all(nbytes, shape, costs)
    best = min(times, key=times.__getitem__)
    clear = times[best] <= margin * times["native"] and times["native"] - times[best] >= saving
    return best if clear else "native"
