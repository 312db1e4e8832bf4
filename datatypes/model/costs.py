"""The cost model (:class:`Model`): measured tables and analytic defaults, prediction, choice and learning."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .. import calibration_file
from ..bounded import BoundedDict
from ..cost_table import Table
from ..refinement import Bucket, Refinement
from .features import EXCHANGED, HOST_STRATEGIES, MAX_LEVELS, WORDS, Features, op_class
from .generation import bump, the_store
from .predictors import STRATEGIES
from .prior import PAYBACK_SHAPES, Prior

__all__ = ["Model", "fit_alpha_beta"]

_CACHED = 4096  # entries in each of a model's caches (choices, engines, base times, observed buckets)


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
        doc = dict(self.document) if self.document else the_store("to_document")[0](calibration_file.current_key())
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
        _, write = the_store("save")
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
        for f in PAYBACK_SHAPES:
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
            bump()

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
