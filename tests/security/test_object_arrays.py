"""Attacks with object arrays: their bytes are pointers into the sender, and a receiver that uses them
crashes. Nothing may be posted for them, and every request posted before an error must complete."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from collectives import moe
from collectives.moe import dispatching
from commlib.mpirun import run
from transport.flows import Splitter

SCRIPT = Path(__file__).parent.parent / "mpi" / "security_objects.py"


class _Model:
    def alpha_beta(self, level: str) -> tuple[float, float]:
        return 10e-6, 1e-9


def _objects(n: int) -> np.ndarray:
    return np.array([object() for _ in range(n)], dtype=object)


def test_the_splitter_sends_nothing_for_an_object_array():
    sp = Splitter.dup(MPI.COMM_SELF, 2, min_bytes=1024, model=_Model(), explore=0)
    try:
        for sizes in (None, [1 << 12, 1 << 12]):
            with pytest.raises(TypeError, match="Python objects"):
                sp.Isend(_objects(1 << 10), 0, 1, sizes=sizes)
        assert not sp.comm.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG)
        assert not any(ch.comm.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG) for ch in sp.channels)
        with pytest.raises(TypeError, match="Python objects"):
            sp.Irecv(_objects(1 << 10), 0, 1)
    finally:
        sp.close()


def test_a_split_sendrecv_of_objects_leaves_no_receive_posted():
    sp = Splitter.dup(MPI.COMM_SELF, 2, min_bytes=1024, model=_Model(), explore=0)
    try:
        with pytest.raises(TypeError, match="Python objects"):
            sp.Sendrecv(_objects(1 << 10), 0, 8, np.zeros(8192, np.uint8), 0, 8)
        message = np.arange(16, dtype=np.uint8)
        send = sp.comm.Isend(message, 0, 8)  # a receive left posted by the failed call would swallow this
        got = np.zeros(16, np.uint8)
        request = sp.comm.Irecv(got, 0, 8)
        received = request.Test()
        if not received:  # the message went to a receive the failed call left posted: withdraw ours
            request.Cancel()
            request.Wait()
        send.Wait()
        assert received and np.array_equal(got, message)
    finally:
        sp.close()


@pytest.mark.mpi
def test_an_interposed_split_send_of_objects_posts_nothing(tmp_path):
    run(2, [str(SCRIPT), "send", str(tmp_path)], env={"COMMLIB_SPLIT": "1"}, timeout=90)
    sender, receiver = ((tmp_path / f"rank-{r}.txt").read_text() for r in (0, 1))
    assert sender.startswith("TypeError") and "Python objects" in sender
    assert receiver == "nothing arrived"


@pytest.mark.mpi
@pytest.mark.parametrize("pack", ["gather", "mpi"])
@pytest.mark.parametrize("nprocs", [1, 2, 3])
def test_dispatch_refuses_object_rows_on_every_rank(tmp_path, pack, nprocs):
    run(nprocs, [str(SCRIPT), f"dispatch-{pack}", str(tmp_path)], timeout=90)
    for r in range(nprocs):
        assert (tmp_path / f"rank-{r}.txt").read_text().startswith("TypeError: dispatch: x must hold numbers")


class _Watched(MPI.Intracomm):
    """COMM_SELF, remembering the requests of its nonblocking all-to-all."""

    requests: list = []

    def Ialltoallv(self, *args, **kwargs):  # noqa: N802 (mpi4py's name)
        request = super().Ialltoallv(*args, **kwargs)
        self.requests.append(request)
        return request


def test_dispatch_completes_its_posted_request_when_a_later_step_fails(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("injected failure after the index exchange was posted")

    monkeypatch.setattr(dispatching, "alltoallw", broken)
    comm = _Watched(MPI.COMM_SELF)
    x = np.ones((8, 4), np.float32)
    idx = np.array([[0, 1]] * 8, np.int64)
    with pytest.raises(RuntimeError, match="injected"):
        moe.dispatch(x, idx, np.ones((8, 2)), comm, 2, dedup=True)
    assert comm.requests and all(r == MPI.REQUEST_NULL for r in comm.requests)
