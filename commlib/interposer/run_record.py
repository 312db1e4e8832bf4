"""A session's recorded run: what it observed per (operation, choice, shape), for ``explain`` and the model.

``COMMLIB_RECORD=run-{rank}.json`` makes every session write its record at
exit; ``python -m commlib explain run-0.json`` reads one back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datatypes import model as cost_model
from datatypes.canonical import cache_entry
from transport.privatefiles import ensure_dir, write_atomic

__all__ = ["MAX_RECORDED_SHAPES", "RECORD_SCHEMA", "RunRecord", "per_rank_path", "world_rank"]

RECORD_SCHEMA = "commlib-recorded-run"
MAX_RECORDED_SHAPES = 256


class RunRecord:
    """Entries per (operation, choice, features, count): decisions, timed calls and their total time."""

    def __init__(self) -> None:
        self.shapes: dict[tuple, dict[str, Any]] = {}

    def __bool__(self) -> bool:
        return bool(self.shapes)

    def get(self, op: str, choice: str, f: cost_model.Features, count: int) -> dict[str, Any] | None:
        """The entry of an existing shape, else ``None``."""
        return self.shapes.get((op, choice, f, count))

    def shape(self, op: str, choice: str, message: Any, f: cost_model.Features | None) -> dict[str, Any] | None:
        """The entry of (op, choice, shape), made on first use; ``None`` when full or not strided."""
        if f is None:
            return None
        key = (op, choice, f, message.count)
        shape = self.shapes.get(key)
        if shape is None and len(self.shapes) < MAX_RECORDED_SHAPES:
            shape = self.shapes[key] = {
                "op": op,
                "choice": choice,
                "count": message.count,
                "nbytes": f.nbytes,
                "block": f.block,
                "levels": f.levels,
                "canonical": _canonical(message.datatype),
                "calls": 0,  # decisions
                "timed": 0,  # observed (blocking) calls
                "seconds": 0.0,  # their total time
            }
        return shape

    def document(self, rank: int, model: str) -> dict[str, Any]:
        """The record as JSON-ready data."""
        return {
            "schema": RECORD_SCHEMA,
            "version": 1,
            "rank": rank,
            "model": model,
            "shapes": [dict(shape) for shape in self.shapes.values()],
        }


def save(document: dict[str, Any], path: str | Path, rank: int) -> Path:
    """Write a record to ``path`` (:func:`per_rank_path`), 0600 and atomically; returns where it went."""
    path = per_rank_path(path, rank)
    ensure_dir(path.parent, "record directory", check=False)
    return write_atomic(path, (json.dumps(document, indent=1) + "\n").encode("utf-8"))


def _canonical(datatype: Any) -> dict[str, Any] | None:
    block = cache_entry(datatype).block
    if block is None:
        return None
    return {"start": block.start, "counts": list(block.counts), "strides": list(block.strides), "extent": block.extent}


def per_rank_path(path: str | Path, rank: int) -> Path:
    """``path`` for ``rank``: ``{rank}`` replaced, or ``.rank<r>`` added before the suffix in a multi-rank job."""
    text = str(path)
    if "{rank}" in text:
        return Path(text.replace("{rank}", str(rank)))
    plain = Path(text)
    return plain.with_name(f"{plain.stem}.rank{rank}{plain.suffix}") if _world_size() > 1 else plain


def _world_size() -> int:
    from mpi4py import MPI

    return MPI.COMM_WORLD.Get_size() if MPI.Is_initialized() and not MPI.Is_finalized() else 1


def world_rank() -> int:
    from mpi4py import MPI

    return MPI.COMM_WORLD.Get_rank() if MPI.Is_initialized() and not MPI.Is_finalized() else 0
