"""Flow splitting (transport.flows): exact split and reassembly, throughput learning, wire format, the registry.

Single-process cases send to themselves through ``COMM_SELF`` (MPI matches a
rank's own nonblocking sends and receives); multi-rank cases run
``tests/mpi/flows_cases.py`` under a bounded mpiexec.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mpi4py import MPI
from split_messages import Model, pattern, roundtrip

from transport import flows
from transport.flows import HEADER_BYTES, MAX_CHANNELS, Splitter, ThroughputEstimator, split_sizes, wire

HERE = Path(__file__).parent / "mpi"


@pytest.fixture(scope="module")
def self_splitters():
    """Splitters on COMM_SELF with 1, 2, 3 and MAX_CHANNELS duplicated communicators."""
    made = {k: Splitter.dup(MPI.COMM_SELF, k, min_bytes=1024, model=Model(), explore=0) for k in (1, 2, 3, 16)}
    yield made
    for s in made.values():
        s.close()


# ------------------------------------------------------------------- sizes
@settings(max_examples=200, deadline=None)
@given(st.integers(0, 1 << 40), st.lists(st.floats(0, 1e12, allow_nan=False), min_size=1, max_size=MAX_CHANNELS))
def test_split_sizes_are_exact_and_proportional(n, rates):
    rates = np.array(rates)
    if rates.sum() <= 0:
        with pytest.raises(ValueError, match="not all zero"):
            split_sizes(n, rates)
        return
    sizes = split_sizes(n, rates)
    assert sizes.sum() == n and (sizes >= 0).all()
    assert (sizes[rates == 0] == 0).all()
    assert np.all(np.abs(sizes - n * rates / rates.sum()) <= 1 + n * 1e-12)


def test_split_sizes_rejects_bad_input():
    with pytest.raises(ValueError, match="nbytes must be >= 0"):
        split_sizes(-1, [1.0])
    with pytest.raises(ValueError, match="rates must be finite"):
        split_sizes(10, [1.0, float("inf")])
    with pytest.raises(ValueError, match="rates must be finite"):
        split_sizes(10, [])


# ------------------------------------------------------ split / reassemble
@settings(max_examples=60, deadline=None)
@given(st.integers(0, 300_000), st.sampled_from([1, 2, 3, 16]), st.integers(0, 2**31), st.booleans())
def test_any_size_any_channel_count_reassembles_exactly(self_splitters, n, k, seed, forced):
    sp = self_splitters[k]
    data = pattern(n, seed)
    sizes = None
    if forced and n >= HEADER_BYTES:
        rng = np.random.default_rng(seed)
        sizes = split_sizes(n, rng.random(k) * (rng.random(k) > 0.3) + 1e-9 * (np.arange(k) == 0))
    out, count = roundtrip(sp, data, sizes=sizes)
    assert count == n
    assert np.array_equal(out[:n], data) and (out[n:] == 0xEE).all()


@pytest.mark.parametrize("n", [0, 1, 7, HEADER_BYTES - 1, HEADER_BYTES, HEADER_BYTES + 1, 1023, 1024, 1025, 99_991])
@pytest.mark.parametrize("k", [1, 2, 3, 16])
def test_edge_sizes(self_splitters, n, k):
    out, count = roundtrip(self_splitters[k], pattern(n, n))
    assert count == n and np.array_equal(out[:n], pattern(n, n))


def test_huge_message(self_splitters):
    n = (64 << 20) + 3
    data = pattern(n, 5)
    out, count = roundtrip(self_splitters[3], data, slack=0)
    assert count == n and np.array_equal(out, data)
    req = self_splitters[3].Isend(data, 0, 1)
    assert len(req.parts) == 3 and sum(req.parts) == n  # the prior makes a large message split
    self_splitters[3].Recv(out, 0, 1)
    req.Wait()


def test_plain_bytes_that_look_like_a_header_arrive_as_they_are(self_splitters):
    fake = np.zeros(HEADER_BYTES, np.uint8)
    fake[:16] = np.frombuffer(wire.MAGIC_BYTES, np.uint8)
    fake[16:24] = np.frombuffer(np.int64(10**9).tobytes(), np.uint8)  # claims a huge message
    for sp in self_splitters.values():
        out, count = roundtrip(sp, fake, slack=100)
        assert count == HEADER_BYTES and np.array_equal(out[:HEADER_BYTES], fake)
    assert flows.is_header(memoryview(fake), HEADER_BYTES)
    assert not flows.is_header(memoryview(fake), HEADER_BYTES + 1)


def test_receives_match_by_tag_in_any_order(self_splitters):
    sp = self_splitters[2]
    a, b = pattern(5000, 1), pattern(7000, 2)
    sends = [sp.Isend(a, 0, 10), sp.Isend(b, 0, 20)]
    out_b, out_a = np.zeros(7000, np.uint8), np.zeros(5000, np.uint8)
    sb = MPI.Status()
    sp.Recv(out_b, 0, 20, sb)  # the second message first
    sp.Recv(out_a, MPI.ANY_SOURCE, MPI.ANY_TAG)
    for r in sends:
        r.Wait()
    assert np.array_equal(out_a, a) and np.array_equal(out_b, b)
    assert sb.Get_tag() == 20 and sb.Get_count(MPI.BYTE) == 7000


def test_sendrecv_and_wait_all(self_splitters):
    sp = self_splitters[3]
    data, out = pattern(2 << 20, 4), np.zeros(2 << 20, np.uint8)
    st_ = MPI.Status()
    sp.Sendrecv(data, 0, 8, out, 0, 8, st_)
    assert np.array_equal(out, data) and st_.Get_count(MPI.BYTE) == 2 << 20 and st_.Get_tag() == 8
    with pytest.raises(ValueError, match="recvbuf is required"):
        sp.Sendrecv(data, 0, 8)
    outs = [np.zeros(1000, np.uint8), np.zeros(300_000, np.uint8)]
    reqs = [sp.Irecv(outs[0], 0, 1), sp.Irecv(outs[1], 0, 2), sp.Isend(pattern(300_000), 0, 2)]
    reqs.append(sp.Isend(pattern(1000), 0, 1))
    flows.wait_all(reqs)
    assert np.array_equal(outs[0], pattern(1000)) and np.array_equal(outs[1], pattern(300_000))


def test_finish_completes_after_the_caller_waited_on_the_first_request(self_splitters):
    sp = self_splitters[2]
    data, out = pattern(50_000, 9), np.zeros(50_000, np.uint8)
    rreq, sreq = sp.Irecv(out, 0, 4), sp.Isend(data, 0, 4)
    st_ = MPI.Status()
    rreq.request.Wait(st_)  # what the interposer's completion actions do
    stray = sp.Irecv(np.zeros(1, np.uint8), 0, 999)
    with pytest.raises(ValueError, match="needs the status"):
        stray.finish()
    stray.request.Cancel()
    stray.request.Wait()
    rreq.finish(st_)
    sreq.request.Wait()
    sreq.finish()
    assert np.array_equal(out, data) and st_.Get_count(MPI.BYTE) == 50_000


def test_a_message_larger_than_the_buffer_is_truncated_as_mpi_does(self_splitters):
    sp = self_splitters[2]
    data = pattern(20_000)
    sreq = sp.Isend(data, 0, 6, sizes=[10_000, 10_000])
    small = np.zeros(10_000, np.uint8)
    with pytest.raises(
        MPI.Exception, match="message of 20000 bytes from rank 0 .* does not fit the receive buffer of 10000"
    ) as info:
        sp.Recv(small, 0, 6)
    assert info.value.Get_error_class() == MPI.ERR_TRUNCATE
    sreq.Wait()  # the receiver consumed the parts: the sender completes, and the channels are clean
    out = np.zeros(20_000, np.uint8)
    sreq = sp.Isend(data, 0, 7, sizes=[5_000, 15_000])
    sp.Recv(out, 0, 7)
    sreq.Wait()
    assert np.array_equal(out, data)


def test_bad_buffers_and_sizes_fail_before_sending(self_splitters):
    sp = self_splitters[2]
    with pytest.raises(ValueError, match="C-contiguous"):
        sp.Isend(np.zeros((10, 10))[:, ::2], 0)
    with pytest.raises(ValueError, match="read-only"):
        sp.Irecv(b"abc", 0)
    with pytest.raises(TypeError, match="contiguous buffer"):
        sp.Isend(12345, 0)
    with pytest.raises(ValueError, match="sum 4000"):
        sp.Isend(np.zeros(4000, np.uint8), 0, sizes=[1000, 1000])
    with pytest.raises(ValueError, match="at most 2 entries"):
        sp.Isend(np.zeros(4000, np.uint8), 0, sizes=[1000, 1000, 2000])
    with pytest.raises(ValueError, match=f"at least {HEADER_BYTES} bytes"):
        sp.Isend(np.zeros(100, np.uint8), 0, sizes=[50, 50])
    with pytest.raises(ValueError, match="1..16 channels"):
        Splitter(MPI.COMM_SELF, [])
    with pytest.raises(ValueError, match="channels must be in 1..16"):
        Splitter.dup(MPI.COMM_SELF, 17)


# ---------------------------------------------------------------- learning
def test_estimator_learns_and_forgets_within_bounds():
    est = ThroughputEstimator(2, prior=100.0, smoothing=0.5, max_peers=2)
    assert np.allclose(est.channel_rates(7), [100.0, 100.0]) and est.unsplit_rate(7) == 100.0
    assert est.measured(7) == (False, False)
    est.observe_split(7, [1 << 20, 0], [1.0, 0.0])  # a channel not measured yet is taken as fast as the others
    assert np.allclose(est.channel_rates(7), [1 << 20, 1 << 20])
    est._peers[7][1] = np.nan
    est.observe_split(7, [1 << 20, 1 << 20], [1.0, 0.5])
    assert np.allclose(est.channel_rates(7), [1 << 20, 2 << 20])
    est.observe_split(7, [1 << 20, 1 << 20], [0.5, 0.5])
    assert np.allclose(est.channel_rates(7), [1.5 * (1 << 20), 2 << 20])
    est.observe_split(7, [10, 10], [1e-9, 1e-9])  # too small to time: ignored
    assert np.allclose(est.channel_rates(7), [1.5 * (1 << 20), 2 << 20])
    est.observe_unsplit(7, 1 << 20, 2.0)
    assert est.unsplit_rate(7) == (1 << 20) / 2 and est.measured(7) == (True, True)
    est.observe_unsplit(8, 1 << 20, 1.0)
    est.observe_unsplit(9, 1 << 20, 1.0)  # a third peer evicts the least recently used (7)
    assert est.measured(7) == (False, False) and est.measured(9) == (True, False)
    with pytest.raises(ValueError, match="out of range"):
        ThroughputEstimator(0, prior=1.0)


def test_sends_teach_the_estimator_per_channel(self_splitters):
    sp = Splitter.dup(MPI.COMM_SELF, 3, min_bytes=1024, model=Model(), explore=0)
    try:
        n = 1 << 20
        data, out = pattern(n), np.zeros(n, np.uint8)
        req = sp.Isend(data, 0, 3, sizes=[0, n, 0])  # channel 1 only
        assert req.parts == [0, n, 0]
        sp.Recv(out, 0, 3)
        req.Wait()
        assert np.array_equal(out, data)
        row = sp.estimator._peers[0]
        assert np.isnan(row[0]) and np.isnan(row[1]) and row[2] > 0 and np.isnan(row[3])
    finally:
        sp.close()


def test_plan_follows_the_learned_rates():
    sp = Splitter.dup(MPI.COMM_SELF, 3, min_bytes=1 << 16, model=Model(), explore=0)
    try:
        n = 8 << 20
        assert sp.plan(1000, 0) is None  # below min_bytes
        first = sp.plan(n, 0)
        assert first is not None and np.array_equal(first, split_sizes(n, [1, 1, 1]))
        sp.estimator.observe_unsplit(0, 1 << 20, 1.0)  # 1 MiB/s unsplit
        sp.estimator.observe_split(0, [1 << 20] * 3, [1.0, 0.5, 0.25])  # 1, 2, 4 MiB/s
        sizes = sp.plan(n, 0)
        assert np.array_equal(sizes, split_sizes(n, [1, 2, 4]))
        # a channel too slow to shorten the transfer is left out
        sp.estimator.observe_split(0, [1 << 20] * 3, [1e4, 0.5, 0.25])
        sp.estimator._peers[0][1] = 1.0
        sizes = sp.plan(n, 0)
        assert sizes[0] == 0 and sizes.sum() == n
        # an unsplit path much faster than the channels together: send plain
        sp.estimator.observe_unsplit(0, 1 << 20, 1e-6)
        assert sp.plan(n, 0) is None and not sp.worth_splitting(n, 0)
    finally:
        sp.close()


def test_exploration_measures_both_modes():
    sp = Splitter.dup(MPI.COMM_SELF, 2, min_bytes=1 << 16, model=Model(), explore=4)
    try:
        n = 1 << 20
        assert sp.plan(n, 0) is not None  # prior: split
        sp.estimator.observe_split(0, [n // 2] * 2, [0.001, 0.001])
        assert sp.plan(n, 0) is None  # split measured, unsplit not yet: try unsplit once
        sp.estimator.observe_unsplit(0, n, 0.004)
        decisions = [sp.plan(n, 0) is not None for _ in range(8)]
        assert decisions.count(False) == 2  # every 4th decision explores the other mode
    finally:
        sp.close()


def test_a_wrapped_communicator_is_used_through_mpi4pys_own_class():
    from commlib.interposer.comm import wrap

    wrapped = wrap(MPI.COMM_SELF)
    sp = Splitter.dup(wrapped, 2, model=Model())
    try:
        # headers and parts bypass the interposer, which would otherwise split the header again
        assert type(sp.comm) is MPI.Intracomm and all(type(ch.comm) is MPI.Intracomm for ch in sp.channels)
        out, count = roundtrip(sp, pattern(3 << 20))
        assert count == 3 << 20 and np.array_equal(out[: 3 << 20], pattern(3 << 20))
    finally:
        sp.close()


def test_model_sets_the_prior():
    sp = Splitter.dup(MPI.COMM_SELF, 2, model=Model())
    try:
        assert sp.alpha == 10e-6 and sp.estimator.prior == pytest.approx(1e9)
    finally:
        sp.close()


# --------------------------------------------------------- registry/config
def test_registry_and_worth_splitting(monkeypatch):
    from commlib.config import config

    comm = MPI.COMM_SELF.Dup()
    try:
        monkeypatch.setattr(config, "split", False)
        assert not flows.worth_splitting(8 << 20, comm, 0)
        with pytest.raises(ValueError, match="no splitter attached"):
            flows.split_send(comm, np.zeros(10, np.uint8), 0)
        monkeypatch.setattr(config, "split", True)
        assert not flows.worth_splitting(8 << 20, comm, 0)  # no splitter yet
        sp = flows.attach(comm, 2, model=Model())
        assert flows.splitter_for(comm) is sp and flows.attach(comm) is sp
        assert flows.worth_splitting(8 << 20, comm, 0) and flows.worth_splitting(HEADER_BYTES, comm, 0)
        assert not flows.worth_splitting(1000, comm, 0)
        data, out = pattern(3 << 20), np.zeros(3 << 20, np.uint8)
        req = flows.split_isend(comm, data, 0, 2)
        st_ = MPI.Status()
        flows.split_recv(comm, out, 0, 2, st_)
        req.Wait()
        assert np.array_equal(out, data) and st_.Get_count(MPI.BYTE) == 3 << 20
        flows.detach(comm)
        assert flows.splitter_for(comm) is None
    finally:
        flows.detach(comm)
        comm.Free()


# -------------------------------------------------------------- multi-rank
@pytest.mark.mpi
@pytest.mark.parametrize("nprocs", [1, 2, 3, 4])
def test_split_exchanges_on_several_ranks(mpirun, nprocs):
    result = mpirun(nprocs, [str(HERE / "flows_cases.py")], timeout=180)
    assert f"OK flows on {nprocs} ranks" in result.stdout


@pytest.mark.mpi
def test_interposed_ranks_with_split_config(mpirun):
    result = mpirun(2, [str(HERE / "flows_cases.py"), "--registry"], timeout=120, env={"COMMLIB_SPLIT": "1"})
    assert "OK flows on 2 ranks (registry)" in result.stdout
