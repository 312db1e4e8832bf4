"""An interposer session: the pack-vs-native decision hook, observations, monitor and report.

Every wrapped communicator refers to one session (derived communicators
share their parent's). ``decide(op, message)`` returns ``"pack"`` (pack with
commlib, send contiguous) or ``"native"`` (hand the derived type to MPI);
the default asks the packer which engine it would use for the message. A
cost model plugs in by passing its own ``decision`` callable, and learns from
``observe(op, message, choice, seconds)``, which the communicators call with
the measured time of every blocking intercepted operation. ``monitor``, when
set, is told of every communication call (see :mod:`commlib.tracing`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import datatypes

__all__ = ["Decision", "Session", "default_decision"]

Decision = Callable[[str, Any], str]


def default_decision(op: str, message: Any) -> str:
    """``"pack"`` where commlib's strided packer beats MPI's for this type and size, else ``"native"``."""
    return "pack" if datatypes.choose_engine(message.count, message.datatype) == "strided" else "native"


class Session:
    """Decision hook plus counters: per operation, how many calls and bytes each choice took."""

    def __init__(self, decision: Decision | None = None) -> None:
        self.decision = decision or default_decision
        self.calls: dict[tuple[str, str], int] = defaultdict(int)
        self.bytes: dict[tuple[str, str], int] = defaultdict(int)
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)
        self.monitor: Any = None

    def decide(self, op: str, message: Any) -> str:
        choice = self.decision(op, message)
        if choice not in ("pack", "native"):
            raise ValueError(f"decision for {op}: expected 'pack' or 'native', got {choice!r}")
        return choice

    def record(self, op: str, choice: str, nbytes: int) -> None:
        self.calls[op, choice] += 1
        self.bytes[op, choice] += nbytes

    def observe(self, op: str, message: Any, choice: str, seconds: float) -> None:
        """The measured time of one blocking intercepted operation (pack and unpack included)."""
        self.seconds[op, choice] += seconds

    def report(self) -> str:
        """One line per intercepted operation: calls and bytes per choice."""
        if not self.calls:
            return "no operation with a strided derived datatype was intercepted"
        lines = []
        for op in sorted({op for op, _ in self.calls}):
            parts = [
                f"{choice} {self.calls[op, choice]} calls / {self.bytes[op, choice]} B"
                + (f" / {self.seconds[op, choice] * 1e3:.3f} ms" if (op, choice) in self.seconds else "")
                for choice in ("pack", "native")
                if (op, choice) in self.calls
            ]
            lines.append(f"{op}: " + ", ".join(parts))
        return "\n".join(lines)
