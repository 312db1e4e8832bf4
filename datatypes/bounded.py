"""Bounded caches: a dict that empties itself rather than grow past its limit.

The caches of decisions, plans and routes are keyed by things a program may
create without end (datatype objects, shapes, sizes). Emptying the whole
dict when a new key would pass the limit keeps lookups at dict speed (the
hot path is ``get``, untouched) and costs, at worst, refilling what is
still in use.
"""

from __future__ import annotations

from typing import TypeVar

__all__ = ["BoundedDict"]

K = TypeVar("K")
V = TypeVar("V")


class BoundedDict(dict[K, V]):
    """A ``dict`` of at most ``limit`` entries: adding a new key to a full one empties it first."""

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"BoundedDict: limit must be >= 1, got {limit}")
        super().__init__()
        self.limit = limit

    def __setitem__(self, key: K, value: V) -> None:
        if len(self) >= self.limit and key not in self:
            self.clear()
        super().__setitem__(key, value)

    def setdefault(self, key: K, default: V = None) -> V:  # type: ignore[assignment]
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args: object, **kwargs: V) -> None:  # type: ignore[override]
        for key, value in dict(*args, **kwargs).items():  # type: ignore[arg-type]
            self[key] = value
