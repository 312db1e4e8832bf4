"""In-process tests of the interposer: wrapping, installing, deciding, reporting, completing."""

import numpy as np
import pytest
from mpi4py import MPI

import commlib
from commlib.interposer.comm import Cartcomm, Intracomm, wrap
from commlib.interposer.requests import Prequest, Request
from commlib.interposer.session import Session


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


def test_a_freed_datatype_never_lends_its_route_to_a_new_one():
    from commlib.interposer.messages import derived

    comm = wrap(MPI.COMM_SELF, Session(lambda op, message: "pack"))
    src, dst = np.arange(64.0), np.zeros(64)
    first = MPI.DOUBLE.Create_vector(3, 1, 4).Commit()
    handle = first.handle
    assert derived([src, 1, first]).nbytes == 24
    first.Free()
    assert derived([src, 1, first]) is None  # now DATATYPE_NULL: MPI's to refuse
    second = MPI.DOUBLE.Create_vector(5, 2, 3).Commit()  # MPICH hands out the freed handle again
    try:
        assert derived([src, 1, second]).nbytes == 80, f"reused handle: {second.handle == handle}"
        comm.Sendrecv([src, 1, second], 0, 0, [dst, 1, second], 0, 0)
        picked = np.add.outer(np.arange(5) * 3, np.arange(2)).ravel()
        assert np.array_equal(dst[picked], src[picked]) and np.count_nonzero(dst) == picked.size - 1
    finally:
        second.Free()


def test_remembered_decisions_follow_the_config_and_the_model(vec, monkeypatch):
    from commlib.config import config
    from commlib.interposer.messages import derived
    from datatypes import model as cost_model

    session = Session()
    message = derived([np.zeros(256), 1, vec], eager=True)  # analysed
    monkeypatch.setattr(config, "pack_engine", "strided")
    assert [session.choose("Isend", message) for _ in range(3)] == ["pack"] * 3
    monkeypatch.setattr(config, "pack_engine", "mpi")
    assert session.choose("Isend", message) == "native"
    assert session.calls == {("Isend", "pack"): 3, ("Isend", "native"): 1}
    assert session.bytes[("Isend", "pack")] == 3 * 1024

    monkeypatch.setattr(config, "pack_engine", "auto")
    asked = []

    class Spy(cost_model.Model):
        def choose(self, op, f, *args, **kwargs):
            asked.append(op)
            return "pack"

        def predict(self, op, f, level=None, strategies=None):
            return {"native": 1e-3, "pack": 1e-4}  # clearly faster packed

    before = cost_model.generation()
    previous = cost_model.current()
    cost_model.set_current(Spy())
    try:
        assert cost_model.generation() != before
        assert [session.choose("Irecv", message) for _ in range(4)] == ["pack"] * 4
        assert asked == ["Irecv"]  # decided once, then remembered
        cost_model.set_current(Spy())
        assert session.choose("Irecv", message) == "pack" and asked == ["Irecv", "Irecv"]
    finally:
        cost_model.set_current(previous)


def test_learning_that_moves_a_choice_changes_the_generation(vec):
    from datatypes import model as cost_model

    model = cost_model.Model()
    f = cost_model.features(1, vec)
    model.choose("Send", f)
    before = cost_model.generation()
    predicted = model.predict("Send", f)["native"]
    model.observe("Send", f, "native", predicted * 1.01)  # within 2%: cached choices stand
    assert cost_model.generation() == before
    model.observe("Send", f, "native", predicted * 50)
    assert cost_model.generation() != before


def test_native_messages_reach_mpi_rebuilt_from_their_canonical_form(monkeypatch):
    from commlib.config import config
    from commlib.interposer import decision
    from commlib.interposer.messages import derived

    monkeypatch.setattr(decision, "SHARE_MIN_BYTES", 0)  # this 6 KiB type is shared by signature too

    comm = wrap(MPI.Intracomm(MPI.COMM_SELF), Session(lambda op, message: "native"))
    full = [10, 10, 10, 4]
    dt = MPI.DOUBLE.Create_subarray(full, [3, 8, 8, 4], [1, 1, 1, 0]).Commit()
    try:
        src, dst = np.random.default_rng(1).random(full), np.zeros(full)
        spec = [src, 1, dt]
        given = comm._native(spec, derived(spec, eager=True))
        twin = given[2]
        assert given[:2] == [src, 1] and twin is not dt and twin.Get_size() == dt.Get_size()
        assert twin.Get_extent() == dt.Get_extent()
        st = MPI.Status()
        comm.Sendrecv(spec, 0, 4, [dst, 1, dt], 0, 4, st)
        inside = (slice(1, 4), slice(1, 9), slice(1, 9))
        assert np.array_equal(dst[inside], src[inside]) and np.count_nonzero(dst) == 3 * 8 * 8 * 4
        assert st.Get_count(dt) == 1 and st.Get_elements(MPI.DOUBLE) == 3 * 8 * 8 * 4
        again = MPI.DOUBLE.Create_subarray(full, [3, 8, 8, 4], [1, 1, 1, 0]).Commit()
        try:  # the same type built again shares the analysis and its rebuilt twin
            assert comm._native([src, 1, again], derived([src, 1, again], eager=True))[2] is twin
        finally:
            again.Free()
        monkeypatch.setattr(config, "rebuild", False)
        assert comm._native(spec, derived(spec, eager=True)) is spec
    finally:
        dt.Free()


def test_own_piece_of_an_alltoallv_staged_on_one_side_only():
    """A receive side packed and a send side left to MPI: the own piece stays in MPI's hands, whole and right."""
    vec = MPI.DOUBLE.Create_vector(96, 64, 100).Commit()  # 48 KiB per object, strided
    span = vec.Get_extent()[1] * 2
    send = np.arange(span // 8, dtype=np.float64)
    recv = np.full(span // 8, -1.0)
    session = Session(lambda op, message: "pack" if message.buf is recv else "native")
    try:
        wrap(MPI.COMM_SELF, session).Alltoallv([send, ([2], [0]), vec], [recv, ([2], [0]), vec])
        expected = np.full(span // 8, -1.0)
        MPI.COMM_SELF.Alltoallv([send, ([2], [0]), vec], [expected, ([2], [0]), vec])
        assert np.array_equal(recv, expected)
        assert session.calls[("Alltoallv", "pack")] == 1 and session.calls[("Alltoallv", "native")] == 1
    finally:
        vec.Free()
