"""The watchdog (transport.watchdog): when a call counts as stuck."""

import threading
import time

import numpy as np
from mpi4py import MPI

from commlib.interposer.comm import wrap
from commlib.interposer.session import Session
from transport.monitor import Monitor
from transport.recorder import FlightRecorder
from transport.watchdog import Watchdog


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
