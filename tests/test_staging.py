"""The staging pool: a buffer is handed out again only when nothing else holds it."""

import numpy as np
import pytest
from mpi4py import MPI

from commlib.interposer.comm import wrap
from commlib.interposer.requests import Request
from commlib.interposer.session import Session
from commlib.interposer.staging import MIN_POOLED, StagingPool


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def test_a_buffer_in_use_is_never_handed_out_again():
    pool = StagingPool(8 << 20)
    first = pool.take(100_000)
    second = pool.take(100_000)
    assert first.nbytes == second.nbytes == 100_000 and first.dtype == np.uint8
    assert _address(first) != _address(second)
    where = _address(first)
    del first
    third = pool.take(70_000)  # same power-of-two size class: the released block comes back
    assert _address(third) == where and third.nbytes == 70_000
    assert pool.held == 2 * (128 << 10)


def test_small_buffers_and_a_full_pool_fall_back_to_fresh_arrays():
    pool = StagingPool(256 << 10)
    small = pool.take(MIN_POOLED - 1)
    assert small.nbytes == MIN_POOLED - 1 and pool.held == 0
    kept = [pool.take(100_000), pool.take(100_000)]  # 2 x 128 KiB: the cap
    extra = pool.take(100_000)
    assert pool.held == 256 << 10 and extra.base is None  # allocated for this call, not kept
    assert len({_address(a) for a in [*kept, extra]}) == 3
    assert StagingPool(0).take(1 << 20).base is None
    with pytest.raises(ValueError, match="max_bytes must be >= 0"):
        StagingPool(-1)


def test_messages_in_flight_at_once_each_keep_their_own_staging():
    session = Session(lambda op, message: "pack")
    comm = wrap(MPI.Intracomm(MPI.COMM_SELF), session)
    full = [40, 40, 40]
    dt = MPI.DOUBLE.Create_subarray(full, [3, 40, 40], [0, 0, 0]).Commit()  # 37.5 KiB packed: pooled
    try:
        sources = [np.full(full, float(i + 1)) for i in range(6)]
        targets = [np.zeros(full) for _ in range(6)]
        sends = [comm.Isend([src, 1, dt], 0, i) for i, src in enumerate(sources)]
        recvs = [comm.Irecv([dst, 1, dt], 0, i) for i, dst in enumerate(targets)]
        Request.Waitall(sends + recvs)  # what MPI.Request.Waitall is once interposed
        for i, dst in enumerate(targets):
            assert np.all(dst[:3] == i + 1) and not dst[3:].any(), i
        assert session.staging.held >= 12 * (64 << 10)  # 6 send and 6 receive buffers, all distinct
        again = [np.zeros(full) for _ in range(2)]
        comm.Sendrecv([sources[5], 1, dt], 0, 9, [again[0], 1, dt], 0, 9)
        assert np.all(again[0][:3] == 6)
    finally:
        dt.Free()


def test_sessions_take_their_pool_size_from_the_config(monkeypatch):
    from commlib.config import Config, config

    monkeypatch.setenv("COMMLIB_STAGING_BYTES", "0")
    assert Config.from_env().staging_bytes == 0
    monkeypatch.setenv("COMMLIB_STAGING_BYTES", "-5")
    with pytest.raises(ValueError, match="COMMLIB_STAGING_BYTES"):
        Config.from_env()
    monkeypatch.setattr(config, "staging_bytes", 1 << 20)
    assert Session().staging.max_bytes == 1 << 20
