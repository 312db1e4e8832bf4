"""Kept collective sides (:mod:`commlib.interposer.sides`): a repeated exchange found again, and every change seen."""

import numpy as np
import pytest
from mpi4py import MPI

from commlib.config import config
from commlib.interposer import packed_collectives
from commlib.interposer.comm import wrap
from commlib.interposer.session import Session
from datatypes import model as cost_model


@pytest.fixture
def exchange(monkeypatch):
    """A wrapped COMM_SELF whose session keeps native sides, and one transpose's specs (strided pieces)."""
    monkeypatch.setattr(config, "analyse_bytes", 0)  # analysed at once
    monkeypatch.setattr(config, "pack_engine", "mpi")  # and every side left on MPI's path for good
    # MPI's own one-rank Alltoallw, even where commlib copies in its place (test_lone_exchange)
    monkeypatch.setattr(packed_collectives, "scales_displacements", lambda: False)
    comm = wrap(MPI.COMM_SELF, Session(model=cost_model.Model()))
    send = [MPI.DOUBLE.Create_subarray([8, 17], [8, 8], [0, 0]).Commit()]
    recv = [MPI.DOUBLE.Create_subarray([17, 8], [8, 8], [0, 0]).Commit()]
    a = np.arange(8 * 17, dtype=np.float64).reshape(8, 17)
    counts, displs = [1], [0]
    yield comm, a, counts, displs, send, recv
    for t in send + recv:
        if t:
            t.Free()


def _expected(a, displs):
    b = np.full(17 * 8, -1.0)
    b[displs[0] // 8 :][: 8 * 8] = a[:, :8].reshape(-1)
    return b


def test_a_repeated_native_exchange_is_kept_and_stays_exact(exchange):
    comm, a, counts, displs, send, recv = exchange
    session = comm._session
    for _ in range(3):
        b = np.full(17 * 8, -1.0)
        comm.Alltoallw([a, (counts, displs), send], [b, (counts, displs), recv])
        assert np.array_equal(b, _expected(a, displs))
    assert len(session.pairs._pairs) == 1
    b = np.full(17 * 8, -1.0)
    assert session.pairs.find("Alltoallw", 0, [a, (counts, displs), send], [b, (counts, displs), recv])
    calls = session.calls[("Alltoallw", "native")]
    comm.Alltoallw([a, (counts, displs), send], [b, (counts, displs), recv])
    assert session.calls[("Alltoallw", "native")] == calls + 2  # both sides counted on the kept path
    assert np.array_equal(b, _expected(a, displs))


def test_a_kept_exchange_sees_lists_changed_in_place(exchange):
    comm, a, counts, displs, send, recv = exchange
    session = comm._session
    for _ in range(3):
        comm.Alltoallw([a, (counts, displs), send], [np.zeros(17 * 8), (counts, displs), recv])
    b = np.full(17 * 8, -1.0)
    assert session.pairs.find("Alltoallw", 0, [a, (counts, displs), send], [b, (counts, displs), recv])
    counts[0] = 0  # the same list objects, now moving nothing
    assert not session.pairs.find("Alltoallw", 0, [a, (counts, displs), send], [b, (counts, displs), recv])
    comm.Alltoallw([a, (counts, displs), send], [b, (counts, displs), recv])
    assert (b == -1).all()


def test_a_kept_exchange_refuses_small_or_read_only_buffers_and_freed_types(exchange):
    comm, a, counts, displs, send, recv = exchange
    session = comm._session
    for _ in range(3):
        comm.Alltoallw([a, (counts, displs), send], [np.zeros(17 * 8), (counts, displs), recv])
    pairs = session.pairs
    small = np.zeros(8 * 8 - 1)  # the piece touches 64 doubles
    assert not pairs.find("Alltoallw", 0, [a, (counts, displs), send], [small, (counts, displs), recv])
    with pytest.raises(ValueError, match="Alltoallw"):  # the full path refuses it before MPI sees it
        comm.Alltoallw([a, (counts, displs), send], [small, (counts, displs), recv])
    frozen = np.zeros(17 * 8)
    frozen.flags.writeable = False
    assert not pairs.find("Alltoallw", 0, [a, (counts, displs), send], [frozen, (counts, displs), recv])
    b = np.zeros(17 * 8)
    assert pairs.find("Alltoallw", 0, [a, (counts, displs), send], [b, (counts, displs), recv])
    recv[0].Free()
    assert not pairs.find("Alltoallw", 0, [a, (counts, displs), send], [b, (counts, displs), recv])


def test_a_kept_exchange_follows_the_config(exchange, monkeypatch):
    comm, a, counts, displs, send, recv = exchange
    for _ in range(3):
        comm.Alltoallw([a, (counts, displs), send], [np.zeros(17 * 8), (counts, displs), recv])
    b = np.zeros(17 * 8)
    assert comm._session.pairs.find("Alltoallw", 0, [a, (counts, displs), send], [b, (counts, displs), recv])
    monkeypatch.setattr(config, "pack_min_bytes", 1 << 20)  # any settings change makes every kept outcome stale
    assert not comm._session.pairs.find("Alltoallw", 0, [a, (counts, displs), send], [b, (counts, displs), recv])


def test_a_cold_exchange_is_kept_until_it_is_worth_a_look(exchange, monkeypatch):
    comm, a, counts, displs, send, recv = exchange
    monkeypatch.setattr(config, "analyse_bytes", 8 * 512)  # each side moves 512 bytes a call
    session = comm._session
    spec = [a, (counts, displs), send]

    def call():
        b = np.full(17 * 8, -1.0)
        comm.Alltoallw(spec, [b, (counts, displs), recv])
        assert np.array_equal(b, _expected(a, displs))

    decided = []
    choose_side = session.choose_side
    monkeypatch.setattr(session, "choose_side", lambda *a, **k: decided.append(a[0]) or choose_side(*a, **k))
    call()  # met once: a spec that may be built for one call is not kept
    assert not session.pairs._pairs
    call()  # 1024 of 4096 bytes moved: cold, kept for the 5 calls that stay below the analysis' cost
    ((sent, received, _),) = session.pairs._pairs.values()
    assert sent.remaining == received.remaining == 5 and sent.pieces is None and not decided
    for _ in range(5):
        call()
    assert sent.remaining == received.remaining == 0 and not decided
    call()  # the 8th call is analysed: both sides decided by the model
    assert decided == ["Alltoallw", "Alltoallw"]
    assert session.calls[("Alltoallw", "native")] == 16
