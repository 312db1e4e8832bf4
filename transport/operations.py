"""The communication calls the fault monitor records, and what it records of each.

:data:`BLOCKING` and :data:`NONBLOCKING` name the traced methods of a
communicator: point-to-point and collective operations, buffer and pickle
forms, neighbourhood collectives (persistent requests, one-sided and I/O
operations are not traced). :data:`COLLECTIVES` are those every member calls
in the same order. :data:`OPERATIONS` is the table the per-call path
(:mod:`transport.flight`) records from: per operation its name, whether it
is collective and blocking, and where its peer ranks and tag sit in its
arguments; :data:`OP_INDEX` numbers them.
"""

from __future__ import annotations

from mpi4py import MPI

__all__ = ["BLOCKING", "COLLECTIVES", "NONBLOCKING", "OPERATIONS", "OP_INDEX", "SPECS", "ARGUMENTS"]

BLOCKING = frozenset(
    {
        # point to point
        "Send", "Ssend", "Bsend", "Rsend", "Recv", "Sendrecv", "Sendrecv_replace", "Probe", "Mprobe",
        "send", "ssend", "bsend", "recv", "sendrecv", "probe", "mprobe",
        # collectives
        "Barrier", "Bcast", "Gather", "Gatherv", "Scatter", "Scatterv", "Allgather", "Allgatherv",
        "Alltoall", "Alltoallv", "Alltoallw", "Reduce", "Allreduce", "Reduce_scatter",
        "Reduce_scatter_block", "Scan", "Exscan",
        "barrier", "bcast", "gather", "scatter", "allgather", "alltoall", "reduce", "allreduce", "scan", "exscan",
        # neighbourhood collectives
        "Neighbor_allgather", "Neighbor_allgatherv", "Neighbor_alltoall", "Neighbor_alltoallv", "Neighbor_alltoallw",
        "neighbor_allgather", "neighbor_alltoall",
    }
)  # fmt: skip

NONBLOCKING = frozenset(
    {
        "Isend", "Issend", "Ibsend", "Irsend", "Irecv", "Isendrecv", "Isendrecv_replace",
        "Ibarrier", "Ibcast", "Igather", "Igatherv", "Iscatter", "Iscatterv", "Iallgather", "Iallgatherv",
        "Ialltoall", "Ialltoallv", "Ialltoallw", "Ireduce", "Iallreduce", "Ireduce_scatter",
        "Ireduce_scatter_block", "Iscan", "Iexscan",
        "Ineighbor_allgather", "Ineighbor_allgatherv", "Ineighbor_alltoall", "Ineighbor_alltoallv",
        "Ineighbor_alltoallw",
    }
)  # fmt: skip

# Operations that every member of the communicator calls, in the same order on every member.
COLLECTIVES = frozenset(
    name
    for name in BLOCKING | NONBLOCKING
    if name.lstrip("I").lower().startswith(
        ("barrier", "bcast", "gather", "scatter", "allgather", "alltoall", "reduce", "allreduce", "scan", "exscan",
         "neighbor")
    )
)  # fmt: skip

# Where each operation's peer ranks and tag sit: (field, position, keyword) for the fields it has.
_SEND = (("dest", 1, "dest"), ("tag", 2, "tag"))
_RECV = (("source", 1, "source"), ("tag", 2, "tag"))
_PROBE = (("source", 0, "source"), ("tag", 1, "tag"))
_SENDRECV = (("dest", 1, "dest"), ("tag", 2, "sendtag"), ("source", 4, "source"))
_REPLACE = (("dest", 1, "dest"), ("tag", 2, "sendtag"), ("source", 3, "source"))
_ROOT1, _ROOT2, _ROOT3 = (("root", 1, "root"),), (("root", 2, "root"),), (("root", 3, "root"),)
ARGUMENTS = {
    **dict.fromkeys(("Send", "Ssend", "Bsend", "Rsend", "send", "ssend", "bsend"), _SEND),
    **dict.fromkeys(("Isend", "Issend", "Ibsend", "Irsend"), _SEND),
    **dict.fromkeys(("Recv", "Irecv", "recv"), _RECV),
    **dict.fromkeys(("Probe", "Mprobe", "probe", "mprobe"), _PROBE),
    **dict.fromkeys(("Sendrecv", "Isendrecv", "sendrecv"), _SENDRECV),
    **dict.fromkeys(("Sendrecv_replace", "Isendrecv_replace"), _REPLACE),
    **dict.fromkeys(("Bcast", "Ibcast", "bcast", "gather", "scatter"), _ROOT1),
    **dict.fromkeys(("Gather", "Gatherv", "Scatter", "Scatterv", "reduce"), _ROOT2),
    **dict.fromkeys(("Igather", "Igatherv", "Iscatter", "Iscatterv"), _ROOT2),
    **dict.fromkeys(("Reduce", "Ireduce"), _ROOT3),
}
_DEFAULTS = {"dest": None, "root": 0, "source": MPI.ANY_SOURCE, "tag": MPI.ANY_TAG, "sendtag": 0}


class _Specs(dict):
    """op -> (is collective, is blocking); a name traced later than this module was written counts as a
    blocking point-to-point call rather than raising into the application."""

    def __missing__(self, op: str) -> tuple[bool, bool]:
        return (False, True)


SPECS = _Specs((name, (name in COLLECTIVES, name in BLOCKING)) for name in BLOCKING | NONBLOCKING)

# What the per-call path records of each operation (transport.flight.Core's specs), and its index there.
OPERATIONS = tuple(
    (
        name,
        name in COLLECTIVES,
        name in BLOCKING,
        tuple((position, keyword, _DEFAULTS[keyword]) for _, position, keyword in ARGUMENTS.get(name, ())),
    )
    for name in sorted(BLOCKING | NONBLOCKING)
)
OP_INDEX = {spec[0]: i for i, spec in enumerate(OPERATIONS)}
