"""The fault-detection monitor (transport.monitor): hangs, stragglers on a wait, aborts, probes, start and stop."""

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from monitor_states import op as _op
from monitor_states import state as _state
from mpi4py import MPI

import commlib
from commlib.config import Config
from commlib.interposer.comm import wrap
from commlib.interposer.session import Session
from transport.monitor import Monitor, start_monitor


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
    import transport.monitor.hangs as tm

    monitor = Monitor(action="abort")
    monitor.reporter.stream = io.StringIO()
    monitor.thread_level = MPI.THREAD_SERIALIZED
    called = []

    class FakeWorld:
        def Abort(self, code):
            called.append(("MPI_Abort", code))

    monkeypatch.setattr(tm, "MPI", type("FakeMPI", (), {"COMM_WORLD": FakeWorld(), "THREAD_MULTIPLE": 3}))
    monkeypatch.setattr(os, "_exit", lambda code: called.append(("exit", code)))
    monitor._abort("test")
    assert called == [("exit", 70)] and "not THREAD_MULTIPLE: ending this process" in monitor.reporter.stream.getvalue()
    monitor.thread_level = MPI.THREAD_MULTIPLE
    called.clear()
    monitor._abort("test")
    assert called == [("MPI_Abort", 70), ("exit", 70)]


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
