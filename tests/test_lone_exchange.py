"""One-rank ``Alltoallw`` (commlib.interposer.lone_exchange): right bytes where the MPI scales displacements."""

import numpy as np
import pytest
from mpi4py import MPI

from commlib.interposer import lone_exchange
from commlib.interposer.comm import wrap
from commlib.interposer.session import Session


def test_the_probe_tells_whether_displacements_are_read_as_bytes():
    send, recv = np.arange(16, dtype=np.float64), np.full(32, -1.0)
    MPI.Comm.Alltoallw(MPI.COMM_SELF, [send, ([1], [8]), [MPI.DOUBLE]], [recv, ([1], [16]), [MPI.DOUBLE]])
    assert lone_exchange.scales_displacements() == (recv[2] != 1.0)


@pytest.mark.parametrize("forced", [False, True])
def test_a_one_rank_alltoallw_lands_where_its_byte_displacements_say(monkeypatch, forced):
    if forced:  # commlib's copy, whatever the MPI does
        monkeypatch.setattr(lone_exchange, "_scales", True)
    elif lone_exchange.scales_displacements():
        pytest.skip("this MPI's one-rank Alltoallw scales displacements: MPI's own path is not exact here")
    comm = wrap(MPI.COMM_SELF, Session())
    vec = MPI.DOUBLE.Create_vector(3, 1, 2).Commit()
    try:
        send = np.arange(16, dtype=np.float64)
        recv = np.full(16, -1.0)
        comm.Alltoallw([send, ([1], [8]), [vec]], [recv, ([3], [24]), [MPI.DOUBLE]])
        expected = np.full(16, -1.0)
        expected[3:6] = send[1:6:2]
        assert np.array_equal(recv, expected)
        with pytest.raises(ValueError, match="Alltoallw"):  # too small a receive buffer, refused before a write
            comm.Alltoallw([send, ([1], [8]), [vec]], [recv[:5], ([3], [24]), [MPI.DOUBLE]])
    finally:
        vec.Free()


def test_pieces_of_different_sizes_are_refused_by_name(monkeypatch):
    monkeypatch.setattr(lone_exchange, "_scales", True)
    comm = wrap(MPI.COMM_SELF, Session())
    recv = np.full(4, -1.0)
    with pytest.raises(ValueError, match=r"Alltoallw: 2 object\(s\) of MPI_DOUBLE pack 16 bytes, 3 object\(s\)"):
        comm.Alltoallw([np.zeros(4), ([2], [0]), [MPI.DOUBLE]], [recv, ([3], [0]), [MPI.DOUBLE]])
    assert (recv == -1).all()
