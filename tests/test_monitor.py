"""In-process tests of the fault-detection monitor: recorder, watchdog, analyses, side channel, reports."""

import gc
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref

import numpy as np
import pytest
from mpi4py import MPI

import commlib
from commlib.config import Config
from commlib.interposer.comm import wrap
from commlib.interposer.session import Session
from transport import linkprobe, rendezvous, reports, wavefront
from transport.monitor import Monitor, start_monitor
from transport.operations import BLOCKING, NONBLOCKING
from transport.recorder import COLLECTIVES, FlightRecorder, ranges
from transport.sidechannel import SideChannel, SideChannelError, ask, ask_many
from transport.stragglers import Collector, StragglerDetector
from transport.watchdog import Watchdog


# -- flight recorder ------------------------------------------------------------------
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


# -- watchdog -------------------------------------------------------------------------
def test_watchdog_limit_floor_and_multiple_of_history():
    rec = FlightRecorder(64)
    dog = Watchdog(rec, floor=0.05, multiple=10.0)
    comm = MPI.COMM_SELF
    token = rec.enter(comm, "Recv", (None, 0, 0), {})
    record = dict(rec.inflight())[token]
    assert dog.limit(record) == 0.05  # no history: the floor
    assert dog.poll(time.perf_counter()) == ([], [], [])
    time.sleep(0.08)
    new, _, _ = dog.poll(time.perf_counter())
    assert [s.token for s in new] == [token]
    assert dog.poll(time.perf_counter())[0] == []  # reported once
    rec.leave(token)
    _, _, resolved = dog.poll(time.perf_counter())
    assert [s.token for s in resolved] == [token]
    # a history of 20 ms calls makes the limit 10 x 20 ms
    for _ in range(10):
        t = rec.enter(comm, "Barrier", (), {})
        time.sleep(0.02)
        rec.leave(t)
    token = rec.enter(comm, "Barrier", (), {})
    assert 0.19 < dog.limit(dict(rec.inflight())[token]) < 0.5
    rec.leave(token)


def test_watchdog_counts_nonblocking_calls_only_while_their_thread_waits():
    session = Session()
    monitor = Monitor(suspect=0.2, multiple=10, timeout=0.5)
    session.monitor = monitor
    comm = wrap(MPI.COMM_SELF, session)
    dog = monitor.watchdog
    buf = np.zeros(4)
    req = comm.Irecv(buf, 0, 11)
    time.sleep(0.3)
    assert dog.poll(time.perf_counter())[0] == []  # posted long ago, but nobody waits: not a hang
    waiter = threading.Thread(target=lambda: req.Wait(), daemon=True)  # mpi4py's own Wait, called by name
    waiter.start()
    time.sleep(0.1)
    dog.poll(time.perf_counter())
    time.sleep(0.3)
    new, _, _ = dog.poll(time.perf_counter())
    assert len(new) == 1 and new[0].record[2] == "Irecv" and new[0].waited >= 0.2
    comm.Send(np.ones(4), 0, 11)
    waiter.join(10)
    assert not waiter.is_alive() and (buf == 1).all()
    _, _, resolved = dog.poll(time.perf_counter())
    assert len(resolved) == 1


def test_single_rank_hang_is_reported_with_the_operation_and_resolves():
    records = []
    stream = io.StringIO()
    monitor = Monitor(suspect=0.3, multiple=10, timeout=0.5, on_report=records.append)
    monitor.reporter.stream = stream
    session = Session()
    session.monitor = monitor.start()
    try:
        comm = wrap(MPI.COMM_SELF, session)
        buf = np.zeros(4)
        worker = threading.Thread(target=comm.Recv, args=(buf, 0, 9), daemon=True)
        worker.start()
        deadline = time.monotonic() + 20
        while not records and time.monotonic() < deadline:
            time.sleep(0.05)
        comm.Send(np.full(4, 2.0), 0, 9)
        worker.join(10)
        deadline = time.monotonic() + 10
        while not any(r["kind"] == "hang-resolved" for r in records) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        monitor.stop()
    hang = records[0]
    assert hang["kind"] == "hang" and hang["op"] == "Recv" and hang["leader"] == 0
    assert "Recv(source=0, tag=9) #1 on COMM_SELF" in hang["call"]
    assert hang["suspects"] == [0] and "rank 0 waits on itself" in hang["cause"]
    assert any(r["kind"] == "hang-resolved" for r in records)
    text = stream.getvalue()
    assert text.startswith("[commlib monitor, rank 0] HANG: Recv(source=0, tag=9)") and "resolved" in text
    assert (buf == 2).all() and not monitor.running


def test_internal_errors_are_all_counted_and_their_messages_rate_limited():
    records = []
    monitor = Monitor(on_report=records.append)
    monitor.reporter.stream = io.StringIO()
    for i in range(10):
        monitor._internal_error(RuntimeError(f"boom {i}"))
    assert monitor.errors == 10 and len(records) == 3  # the first three, then at most one a minute
    monitor._error_told = (time.monotonic() - 61.0, monitor._error_told[1])
    monitor._internal_error(RuntimeError("boom 10"))
    assert len(records) == 4 and "(7 more since the last message; 11 in all)" in records[-1]["lines"][0]


def test_silent_peer_on_this_machine_is_named_stopped_or_exited():
    monitor = Monitor()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        peer = {"pid": child.pid, "boot": monitor.boot}
        child.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while monitor._process_state(peer) != "stopped (SIGSTOP)" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert monitor._process_state(peer) == "stopped (SIGSTOP)"
        child.send_signal(signal.SIGCONT)
        child.kill()
        child.wait()
        assert monitor._process_state(peer) == "exited (its process is gone)"
        assert "unreachable" in monitor._process_state({"pid": child.pid, "boot": "another machine"})
    finally:
        child.kill()


def _stuck_collective(monitor, rank):
    """A made-up Allreduce of ``rank`` on a 3-rank communicator, stuck for 3 s (no MPI call waits)."""
    from transport.flight import PyCommState
    from transport.watchdog import Stuck

    state = PyCommState(0, (0, 1, 2), "COMM_WORLD", "44000000.1-aaaaaaaa")
    record = (time.perf_counter() - 3.0, state, "Allreduce", 4, 1, None, True)
    monitor.rank = rank
    return Stuck(7, record, 3.0, 2.0, extra={"polled": time.perf_counter()})


def test_delayed_abort_is_cancelled_when_the_operation_completes_whoever_leads(monkeypatch):
    monitor = Monitor(action="abort", suspect=2, floor=20, timeout=0.5)
    monitor.reporter.stream = io.StringIO()
    stuck = _stuck_collective(monitor, rank=1)
    waiting = [_op(seq=4, age=3.0)]
    states = {0: _state(0, 4, 3, waiting), 1: _state(1, 4, 3, waiting), 2: _state(2, 4, 3, [_op(op="Barrier", seq=4)])}
    monkeypatch.setattr(monitor, "_gather", lambda ranks, query: ({r: states[r] for r in ranks}, {}))
    aborts = []
    monkeypatch.setattr(monitor, "_abort", aborts.append)
    monitor.watchdog.stuck[stuck.token] = stuck
    monitor._examine(stuck, time.perf_counter())
    assert stuck.extra["verdict"] == "hang" and stuck.extra["leader"] == 0 and "abort_at" in stuck.extra
    assert aborts == []  # rank 0 leads: rank 1 leaves it time to report
    del monitor.watchdog.stuck[stuck.token]  # the operation completed (the watchdog resolves it)
    monitor._act(stuck.extra["abort_at"] + 1.0)
    assert aborts == []
    monitor.watchdog.stuck[stuck.token] = stuck  # had it not completed, the delayed abort happens
    monitor._act(stuck.extra["abort_at"] + 1.0)
    assert len(aborts) == 1 and "did not resolve" in aborts[0]


def test_a_rank_told_that_a_peer_aborts_reports_nothing_and_keeps_watching(monkeypatch, tmp_path):
    monitor = Monitor(action="abort", suspect=2, floor=20, timeout=0.5, report=str(tmp_path / "r.jsonl"))
    monitor.reporter.stream = io.StringIO()
    stuck = _stuck_collective(monitor, rank=1)
    monkeypatch.setattr(monitor, "_gather", lambda ranks, query: ({}, {r: "no answer" for r in ranks}))
    aborts = []
    monkeypatch.setattr(monitor, "_abort", aborts.append)
    assert monitor._peer_aborting({"rank": 0, "why": "Allreduce #4 hung"}) == {}
    now = time.perf_counter()
    monitor.watchdog.stuck[stuck.token] = stuck
    monitor._examine(stuck, now)
    monkeypatch.setattr(monitor.watchdog, "poll", lambda now: ([], [], []))
    monitor._watch(now + 10.0)  # looked at again later: nothing more to say, and no error
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert kinds == ["hang-wait"] and aborts == [] and "abort_at" not in stuck.extra
    assert monitor.reporter.stream.getvalue() == ""  # a note, not an alarm: the aborting rank tells the story


def test_a_rank_running_code_is_a_straggler_never_aborted_until_it_sits_still(monkeypatch):
    records = []
    monitor = Monitor(action="abort", suspect=2, floor=20, timeout=0.5, on_report=records.append)
    monitor.reporter.stream = io.StringIO()
    stuck = _stuck_collective(monitor, rank=0)
    waiting = [_op(seq=4, age=3.0)]
    states = {0: _state(0, 4, 3, waiting), 1: _state(1, 3, 3), 2: _state(2, 4, 3, waiting)}
    monkeypatch.setattr(monitor, "_gather", lambda ranks, query: ({r: states[r] for r in ranks}, {}))
    aborts = []
    monkeypatch.setattr(monitor, "_abort", aborts.append)
    t0 = time.perf_counter()
    monitor._examine(stuck, t0)
    assert [r["kind"] for r in records] == ["straggler"] and aborts == []
    assert (
        records[0]["stragglers"] == [1]
        and "STRAGGLER: rank 1 (pid 101 on h) is computing at train.py:42" in (records[0]["lines"][0])
    )
    moved = [["/app/train.py", 10, "main", "step()"], ["/app/train.py", 43, "step", "compute()"]]
    states[1] = _state(1, 3, 3, stack=moved)  # it moved: still a straggler, told once
    monitor._examine(stuck, t0 + 15.0)
    assert len(records) == 1 and aborts == []
    monitor._examine(stuck, t0 + 30.0)  # 15 s at the same place: under the 20 s floor
    assert len(records) == 1 and aborts == []
    monitor._examine(stuck, t0 + 36.0)  # 21 s at the same place: a hang
    assert [r["kind"] for r in records] == ["straggler", "hang"] and len(aborts) == 1
    assert "stayed at the same place for at least 20 s (train.py:43 in step" in records[1]["cause"]


def test_a_probe_stuck_on_a_silent_node_does_not_hold_up_a_hang_report():
    trap = socket.create_server(("127.0.0.1", 0))  # listens, never answers
    records = []
    monitor = Monitor(suspect=0.3, timeout=0.5, on_report=records.append)
    monitor.reporter.stream = io.StringIO()
    monitor._record = {"rank": 0, "node": "nodeA", "address": "127.0.0.1", "port": 1, "token": "t" * 32}
    monitor._peers = {1: {"rank": 1, "node": "nodeB", "address": "127.0.0.1", "port": trap.getsockname()[1],
                          "token": "x" * 32}}  # fmt: skip
    session = Session()
    session.monitor = monitor.start()
    found = []
    probe = threading.Thread(target=lambda: found.append(monitor.probe_links()), daemon=True)  # as the survey does
    try:
        probe.start()
        comm = wrap(MPI.COMM_SELF, session)
        buf = np.zeros(4)
        worker = threading.Thread(target=comm.Recv, args=(buf, 0, 13), daemon=True)
        worker.start()
        deadline = time.monotonic() + 20
        while not any(r["kind"] == "hang" for r in records) and time.monotonic() < deadline:
            time.sleep(0.02)
        probing = probe.is_alive()
        comm.Send(np.ones(4), 0, 13)
        worker.join(10)
        probe.join(30)
    finally:
        monitor.stop()
        trap.close()
    assert any(r["kind"] == "hang" for r in records) and probing  # told while the probe still waited
    assert found and "nodeA->nodeB" in found[0]["failed"] and not found[0]["slow_links"]


def test_watchdog_uses_a_communicator_deadline(monkeypatch):
    rec = FlightRecorder(64)
    dog = Watchdog(rec, floor=5.0, multiple=10.0)
    comm = MPI.COMM_SELF.Dup()
    try:
        rec.set_deadline(comm, 0.05)
        token = rec.enter(comm, "Recv", (None, 0, 0), {})
        assert dog.limit(dict(rec.inflight())[token]) == 0.05
        time.sleep(0.08)
        assert [s.token for s in dog.poll(time.perf_counter())[0]] == [token]  # well under the 5 s floor
        rec.leave(token)
        rec.set_deadline(comm, None)
        token = rec.enter(comm, "Recv", (None, 0, 0), {})
        assert dog.limit(dict(rec.inflight())[token]) == 5.0
        rec.leave(token)
        rec.set_deadline(comm, 3.0)
    finally:
        comm.Free()
    assert rec.deadlines == {}  # forgotten with the communicator


def test_commlib_monitor_deadline_api():
    with pytest.raises(ValueError, match="deadline: seconds must be positive"):
        commlib.monitor.deadline(MPI.COMM_WORLD, 0)
    with pytest.raises(TypeError, match="finite number or None"):
        commlib.monitor.deadline(MPI.COMM_WORLD, float("inf"))
    with pytest.raises(TypeError, match="must be an MPI communicator"):
        commlib.monitor.deadline("world", 5)
    assert commlib.monitor.current() is None and commlib.monitor.deadline(MPI.COMM_WORLD, 5) is False
    commlib.interpose(monitor=True)
    try:
        monitor = commlib.monitor.current()
        assert monitor is not None and commlib.monitor.deadline(MPI.COMM_WORLD, 5) is True
        assert monitor.recorder.deadline(monitor.recorder.state_of(MPI.COMM_WORLD)) == 5.0
    finally:
        commlib.uninterpose()


def test_monitor_below_thread_multiple_never_calls_mpi_from_its_thread(monkeypatch):
    import transport.monitor as tm

    monitor = Monitor(action="abort")
    monitor.reporter.stream = io.StringIO()
    monitor.thread_level = MPI.THREAD_SERIALIZED
    called = []

    class FakeWorld:
        def Abort(self, code):
            called.append(("MPI_Abort", code))

    monkeypatch.setattr(tm, "MPI", type("FakeMPI", (), {"COMM_WORLD": FakeWorld(), "THREAD_MULTIPLE": 3}))
    monkeypatch.setattr(tm.os, "_exit", lambda code: called.append(("exit", code)))
    monitor._abort("test")
    assert called == [("exit", 70)] and "not THREAD_MULTIPLE: ending this process" in monitor.reporter.stream.getvalue()
    monitor.thread_level = MPI.THREAD_MULTIPLE
    called.clear()
    monitor._abort("test")
    assert called == [("MPI_Abort", 70), ("exit", 70)]


# -- wavefront analysis ---------------------------------------------------------------
def _op(op="Allreduce", seq=5, kind="collective", blocking=True, age=3.0, **extra):
    return {"op": op, "comm": "44000000-aaaaaaaa", "label": "COMM_WORLD", "size": 4, "seq": seq, "kind": kind,
            "blocking": blocking, "thread": 1, "age": age, **extra}  # fmt: skip


def _state(rank, entered, done, inflight=(), stack=None):
    stack = stack or [["/app/train.py", 10, "main", "step()"], ["/app/train.py", 42, "step", "compute()"]]
    return {
        "rank": rank, "pid": 100 + rank, "host": "h", "main": "1",
        "comms": {"44000000-aaaaaaaa": {"ident": "44000000-aaaaaaaa", "coll_entered": entered, "coll_done": done,
                                        "last_op": "Allreduce", "label": "COMM_WORLD"}},
        "inflight": list(inflight), "threads": {"1": {"name": "MainThread", "stack": stack, "waiting": False}},
    }  # fmt: skip


def test_wavefront_names_the_rank_that_has_not_arrived_and_where_it_is():
    stuck = {**_op(), "waited": 3.0, "limit": 2.0}
    states = {0: _state(0, 5, 4, [_op()]), 1: _state(1, 4, 4), 2: _state(2, 5, 4, [_op()]), 3: _state(3, 5, 4, [_op()])}
    f = wavefront.analyse(stuck, 0, [0, 1, 2, 3], states, {})
    assert f["behind"] == [1] and f["suspects"] == [1] and f["arrived"] == [0, 2, 3]
    assert "rank 1 has not reached Allreduce #5 and is running code" in f["cause"]
    text = "\n".join(f["lines"])
    assert "rank 1 (pid 101 on h): has NOT arrived: last entered #4 (Allreduce); running at train.py:42 in step" in text


def test_wavefront_silent_blocked_mismatched_unmonitored_and_network():
    stuck = {**_op(), "waited": 3.0, "limit": 2.0}
    members = [0, 1, 2, 3]
    waiting = [_op()]
    other = _op(op="Recv", seq=7, kind="p2p", source=2, source_world=2, tag=1)
    states = {0: _state(0, 5, 4, waiting), 1: _state(1, 4, 4, [other]), 3: _state(3, 5, 4, waiting)}
    f = wavefront.analyse(stuck, 0, members, states, {2: "no answer on the side channel within 1 s"})
    assert f["silent"] == [2] and f["suspects"][0] == 2 and "do" in f["cause"] and "stopped" in f["cause"]
    states[2] = _state(2, 5, 4, waiting)
    f = wavefront.analyse(stuck, 0, members, states, {})
    assert f["behind"] == [1] and "blocked in another operation" in f["cause"]
    assert "blocked in Recv(source=2, tag=1) #7" in f["ranks"]["1"]["status"]
    states[1] = _state(1, 5, 4, [_op(op="Barrier")])
    f = wavefront.analyse(stuck, 0, members, states, {})
    assert f["mismatched"] == [1] and "collective mismatch" in f["cause"]
    states[1] = _state(1, 5, 4, waiting)
    f = wavefront.analyse(stuck, 0, members, states, {})
    assert f["suspects"] == [] and "suspect the network or the MPI library" in f["cause"]
    del states[3]
    f = wavefront.analyse(stuck, 0, members, states, {3: "not monitored (no side channel registered for it)"})
    assert f["unmonitored"] == [3] and "without the commlib monitor" in f["cause"]


def test_wavefront_point_to_point_deadlock_and_missing_send():
    stuck = {**_op(op="Recv", seq=2, kind="p2p", source=1, source_world=1, tag=3), "waited": 3.0, "limit": 2.0}
    mine = _state(0, 0, 0, [stuck])
    f = wavefront.analyse(stuck, 0, [0, 1], {0: mine, 1: _state(1, 0, 0)}, {})
    assert f["peers"] == [1] and "did not post the matching send" in f["cause"]
    theirs = _op(op="Recv", seq=1, kind="p2p", source=0, source_world=0, tag=3)
    f = wavefront.analyse(stuck, 0, [0, 1], {0: mine, 1: _state(1, 0, 0, [theirs])}, {})
    assert f["cause"].startswith("deadlock: the peer is itself blocked waiting for this rank")
    # the peer waits in collective #1, which this rank (still at #0) has not entered
    f = wavefront.analyse(stuck, 0, [0, 1], {0: mine, 1: _state(1, 1, 0, [_op(seq=1)])}, {})
    assert "blocked in Allreduce #1 on COMM_WORLD, a collective rank 0 has not entered" in f["cause"]


# -- stragglers -----------------------------------------------------------------------
def _instances(n, late_rank=None, lateness=0.05, noise=0.002, ranks=4, seed=0, period=0.1):
    rng = np.random.default_rng(seed)
    for seq in range(1, n + 1):
        base = seq * period
        arrivals = {r: base + float(rng.uniform(0, noise)) for r in range(ranks)}
        if late_rank is not None:
            arrivals[late_rank] += lateness
        done = max(arrivals.values()) + 0.001
        yield seq, arrivals, {r: done for r in range(ranks)}


def test_straggler_is_flagged_within_a_window_and_once():
    det = StragglerDetector(window=8, skew=0.01, fraction=0.85)
    found = []
    for seq, arrivals, exits in _instances(30, late_rank=2):
        for f in det.add("c", seq, arrivals, exits):
            found.append((seq, f))
    assert [(seq, f["straggler"]) for seq, f in found] == [(8, 2)]
    assert found[0][1]["lateness"] > 0.045 and found[0][1]["last"] == 8


def test_two_rank_straggler_and_no_flag_for_noise_or_small_lateness():
    det = StragglerDetector(window=8, skew=0.01, fraction=0.85)
    flags = [f for s, a, e in _instances(20, late_rank=1, ranks=2) for f in det.add("c", s, a, e)]
    assert [f["straggler"] for f in flags] == [1]
    for ranks in (2, 3, 4):
        det = StragglerDetector(window=8, skew=0.01, fraction=0.85)
        noisy = _instances(1000, noise=0.02, ranks=ranks, seed=ranks)  # up to 2x the skew of random delay
        assert [f for s, a, e in noisy for f in det.add("c", s, a, e) if f["kind"] == "straggler"] == []
    det = StragglerDetector(window=8, skew=0.01, fraction=0.85)  # 5 ms late every time: below the skew
    assert [f for s, a, e in _instances(50, late_rank=0, lateness=0.005) for f in det.add("c", s, a, e)] == []
    det = StragglerDetector(
        window=8, skew=0.01, fraction=0.85
    )  # 20 ms late, but collectives come every 2 s: not worth a flag
    slow = _instances(50, late_rank=0, lateness=0.02, period=2.0)
    assert [f for s, a, e in slow for f in det.add("c", s, a, e)] == []


def test_straggler_can_be_flagged_again_after_it_recovers():
    det = StragglerDetector(window=4, skew=0.01)
    pattern = [True] * 6 + [False] * 8 + [True] * 6
    flags = []
    for (seq, arrivals, exits), late in zip(_instances(len(pattern)), pattern):
        if late:
            arrivals[2] += 0.05
        for f in det.add("c", seq, arrivals, exits):
            flags.append((seq, f["straggler"]))
    assert flags == [(4, 2), (18, 2)]


def test_root_of_rooted_collectives_is_not_a_straggler():
    det = StragglerDetector(window=8, skew=0.01)
    found = []
    for seq, arrivals, exits in _instances(40, late_rank=0, lateness=0.03):
        # rank 0 is the root of every other collective and comes back late from it
        found += det.add("c", seq, arrivals, exits, op="Gather" if seq % 2 else "Allreduce")
    assert found == []
    found = [f for s, a, e in _instances(20, late_rank=0, lateness=0.03) for f in det.add("d", s, a, e, op="Barrier")]
    assert [f["straggler"] for f in found] == [0]


def test_one_delay_seen_through_a_burst_is_not_a_straggler():
    det = StragglerDetector(window=8, skew=0.01)
    burst = _instances(30, late_rank=0, lateness=0.1, period=1e-4)  # 30 collectives posted within 3 ms
    assert [f for s, a, e in burst for f in det.add("c", s, a, e)] == []


def test_straggler_cause_tells_compute_from_communication():
    def run(compute):
        det = StragglerDetector(window=8, skew=0.01)
        t, found = 0.0, []
        for seq in range(1, 20):
            # rank 1 arrives 30 ms late: it computes 30 ms longer, or it left the last collective 30 ms late
            arrivals = {0: t, 1: t + 0.03}
            done = t + 0.03 + 0.002
            exits = {0: done, 1: done if compute else done + 0.03}
            found += det.add("c", seq, arrivals, exits)
            t = done + 0.01 + (0 if compute else 0.03)
        return [f["cause"] for f in found]

    assert run(compute=True) == ["compute"]
    assert run(compute=False) == ["communication"]


def test_slowdown_against_the_best_window():
    det = StragglerDetector(window=4, skew=0.001, slow_factor=4.0)
    found = []
    for seq in range(1, 20):
        comm_time = 0.002 if seq < 10 else 0.02
        arrivals = {0: seq * 1.0, 1: seq * 1.0}
        found += det.add("c", seq, arrivals, {0: seq + comm_time, 1: seq + comm_time})
    assert [f["kind"] for f in found] == ["slowdown"]
    assert found[0]["baseline"] == pytest.approx(0.002) and found[0]["now"] >= 4 * found[0]["baseline"]


def test_collector_completes_instances_across_ranks_and_clocks():
    det = StragglerDetector(window=3, skew=0.01)
    col = Collector(det, boot="A")
    comms = {"c": [0, 1]}
    a0 = {
        "pos": 3,
        "now": 10.0,
        "boot": "A",
        "comms": comms,
        "arrivals": [["c", s, s * 1.0, s + 0.01] for s in (1, 2, 3)],
    }
    # rank 1 runs on another clock, 100 s ahead, and arrives 100 ms late every time
    a1 = {"pos": 2, "now": 110.0, "boot": "B", "comms": comms,
          "arrivals": [["c", s, 100 + s + 0.1, 100 + s + 0.11] for s in (1, 2)]}  # fmt: skip
    assert col.pull({0: (a0, 9.99, 10.01), 1: (a1, 9.99, 10.01)}) == []
    assert col.cursor == {0: 3, 1: 2} and col.state()["pending"] == 1
    a1 = {**a1, "pos": 3, "arrivals": [["c", 3, 103.1, 103.11]]}
    found = col.pull({1: (a1, 9.99, 10.01)})
    assert [f["straggler"] for f in found] == [1] and found[0]["lateness"] == pytest.approx(0.1, abs=0.011)


# -- link localisation -----------------------------------------------------------------
def _matrix(nodes, slow_nodes=(), slow_links=(), good=1.2e8, bad=1.2e7):
    cells = {}
    for a in range(nodes):
        for b in range(nodes):
            if a != b:
                slow = a in slow_nodes or b in slow_nodes or {a, b} in [set(p) for p in slow_links]
                cells[a, b] = {"bandwidth": bad if slow else good * (1 + 0.05 * ((a + b) % 3)), "rtt": 1e-4}
    return cells


def test_localise_tells_a_slow_node_from_a_slow_link():
    assert linkprobe.localise(_matrix(4))["bad"] == []
    r = linkprobe.localise(_matrix(3, slow_nodes=[2]))
    assert r["slow_nodes"] == [2] and r["slow_links"] == []
    r = linkprobe.localise(_matrix(4, slow_nodes=[0]))
    assert r["slow_nodes"] == [0] and r["slow_links"] == []
    r = linkprobe.localise(_matrix(3, slow_links=[(0, 1)]))
    assert r["slow_nodes"] == [] and r["slow_links"] == [[0, 1]]
    r = linkprobe.localise(_matrix(4, slow_links=[(1, 3)]))
    assert r["slow_nodes"] == [] and r["slow_links"] == [[1, 3]]
    r = linkprobe.localise(_matrix(2, slow_links=[(0, 1)]))
    assert r["bad"] == [] and not r["ambiguous"]  # two nodes alike: nothing to compare with
    cells = _matrix(3)
    cells[0, 2]["rtt"] = 8e-3  # queueing on a busy link, or waiting for the GIL: not a fault
    assert linkprobe.localise(cells)["bad"] == []
    cells[0, 2]["rtt"] = 50e-3  # one slow direction by latency
    assert linkprobe.localise(cells)["slow_links"] == [[0, 2]]
    del cells[1, 2], cells[2, 1]  # pairs not measured count neither way
    assert linkprobe.localise(cells)["slow_nodes"] == [] and linkprobe.localise(cells)["slow_links"] == [[0, 2]]


def test_probe_records_report_each_fault_once():
    cells = {(str(a), str(b)): c for (a, b), c in _matrix(3, slow_links=[(0, 1)]).items()}
    result = linkprobe.localise(cells)
    records, known = linkprobe.records(result, cells, 3, set())
    assert [r["kind"] for r in records] == ["links", "slow-link"] and records[1]["link"] == ["0", "1"]
    assert "SLOW LINK: 0 <-> 1: 96 Mbit/s vs" in records[1]["lines"][0] and "0->1" in records[0]["matrix"]
    again, known = linkprobe.records(result, cells, 3, known)
    assert [r["kind"] for r in again] == ["links"]
    cells = {(str(a), str(b)): c for (a, b), c in _matrix(3, slow_nodes=[2]).items()}
    records, _ = linkprobe.records(linkprobe.localise(cells), cells, 3, known)
    assert [r["kind"] for r in records] == ["links", "slow-node"] and records[1]["node"] == "2"


def test_measure_over_a_loopback_side_channel():
    server = SideChannel("127.0.0.1", "t0k")
    server.handle_stream("sink", linkprobe.sink)
    server.start()
    try:
        peer = {"rank": 1, "address": server.address, "port": server.port, "token": "t0k"}
        res = linkprobe.measure(peer, 1 << 20, 3, timeout=20)
    finally:
        server.stop()
    assert res["bytes"] == 1 << 20 and res["seconds"] > 0 and res["rtt"] > 0 and res["bandwidth"] > 1e6


# -- side channel ---------------------------------------------------------------------
def test_side_channel_answers_refuses_and_times_out():
    server = SideChannel("127.0.0.1", "secret")
    server.handle("echo", lambda req: {"got": req["x"]})
    server.handle("boom", lambda req: 1 / 0)
    server.start()
    # a listening socket nobody serves: like a stopped rank, it accepts connections and never answers
    mute = socket.create_server(("127.0.0.1", 0))
    try:
        peer = {"rank": 3, "address": server.address, "port": server.port, "token": "secret"}
        assert ask(peer, "echo", 2.0, x=7) == {"got": 7}
        with pytest.raises(SideChannelError, match="ZeroDivisionError"):
            ask(peer, "boom", 2.0)
        with pytest.raises(SideChannelError, match="rank 3"):
            ask({**peer, "token": "wrong"}, "echo", 1.0, x=1)
        silent = {"rank": 5, "address": "127.0.0.1", "port": mute.getsockname()[1], "token": "x"}
        t0 = time.monotonic()
        answers = ask_many([peer, silent], "echo", 0.5, x=2)
        assert time.monotonic() - t0 < 3.0
        assert answers[3] == {"got": 2} and isinstance(answers[5], SideChannelError)
        assert "no answer within 0.5 s" in str(answers[5])
    finally:
        mute.close()
        server.stop()


# -- rendezvous -----------------------------------------------------------------------
def test_job_key_from_the_launcher():
    assert rendezvous.job_key("my job/1", {}) == "my_job_1"
    assert rendezvous.job_key("", {"PMIX_NAMESPACE": "prterun-x@1"}) == "pmix-prterun-x_1"
    assert rendezvous.job_key("", {"SLURM_JOB_ID": "42", "SLURM_STEP_ID": "3"}) == "slurm-42.3"


def _record(rank: int, world_size: int, pid: int | None = None, boot: str = "B") -> dict:
    return {
        "rank": rank,
        "world_size": world_size,
        "pid": os.getpid() if pid is None else pid,
        "boot": boot,
        "host": "h",
        "node": "n",
        "address": "127.0.0.1",
        "port": 4000 + rank,
        "token": rendezvous.new_token(),
    }


def test_rendezvous_publishes_reads_and_sweeps(tmp_path):
    a = rendezvous.Rendezvous("job1", str(tmp_path))
    b = rendezvous.Rendezvous("job1", str(tmp_path))
    a.register(_record(0, 2))
    b.register(_record(1, 2))
    stale = rendezvous.Rendezvous("job1", str(tmp_path))
    (stale.path / "rank-7.json").write_text(json.dumps(_record(7, 9)))
    assert sorted(a.peers(2)) == [0, 1]
    dead = rendezvous.Rendezvous("old", str(tmp_path))
    dead.path.mkdir(parents=True, mode=0o700)
    (dead.path / "rank-0.json").write_text(json.dumps(_record(0, 1, pid=2**22 + 12345)))
    rendezvous.Rendezvous("job2", str(tmp_path)).register(_record(0, 1))
    assert not dead.path.exists() and a.path.exists()
    a.unregister()
    assert sorted(b.peers(2)) == [1]
    assert rendezvous.choose_address("10.1.2.3") == "10.1.2.3"
    assert rendezvous.choose_address() in rendezvous.local_addresses() or rendezvous.choose_address()


# -- reports --------------------------------------------------------------------------
def test_reporter_prints_alarms_only_and_survives_bad_callbacks(tmp_path):
    stream = io.StringIO()
    rep = reports.Reporter(2, str(tmp_path / "r-{rank}.jsonl"), stream=stream)
    seen = []
    rep.callbacks += [seen.append, lambda r: 1 / 0]
    rep.emit({"kind": "start", "lines": ["monitor started"]})
    rep.emit({"kind": "straggler", "lines": ["STRAGGLER: rank 1"], "straggler": 1})
    lines = (tmp_path / "r-2.jsonl").read_text().splitlines()
    assert [json.loads(x)["kind"] for x in lines] == ["start", "straggler"]
    out = stream.getvalue()
    assert "[commlib monitor, rank 2] STRAGGLER: rank 1" in out and "monitor started" not in out
    assert "raised ZeroDivisionError" in out
    assert [r["kind"] for r in seen] == ["straggler"] and rep.alarms == 1


def test_reporter_tells_report_file_write_errors(tmp_path):
    stream = io.StringIO()
    rep = reports.Reporter(0, str(tmp_path / "missing-dir" / "r.jsonl"), stream=stream)
    rep.emit({"kind": "start", "lines": ["monitor started"]})
    rep.emit({"kind": "stop", "lines": ["monitor stopped"]})
    out = stream.getvalue()
    assert rep.write_errors == 2 and out.count("cannot write the report file") == 1  # told once a minute
    assert "missing-dir" in out and "No such file or directory" in out


def test_summary_command(tmp_path, capsys):
    quiet = tmp_path / "quiet.jsonl"
    quiet.write_text(json.dumps({"kind": "start", "rank": 0, "time": 1}) + "\n")
    assert reports.main([str(quiet)]) == 0
    assert "alarms: none" in capsys.readouterr().out
    loud = tmp_path / "loud-1.jsonl"
    hang = {"kind": "hang", "rank": 1, "time": 2, "call": "Allreduce #4 on COMM_WORLD (3 ranks)", "waited": 2.5,
            "suspects": [2], "cause": "rank 2 has not reached Allreduce #4", "lines": ["HANG"]}  # fmt: skip
    loud.write_text(json.dumps(hang) + "\n")
    assert reports.main([str(quiet), str(tmp_path / "loud-*.jsonl")]) == 1
    out = capsys.readouterr().out
    assert "alarms: 1 hang" in out and "HANG Allreduce #4 on COMM_WORLD (3 ranks) after 2.5 s; suspects: 2" in out
    assert reports.main([str(tmp_path / "missing.jsonl")]) == 2
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    assert reports.main([str(tmp_path / "bad.jsonl")]) == 2
    assert "bad.jsonl:1: not a JSON line" in capsys.readouterr().err


# -- installation and configuration ------------------------------------------------------
def test_interpose_starts_and_uninterpose_stops_the_monitor():
    session = commlib.interpose(monitor=True)
    try:
        monitor = session.monitor
        assert isinstance(monitor, Monitor) and monitor.running
        MPI.COMM_WORLD.Barrier()
        state = monitor.state()
        assert state["comms"][next(iter(state["comms"]))]["coll_entered"] >= 1
    finally:
        commlib.uninterpose()
    assert not monitor.running and session.monitor is None
    monitor.stop()  # idempotent
    with pytest.raises(RuntimeError, match="a new Monitor is needed"):
        monitor.start()
    session = commlib.interpose(monitor=False)
    try:
        assert session.monitor is None
    finally:
        commlib.uninterpose()


def test_monitor_settings_errors_and_failed_start(monkeypatch, capsys):
    with pytest.raises(ValueError, match="action must be one of warn, dump, abort"):
        Monitor(action="explode")
    with pytest.raises(ValueError, match="floor must be a positive number"):
        Monitor(floor=0)
    monkeypatch.setenv("COMMLIB_MONITOR_ACTION", "explode")
    with pytest.raises(ValueError, match="COMMLIB_MONITOR_ACTION='explode'"):
        Config.from_env()
    monkeypatch.setenv("COMMLIB_MONITOR_ACTION", "abort")
    monkeypatch.setenv("COMMLIB_MONITOR_FLOOR", "2.5")
    monkeypatch.setenv("COMMLIB_MONITOR", "0")
    cfg = Config.from_env()
    assert (cfg.monitor_action, cfg.monitor_floor, cfg.monitor) == ("abort", 2.5, False)
    monkeypatch.setenv("COMMLIB_MONITOR_FLOOR", "soon")
    with pytest.raises(ValueError, match="expected a number"):
        Config.from_env()
    assert start_monitor(False) is None
    with pytest.raises(TypeError, match="must be a bool or a Monitor"):
        start_monitor("yes")


def test_a_monitor_that_cannot_listen_leaves_the_job_unmonitored(monkeypatch, capsys):
    monitor = Monitor(address="203.0.113.77")  # not an address of this machine: bind fails
    monkeypatch.setattr(monitor, "size", 2)
    assert start_monitor(monitor) is None
    assert "not started" in capsys.readouterr().err and not monitor.running
