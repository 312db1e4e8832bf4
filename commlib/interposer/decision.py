"""What the interposer knows of a derived datatype, and when it is worth knowing more.

Analysing a datatype (its canonical form, packed size, named base type, the
cost model's features, a rebuilt type for MPI's own path) costs tens of
microseconds; a program that builds a type, uses it once or twice and frees
it would pay that on every call and never get it back. So knowledge comes in
two grades:

* :class:`TypeInfo`, made the first time a datatype object is met: MPI's
  extents of the type (enough for an exact-or-safer bounds check) and a use
  counter. A type of :data:`SHARE_MIN_BYTES` or more is shared by every
  datatype with the same constructor signature (:mod:`datatypes.signature`),
  so a large subarray type rebuilt for every transfer is met as one type;
  reading a smaller one back from MPI would cost about what packing it could
  ever save. A datatype object is found again by identity, one dictionary
  lookup.
* :class:`Route`, the analysis of ``count`` objects of the type, made once
  the (type, count) is *hot*: when its uses so far, times the bytes each use
  moves, times the largest saving per byte that packing can bring, reach
  the cost of the analysis (:func:`hot_bytes`). Until then the message goes
  to MPI untouched. A message of a few hundred KiB is analysed at its first
  use; a small type only after many.

The choice between ``pack`` and ``native`` is made here, from the cost model:
:func:`message_choice` for a point-to-point message, :func:`side_choice` for
one side of a vector collective; the session (:mod:`commlib.interposer.session`) asks
once per route and remembers the answer.
"""

from __future__ import annotations

import statistics
import weakref
from typing import Any

from mpi4py import MPI

import datatypes
from datatypes import model as cost_model
from datatypes.bounded import BoundedDict
from datatypes.canonical import named_datatype
from datatypes.rebuild import build
from datatypes.settings import settings as datatypes_settings
from datatypes.signature import signature

from ..config import Config, config

__all__ = [
    "PACK_MARGIN", "TRIAL_RANGE", "Layout", "Route", "Trial", "TypeInfo", "hot_bytes", "message_choice", "pack_pays",
    "piece_info", "side_choice", "side_costs", "type_info",
]  # fmt: skip

MAX_TYPES = 4096  # datatype objects, and signatures, remembered at once
SHARE_MIN_BYTES = 64 << 10  # smaller types are known per object, not by signature


class Route:
    """The analysis of ``count`` objects of one datatype signature, computed once.

    ``base`` is the named type whose elements carry it packed (``None``:
    commlib cannot pack it), ``nbytes``/``elements`` its packed size,
    ``features`` the cost model's view of its shape, ``lo``/``hi`` the exact
    byte range it touches, ``contiguous`` whether it is one run of bytes
    (MPI moves those in place: packing cannot gain).
    """

    __slots__ = ("base", "block", "contiguous", "elements", "features", "hi", "info", "lo", "nbytes")

    def __init__(self, info: TypeInfo, datatype: MPI.Datatype, count: int) -> None:
        self.info = info
        self.lo, self.hi = datatypes.touched(count, datatype)
        self.block = datatypes.canonicalize(datatype)
        self.base = _base_of(self.block)
        self.nbytes = count * info.size
        self.elements = self.nbytes // self.base.Get_size() if self.base is not None else 0
        self.features = cost_model.features(count, datatype) if self.base is not None else None
        self.contiguous = self.features is not None and self.features.levels == 1

    @property
    def native(self) -> MPI.Datatype | None:
        """The type MPI's own path gets: rebuilt from the canonical form (``None``: the application's)."""
        return self.info.rebuilt(self.block) if self.base is not None else None


def _base_of(block: datatypes.StridedBlock | None) -> MPI.Datatype | None:
    if block is None:
        return None
    base = named_datatype(block.base)
    if base is None or base.Get_size() == 0 or block.size % base.Get_size():
        return None
    return base


class TypeInfo:
    """What every datatype with one constructor signature shares: MPI's extents, uses, analyses."""

    __slots__ = ("__weakref__", "_twin", "extent", "routes", "signature", "size", "true_lb", "true_ub", "uses")

    def __init__(self, datatype: MPI.Datatype, sig: tuple | None) -> None:
        self.signature = sig
        self.size = datatype.Get_size()
        self.extent = datatype.Get_extent()[1]
        lb, extent = datatype.Get_true_extent()
        self.true_lb, self.true_ub = lb, lb + extent
        self.uses: dict[int, int] = {}  # count -> uses while cold
        self.routes: BoundedDict[int, Route] = BoundedDict(64)  # count -> analysis, once hot
        self._twin: Any = None

    def touched(self, count: int) -> tuple[int, int]:
        """``[lo, hi)`` that ``count`` objects may touch, from MPI's true extent (exact, or wider)."""
        if count <= 0 or self.size == 0:
            return 0, 0
        span = (count - 1) * self.extent
        return self.true_lb + min(0, span), self.true_ub + max(0, span)

    def route(self, datatype: MPI.Datatype, count: int, *, eager: bool = False) -> Route | None:
        """The analysis of ``count`` objects: made now if ``eager`` or the pair just turned hot, else ``None``."""
        route = self.routes.get(count)
        if route is not None:
            return route
        if not eager:
            uses = self.uses.get(count, 0) + 1
            if uses * count * self.size < hot_bytes():
                self.uses[count] = uses
                return None
            self.uses.pop(count, None)
        route = self.routes[count] = Route(self, datatype, count)
        return route

    def rebuilt(self, block: datatypes.StridedBlock | None) -> MPI.Datatype | None:
        """The type rebuilt from the canonical form, made on first need and freed with this object."""
        twin = self._twin
        if twin is None:
            made = build(block) if block is not None and block.ndim > 1 else None
            twin = self._twin = False if made is None else made
        return twin or None

    def __del__(self) -> None:
        twin = self._twin
        if twin and MPI.Is_initialized() and not MPI.Is_finalized():
            twin.Free()


class Layout:
    """One side of a collective staged: where each piece sits in the staging buffer, and how to copy them.

    ``whole`` is the canonical form of all the pieces at once when they are
    copies of one shape at evenly spaced places of the user's buffer (the
    transposes of a pencil FFT, the faces of a regular halo): the pieces
    are then packed, or unpacked, in one pass. Otherwise ``None``: one copy
    per piece.
    """

    __slots__ = ("base", "bases", "elements", "nbytes", "offsets", "sizes", "whole")

    def __init__(self, pieces: Any) -> None:
        self.sizes = tuple(c * info.size for c, info in zip(pieces.counts, pieces.infos))
        offsets, at = [], 0
        for size in self.sizes:
            offsets.append(at)
            at += size
        self.offsets, self.nbytes = tuple(offsets), at
        bases = [r.base if r is not None else None for r in pieces.routes]
        self.base = next((b for b in bases if b is not None), MPI.BYTE)
        self.bases = tuple(b if b is not None else self.base for b in bases)
        self.elements = tuple(size // b.Get_size() for size, b in zip(self.sizes, self.bases))
        self.whole = _whole(pieces)

    def features(self) -> cost_model.Features | None:
        """The cost model's view of the one-pass copy (``None``: no one-pass copy)."""
        whole = self.whole
        return None if whole is None else cost_model.Features(whole.size, whole.block, whole.ndim)


def _whole(pieces: Any) -> datatypes.StridedBlock | None:
    """All the pieces as one canonical form (each piece one object of it, in order), or ``None``."""
    n = len(pieces.counts)
    if n < 2 or not all(pieces.counts):
        return None
    shapes = []
    for route, count, disp in zip(pieces.routes, pieces.counts, pieces.displacements):
        block = route.block if route is not None else None
        if block is None:
            return None
        one = block.repeated(count)
        if one.size == 0:
            return None
        shapes.append((disp + one.start, one.counts, one.strides, one.base))
    first, second = shapes[0], shapes[1]
    step = second[0] - first[0]
    for i, shape in enumerate(shapes):
        if shape[1:] != first[1:] or shape[0] != first[0] + i * step:
            return None
    _, counts, strides, base = first
    return datatypes.StridedBlock(first[0], counts, strides, step, 0, base).repeated(n)


def side_costs(model: cost_model.Model, pieces: Any, layout: Layout, *, send: bool) -> tuple[float, float]:
    """``(packed, native)``: predicted seconds of one side of a collective, each way, beyond what both pay.

    Either way the same bytes cross the network; what differs is the copy:
    MPI's derived-type engine over every piece, against commlib's copies
    (one pass, or one per piece) plus its fixed costs per call, per piece
    and per staged byte. Contiguous pieces cost MPI nothing to copy.
    """
    copy = model.pack_time if send else model.unpack_time
    features = [r.features for r in pieces.routes if r is not None]
    native = sum(copy("mpi", f) for f in features if f.levels > 1)
    whole = layout.features()
    if whole is not None:
        ours = copy("strided", whole) + model.constant("pack_piece")
    else:
        ours = sum(copy(model.engine_for(f.nbytes, f.block, f.levels), f) for f in features)
        ours += model.constant("pack_piece") * len(features)
    ours += 0.5 * (model.constant("pack_overhead") + model.constant("pack_overhead_byte") * layout.nbytes)
    return ours, native


def message_choice(model: cost_model.Model, op: str, f: cost_model.Features | None) -> str:
    """``"pack"`` or ``"native"`` for a point-to-point message of features ``f`` (``None``: no canonical form).

    ``COMMLIB_PACK=strided|mpi`` forces the answer. Otherwise MPI's own path
    unless packing is predicted at least :data:`PACK_MARGIN` faster: a wrong
    pack costs more than a missed one, and an uncalibrated model is off by
    tens of percent (halo faces of 48 KiB in 192-byte blocks: packing
    predicted 9% faster, measured 25% slower).
    """
    engine = datatypes_settings.pack_engine
    if engine != "auto":
        return "pack" if engine == "strided" else "native"
    if f is None or model.choose(op, f) != "pack":
        return "native"
    times = model.predict(op, f, None, ("native", "pack"))
    native, pack = times.get("native"), times.get("pack")
    return "pack" if native is None or (pack is not None and pack * PACK_MARGIN <= native) else "native"


def side_choice(model: cost_model.Model, pieces: Any, *, send: bool) -> Layout | Trial | None:
    """One side of a vector collective: a :class:`Layout` to pack, ``None`` (MPI's path), or a :class:`Trial`.

    ``COMMLIB_PACK=strided|mpi`` forces the answer; otherwise predictions
    more than :data:`TRIAL_RANGE` apart decide, and closer ones are timed.
    """
    layout = Layout(pieces)
    engine = datatypes_settings.pack_engine
    if engine != "auto":
        return layout if engine == "strided" else None
    ours, native = side_costs(model, pieces, layout, send=send)
    if ours * TRIAL_RANGE < native:
        return layout
    if native * TRIAL_RANGE < ours or native == 0:
        return None
    return Trial(layout)


def pack_pays(model: cost_model.Model, pieces: Any, layout: Layout, *, send: bool) -> bool:
    """Whether packing one side of a collective is predicted faster than MPI moving the derived types."""
    ours, native = side_costs(model, pieces, layout, send=send)
    return ours < native


class Trial:
    """A collective side whose faster way is measured: packed and MPI's, in turns, then the faster kept.

    The model cannot see everything that decides a collective's time (how
    MPI moves a derived type inside its own algorithm, how the peers'
    copies overlap), so where its two predictions are within
    :data:`TRIAL_RANGE` of each other the side is timed both ways: one
    untimed call each way, then ``rounds`` timed calls each way, taking
    turns, and the way with the smaller median is kept. Every rank runs the
    same calls in the same order, so the ranks take their turns together.
    """

    __slots__ = ("calls", "layout", "rounds", "samples", "winner")

    def __init__(self, layout: Layout, rounds: int = 3) -> None:
        self.layout = layout
        self.rounds = rounds
        self.calls = 0
        self.samples: tuple[list[float], list[float]] = ([], [])  # packed, native
        self.winner: bool | None = None  # packed?

    @property
    def decided(self) -> bool:
        return self.winner is not None

    def current(self) -> Layout | None:
        """How this call stages the side: the layout (packed) or ``None`` (MPI's path)."""
        if self.winner is not None:
            return self.layout if self.winner else None
        return self.layout if self.calls % 2 == 0 else None

    def observe(self, seconds: float) -> None:
        """The time of the call that staged the side as :meth:`current` said."""
        if self.winner is not None:
            return
        if self.calls >= 2:  # the first call each way is untimed: buffers, caches, connections warm up
            self.samples[self.calls % 2].append(seconds)
        self.calls += 1
        packed, native = self.samples
        if len(native) >= self.rounds:
            self.winner = statistics.median(packed) < statistics.median(native)


TRIAL_RANGE = 4.0  # predictions closer than this factor are settled by timing both ways
PACK_MARGIN = 1.25  # a point-to-point message is packed only where predicted at least this much faster


# id(datatype) -> (weak reference, handle, info)
_OBJECTS: BoundedDict[int, tuple[Any, int, TypeInfo | None]] = BoundedDict(MAX_TYPES)
_SIGNATURES: dict[tuple, TypeInfo] = {}


def type_info(datatype: MPI.Datatype) -> TypeInfo | None:
    """The :class:`TypeInfo` of a derived ``datatype`` (``None`` for a predefined or null one).

    Kept per Python object, alive and still holding the same handle, so a
    program that passes the same datatype object call after call pays one
    lookup; a new object with a known signature pays reading its constructor
    back from MPI.
    """
    seen = _OBJECTS.get(id(datatype))
    if seen is not None and seen[0]() is datatype and seen[1] == datatype.handle:
        return seen[2]
    return _meet(datatype)


def _meet(datatype: MPI.Datatype) -> TypeInfo | None:
    info = None
    if not datatype.is_predefined:
        # a small type is not worth reading back: its signature costs about what packing it could ever save
        sig = signature(datatype) if datatype.Get_size() >= SHARE_MIN_BYTES else None
        info = _SIGNATURES.get(sig) if sig is not None else None
        if info is None:
            info = TypeInfo(datatype, sig)
            if sig is not None:
                if len(_SIGNATURES) >= MAX_TYPES:
                    del _SIGNATURES[next(iter(_SIGNATURES))]  # the oldest
                _SIGNATURES[sig] = info
    _OBJECTS[id(datatype)] = (weakref.ref(datatype), datatype.handle, info)
    return info


_NAMED_INFOS: dict[int, TypeInfo] = {}


def piece_info(datatype: MPI.Datatype) -> TypeInfo:
    """:func:`type_info`, and for a predefined type (a collective piece may be one) its own :class:`TypeInfo`."""
    info = type_info(datatype)
    if info is None:
        info = _NAMED_INFOS.get(datatype.handle)
        if info is None:
            info = _NAMED_INFOS[datatype.handle] = TypeInfo(datatype, None)
    return info


_hot: tuple[tuple[int, int], float] = ((-1, -1), 0.0)


def hot_bytes() -> float:
    """Bytes a (type, count) must have moved before analysing it can pay for itself.

    ``COMMLIB_ANALYSE_BYTES`` when set (0: analyse every message at once),
    else the cost model's analysis cost divided by the most that packing can
    save per byte (:meth:`datatypes.model.Model.analysis_payback_bytes`).
    Recomputed only when the configuration or the model changes.
    """
    global _hot
    stamp = (Config.changes, cost_model.generation())
    if _hot[0] != stamp:
        setting = config.analyse_bytes
        _hot = (stamp, float(setting) if setting >= 0 else cost_model.current().analysis_payback_bytes())
    return _hot[1]
