"""What the cost model knows of a message (:class:`Features`), the operation families it pools, its names."""

from __future__ import annotations

from typing import Any, NamedTuple

from mpi4py import MPI

from ..canonical import StridedBlock, cache_entry
from ..pack_plan import resolve

__all__ = [
    "ENGINES",
    "EXCHANGED",
    "GPU_STRATEGIES",
    "HOST_STRATEGIES",
    "LEVELS",
    "MAX_LEVELS",
    "WORDS",
    "Features",
    "features",
    "op_class",
]

ENGINES = ("strided", "mpi")
HOST_STRATEGIES = ("native", "pack")
GPU_STRATEGIES = ("DEVICE", "ONESHOT", "STAGED")
LEVELS = ("intra", "inter")
MAX_LEVELS = 3  # level counts above this share the tables of this one
WORDS = (1, 2, 4, 8)  # block lengths the strided engine copies as one machine word


class Features(NamedTuple):
    """What the model knows of a message: packed bytes, contiguous block bytes, strided levels (1 = contiguous)."""

    nbytes: int
    block: int
    levels: int


def features(count: int, datatype: Any) -> Features | None:
    """The :class:`Features` of ``count`` objects of ``datatype`` (``None``: no canonical form).

    Cached beside the packer's plans on the datatype, so a repeated message costs one lookup.
    """
    if isinstance(datatype, StridedBlock):
        plan = resolve("model", count, datatype)
        return Features(plan.packed, plan.block, len(plan.shape) + 1)
    entry = cache_entry(datatype) if isinstance(datatype, MPI.Datatype) else None
    key = ("features", count)
    if entry is not None:
        f = entry.plans.get(key, False)
        if f is not False:
            return f
    plan = resolve("model", count, datatype)
    f = None if plan.item is None else Features(plan.packed, plan.block, len(plan.shape) + 1)
    if entry is not None:
        entry.plans[key] = f
    return f


def op_class(op: str) -> str:
    """The family an operation's observations are pooled in: ``send``, ``recv``, ``isend``, ``irecv``,
    ``sendrecv`` or the name."""
    return _OP_CLASS.get(op) or op.lower()


_OP_CLASS = {
    **dict.fromkeys(("Send", "Ssend", "Bsend", "Rsend", "Send_init", "Ssend_init"), "send"),
    **dict.fromkeys(("Recv", "Recv_init", "Mrecv"), "recv"),
    **dict.fromkeys(("Isend", "Issend"), "isend"),
    **dict.fromkeys(("Irecv", "Imrecv"), "irecv"),
    **dict.fromkeys(("Sendrecv", "Sendrecv_replace", "Isendrecv", "Isendrecv_replace"), "sendrecv"),
}
EXCHANGED = ("isend", "irecv")  # families predicted from the exchange tables (``xchg.*``) where measured
