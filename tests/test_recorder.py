"""The flight recorder (transport.recorder): classification, sequence numbers, the ring, pruning."""

import gc
import time
import weakref

import numpy as np
import pytest
from mpi4py import MPI

from transport import wavefront
from transport.operations import BLOCKING, NONBLOCKING
from transport.recorder import COLLECTIVES, FlightRecorder, ranges


def test_every_traced_operation_is_classified():
    rec = FlightRecorder(64)
    for op in sorted(BLOCKING | NONBLOCKING):
        assert rec.is_blocking(op) == (op in BLOCKING), op
    rec.leave(rec.enter(MPI.COMM_SELF, "Psend_init", (), {}))  # a name traced in the future: no error
    assert rec.describe(rec.completed(1)[0][0], 0.0)["kind"] == "p2p"
    assert {"Allreduce", "Iallreduce", "barrier", "Neighbor_alltoall", "Ibcast", "Reduce_scatter_block"} <= COLLECTIVES
    assert not {"Send", "Isend", "recv", "Sendrecv", "Probe", "Mprobe", "Isendrecv_replace"} & COLLECTIVES


def test_sequence_numbers_peers_and_ring():
    rec = FlightRecorder(16)
    world = MPI.COMM_WORLD
    buf = np.zeros(2)
    for _ in range(3):
        rec.leave(rec.enter(world, "Allreduce", (buf, buf), {}))
    token = rec.enter(world, "Recv", (buf,), {"source": 0, "tag": 5})
    ((tok, record),) = rec.inflight()
    assert tok == token
    described = rec.describe(record, time.perf_counter())
    assert described["seq"] == 1 and described["kind"] == "p2p" and described["blocking"]
    assert described["source"] == 0 and described["source_world"] == world.Get_rank() and described["tag"] == 5
    rec.leave(token)
    rec.leave(token)  # a second leave for the same token is ignored
    rec.leave(rec.enter(world, "Sendrecv", (buf, 0, 3, buf, 0, 4), {}))
    rec.leave(rec.enter(world, "Bcast", (buf,), {}))
    state = next(c for c in rec.comms() if c.label == "COMM_WORLD")
    assert (state.coll_entered, state.coll_done, state.p2p) == (4, 4, 2)
    last = [rec.describe(r, 0.0) for r, _ in rec.completed(2)]
    assert last[0]["op"] == "Sendrecv" and (last[0]["dest"], last[0]["source"], last[0]["tag"]) == (0, 0, 3)
    assert last[1]["op"] == "Bcast" and last[1]["root"] == 0 and last[1]["seq"] == 4
    for _ in range(40):  # wrap the ring
        rec.leave(rec.enter(world, "Barrier", (), {}))
    assert rec.position == 46 and len(rec.completed()) == rec.capacity == 16
    assert rec.recorded == 46 and rec.dropped == 46 - 16  # overwritten in the ring
    pos, newer = rec.since(40, 100)
    assert pos == 46 and len(newer) == 6
    assert len(rec.history(state, "Barrier")) == 16 - 0  # all kept Barrier calls


def test_communicators_are_identified_alike_on_every_rank():
    """By the Fortran handle (creation order on every MPI), not the C handle (Open MPI: an address per process)."""
    rec = FlightRecorder(16)
    dup = MPI.COMM_WORLD.Dup()
    try:
        rec.leave(rec.enter(dup, "Barrier", (), {}))
        state = next(c for c in rec.comms() if c.handle == dup.handle)
        assert state.ident.startswith(f"{dup.py2f() & 0xFFFFFFFF:08x}.1-")
    finally:
        dup.Free()


def test_recorder_keeps_no_buffer_and_forgets_freed_communicators():
    rec = FlightRecorder(64)
    arr = np.zeros(1000)
    ref = weakref.ref(arr)
    rec.leave(rec.enter(MPI.COMM_SELF, "Send", (arr, 0, 1), {}))
    del arr
    gc.collect()
    assert ref() is None
    dup = MPI.COMM_SELF.Dup()
    rec.leave(rec.enter(dup, "Barrier", (), {}))
    assert len(rec.comms()) == 2
    dup.Free()
    assert [c.label for c in rec.comms()] == ["COMM_SELF"]


def test_recorder_prunes_requests_never_completed():
    rec = FlightRecorder(64)
    for _ in range(10):
        rec.enter(MPI.COMM_SELF, "Isend", (None, 0, 0), {})
    blocking = rec.enter(MPI.COMM_SELF, "Recv", (None, 0, 0), {})
    assert rec.prune(4) == 7
    assert len(rec.inflight()) == 4 and blocking in dict(rec.inflight())
    assert rec.recorded == 11 and rec.dropped == 7  # forgotten in flight: lost too
    with pytest.raises(ValueError, match="at least 16"):
        FlightRecorder(4)


def test_ranges():
    assert ranges((0, 1, 2, 5, 7, 8)) == "0-2,5,7-8"
    assert wavefront.parse_ranges("0-2,5,7-8") == [0, 1, 2, 5, 7, 8]
