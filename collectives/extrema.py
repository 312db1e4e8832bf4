"""``MAX`` and ``MIN`` on floating point: when the answer depends on the algorithm, ask MPI.

For numbers, the maximum (minimum) of a set is one value whatever order the
elements are combined in, so every allreduce algorithm gives MPI's bits. Two
cases are different. A NaN: MPICH combines two elements with C's
``a > b ? a : b`` (``MPL_MAX``), which returns the NaN or the number
depending on which operand holds the NaN, so its result depends on its own
algorithm: with two ranks, MPICH 5.0 returns the number for an element in
one half of the vector and NaN for the same inputs in the other half (each
rank reduces one half). Neither numpy's ``maximum`` (always NaN) nor
``fmax`` (never NaN) nor any other rule per element reproduces that. Signed
zeros are the same: ``-0.0`` and ``+0.0`` compare equal, so which one comes
out depends on the order.

So commlib's own algorithms (ring, star, hierarchical) keep MPI's semantics
exactly by not deciding those cases: :func:`ambiguous` checks every rank's
contribution (one small ``Allreduce`` of three flags) and, when any rank
holds a NaN or the ranks hold zeros of both signs, the caller hands the call
to MPI's own ``Allreduce``, whose result is then MPI's by definition. Other
contributions go through commlib's algorithm, whose result then equals MPI's
bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mpi4py import MPI

from .reduction import Reducer, array_module

__all__ = ["ambiguous", "local_flags", "order_sensitive"]

NAN, NEGATIVE_ZERO, POSITIVE_ZERO = 1, 2, 4


def order_sensitive(reduce: Reducer) -> bool:
    """Whether ``reduce`` is ``MAX`` or ``MIN`` on floating point (its result may depend on the order)."""
    return reduce.op_name in ("MAX", "MIN") and reduce.dtype.kind == "f"


def local_flags(x: Any) -> int:
    """Bits of this rank's contribution: :data:`NAN`, :data:`NEGATIVE_ZERO`, :data:`POSITIVE_ZERO`."""
    xp = array_module(x)
    flags = NAN if bool(xp.isnan(x).any()) else 0
    zeros = x == 0
    if bool(zeros.any()):
        negative = xp.signbit(x[zeros])
        if bool(negative.any()):
            flags |= NEGATIVE_ZERO
        if not bool(negative.all()):
            flags |= POSITIVE_ZERO
    return flags


def ambiguous(comm: MPI.Intracomm, x: Any) -> bool:
    """Collective over ``comm``: whether any rank's ``x`` holds a NaN, or the ranks hold zeros of both signs."""
    flags = np.array([local_flags(x)], np.int32)
    MPI.Comm.Allreduce(comm, MPI.IN_PLACE, [flags, MPI.INT], MPI.BOR)
    seen = int(flags[0])
    return bool(seen & NAN) or (seen & (NEGATIVE_ZERO | POSITIVE_ZERO)) == NEGATIVE_ZERO | POSITIVE_ZERO
