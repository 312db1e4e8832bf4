"""Cost model of commlib's strategies: measured tables, log-space interpolation, online refinement.

What it predicts. For a message of ``count`` objects of a strided datatype
(its :class:`Features`: packed bytes, block bytes, levels) the model gives the
one-way time of each *strategy*: ``native`` (MPI sends the derived type
itself), ``pack`` (commlib packs, sends contiguous bytes, unpacks), and the
GPU strategies ``DEVICE``, ``ONESHOT``, ``STAGED``, which have a prediction
only when a calibration measured their parts (never chosen otherwise).
Nonblocking sends and receives (``Isend``, ``Irecv``) are predicted from the
calibration's exchange tables (``xchg.*``: both ranks with several messages
in flight at once) where they were measured, and like blocking ones
elsewhere. It also picks the host pack engine (``strided`` numpy copy or ``mpi``
``MPI_Pack``), and gives collectives their ``alpha_beta(level)`` and
``reduce_beta(dtype)``.

Where the numbers come from, in order. (1) Tables measured by ``python -m
commlib calibrate``: seconds on a grid of (bytes, block) per level count,
interpolated bilinearly in (log2 bytes, log2 block, log2 seconds), clamped
along the block axis and extrapolated along the bytes axis with a log-log
slope between 0 and 1 (:mod:`datatypes.cost_table`). (2) Analytic defaults
(:class:`Prior`), used for any part the calibration lacks: fixed cost plus
per-byte and per-block costs,
whose engine crossover sits at ``COMMLIB_PACK_MIN_BYTES`` and
``COMMLIB_PACK_MIN_BLOCK``, and textbook alpha-beta costs of the links.
(3) Online refinement: every time the interposer observes is compared with
the prediction; per bucket (operation, strategy, level, levels, log2 bytes,
log2 block) the model keeps the last ``window`` log ratios, and scales the
prediction by their 25th percentile, shrunk toward 1 while samples are few
(:mod:`datatypes.refinement`). Memory is bounded (least recently used buckets
are dropped); waiting for a late peer only adds time, so it does not move a
low quantile; each ratio is clipped. The refinements can be saved back
into the calibration file.

:func:`current` is the model of this process: loaded once, lazily, from the
file ``COMMLIB_MODEL`` names (``auto``: this host's calibration in the cache
directory), falling back to the analytic defaults: silently where there is
no calibration yet (the normal state; ``describe()`` says so in ``--report``
and ``explain``), with a one-line warning when a named file is missing or a
file is corrupt, stale or from another MPI or host. It is the one cached model; the
packer's engine choice, the interposer's default decision (a session may
hold its own model instead) and the collectives' cost figures all read it.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from mpi4py import MPI

from . import calibration_file
from .bounded import BoundedDict
from .canonical import StridedBlock, cache_entry
from .cost_table import Table
from .pack_plan import resolve
from .refinement import Bucket, Refinement
from .settings import settings

_CACHED = 4096  # entries in each of a model's caches (choices, engines, base times, observed buckets)

__all__ = [
    "ENGINES",
    "EXCHANGED",
    "GPU_STRATEGIES",
    "HOST_STRATEGIES",
    "LEVELS",
    "STRATEGIES",
    "WORDS",
    "Features",
    "Model",
    "Prior",
    "Refinement",
    "Table",
    "current",
    "features",
    "fit_alpha_beta",
    "generation",
    "load",
    "node_local_over_network",
    "on_change",
    "op_class",
    "register_strategy",
    "set_current",
    "set_store",
]

ENGINES = ("strided", "mpi")
HOST_STRATEGIES = ("native", "pack")
GPU_STRATEGIES = ("DEVICE", "ONESHOT", "STAGED")
LEVELS = ("intra", "inter")
MAX_LEVELS = 3  # level counts above this share the tables of this one
WORDS = (1, 2, 4, 8)  # block lengths the strided engine copies as one machine word


class Features(NamedTuple):
    """What the model knows of a message: packed bytes, contiguous block bytes, strided levels (1 = contiguous)."""

    nbytes: int
    block: int
    levels: int


def features(count: int, datatype: Any) -> Features | None:
    """The :class:`Features` of ``count`` objects of ``datatype`` (``None``: no canonical form).

    Cached beside the packer's plans on the datatype, so a repeated message costs one lookup.
    """
    if isinstance(datatype, StridedBlock):
        plan = resolve("model", count, datatype)
        return Features(plan.packed, plan.block, len(plan.shape) + 1)
    entry = cache_entry(datatype) if isinstance(datatype, MPI.Datatype) else None
    key = ("features", count)
    if entry is not None:
        f = entry.plans.get(key, False)
        if f is not False:
            return f
    plan = resolve("model", count, datatype)
    f = None if plan.item is None else Features(plan.packed, plan.block, len(plan.shape) + 1)
    if entry is not None:
        entry.plans[key] = f
    return f


def op_class(op: str) -> str:
    """The family an operation's observations are pooled in: ``send``, ``recv``, ``isend``, ``irecv``,
    ``sendrecv`` or the name."""
    return _OP_CLASS.get(op) or op.lower()


_OP_CLASS = {
    **dict.fromkeys(("Send", "Ssend", "Bsend", "Rsend", "Send_init", "Ssend_init"), "send"),
    **dict.fromkeys(("Recv", "Recv_init", "Mrecv"), "recv"),
    **dict.fromkeys(("Isend", "Issend"), "isend"),
    **dict.fromkeys(("Irecv", "Imrecv"), "irecv"),
    **dict.fromkeys(("Sendrecv", "Sendrecv_replace", "Isendrecv", "Isendrecv_replace"), "sendrecv"),
}
EXCHANGED = ("isend", "irecv")  # families predicted from the exchange tables (``xchg.*``) where measured


# -- analytic defaults ----------------------------------------------------------------------------


# links as collectives.allreduce_cost documents them: shared memory, TCP loopback, 1 Gbit/s TCP
_LINKS = {"intra": (1.5e-6, 0.25e-9), "inter": (60e-6, 8.4e-9)}
_LOOPBACK = (30e-6, 0.6e-9)


def node_local_over_network() -> bool:
    """Whether MPI is told to send node-local messages through its network module, not shared memory.

    MPICH: ``MPIR_CVAR_NOLOCAL``; Open MPI: an ``OMPI_MCA_btl`` list without
    its shared-memory transport (``sm``, formerly ``vader``), as the emulated
    cluster sets.
    """
    if os.environ.get("MPIR_CVAR_NOLOCAL", "0").strip().lower() in ("1", "true", "yes", "on"):
        return True
    btl = os.environ.get("OMPI_MCA_btl", "").replace(" ", "")
    if not btl:
        return False
    names = set(btl.lstrip("^").split(","))
    shared = bool(names & {"sm", "vader"})
    return shared if btl.startswith("^") else not shared


@dataclass(frozen=True)
class Prior:
    """Analytic costs used where nothing was measured.

    Pack engines: ``fixed + bytes * per_byte + blocks * block_cost``; the
    strided engine also pays ``(mpi_byte - strided_byte) * (min_block - 1/2)^2
    / block`` per block (numpy's loop over narrow words), so that, like the
    rule it replaces, it wins exactly for blocks of at least ``min_block``
    bytes, and its fixed cost puts the crossover of long blocks at
    ``min_bytes``. Links: ``alpha + beta * bytes``.
    """

    min_bytes: int = 16384
    min_block: int = 4
    mpi_fixed: float = 2.0e-6
    mpi_byte: float = 1 / 2.5e9
    strided_byte: float = 1 / 10e9
    block_cost: float = 10e-9
    pack_overhead: float = 2.0e-6  # the pack strategy's buffers and bookkeeping, both sides together
    pack_overhead_byte: float = 0.25e-9  # its fresh buffers' page faults (about 1 us per 4 KiB page)
    pack_piece: float = 2.0e-6  # each further piece of a vector collective packed or unpacked on its own
    analysis: float = 40e-6  # the interposer's analysis of a new (datatype, count): canonical form, route, choice
    links: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(_LINKS))
    reduce: float = 0.25e-9  # seconds per byte of a local elementwise reduction

    @classmethod
    def from_config(cls) -> Prior:
        links = dict(_LINKS)
        if node_local_over_network():
            links["intra"] = _LOOPBACK
        return cls(min_bytes=settings.pack_min_bytes, min_block=max(settings.pack_min_block, 1), links=links)

    def pack(self, engine: str, nbytes: int, block: int) -> float:
        """Seconds to pack (or unpack) ``nbytes`` in blocks of ``block`` bytes with ``engine``."""
        blocks = nbytes / max(block, 1)
        if engine == "mpi":
            return self.mpi_fixed + nbytes * self.mpi_byte + blocks * self.block_cost
        gap = self.mpi_byte - self.strided_byte
        fixed = self.mpi_fixed + self.min_bytes * gap
        narrow = gap * (self.min_block - 0.5) ** 2 / max(block, 1)
        return fixed + nbytes * self.strided_byte + blocks * (self.block_cost + narrow)

    def link(self, level: str) -> tuple[float, float]:
        return self.links.get(level, self.links["inter"])


_PAYBACK_SHAPES = tuple(Features(1 << 20, block, 2) for block in (8, 64, 512, 4096))


# -- strategies -----------------------------------------------------------------------------------

Predictor = Callable[["Model", Features, str], "float | None"]
STRATEGIES: dict[str, Predictor] = {}


def register_strategy(name: str, predictor: Predictor) -> None:
    """Add (or replace) a strategy: ``predictor(model, features, level)`` gives seconds, or ``None`` if unknown."""
    STRATEGIES[name] = predictor


def _native(model: Model, f: Features, level: str) -> float:
    measured = model.table(f"send.native.{level}", f.levels)
    if measured is not None:
        return measured(f.nbytes, f.block)
    for other in LEVELS:  # a derived-type send measured at another level: swap the transfer
        measured = model.table(f"send.native.{other}", f.levels)
        if measured is not None:
            t = measured(f.nbytes, f.block) - model.p2p_time(f.nbytes, other) + model.p2p_time(f.nbytes, level)
            return max(t, model.p2p_time(f.nbytes, level))
    if f.levels == 1:
        return model.p2p_time(f.nbytes, level)  # MPI sends a contiguous type in place
    return model.pack_time("mpi", f) + model.p2p_time(f.nbytes, level) + model.unpack_time("mpi", f)


def _pack(model: Model, f: Features, level: str) -> float:
    engine = model.engine_for(f.nbytes, f.block, f.levels)
    return (
        model.pack_time(engine, f)
        + model.p2p_time(f.nbytes, level)
        + model.unpack_time(engine, f)
        + model.constant("pack_overhead")
        + model.constant("pack_overhead_byte") * f.nbytes
    )


def _measured(model: Model, kind: str, f: Features) -> float | None:
    table = model.table(kind, f.levels)
    return None if table is None else table(f.nbytes, f.block)


def _gpu(parts: tuple[str, ...]) -> Predictor:
    """A GPU strategy: the sum of measured parts (pack/unpack tables by shape, copy/p2p tables by bytes)."""

    def predict(model: Model, f: Features, level: str) -> float | None:
        total = 0.0
        for part in parts:
            kind = part.format(level=level)
            t = _measured(model, kind, f) if kind.startswith(("pack.", "unpack.")) else model.bytes_time(kind, f.nbytes)
            if t is None:
                return None
            total += t
        return total

    return predict


register_strategy("native", _native)
register_strategy("pack", _pack)
register_strategy("DEVICE", _gpu(("pack.device", "p2p.device.{level}", "unpack.device")))
register_strategy("ONESHOT", _gpu(("pack.oneshot", "p2p.{level}", "unpack.oneshot")))
register_strategy("STAGED", _gpu(("pack.device", "copy.d2h", "p2p.{level}", "copy.h2d", "unpack.device")))


# -- the model ------------------------------------------------------------------------------------


class Model:
    """Predicts and chooses strategies; learns from observed times. See the module docstring."""

    def __init__(
        self,
        tables: dict[str, Table] | None = None,
        *,
        alpha_beta: dict[str, tuple[float, float]] | None = None,
        reduce_beta: dict[str, float] | None = None,
        constants: dict[str, float] | None = None,
        prior: Prior | None = None,
        refinement: Refinement | None = None,
        level: str = "intra",
        source: str = "analytic defaults",
        document: dict[str, Any] | None = None,
    ):
        self.tables = dict(tables or {})
        self.note = ""  # why the defaults are in use, shown by describe() (--report, explain)
        self.prior = prior or Prior.from_config()
        self.refinement = refinement or Refinement()
        self.level = level
        self.source = source
        self.document = document  # the calibration file this model was read from, for save()
        self._alpha_beta = dict(alpha_beta or {})
        self._reduce_beta = dict(reduce_beta or {})
        self._constants = dict(constants or {})
        for level_name, table in self.tables.items():
            if level_name.startswith("p2p.") and level_name.count(".") == 1 and level_name[4:] not in self._alpha_beta:
                self._alpha_beta[level_name[4:]] = fit_alpha_beta(table)
        self._engines: BoundedDict[tuple[int, int, int], str] = BoundedDict(_CACHED)
        self._choices: BoundedDict[tuple, str] = BoundedDict(_CACHED)
        self._bases: BoundedDict[tuple, float | None] = BoundedDict(_CACHED)
        self._observed: BoundedDict[tuple, tuple[float | None, Bucket | None]] = BoundedDict(_CACHED)

    # -- construction ---------------------------------------------------------
    @classmethod
    def from_json(cls, data: dict[str, Any], *, source: str = "calibration", interpolation: str = "affine") -> Model:
        """A model from a calibration document; ``ValueError`` naming the bad section.

        ``interpolation`` is the tables' (:mod:`datatypes.cost_table`): ``affine`` or ``log``.
        """
        tables = {}
        for name, entry in _section(data, "tables").items():
            try:
                tables[name] = Table.from_json(entry, interpolation=interpolation)
            except ValueError as exc:
                raise ValueError(f"table {name!r}: {exc}") from None
        alpha_beta = {}
        for name, entry in _section(data, "alpha_beta").items():
            if not (isinstance(entry, list) and len(entry) == 2 and all(_nonneg(v) for v in entry)):
                raise ValueError(
                    f"alpha_beta {name!r:.40}: expected [alpha, beta], two numbers from 0 to {_MAX_FIGURE:g}"
                )
            alpha_beta[name] = (float(entry[0]), float(entry[1]))
        reduce_beta = {}
        for name, value in _section(data, "reduce_beta").items():
            if not _nonneg(value):
                raise ValueError(f"reduce_beta {name!r:.40}: expected a number from 0 to {_MAX_FIGURE:g}")
            reduce_beta[name] = float(value)
        constants = {}
        for name, value in _section(data, "constants").items():
            if not _nonneg(value):
                raise ValueError(f"constants {name!r:.40}: expected a number from 0 to {_MAX_FIGURE:g}")
            constants[name] = float(value)
        refinement = Refinement()
        saved = data.get("refinement", {})
        refinement.load(saved.get("buckets", []) if isinstance(saved, dict) else saved)
        launch = data.get("launch") if isinstance(data.get("launch"), dict) else {}
        nodes, size = launch.get("nodes", 1), launch.get("size")
        if not _count(nodes) or not (size is None or _count(size)):
            raise ValueError(
                f"launch: nodes and size must be integers from 1 to 2**24, got {nodes!r:.20}, {size!r:.20}"
            )
        level = "inter" if nodes > 1 and nodes == size else "intra"
        return cls(
            tables,
            alpha_beta=alpha_beta,
            reduce_beta=reduce_beta,
            constants=constants,
            refinement=refinement,
            level=level,
            source=source,
            document=data,
        )

    def to_document(self) -> dict[str, Any]:
        """This model as a calibration document (the file it came from, refinements brought up to date)."""
        doc = dict(self.document) if self.document else _the_store("to_document")[0](calibration_file.current_key())
        doc["tables"] = {name: table.to_json() for name, table in self.tables.items()}
        doc["alpha_beta"] = {level: list(ab) for level, ab in self._alpha_beta.items()}
        doc["reduce_beta"] = dict(self._reduce_beta)
        doc["constants"] = dict(self._constants)
        doc["refinement"] = {"buckets": self.refinement.to_json()}
        return doc

    def save(self, path: Path | str | None = None) -> Path:
        """Write the model (with what it learned) to ``path``, by default its calibration file's place.

        Written by the store :func:`set_store` installed (:mod:`commlib.calibration`: 0600, atomically).
        """
        _, write = _the_store("save")
        doc = self.to_document()
        if path is None:
            key = calibration_file.CalibrationKey.from_json(doc["key"])
            path = calibration_file.path_for(key)
        return write(doc, Path(path))

    # -- parts ----------------------------------------------------------------
    def table(self, kind: str, levels: int | None = None) -> Table | None:
        """The table ``kind`` (for ``levels``: that level count's, else the nearest measured one)."""
        if levels is None:
            return self.tables.get(kind)
        want = min(levels, MAX_LEVELS)
        for lv in sorted(range(1, MAX_LEVELS + 1), key=lambda v: (abs(v - want), -v)):
            table = self.tables.get(f"{kind}.{lv}")
            if table is not None and (lv > 1 or want == 1):  # a contiguous table says nothing of strided copies
                return table
        return None

    def constant(self, name: str) -> float:
        return self._constants.get(name, getattr(self.prior, name))

    def _copy_table(self, op: str, engine: str, f: Features) -> Table | None:
        # the strided engine copies blocks of 1, 2, 4 or 8 bytes as words, others as opaque elements:
        # two cost series, measured apart when the calibration has both
        if engine == "strided" and f.levels > 1 and f.block not in WORDS:
            opaque = self.table(f"{op}.strided.opaque", f.levels)
            if opaque is not None:
                return opaque
        return self.table(f"{op}.{engine}", f.levels)

    def pack_time(self, engine: str, f: Features) -> float:
        """Seconds for ``engine`` (``strided`` or ``mpi``) to pack a message of features ``f``."""
        table = self._copy_table("pack", engine, f)
        return table(f.nbytes, f.block) if table is not None else self.prior.pack(engine, f.nbytes, f.block)

    def unpack_time(self, engine: str, f: Features) -> float:
        """Seconds for ``engine`` to unpack it."""
        table = self._copy_table("unpack", engine, f)
        return table(f.nbytes, f.block) if table is not None else self.prior.pack(engine, f.nbytes, f.block)

    def bytes_time(self, kind: str, nbytes: int) -> float | None:
        """A table of bytes alone (p2p, copies), or ``None`` if not measured."""
        table = self.tables.get(kind)
        return None if table is None else table(nbytes, 1)

    def p2p_time(self, nbytes: int, level: str) -> float:
        """One-way time of a contiguous message of ``nbytes`` between two ranks at ``level``."""
        t = self.bytes_time(f"p2p.{level}", nbytes)
        if t is not None:
            return t
        alpha, beta = self.alpha_beta(level)
        return alpha + beta * nbytes

    def alpha_beta(self, level: str) -> tuple[float, float]:
        """(seconds, seconds per byte) of a message between two ranks at ``level`` (``intra``/``inter``)."""
        return self._alpha_beta.get(level) or self.prior.link(level)

    def reduce_beta(self, dtype: Any = "float64") -> float:
        """Seconds per byte of a local elementwise reduction (sum) of ``dtype``."""
        name = getattr(dtype, "name", None) or str(dtype)
        if name in self._reduce_beta:
            return self._reduce_beta[name]
        if self._reduce_beta:
            return sorted(self._reduce_beta.values())[len(self._reduce_beta) // 2]
        return self.prior.reduce

    def engine_for(self, nbytes: int, block: int, levels: int) -> str:
        """The faster host engine (``strided`` or ``mpi``) to pack and unpack this shape."""
        key = (nbytes, block, levels)
        engine = self._engines.get(key)
        if engine is None:
            f = Features(nbytes, block, levels)
            strided = self.pack_time("strided", f) + self.unpack_time("strided", f)
            engine = "strided" if strided < self.pack_time("mpi", f) + self.unpack_time("mpi", f) else "mpi"
            self._engines[key] = engine
        return engine

    def saving_per_byte(self) -> float:
        """The most that packing with commlib saves per packed byte over MPI's own pack and unpack.

        Taken from large (1 MiB) two-level shapes of several block lengths,
        where per-byte costs dominate; 0 when MPI is never slower.
        """
        best = 0.0
        for f in _PAYBACK_SHAPES:
            engine = self.engine_for(f.nbytes, f.block, f.levels)
            mpi = self.pack_time("mpi", f) + self.unpack_time("mpi", f)
            ours = self.pack_time(engine, f) + self.unpack_time(engine, f)
            best = max(best, (mpi - ours) / f.nbytes)
        return best

    def analysis_payback_bytes(self) -> float:
        """Bytes a (datatype, count) must move before its analysis can have paid for itself."""
        saving = self.saving_per_byte()
        return self.constant("analysis") / saving if saving > 0 else math.inf

    # -- prediction, choice, learning ----------------------------------------
    def base(self, strategy: str, f: Features, level: str | None = None) -> float | None:
        """The calibrated (or analytic) one-way time of ``strategy``, before refinement."""
        level = level or self.level
        key = (strategy, f, level)
        if key in self._bases:
            return self._bases[key]
        predictor = STRATEGIES.get(strategy)
        if predictor is None:
            raise ValueError(f"model: unknown strategy {strategy!r} (known: {', '.join(STRATEGIES)})")
        t = predictor(self, f, level)
        self._bases[key] = t
        return t

    def _bucket(self, op: str, strategy: str, f: Features, level: str) -> Bucket:
        return (
            op_class(op),
            strategy,
            level,
            min(f.levels, MAX_LEVELS),
            round(math.log2(max(f.nbytes, 1))),
            round(math.log2(max(f.block, 1))),
        )

    def predict(
        self, op: str, f: Features, level: str | None = None, strategies: Iterable[str] | None = None
    ) -> dict[str, float | None]:
        """Seconds per strategy for ``op`` on a message of features ``f`` (``None``: cannot predict)."""
        level = level or self.level
        exchanged = op_class(op) in EXCHANGED
        out: dict[str, float | None] = {}
        for strategy in strategies if strategies is not None else STRATEGIES:
            t = self.exchange_time(strategy, f, level) if exchanged else None
            if t is None:
                t = self.base(strategy, f, level)
            out[strategy] = None if t is None else t * self.refinement.factor(self._bucket(op, strategy, f, level))
        return out

    def exchange_time(self, strategy: str, f: Features, level: str | None = None) -> float | None:
        """Seconds per message of ``strategy`` in a nonblocking exchange, from the ``xchg`` tables.

        ``calibrate`` measures both ranks sending several messages of a shape
        to each other at once (Isend/Irecv/Waitall), where the one-way
        ping-pong behind :meth:`base` misjudges MPI's derived-type path.
        ``None`` where not measured, below the smallest measured size included.
        """
        table = self.table(f"xchg.{strategy}.{level or self.level}", f.levels)
        if table is None or f.levels < 2 or not table.nbytes or f.nbytes < table.nbytes[0]:
            return None
        return table(f.nbytes, f.block)

    def choose(self, op: str, f: Features, allowed: Sequence[str] = HOST_STRATEGIES, level: str | None = None) -> str:
        """The strategy in ``allowed`` predicted fastest (ties: the first); cached until learning moves it."""
        key = (op, f, level, allowed)
        choice = self._choices.get(key)
        if choice is not None:
            return choice
        if f.nbytes == 0 and "native" in allowed:
            choice = "native"
        else:
            times = self.predict(op, f, level, allowed)
            known = [(t, i, s) for i, (s, t) in enumerate(times.items()) if t is not None]
            if not known:
                raise ValueError(f"model: no strategy in {list(allowed)} has a prediction for {op} of {f}")
            choice = min(known)[2]
        self._choices[key] = choice
        return choice

    def observe(self, op: str, f: Features, strategy: str, seconds: float, level: str | None = None) -> None:
        """Learn from one measured time of ``op`` done with ``strategy``."""
        if not (0 < seconds < math.inf):
            return
        key = (op, strategy, f, level)
        known = self._observed.get(key)
        if known is None:
            if strategy not in STRATEGIES:
                return
            lv = level or self.level
            base = self.base(strategy, f, lv)
            known = (base, self._bucket(op, strategy, f, lv)) if base is not None and base > 0 else (None, None)
            self._observed[key] = known
        base, bucket = known
        if base is None:
            return
        before = self.refinement.factor(bucket)
        after = self.refinement.add(bucket, math.log(seconds / base))
        if abs(after / before - 1) > 0.02:
            self._choices.clear()
            _bump()

    def describe(self) -> str:
        """One line: where the numbers come from and how much was learned."""
        measured = ", ".join(sorted({name.split(".")[0] for name in self.tables})) or "nothing measured"
        note = f"; {self.note}" if self.note else ""
        return f"cost model: {self.source} ({measured}); {len(self.refinement)} refined bucket(s){note}"


def _section(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ValueError(f"{name!r} is not an object")
    return value


_MAX_FIGURE = 1e6  # seconds, or seconds per byte: anything larger in a calibration file is corrupt


def _nonneg(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= _MAX_FIGURE


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1 << 24


def fit_alpha_beta(table: Table) -> tuple[float, float]:
    """Least-squares alpha + beta * n through a table of bytes (first column), both clamped at >= 0."""
    pts = [(n, row[0]) for n, row in zip(table.nbytes, table.seconds) if row and row[0]]
    if len(pts) == 1:
        return (pts[0][1], 0.0)
    # weight by 1/t^2 (relative error), so that small messages fix alpha and large ones beta
    sw = sx = sy = sxx = sxy = 0.0
    for n, t in pts:
        w = 1.0 / (t * t)
        sw, sx, sy, sxx, sxy = sw + w, sx + w * n, sy + w * t, sxx + w * n * n, sxy + w * n * t
    det = sw * sxx - sx * sx
    beta = (sw * sxy - sx * sy) / det if det > 0 else 0.0
    beta = max(beta, 0.0)
    alpha = max((sy - beta * sx) / sw, 0.0)
    if not (math.isfinite(alpha) and math.isfinite(beta)):
        raise ValueError(f"fit_alpha_beta: no finite fit through {len(pts)} points")
    return (alpha, beta)


# -- the process's model --------------------------------------------------------------------------

_current: Model | None = None
_setting: tuple = ()
_generation = 0  # bumped when any model's choices may have changed


def generation() -> int:
    """A number that changes whenever a cached choice of any model may be stale.

    It moves when :func:`set_current` installs a model and when learning
    (:meth:`Model.observe`) moves a model's predictions enough to drop its
    cached choices; callers that cache decisions compare it.
    """
    return _generation


_listeners: list[Callable[[], None]] = []
_store: tuple[Callable[..., dict[str, Any]], Callable[[dict[str, Any], Path], Path]] | None = None


def set_store(
    new_document: Callable[[calibration_file.CalibrationKey], dict[str, Any]],
    write: Callable[[dict[str, Any], Path], Path],
) -> None:
    """Install how :meth:`Model.save` makes a new calibration document for a key and writes one to a path.

    :mod:`commlib.calibration` installs its own when imported (documents stamped with commlib's
    version, written 0600 and atomically into a private directory); the datatypes package reads
    calibration files but writes none by itself.
    """
    global _store
    _store = (new_document, write)


def _the_store(method: str) -> tuple[Callable[..., dict[str, Any]], Callable[[dict[str, Any], Path], Path]]:
    if _store is None:
        raise RuntimeError(f"Model.{method}: no calibration store installed (import commlib.calibration)")
    return _store


def on_change(listener: Callable[[], None]) -> None:
    """Call ``listener()`` whenever :func:`generation` moves (caches of choices kept outside Python use it)."""
    _listeners.append(listener)


def _bump() -> None:
    global _generation
    _generation += 1
    for listener in _listeners:
        listener()


_warned: set[str] = set()


def _warn(message: str) -> None:
    """One line on stderr, once per message, from rank 0 only."""
    if message in _warned:
        return
    _warned.add(message)
    try:
        from mpi4py import MPI

        if MPI.Is_initialized() and not MPI.Is_finalized() and MPI.COMM_WORLD.Get_rank() != 0:
            return
    except ImportError:
        pass
    print(f"commlib: warning: {message}", file=sys.stderr)


def load(setting: str | None = None) -> Model:
    """The model ``setting`` names (default ``COMMLIB_MODEL``): ``auto``, ``analytic`` or a file path.

    A missing, corrupt, foreign or stale file gives a one-line warning and the
    analytic defaults; it never raises. Every value is checked against the
    schema (types, finite, within bounds) before the model uses it; whatever
    else goes wrong while building the model also counts as a corrupt file.
    """
    setting = setting or settings.model
    if setting == "analytic":
        return Model()
    where = setting
    try:
        data, where = calibration_file.load(None if setting == "auto" else setting)
        if data is None:
            model = Model()
            model.note = f"{where} (run 'python -m commlib calibrate' to measure this machine)"
            if not (setting == "auto" and where.startswith("no calibration for ")):
                _warn(f"{where}; using analytic defaults (run 'python -m commlib calibrate')")
            return model
        return Model.from_json(data, source=f"calibrated ({where})")
    except Exception as exc:  # a file must never stop the application: anything unforeseen is corruption too
        _warn(f"calibration file {where} is corrupt ({type(exc).__name__}: {str(exc)[:160]}); using analytic defaults")
        return Model()


def _configured() -> tuple:
    return (
        settings.model,
        settings.cache_dir,
        settings.model_max_age,
        settings.pack_min_bytes,
        settings.pack_min_block,
    )


def current() -> Model:
    """The model of this process, loaded once (again when its settings name another one)."""
    model, seen = _current, _setting
    if (
        model is not None
        and settings.model is seen[0]
        and settings.cache_dir is seen[1]
        and settings.model_max_age is seen[2]
        and settings.pack_min_bytes is seen[3]
        and settings.pack_min_block is seen[4]
    ):
        return model
    return set_current(load(), _configured())


def set_current(model: Model | None, setting: tuple | None = None) -> Model | None:
    """Make ``model`` the process's model (``None``: load again on next use); returns it."""
    global _current, _setting
    _current = model
    _setting = setting or _configured()
    _bump()
    return model
