"""The wavefront analysis (transport.wavefront): who has not arrived, where it is, deadlocks."""

from monitor_states import op as _op
from monitor_states import state as _state

from transport import wavefront


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
