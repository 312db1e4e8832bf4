"""Self-check of MPI's predefined reductions against commlib's exact ones.

Some MPI libraries reduce some (operation, datatype) pairs wrongly. Open MPI
5.0's vectorised reduction component (``op/avx``) saturates ``MPI_SUM`` on 8-
and 16-bit integers instead of wrapping as C does (100 + 100 gives 127, not
-56; ``OMPI_MCA_op=^avx`` turns the component off), and ``MPI_MAX``/``MPI_MIN``
on floating-point types keep or drop a NaN depending on the operand order, in
MPICH and Open MPI alike (the standard leaves NaN unspecified). commlib's local
reductions (:mod:`collectives.reduction`: C's wrapping integer arithmetic,
NaN-propagating maximum and minimum, as numpy computes them) are the reference.

:func:`local_faults` runs ``MPI_Reduce_local`` - the kernel MPI's collectives
reduce with - once per process on every pair commlib reduces, on probe vectors
of overflow-prone and special values long enough to reach the vectorised loops
and their scalar tails, and returns the pairs whose result differs. :func:`agree`
makes the verdict the same on every rank of a communicator (the union over its
ranks, exchanged by an allgather, never by the MPI reduction in doubt): ranks
that routed one call differently would deadlock. It communicates once per
communicator, at its first allreduce; afterwards :func:`agreed` is a dictionary
lookup. :mod:`collectives.allreduce` sends a faulty pair to ring or star, which
reduce with commlib's arithmetic, and one warning per process names the MPI,
the pairs and the known fix. ``MPI_MAX``/``MPI_MIN`` that drop a NaN are
mended with MPI's own algorithm instead (the values and a NaN flag per
element reduced in one call), without a warning: the standard leaves NaN
unspecified, and commlib defines it as numpy does.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
from mpi4py import MPI

from .bufspec import datatype_of
from .reduction import element_dtype, reducible_pairs

__all__ = [
    "NONE", "Verdict", "agree", "agreed", "codes_by_handle", "describe", "local_faults", "mpi_library", "nan_only",
]  # fmt: skip

PROBE_LENGTH = 1031  # past every vector width (64 one-byte elements and more), with a scalar tail
_LOGICAL = ("LAND", "LOR", "LXOR")

ReduceLocal = Callable[[MPI.Op, Any, Any, MPI.Datatype], None]
Fault = tuple[str, str, str]  # (op name, datatype name, kind): kind "wrap", "nan" or "values"


@dataclass(frozen=True)
class Verdict:
    """The pairs MPI reduces wrongly on one communicator, the same on all of its ranks.

    ``by_handle`` holds ``(op.handle, datatype.handle)``; ``by_code`` holds
    ``(op.handle, dtype.char)`` for the numpy dtype whose arrays mpi4py sends
    as that datatype (the interposer's common case: one set lookup per call).
    """

    faults: tuple[Fault, ...]
    by_handle: frozenset[tuple[int, int]]
    by_code: frozenset[tuple[int, str]]
    nan_only: frozenset[tuple[int, int]] = frozenset()  # (op.handle, datatype.handle): MAX/MIN dropping NaN only

    def __bool__(self) -> bool:
        return bool(self.faults)


NONE = Verdict((), frozenset(), frozenset())


def mpi_library() -> str:
    """The MPI library in a few words, e.g. ``Open MPI v5.0.11`` or ``MPICH 5.0.2``."""
    text = MPI.Get_library_version().strip()
    first = text.splitlines()[0] if text else "an unknown MPI"
    if first.startswith("MPICH Version:"):
        return "MPICH " + first.split(":", 1)[1].strip()
    return first.split(",")[0].strip()


def _reduce_local(op: MPI.Op, x: Any, acc: Any, datatype: MPI.Datatype) -> None:
    op.Reduce_local([x, datatype], [acc, datatype])


@cache
def _bits(n: int, salt: int) -> np.ndarray:
    """``n`` pseudo-random bytes, the same in every process (a splitmix64 stream; no numpy.random import)."""
    with np.errstate(over="ignore"):
        z = (np.arange(n // 8 + 1, dtype=np.uint64) + np.uint64(salt)) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    out = z.view(np.uint8)[:n]
    out.flags.writeable = False  # cached: shared by every probe that views it
    return out


@cache
def _operands(op_name: str, dtype: np.dtype) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Probe operands ``(kind, x, acc)`` for ``op_name`` on ``dtype``, the same in every process."""
    n = PROBE_LENGTH
    if dtype.kind == "b":
        return [("values", (_bits(n, 1) & 1).astype(dtype), (_bits(n, 2) & 1).astype(dtype))]
    if dtype.kind in "iu":
        if op_name in _LOGICAL:
            info = np.iinfo(dtype)
            values = np.array(sorted({0, 1, 2, int(info.max), int(info.min)}), dtype=dtype)
            return [("values", values[_bits(n, 3) % values.size], values[_bits(n, 4) % values.size])]
        full = [_bits(n * dtype.itemsize, salt).view(dtype) for salt in (5, 6)]  # every bit pattern: full range
        return [("wrap" if op_name in ("SUM", "PROD") else "values", *full)]
    small = [(_bits(n, salt) % 17).astype(np.int8) - 8 for salt in (7, 8, 9, 10)]  # exact sums and products
    if dtype.kind == "c":
        x, acc = small[0] + 1j * small[1], small[2] + 1j * small[3]
        probes = [("values", x.astype(dtype), acc.astype(dtype))]
    else:
        probes = [("values", small[0].astype(dtype), small[1].astype(dtype))]
    if op_name in ("SUM", "PROD", "MAX", "MIN"):
        x, acc = probes[0][1].copy(), probes[0][2].copy()
        x[::5] = np.nan  # NaN in one operand, in the other (::3) and in both (::15)
        acc[::3] = np.nan
        if dtype.kind == "f":
            x[1::6], acc[1::12], acc[4::10] = np.inf, -np.inf, np.inf
        probes.append(("nan", x, acc))
    return probes


def _same(got: np.ndarray, want: np.ndarray) -> bool:
    if got.dtype.kind == "c":
        got, want = got.view(got.real.dtype), want.view(want.real.dtype)
    if got.dtype.kind == "f":
        return bool(np.all((got == want) | (np.isnan(got) & np.isnan(want))))
    return got.tobytes() == want.tobytes()


_local: dict[tuple[str, str], str] | None = None


def local_faults(reduce_local: ReduceLocal | None = None) -> dict[tuple[str, str], str]:
    """``{(op name, datatype name): kind}`` for every pair whose MPI result differs from commlib's.

    Computed once per process (a few milliseconds) and cached. ``kind`` says
    which probe failed: ``wrap`` (integer overflow), ``nan`` (a NaN operand)
    or ``values``. ``reduce_local(op, x, acc, datatype)``, computing
    ``acc = x op acc``, replaces ``MPI_Reduce_local`` - so that tests can run
    the routing on an MPI that reduces correctly - and its verdict becomes the
    process's cached one.
    """
    global _local
    if _local is not None and reduce_local is None:
        return dict(_local)
    run = reduce_local or _reduce_local
    found: dict[tuple[str, str], str] = {}
    with np.errstate(all="ignore"):
        for op_name, op, dt, red in reducible_pairs():
            for kind, x, acc in _operands(op_name, red.dtype):
                want = acc.copy()
                red(want, x)
                got = acc.copy()
                run(op, x, got, dt)
                if not _same(got, want):
                    found[(op_name, dt.Get_name())] = kind
                    break
    _local = found
    return dict(found)


def _verdict(faults: list[Fault]) -> Verdict:
    handles = {(name, dt.Get_name()): (op.handle, dt) for name, op, dt, _ in reducible_pairs()}
    by_handle, by_code, nan_only = set(), set(), set()
    kinds: dict[tuple[str, str], set[str]] = {}
    for op_name, dt_name, kind in faults:
        kinds.setdefault((op_name, dt_name), set()).add(kind)
    for (op_name, dt_name), found_kinds in kinds.items():
        found = handles.get((op_name, dt_name))
        if found is None:
            continue
        op_handle, dt = found
        by_handle.add((op_handle, dt.handle))
        dtype = element_dtype(dt)
        if dtype is not None and datatype_of(dtype) == dt:
            by_code.add((op_handle, dtype.char))
        if found_kinds == {"nan"} and op_name in ("MAX", "MIN") and dtype is not None and dtype.kind == "f":
            nan_only.add((op_handle, dt.handle))
    return Verdict(tuple(faults), frozenset(by_handle), frozenset(by_code), frozenset(nan_only))


def nan_only(fault: Fault) -> bool:
    """A fault commlib mends with MPI's own algorithm (a NaN flag per element): no reason for a warning."""
    op_name, _, kind = fault
    return kind == "nan" and op_name in ("MAX", "MIN")


_keyval: int | None = None
_by_handle: dict[int, Verdict] = {}  # the attribute's value by communicator handle: a cheaper lookup
#: ``Verdict.by_code`` by communicator handle, for the allreduce's per-call lookup
codes_by_handle: dict[int, frozenset[tuple[int, str]]] = {}
_warned = False


def _delete(comm: MPI.Comm, keyval: int, verdict: Verdict) -> None:
    _by_handle.pop(comm.handle, None)
    codes_by_handle.pop(comm.handle, None)


def agreed(comm: Any) -> Verdict | None:
    """``comm``'s verdict if it was agreed already, else ``None`` (never communicates)."""
    return _by_handle.get(comm.handle)


def agree(comm: MPI.Intracomm) -> Verdict:
    """The pairs MPI reduces wrongly on ``comm``, the same on every rank (collective on first use).

    On one rank MPI reduces nothing (an allreduce is a copy): the verdict is
    empty and nothing is exchanged. Rank 0 of the first communicator that
    finds a fault prints the warning, once per process.
    """
    global _keyval, _warned
    found = _by_handle.get(comm.handle)
    if found is not None:
        return found
    verdict = NONE
    if comm.Get_size() > 1:
        mine = sorted((op, dt, kind) for (op, dt), kind in local_faults().items())
        everyone = MPI.Comm.allgather(comm, mine)  # pickled lists: no MPI reduction involved
        verdict = _verdict(sorted({tuple(f) for faults in everyone for f in faults}))
        worth_saying = any(not nan_only(f) for f in verdict.faults)
        if worth_saying and not _warned and comm.Get_rank() == 0:
            _warned = True
            print(f"commlib: warning: {describe(verdict)}", file=sys.stderr, flush=True)
    if _keyval is None:
        _keyval = MPI.Comm.Create_keyval(delete_fn=_delete)
    comm.Set_attr(_keyval, verdict)
    _by_handle[comm.handle] = verdict
    codes_by_handle[comm.handle] = verdict.by_code
    return verdict


def _listing(faults: list[Fault]) -> str:
    by_op: dict[str, list[str]] = {}
    for op, dt, _ in faults:
        by_op.setdefault(op, []).append(dt)
    return "; ".join(f"MPI_{op} on {', '.join(types)}" for op, types in by_op.items())


def describe(verdict: Verdict, library: str | None = None) -> str:
    """The warning for ``verdict``: what ``library`` (default: this MPI) gets wrong, what commlib does, the fix."""
    library = library or mpi_library()
    wrap = [f for f in verdict.faults if f[2] == "wrap"]
    nan = [f for f in verdict.faults if f[2] == "nan" and not nan_only(f)]
    other = [f for f in verdict.faults if f[2] not in ("wrap", "nan")]
    found = []
    if wrap:
        fix = " (known fix: OMPI_MCA_op=^avx, which turns off Open MPI's vectorised reductions)"
        found.append(f"integer results that overflow differ from C's wrapping arithmetic in {_listing(wrap)}")
        found[-1] += fix if "Open MPI" in library else ""
    if nan:
        found.append(f"a NaN operand is dropped (no MPI setting changes this) in {_listing(nan)}")
    if other:
        found.append(f"results differ from exact arithmetic in {_listing(other)}")
    return (
        f"{library} reduces some (operation, datatype) pairs wrongly, so commlib's allreduce reduces them itself "
        f"(ring or star): {'; '.join(found)}. COMMLIB_REDUCTION_CHECK=0 trusts MPI instead."
    )
