"""In-process tests of the interposer: wrapping, installing, deciding, reporting, completing."""

import numpy as np
import pytest
from mpi4py import MPI

import commlib
from commlib.comm import Cartcomm, Intracomm, wrap
from commlib.requests import Prequest, Request
from commlib.session import Session


@pytest.fixture
def vec():
    dt = MPI.DOUBLE.Create_vector(64, 2, 4).Commit()  # 1 KiB packed, 2 KiB extent
    yield dt
    dt.Free()


@pytest.fixture
def packing():
    """A session that always packs, on a wrapped COMM_SELF."""
    session = Session(lambda op, message: "pack")
    return wrap(MPI.COMM_SELF, session), session


def test_wrap_shares_the_handle_and_keeps_isinstance():
    w = wrap(MPI.COMM_SELF)
    assert isinstance(w, Intracomm) and isinstance(w, MPI.Intracomm)
    assert w == MPI.COMM_SELF and w.handle == MPI.COMM_SELF.handle
    assert wrap(w) is w
    assert wrap(MPI.COMM_NULL) == MPI.COMM_NULL
    with pytest.raises(TypeError, match="expected an mpi4py communicator"):
        wrap("world")


def test_derived_communicators_stay_wrapped_in_the_same_session():
    session = Session()
    w = wrap(MPI.COMM_SELF, session)
    cart = w.Create_cart([1], [True])
    made = [w.Dup(), w.Split(0, 0), cart, cart.Sub([True]), w.Create_group(w.Get_group())]
    try:
        assert isinstance(cart, Cartcomm)
        for comm in made:
            assert comm._session is session, type(comm)
    finally:
        for comm in made:
            comm.Free()


def test_interpose_and_uninterpose_swap_mpi4py_objects():
    original = MPI.COMM_WORLD, MPI.COMM_SELF, MPI.Request, MPI.Prequest
    session = commlib.interpose()
    try:
        assert commlib.interpose() is session  # idempotent
        assert commlib.active_session() is session
        assert isinstance(MPI.COMM_WORLD, Intracomm) and MPI.COMM_WORLD == original[0]
        assert MPI.Request is Request and MPI.Prequest is Prequest
    finally:
        commlib.uninterpose()
    assert (MPI.COMM_WORLD, MPI.COMM_SELF, MPI.Request, MPI.Prequest) == original
    assert commlib.active_session() is None


def test_packed_self_exchange_and_report(packing, vec):
    comm, session = packing
    src = np.arange(256.0)
    dst = np.zeros(256)
    req = comm.Irecv([dst, 1, vec], 0, 3)
    assert isinstance(req, Request)
    comm.Send([src, 1, vec], 0, 3)
    st = MPI.Status()
    req.Wait(st)
    assert st.Get_count(vec) == 1 and st.Get_elements(MPI.DOUBLE) == 128
    assert np.array_equal(dst.reshape(-1, 4)[:, :2], src.reshape(-1, 4)[:, :2])
    assert not dst.reshape(-1, 4)[:, 2:].any()
    report = session.report()
    assert "Send: pack 1 calls / 1024 B" in report and "Irecv: pack 1 calls / 1024 B" in report


def test_native_choice_passes_through_and_is_reported(vec):
    session = Session(lambda op, message: "native")
    comm = wrap(MPI.COMM_SELF, session)
    src, dst = np.arange(256.0), np.zeros(256)
    comm.Sendrecv([src, 1, vec], 0, 1, [dst, 1, vec], 0, 1)
    assert np.array_equal(dst.reshape(-1, 4)[:, :2], src.reshape(-1, 4)[:, :2])
    assert session.report().startswith("Sendrecv: native 2 calls / 2048 B")


def test_contiguous_buffers_are_not_intercepted(packing):
    comm, session = packing
    src, dst = np.arange(8.0), np.zeros(8)
    comm.Sendrecv(src, 0, 0, dst, 0, 0)
    comm.Sendrecv([src, MPI.DOUBLE], 0, 0, [dst, MPI.DOUBLE], 0, 0)
    assert np.array_equal(src, dst)
    assert session.report().startswith("no operation")


def test_bad_decision_is_a_clear_error(vec):
    comm = wrap(MPI.COMM_SELF, Session(lambda op, message: "fast"))
    with pytest.raises(ValueError, match="expected 'pack' or 'native', got 'fast'"):
        comm.Send([np.zeros(256), 1, vec], 0, 0)


def test_too_small_buffers_are_refused_before_mpi_sees_them(packing, vec):
    comm, _ = packing
    with pytest.raises(ValueError, match="Isend: 1 object"):
        comm.Isend([np.zeros(10), 1, vec], 0, 0)
    with pytest.raises(ValueError, match="Irecv: 1 object"):
        comm.Irecv([np.zeros(10), 1, vec], 0, 0)
    native = wrap(MPI.COMM_SELF, Session(lambda op, message: "native"))
    with pytest.raises(ValueError, match="Send: 1 object"):
        native.Send([np.zeros(10), 1, vec], 0, 0)
    # nothing was left in flight: a probe finds no message
    assert not comm.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG)


def test_request_class_methods_run_the_actions(packing, vec):
    comm, _ = packing
    outs = [np.zeros(256) for _ in range(3)]
    for waiter in ("Waitsome", "Testany", "Testsome"):
        recvs = [comm.Irecv([out, 1, vec], 0, k) for k, out in enumerate(outs)]
        sends = [comm.Isend([np.full(256, float(k + 1)), 1, vec], 0, k) for k in range(3)]
        pending = list(recvs)
        while any(r != MPI.REQUEST_NULL for r in pending):
            getattr(Request, waiter)(pending)
        Request.Waitall(sends)
        for k, out in enumerate(outs):
            assert (out.reshape(-1, 4)[:, :2] == k + 1).all(), waiter
            out[:] = 0


def test_persistent_requests_repack_each_start_and_never_unpack_when_inactive(packing, vec):
    comm, _ = packing
    src, dst = np.zeros(256), np.zeros(256)
    recv, send = comm.Recv_init([dst, 1, vec], 0, 5), comm.Send_init([src, 1, vec], 0, 5)
    assert isinstance(recv, Prequest)
    for value in (1.0, 2.0):
        src[:] = value
        Prequest.Startall([recv, send])
        Request.Waitall([recv, send])
        assert (dst.reshape(-1, 4)[:, :2] == value).all()
    dst[:] = -1
    recv.Wait()  # inactive: returns at once and must not unpack stale data
    assert (dst == -1).all()
    recv.Free()
    send.Free()
