"""An interposer session: the pack-vs-native decision hook, observations, monitor and report.

Every wrapped communicator refers to one session (derived communicators
share their parent's). ``decide(op, message)`` returns ``"pack"`` (pack with
commlib, send contiguous) or ``"native"`` (hand the derived type to MPI).
By default the cost model decides (:mod:`datatypes.model`: the process's
calibrated model, or the one passed as ``model=``); ``COMMLIB_PACK=strided``
always packs and ``COMMLIB_PACK=mpi`` never does. Any other rule plugs in as
a ``decision`` callable.

``observe(op, message, choice, seconds)``, which the communicators call with
the measured time of every blocking intercepted operation, teaches the model
(whatever decided) and feeds the report and the recorded run: per shape,
calls, time and choice, which ``python -m commlib explain`` reads back.
``monitor``, when set, is told of every communication call (see
:mod:`commlib.interposer.tracing`).
"""

from __future__ import annotations

import atexit
import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from datatypes import model as cost_model
from datatypes.bounded import BoundedDict
from datatypes.settings import settings as datatypes_settings
from transport.flight import SpecCache, invalidate
from transport.operations import OP_INDEX, OPERATIONS

from .. import calibration  # noqa: F401  (installs the store the model saves through at exit)
from ..config import Config, config
from .decision import Layout, Trial, hot_bytes, message_choice, side_choice, type_info
from .run_record import RECORD_SCHEMA, RunRecord, world_rank
from .run_record import save as save_record
from .sides import KnownSides, NativePairs
from .staging import StagingPool

__all__ = ["Decision", "RECORD_SCHEMA", "Session", "default_decision", "model_decision"]

# what the traced methods cache of decisions (transport.flight) is stale when the settings or the model change
Config.on_change(invalidate)
cost_model.on_change(invalidate)

Decision = Callable[[str, Any], str]
_RECEIVES = frozenset({"Recv", "Irecv", "Recv_init", "Sendrecv", "Sendrecv_replace", "Bcast"})  # write the buffer
MAX_DECIDED = 4096


def model_decision(model: cost_model.Model | None = None) -> Decision:
    """A decision asking ``model`` (default: the process's current model) for the faster strategy."""

    def decide(op: str, message: Any) -> str:
        return message_choice(model or cost_model.current(), op, cost_model.features(message.count, message.datatype))

    return decide


default_decision: Decision = model_decision()
default_decision.__doc__ = "``pack`` where the process's cost model predicts it faster than MPI's derived-type path."


class Session:
    """Decision hook, cost model and counters: per operation, how many calls, bytes and seconds each choice took."""

    def __init__(self, decision: Decision | None = None, model: cost_model.Model | None = None) -> None:
        self._own_decision = None if model is None else model_decision(model)
        self.decision = decision or self._own_decision or default_decision
        self._model = model
        self._last: tuple[Any, cost_model.Features | None] = (None, None)
        self._tallies: dict[tuple[str, str], list[int]] = {}  # (op, choice) -> [calls, bytes]
        self._decided: BoundedDict[tuple[str, Any], tuple] = BoundedDict(MAX_DECIDED)  # (op, route) -> (stamp, ...)
        self.sides = KnownSides()  # collective sides decided before, by their spec
        self.pairs = NativePairs()  # exchanges both of whose sides go to MPI as they are
        # (op, send, routes, counts, displacements) -> (stamp, layout)
        self._layouts: BoundedDict[tuple, tuple] = BoundedDict(MAX_DECIDED)
        self._specs = SpecCache()  # messages known to go to MPI, read by the traced methods (transport.flight)
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)
        self._monitor: Any = None
        self._core: Any = None  # what the traced methods record into (see the monitor setter)
        self.staging = StagingPool(config.staging_bytes)  # buffers of packed messages, reused
        self._record = RunRecord()
        self._rank = world_rank()
        if config.record or config.model_save:
            atexit.register(self._at_exit)

    @property
    def monitor(self) -> Any:
        """The fault-detection monitor told of every communication call (:mod:`.tracing`), or ``None``."""
        return self._monitor

    @monitor.setter
    def monitor(self, monitor: Any) -> None:
        self._monitor = monitor
        # what the traced methods read: the monitor's per-call recorder, else the monitor itself (or None)
        self._core = getattr(monitor, "core", monitor) if monitor is not None else None
        invalidate()

    @property
    def model(self) -> cost_model.Model:
        """The cost model this session decides with and teaches."""
        return self._model or cost_model.current()

    def _features(self, message: Any) -> cost_model.Features | None:
        """The message's features; the same message object (decide, then observe) is looked up once."""
        f = getattr(message, "features", False)
        if f is not False:
            return f
        last = self._last
        if last[0] is message:
            return last[1]
        f = cost_model.features(message.count, message.datatype)
        self._last = (message, f)
        return f

    def _decision(self, op: str, message: Any) -> tuple[str, dict[str, Any] | None]:
        """The choice for ``message`` and its recorded-run entry (not yet counted)."""
        f = self._features(message)
        if self.decision is default_decision or self.decision is self._own_decision:
            choice = message_choice(self.model, op, f)
        else:
            choice = self.decision(op, message)
        if choice not in ("pack", "native"):
            raise ValueError(f"decision for {op}: expected 'pack' or 'native', got {choice!r}")
        return choice, self._record.shape(op, choice, message, f)

    def decide(self, op: str, message: Any) -> str:
        choice, shape = self._decision(op, message)
        if shape is not None:
            shape["calls"] += 1
        return choice

    def _tally(self, op: str, choice: str) -> list[int]:
        tally = self._tallies.get((op, choice))
        if tally is None:
            tally = self._tallies[op, choice] = [0, 0]
        return tally

    def record(self, op: str, choice: str, nbytes: int) -> None:
        """Count one call of ``op`` carrying ``nbytes`` with ``choice``."""
        tally = self._tally(op, choice)
        tally[0] += 1
        tally[1] += nbytes

    @property
    def calls(self) -> dict[tuple[str, str], int]:
        """Calls per (operation, choice)."""
        self._drain()
        return {key: tally[0] for key, tally in self._tallies.items()}

    @property
    def bytes(self) -> dict[tuple[str, str], int]:
        """Bytes per (operation, choice)."""
        self._drain()
        return {key: tally[1] for key, tally in self._tallies.items()}

    @property
    def eager(self) -> bool:
        """Analyse every derived-type message at once: a rule of the session's own, or packing forced, decides."""
        return not (self.decision is default_decision or self.decision is self._own_decision) or (
            datatypes_settings.pack_engine == "strided"
        )

    def choose(self, op: str, message: Any) -> str:
        """:meth:`decide` (``"native"`` for a message commlib cannot pack), then :meth:`record`.

        The interposer's per-call entry. A message not analysed (its
        datatype is cold: :mod:`commlib.interposer.decision`) goes to MPI. With the
        model deciding, the outcome for a repeated (operation, datatype,
        count) is kept until the config or a model's choices change
        (:func:`datatypes.model.generation`), so a halo loop's calls cost one
        lookup here.
        """
        route = message.route
        if route is None or not (self.decision is default_decision or self.decision is self._own_decision):
            choice = self.decide(op, message) if message.packable else "native"
            self.record(op, choice, message.nbytes)
            return choice
        stamp = (config.changes, cost_model.generation())
        key = (op, route)
        hit = self._decided.get(key)
        if hit is None or hit[0] != stamp:
            choice, shape = self._decision(op, message) if message.packable else ("native", None)
            hit = self._decided[key] = (stamp, choice, shape, self._tally(op, choice))
        _, choice, shape, tally = hit
        if shape is not None:
            shape["calls"] += 1
        tally[0] += 1
        tally[1] += message.nbytes
        return choice

    def choose_side(
        self, op: str, pieces: Any, *, send: bool, key: tuple | None = None
    ) -> tuple[Layout | None, Trial | None]:
        """How to stage one side of a collective (:mod:`.pieces`): ``(layout or None for MPI, trial)``.

        Only when every non-empty piece is analysed and packable; then the
        session's own rule, or the cost model (:func:`commlib.interposer.decision.side_costs`):
        where its two predictions are close, the side is timed both ways
        (``trial``, a :class:`commlib.interposer.decision.Trial`: the caller reports the
        call's time to it). Decisions are kept per (operation, side, routes,
        counts, displacements), shared by types rebuilt alike, and once
        final under the spec's ``key`` (:class:`commlib.interposer.sides.KnownSides`),
        until the config or the model changes or, while a piece is not yet
        analysed, until it may be.
        """
        own = self.decision is default_decision or self.decision is self._own_decision
        trial = None
        if not (pieces.analysed and pieces.packable):
            layout = None
        elif not own:
            choice = self.decision(op, pieces.message())
            if choice not in ("pack", "native"):
                raise ValueError(f"decision for {op}: expected 'pack' or 'native', got {choice!r}")
            layout = Layout(pieces) if choice == "pack" else None
        else:  # kept per (operation, side, routes, counts, displacements): types rebuilt alike share it
            stamp = (config.changes, cost_model.generation())
            shape = (op, send, pieces.routes, pieces.counts, pieces.displacements)
            hit = self._layouts.get(shape)
            if hit is None or hit[0] != stamp:
                hit = self._layouts[shape] = (stamp, side_choice(self.model, pieces, send=send))
            outcome = hit[1]
            if isinstance(outcome, Trial):
                layout = outcome.current()
                trial = None if outcome.decided else outcome
            else:
                layout = outcome
        tally = self._tally(op, "native" if layout is None else "pack")
        tally[0] += 1
        tally[1] += pieces.nbytes
        if own and key is not None and trial is None:
            remaining = -1
            if not pieces.analysed:  # until the first cold piece may be analysed
                remaining = min(
                    math.ceil(hot_bytes() / max(count * info.size, 1)) - info.uses.get(count, 0)
                    for count, info, route in zip(pieces.counts, pieces.infos, pieces.routes)
                    if count and route is None
                )
            self.sides.remember(key, pieces, layout, tally, remaining, send)
        return layout, trial

    def native_spec(self, op: str, spec: Any) -> Any:
        """The spec to hand MPI for a derived-type message this session already sent to MPI, else ``None``.

        The interposer's cheapest path (:class:`transport.flight.SpecCache`,
        which the traced methods consult before any Python runs): a repeated
        (operation, datatype object, count) whose outcome was ``native``, with
        a contiguous buffer that holds the message, costs one lookup and a
        few comparisons. ``None`` sends the caller down the full path
        (:meth:`choose`), which records new outcomes (:meth:`remember_native`).
        """
        index = OP_INDEX.get(op)  # traced operations only
        return None if index is None else self._specs.lookup(index, spec)

    def remember_native(self, op: str, message: Any, twin: Any, *, observed: bool) -> None:
        """Keep the ``native`` outcome of ``message`` for :meth:`native_spec`.

        A cold message is kept until analysing it may pay; an analysed one
        only where its calls are not timed for the model (``observed``
        operations take the full path, which times them).
        """
        index = OP_INDEX.get(op)
        if index is None or not (self.decision is default_decision or self.decision is self._own_decision):
            return
        route, info, count = message.route, message.info, message.count
        if route is None:
            remaining = math.ceil(hot_bytes() / max(count * info.size, 1)) - info.uses.get(count, 0)
            if remaining <= 1:
                return
            lo, hi = info.touched(count)
        elif observed:
            return
        else:
            remaining, lo, hi = -1, route.lo, route.hi
        self._specs.add(index, message.datatype, count, lo, hi, twin, message.nbytes, remaining, op in _RECEIVES)

    def _drain(self) -> None:
        """Count the calls that went through the :class:`SpecCache` in the tallies and the recorded run."""
        for op_index, datatype, count, calls, nbytes in self._specs.drain():
            op = OPERATIONS[op_index][0]
            tally = self._tally(op, "native")
            tally[0] += calls
            tally[1] += nbytes
            info = type_info(datatype)
            route = info.routes.get(count) if info is not None else None
            if route is not None and route.features is not None:
                shape = self._record.get(op, "native", route.features, count)
                if shape is not None:
                    shape["calls"] += calls

    def observe(self, op: str, message: Any, choice: str, seconds: float) -> None:
        """The measured time of one blocking intercepted operation (pack and unpack included)."""
        self.seconds[op, choice] += seconds
        try:
            f = self._features(message)
        except (TypeError, ValueError):
            return
        if f is None:
            return
        self.model.observe(op, f, choice, seconds)
        shape = self._record.shape(op, choice, message, f)
        if shape is not None:
            shape["timed"] += 1
            shape["seconds"] += seconds

    def recorded_run(self) -> dict[str, Any]:
        """What this session observed, per (operation, choice, shape), as JSON-ready data."""
        self._drain()
        return self._record.document(self._rank, self.model.describe())

    def save_run(self, path: str | Path) -> Path:
        """Write :meth:`recorded_run` to ``path``, 0600 and atomically; returns where it went.

        ``{rank}`` in ``path`` is replaced by this rank; in a job of several
        ranks a path without it gets ``.rank<r>`` before its suffix, so that
        ranks never overwrite each other's record.
        """
        return save_record(self.recorded_run(), path, self._rank)

    def _at_exit(self) -> None:
        if not self._record:
            return  # a session that saw nothing (e.g. a helper wrap) leaves others' files alone
        if config.record:
            self.save_run(config.record)
        if config.model_save and self._rank == 0:
            self.model.save()

    def report(self) -> str:
        """One line per intercepted operation: calls and bytes per choice; then the cost model's line."""
        calls, nbytes = self.calls, self.bytes
        if not calls:
            return "no operation with a derived datatype, and no collective commlib runs itself, was intercepted"
        lines = []
        for op in sorted({op for op, _ in calls}):
            parts = [
                f"{choice} {calls[op, choice]} calls / {nbytes[op, choice]} B"
                + (f" / {self.seconds[op, choice] * 1e3:.3f} ms" if (op, choice) in self.seconds else "")
                for choice in sorted({c for o, c in calls if o == op}, key=lambda c: (c != "pack", c))
            ]
            lines.append(f"{op}: " + ", ".join(parts))
        if self.decision is default_decision or self.decision is self._own_decision:
            lines.append(self.model.describe())
        return "\n".join(lines)
