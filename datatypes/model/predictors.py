"""The strategies the cost model predicts, each a function of (model, features, level) registered by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .features import LEVELS, Features

if TYPE_CHECKING:
    from .costs import Model

__all__ = ["STRATEGIES", "Predictor", "register_strategy"]

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
