"""The flight recorder's per-call path (transport.flight): the C extension and its Python twin behave alike."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from mpi4py import MPI

from transport import flight
from transport.operations import OP_INDEX, OPERATIONS
from transport.recorder import comm_ident

IMPLEMENTATIONS = [pytest.param("python", id="python")]
if flight.COMPILED:
    IMPLEMENTATIONS.append(pytest.param("c", id="c"))


def kinds(name: str) -> tuple:
    """(CommState, Core, SpecCache, Traced) of one implementation."""
    if name == "python":
        return flight.PyCommState, flight.PyCore, flight.PySpecCache, flight.PyTraced
    from transport import _flight

    return _flight.CommState, _flight.Core, _flight.SpecCache, _flight.Traced


def make_core(name: str, capacity: int = 8):
    comm_state, core_type, _, _ = kinds(name)
    comms: dict = {}

    def adopt(comm):
        state = comms[comm.handle] = comm_state(comm.handle, (0,), "test", comm_ident(comm.handle, (0,)))
        return state

    return core_type(comms, adopt, capacity, OPERATIONS), comms


def test_the_extension_is_used_where_it_was_built():
    built = importlib.util.find_spec("transport._flight") is not None
    assert flight.COMPILED == built
    if built:
        assert flight.Core.__module__ == "transport._flight"


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_core_records_calls_in_flight_and_completed(impl):
    core, comms = make_core(impl)
    world = MPI.COMM_WORLD
    token = core.enter(world, "Sendrecv", (None, 0, 7, None, 0), {})
    ((tok, record),) = core.inflight()
    assert tok == token and record[2:4] == ("Sendrecv", 1) and record[5] == (0, 7, 0) and record[6] is False
    core.leave(token)
    core.leave(token)  # a second leave is ignored
    assert core.inflight() == [] and core.position == 1
    for _ in range(3):
        core.leave(core.enter(world, "Allreduce", (None, None), {}))
    state = comms[world.handle]
    assert (state.coll_entered, state.coll_done, state.p2p, state.last_op) == (3, 3, 1, "Allreduce")
    (record, end), *_ = core.completed(1)
    assert record[2] == "Allreduce" and record[3] == 3 and record[6] is True and end >= record[0]
    assert [r[2] for r, _ in core.completed()] == ["Sendrecv", "Allreduce", "Allreduce", "Allreduce"]
    for _ in range(20):  # wrap the ring
        core.leave(core.enter(world, "Barrier", (), {}))
    assert core.position == 24 and len(core.completed()) == 8 and len(core.completed(3)) == 3
    assert core.recorded == 24 and core.forgotten == 0  # every call entered, none forgotten
    core.enter(world, "Recv", (None, 0, 1), {})
    assert core.recorded == 25 and core.position == 24  # entered, not completed


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_core_takes_peer_fields_from_keywords_and_defaults(impl):
    core, _ = make_core(impl)
    token = core.enter(MPI.COMM_WORLD, "Recv", (None,), {"source": 0, "tag": 5})
    assert dict(core.inflight())[token][5] == (0, 5)
    token2 = core.enter(MPI.COMM_WORLD, "Isend", (None, np.int64(3)), {})  # not an int: unknown, tag defaulted
    assert dict(core.inflight())[token2][5] == (None, MPI.ANY_TAG)
    unknown = core.enter(MPI.COMM_WORLD, "Psend_init", (), {})  # a name traced later: a blocking p2p call
    core.leave(unknown)
    assert core.completed(1)[0][0][2] == "Psend_init"


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_nonblocking_calls_end_when_mpi_completes_their_request(impl):
    core, _ = make_core(impl)
    comm = MPI.COMM_SELF
    buf, out = np.arange(4.0), np.zeros(4)
    token = core.enter(comm, "Irecv", (out, 0, 3), {})
    recv = comm.Irecv(out, 0, 3)
    core.post(token, recv)
    assert core.pending == 1 and len(core.inflight()) == 1
    core.sweep()
    assert core.pending == 1  # nothing arrived yet
    comm.Send(buf, 0, 3)
    recv.Wait()  # mpi4py's own Wait: the core learns of it from the request
    core.sweep()
    assert core.pending == 0 and core.inflight() == [] and core.completed(1)[0][0][2] == "Irecv"
    done = core.enter(comm, "Isend", (buf, 0, 4), {})
    core.post(done, MPI.REQUEST_NULL)  # already complete
    assert core.pending == 0 and core.position == 2


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_core_forgets_the_oldest_nonblocking_calls(impl):
    core, _ = make_core(impl)
    requests = []
    for _ in range(10):
        token = core.enter(MPI.COMM_SELF, "Irecv", (None, 0, 9), {})
        request = MPI.COMM_SELF.Irecv(np.zeros(1), 0, 9)
        requests.append(request)
        core.post(token, request)
    blocking = core.enter(MPI.COMM_SELF, "Recv", (None, 0, 0), {})
    assert core.forget(4) == 7 and len(core.inflight()) == 4 and blocking in dict(core.inflight())
    assert core.pending == 3 and core.forgotten == 7 and core.recorded == 11
    assert core.forget(4) == 0 and core.forgotten == 7
    for request in requests:
        request.Cancel()
        request.Wait()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_spec_cache_checks_every_use(impl):
    _, _, spec_cache, _ = kinds(impl)
    cache = spec_cache()
    vec = MPI.DOUBLE.Create_vector(4, 1, 2).Commit()
    twin = MPI.DOUBLE.Create_vector(4, 1, 2).Commit()
    op = OP_INDEX["Irecv"]
    try:
        buf = np.zeros(8)
        cache.add(op, vec, 1, 0, 56, twin, 32, 3, True)
        assert cache.lookup(op, [buf, 1, vec])[2] is twin
        assert cache.lookup(op, [buf, 2, vec]) is None  # another count
        assert cache.lookup(OP_INDEX["Isend"], [buf, 1, vec]) is None  # another operation
        assert cache.lookup(op, [np.zeros(6), 1, vec]) is None  # too small: the full path raises
        readonly = np.zeros(8)
        readonly.flags.writeable = False
        assert cache.lookup(op, [readonly, 1, vec]) is None  # a receive needs a writable buffer
        assert cache.lookup(op, [np.zeros(16)[::2], 1, vec]) is None  # not contiguous
        assert cache.lookup(op, [buf, 1, vec]) is not None
        assert cache.lookup(op, [buf, 1, vec]) is None  # the third use: the full path sees it again
        cache.add(op, vec, 1, 0, 56, None, 32, -1, True)
        spec = [buf, 1, vec]
        assert cache.lookup(op, spec) is spec  # no twin: the spec as it is
        assert cache.drain() == [(op, vec, 1, 1, 32)] and cache.drain() == []
        flight.invalidate()
        if impl == "c":  # the C cache also forgets on invalidate()
            assert cache.lookup(op, spec) is None
    finally:
        vec.Free()
        twin.Free()
    if impl == "python":
        assert cache.lookup(op, [buf, 1, vec]) is None  # freed: null


class _Monitorless:
    _core = None
    monitor = None


class _Comm:
    """A stand-in communicator: what the traced methods read of one."""

    _splitter = None

    def __init__(self, session):
        self._session = session
        self.handle = MPI.COMM_SELF.handle


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_traced_methods_take_mpi4py_s_path_for_plain_buffers(impl):
    _, _, spec_cache, traced = kinds(impl)
    calls = []

    def ours(comm, buf, dest, tag=0):
        calls.append(("ours", buf))
        return "ours"

    def theirs(comm, buf, dest, tag=0):
        calls.append(("mpi4py", buf))
        return "mpi4py"

    method = traced("Send", OP_INDEX["Send"], ours, theirs, ours, 0b1, False, True, True)
    session = _Monitorless()
    session._specs = spec_cache()
    comm = _Comm(session)
    flight.invalidate()
    assert method(comm, b"x", 0) == "mpi4py"
    assert method(comm, [b"x", "BYTE"], 0) == "ours"  # a spec: commlib's method
    assert method(comm, b"x", 0, tag=3) == "ours"  # keywords: commlib's method
    comm._splitter = object()
    flight.invalidate()
    assert method(comm, b"x", 0) == "ours"  # a splitter attached: commlib's method
    assert method.__name__ == "Send" and method.__wrapped__ is ours


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_buffer_error_goes_to_the_retry_hook(impl):
    _, _, spec_cache, traced = kinds(impl)
    seen = []

    def ours(comm, buf, dest, tag=0):
        return "ours"

    def theirs(comm, buf, dest, tag=0):
        raise BufferError(f"refused {buf!r}")

    def hook(name, method, args, kwargs):
        seen.append((name, method, args[1:], kwargs))
        return NotImplemented if args[1] == b"no" else "moved"

    method = traced("Send", OP_INDEX["Send"], ours, theirs, ours, 0b1, False, True, True)
    session = _Monitorless()
    session._specs = spec_cache()
    comm = _Comm(session)
    flight.invalidate()
    before = flight._retry
    flight.set_retry(hook)
    try:
        assert method(comm, b"x", 3, tag=4) == "ours"  # keywords: commlib's method, no error
        assert method(comm, b"x", 3) == "moved"
        assert seen == [("Send", ours, (b"x", 3), {})]
        with pytest.raises(BufferError, match="refused b'no'"):  # the hook declines: mpi4py's error stands
            method(comm, b"no", 3)
    finally:
        flight.set_retry(before)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_traced_methods_record_into_the_session_core(impl):
    _, _, spec_cache, traced = kinds(impl)
    core, _ = make_core(impl)

    def isend(comm, buf, dest, tag=0):
        return MPI.REQUEST_NULL

    def fails(comm):
        raise RuntimeError("boom")

    class Session:
        monitor = object()
        _specs = spec_cache()

    Session._core = core
    comm = _Comm(Session())
    flight.invalidate()
    traced("Isend", OP_INDEX["Isend"], isend, isend, isend, 0b1, True, True)(comm, b"x", 0, 4)
    with pytest.raises(RuntimeError):
        traced("Barrier", OP_INDEX["Barrier"], fails, None, fails, 0, False, False)(comm)
    assert [r[2] for r, _ in core.completed()] == ["Isend", "Barrier"] and core.inflight() == []
    assert core.completed(2)[0][0][5] == (0, 4)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_traced_methods_hand_other_monitors_to_the_fallback(impl):
    _, _, spec_cache, traced = kinds(impl)
    seen = []

    class Session:
        monitor = object()
        _specs = spec_cache()

    Session._core = Session.monitor  # a monitor without a core of ours
    comm = _Comm(Session())
    flight.invalidate()
    method = traced("Barrier", OP_INDEX["Barrier"], lambda c: "plain", None, lambda c: seen.append(c) or "fb", 0, 0, 0)
    assert method(comm) == "fb" and seen == [comm]
