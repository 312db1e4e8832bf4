"""Typed local copy: objects of one datatype in one buffer to objects of another in a second buffer.

What MPI does for a message a process sends to itself (an ``Alltoallw``'s
own piece, a ``Sendrecv`` to self): the packed bytes of the source land in
the destination as its type map places them. Where both types have a
strided form, the two strided views are refined to one common shape (each
level of either split where the other's level ends inside it) and copied in
one numpy assignment: one pass over the data, where packing, moving and
unpacking make three. Otherwise the bytes go through a packed buffer.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from .pack_plan import PackPlan, Typelike, describe, resolve
from .packer import _byte_view, _check_bounds, pack, unpack

__all__ = ["common_shape", "copy"]

_LARGE_RUN = 1 << 16
Dims = tuple[tuple[int, int], ...]  # (count, byte stride) per level, outermost first


def _dims(plan: PackPlan) -> Dims:
    """The plan's strided view as byte levels, outermost first, down to single bytes."""
    return (*zip(plan.shape, plan.strides), (plan.item.itemsize, 1))


def common_shape(a: Dims, b: Dims) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None:
    """One shape both level lists can be viewed as, with each side's strides; ``None`` when none exists.

    Both lists must enumerate the same number of bytes in the same (pack)
    order. A level is split where the other list's level ends inside it,
    which needs one count to divide the other.
    """
    shape: list[int] = []
    sa: list[int] = []
    sb: list[int] = []
    i = j = 0
    ca, stride_a = a[0] if a else (1, 1)
    cb, stride_b = b[0] if b else (1, 1)
    while i < len(a) and j < len(b):
        if ca == cb:
            shape.append(ca), sa.append(stride_a), sb.append(stride_b)
            i, j = i + 1, j + 1
            ca, stride_a = a[i] if i < len(a) else (1, 1)
            cb, stride_b = b[j] if j < len(b) else (1, 1)
        elif ca % cb == 0:  # a's level holds cb groups of ca // cb
            shape.append(cb), sa.append(stride_a * (ca // cb)), sb.append(stride_b)
            ca = ca // cb
            j += 1
            cb, stride_b = b[j] if j < len(b) else (1, 1)
        elif cb % ca == 0:
            shape.append(ca), sa.append(stride_a), sb.append(stride_b * (cb // ca))
            cb = cb // ca
            i += 1
            ca, stride_a = a[i] if i < len(a) else (1, 1)
        else:
            return None
    if i < len(a) or j < len(b):
        return None
    return tuple(shape), tuple(sa), tuple(sb)


@lru_cache(maxsize=256)
def _one_pass(
    splan: PackPlan, rplan: PackPlan
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], np.dtype] | None:
    """The common view of two plans: (shape, source strides, destination strides, element)."""
    if splan.item is None or rplan.item is None or not rplan.injective:
        return None
    common = common_shape(_dims(splan), _dims(rplan))
    if common is None:
        return None
    shape, sstrides, rstrides = common
    run = shape[-1]  # the innermost level is bytes, stride 1 on both sides: merge what is contiguous on both
    k = len(shape) - 1
    while k > 0 and sstrides[k - 1] == run and rstrides[k - 1] == run:
        run *= shape[k - 1]
        k -= 1
    outer, sstrides, rstrides = shape[:k], sstrides[:k], rstrides[:k]
    if run > _LARGE_RUN:  # numpy copies one huge opaque element slower than memcpy: rows of 4 KiB or less
        piece = 4096
        while run % piece:
            piece //= 2
        if piece >= 512:
            outer, sstrides, rstrides = (*outer, run // piece), (*sstrides, piece), (*rstrides, piece)
            run = piece
    return outer, sstrides, rstrides, np.dtype(f"u{run}") if run in (1, 2, 4, 8) else np.dtype(f"V{run}")


def copy(
    src: Any,
    scount: int,
    stype: Typelike,
    dst: Any,
    rcount: int,
    rtype: Typelike,
    *,
    sdisp: int = 0,
    rdisp: int = 0,
) -> None:
    """Copy ``scount`` objects of ``stype`` from ``src`` into ``rcount`` objects of ``rtype`` in ``dst``.

    As a message to self: the packed sizes must be equal, the destination's
    type must not touch a byte twice (else MPI's unpack decides), and both
    buffers are bounds-checked before anything is read or written.
    ``sdisp``/``rdisp`` move each side's origin (bytes).
    """
    splan, rplan = resolve("copy", scount, stype), resolve("copy", rcount, rtype)
    if splan.packed != rplan.packed:
        raise ValueError(
            f"copy: {scount} object(s) of {describe(stype)} pack {splan.packed} bytes, "
            f"{rcount} object(s) of {describe(rtype)} hold {rplan.packed}"
        )
    if splan.packed == 0:
        return
    sbytes = _byte_view(src, "copy", "source buffer", writable=False)
    dbytes = _byte_view(dst, "copy", "destination buffer", writable=True)
    _check_bounds("copy", splan.lo + sdisp, splan.hi + sdisp, sbytes.nbytes, scount, stype, "source buffer")
    _check_bounds("copy", rplan.lo + rdisp, rplan.hi + rdisp, dbytes.nbytes, rcount, rtype, "destination buffer")
    views = _one_pass(splan, rplan)
    if views is None:
        packed = pack(sbytes, scount, stype, displacement=sdisp)
        unpack(packed, dbytes, rcount, rtype, displacement=rdisp)
        return
    shape, sstrides, rstrides, item = views
    source = np.ndarray(shape, item, buffer=sbytes, offset=splan.offset + sdisp, strides=sstrides)
    np.copyto(np.ndarray(shape, item, buffer=dbytes, offset=rplan.offset + rdisp, strides=rstrides), source)
