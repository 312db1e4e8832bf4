"""Strided numpy views in buffer calls (commlib.interposer.views): commlib.buffer, interposed methods, plain peers."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mpi4py import MPI

import commlib
from commlib.interposer.comm import wrap
from commlib.interposer.session import Session
from commlib.interposer.views import OverlappingView, buffer, refused

PROGRAM = str(Path(__file__).parent / "mpi" / "strided_views.py")
DTYPES = ["i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f4", "f8", "c8", "c16", "?"]


@st.composite
def cases(draw, max_dims=4):
    """A dtype, a base shape, a slice per axis (any step, negative too) and receive steps: JSON-able."""
    ndim = draw(st.integers(1, max_dims))
    shape = draw(st.lists(st.integers(1, 6), min_size=ndim, max_size=ndim))
    slices = []
    for n in shape:
        step = draw(st.sampled_from([-3, -2, -1, 1, 2, 3]))
        start = draw(st.none() | st.integers(0, n - 1))
        stop = draw(st.none() | st.integers(-1, n))
        slices.append([start, None if stop == -1 else stop, step])
    steps = draw(st.lists(st.sampled_from([-3, -2, -1, 1, 2, 3]), min_size=ndim + 1, max_size=ndim + 1))
    return {"dtype": draw(st.sampled_from(DTYPES)), "shape": shape, "slices": slices, "steps": steps}


def _view(case, salt=0):
    base = np.zeros(case["shape"], dtype=case["dtype"])
    flat = (np.arange(base.size) * 7 + 3 * salt + 1) % 97
    base.reshape(-1)[...] = flat % 2 == 1 if base.dtype == np.bool_ else flat.astype(base.dtype)
    return base[tuple(slice(*s) for s in case["slices"])]


def _receiver(case, shape):
    steps = case["steps"][: len(shape)]
    big = np.full([n * abs(k) + 2 for n, k in zip(shape, steps)], 55, dtype=case["dtype"])
    index = tuple(slice(1, 1 + n * k, k) if k > 0 else slice(n * -k, 0, k) for n, k in zip(shape, steps))
    inside = np.zeros(big.shape, bool)
    inside[index] = True
    return big, big[index], inside


# -- commlib.buffer and the checks ------------------------------------------------------------------
def test_buffer_of_contiguous_and_strided_views():
    a = np.arange(24.0).reshape(4, 6)
    spec = buffer(a)
    assert spec[0] is a and spec[1] == 24 and spec[2] == MPI.DOUBLE
    column = a[::-1, 2]
    span, count, datatype = buffer(column)
    assert count == 1 and datatype.Get_size() == 4 * 8 and span.nbytes == 3 * 48 + 8
    assert span.__array_interface__["data"][0] == a[0, 2:].__array_interface__["data"][0]  # its lowest byte
    packed = np.empty(4)
    MPI.COMM_SELF.Sendrecv([span, count, datatype], 0, 0, packed, 0, 0)
    assert (packed == column).all()
    assert buffer(a[:0, ::2])[1] == 0 and refused(a[:, ::2]) and not refused(a.T) and not refused([1, 2])


def test_views_that_cannot_be_messages_are_refused_with_clear_errors():
    a = np.arange(16.0)
    broadcast = np.broadcast_to(a[:4], (3, 4))
    with pytest.raises(
        OverlappingView, match=r"Send: the buffer, a float64 view of shape \(3, 4\).*stride 0 on axis 0"
    ):
        buffer(broadcast, op="Send")
    aliased = np.lib.stride_tricks.as_strided(a, shape=(3, 3), strides=(16, 8))  # rows overlap
    buffer(aliased[:, ::2])  # sending it is fine
    with pytest.raises(OverlappingView, match="Recv: the receive buffer.*may overlap itself"):
        buffer(aliased[:, ::2], writable=True, op="Recv", role="receive buffer")
    frozen = a[::2]
    frozen.flags.writeable = False
    with pytest.raises(BufferError, match="read-only"):
        buffer(frozen, writable=True)
    with pytest.raises(TypeError, match=r"no predefined MPI datatype for \[\('x', '<f8'\), \('n', '<i4'\)\]"):
        buffer(np.zeros(8, [("x", "f8"), ("n", "i4")])[::2])
    with pytest.raises(TypeError, match="expected a numpy array, got list"):
        buffer([1.0, 2.0])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_buffer_spec_moves_a_view_through_plain_mpi4py(case):
    sent = _view(case)
    big, view, inside = _receiver(case, sent.shape)
    comm = MPI.COMM_SELF
    request = comm.Isend(buffer(sent), 0, 5)
    status = MPI.Status()
    comm.Recv(buffer(view, writable=True), 0, 5, status)
    request.Wait()
    assert np.array_equal(view, sent) and status.Get_count(MPI.BYTE) == sent.nbytes
    assert (big[~inside] == np.array(55, big.dtype)).all()  # no byte outside the view changed


# -- the interposed methods -------------------------------------------------------------------------
@pytest.fixture(params=["copy", "derived"])
def views_mode(request):
    """Each way a wrapped communicator moves views (COMMLIB_VIEWS)."""
    before = commlib.config.views
    commlib.config.views = request.param
    yield request.param
    commlib.config.views = before


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(case=cases(), form=st.sampled_from(["Send", "Isend", "Sendrecv", "Bcast", "Allgather", "Alltoall"]))
def test_interposed_methods_take_views_with_any_strides(views_mode, case, form):
    comm = wrap(MPI.COMM_SELF, Session())
    sent = _view(case)
    big, view, inside = _receiver(case, sent.shape)
    if form == "Send":
        request = MPI.COMM_SELF.Isend(np.ascontiguousarray(sent), 0, 3)  # a plain peer's message
        comm.Recv(view, source=0, tag=3)
        request.Wait()
        request = comm.Isend(sent, 0, 4)
        back = np.empty(sent.shape, sent.dtype)
        MPI.COMM_SELF.Recv(back, 0, 4)
        request.Wait()
        assert np.array_equal(back, sent)
    elif form == "Isend":
        request = comm.Irecv(view, 0, 1)
        comm.Send(sent, 0, 1)
        request.Wait()
    elif form == "Sendrecv":
        comm.Sendrecv(sent, 0, 2, view, 0, 2)
    elif form == "Bcast":
        view[...] = sent
        comm.Bcast(view, root=0)
    else:
        getattr(comm, form)(sent, view)
    assert np.array_equal(view, sent), (form, view, sent)
    assert (big[~inside] == np.array(55, big.dtype)).all()


@pytest.mark.parametrize("name", ["Allreduce", "Iallreduce", "Reduce", "Scan", "Exscan", "Reduce_scatter_block"])
def test_reductions_reduce_element_wise_into_the_view(views_mode, name):
    comm = wrap(MPI.COMM_SELF, Session())
    a = np.arange(30.0).reshape(5, 6)
    out = np.full((6, 8), -1.0)
    view = out[::-2, 1::3]  # (3, 3), negative row stride
    source = a[::2, ::2]  # (3, 3)
    result = comm.Reduce(source, view, root=0) if name == "Reduce" else getattr(comm, name)(source, view)
    if name == "Iallreduce":
        result.Wait()
    expected = np.full(view.shape, -1.0) if name == "Exscan" else source  # Exscan leaves rank 0's result alone
    assert np.array_equal(view, expected)
    outside = np.ones(out.shape, bool)
    outside[::-2, 1::3] = False
    assert (out[outside] == -1).all()
    inplace = a[::2, ::3].copy(order="F")[:, ::-1]
    held = inplace.copy()
    comm.Allreduce(MPI.IN_PLACE, inplace)
    assert np.array_equal(inplace, held)


def test_the_plain_side_of_vector_collectives_takes_views(views_mode):
    comm = wrap(MPI.COMM_SELF, Session())
    a = np.arange(20.0).reshape(4, 5)
    out = np.zeros(4)
    comm.Gatherv(a[::-1, 2], [out, [4], [0], MPI.DOUBLE], root=0)
    assert (out == a[::-1, 2]).all()
    grid = np.zeros((4, 5))
    comm.Scatterv([a[:, 1].copy(), [4], [0], MPI.DOUBLE], grid[:, 3], root=0)
    assert (grid[:, 3] == a[:, 1]).all() and (np.delete(grid, 3, axis=1) == 0).all()


def test_interposed_views_refused_before_anything_is_posted(views_mode):
    comm = wrap(MPI.COMM_SELF, Session())
    a = np.zeros(8)
    with pytest.raises(OverlappingView, match="Recv: the receive buffer, a float64 view of shape"):
        comm.Recv(np.broadcast_to(a[:2], (3, 2)), 0, 0)
    with pytest.raises(BufferError, match="Irecv: the receive buffer.*is read-only"):
        frozen = a[::2]
        frozen.flags.writeable = False
        comm.Irecv(frozen, 0, 0)
    assert not comm.Iprobe(0, MPI.ANY_TAG)  # nothing was posted or sent


def test_persistent_requests_take_views():
    comm = wrap(MPI.COMM_SELF, Session())
    sent = np.arange(20.0).reshape(4, 5)[:, ::2]
    out = np.zeros((4, 10))
    recv = comm.Recv_init(out[:, ::-4], 0, 8)
    send = comm.Send_init(sent, 0, 8)
    for k in range(2):
        sent[...] += k
        MPI.Prequest.Startall([recv, send])
        MPI.Request.Waitall([recv, send])
        assert np.array_equal(out[:, ::-4], sent)
    recv.Free()
    send.Free()


def test_plain_mpi4py_still_refuses_views_and_commlib_buffer_is_exported():
    with pytest.raises(BufferError):
        MPI.COMM_SELF.Send(np.zeros(8)[::2], 0, 0)
    assert commlib.buffer is buffer


# -- several ranks, interposed and plain peers mixed ---------------------------------------------------
@pytest.mark.mpi
@pytest.mark.parametrize("nprocs, mode", [(2, "copy"), (3, "copy"), (3, "derived")])
@settings(
    max_examples=1, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(batch=st.lists(cases(), min_size=60, max_size=60))  # one launch of 60 random cases
def test_views_move_between_interposed_and_plain_ranks(mpirun, tmp_path_factory, nprocs, mode, batch):
    path = tmp_path_factory.mktemp("views") / "cases.json"
    path.write_text(json.dumps(batch))
    env = {
        "COMMLIB_VIEWS": mode,
        "COMMLIB_REDUCTION_CHECK": "0",
    }  # plain ranks do not take part in commlib's first-allreduce check
    result = mpirun(nprocs, [sys.executable, PROGRAM, str(path)], python=False, env=env, timeout=120, check=False)
    assert result.returncode == 0 and f"OK 60 cases on {nprocs} ranks" in result.stdout, result.stderr[-3000:]
