"""Strided numpy views in buffer calls, interposed and plain ranks mixed.

Usage: ``strided_views.py CASES.json``. Even ranks run interposed
(``commlib.interpose()``) and pass views as they are; odd ranks stay plain
mpi4py and move the same data the way a user would without commlib
(``np.ascontiguousarray`` to send, a contiguous array and a copy to receive),
or through ``commlib.buffer(view)``, alternately. Every case is a dtype, a
send view (a base shape and a slice per axis) and a receive layout (the
send view's shape placed in a larger array with its own steps, negative
ones too). For each case and each operation, every rank checks that what it
received equals what was sent, and that no byte of the receiving array
outside the view changed. Rank 0 prints ``OK <cases> cases`` at the end.
"""

import json
import sys

import numpy as np
from mpi4py import MPI

import commlib

world = MPI.COMM_WORLD
rank, size = world.Get_rank(), world.Get_size()
interposed = rank % 2 == 0
if interposed:
    commlib.interpose(monitor=False)
comm = MPI.COMM_WORLD
assert interposed == (type(comm) is not MPI.Intracomm)
cases = json.load(open(sys.argv[1]))


def data(case, salt):
    base = np.zeros(case["shape"], dtype=case["dtype"])
    values = (np.arange(base.size) * 7 + 3 * salt + 1) % 97
    base.reshape(-1)[...] = values.astype(base.dtype) if base.dtype != np.bool_ else values % 2 == 1
    return base, base[tuple(slice(*s) for s in case["slices"])]


def receiver(case, shape):
    """A receive view of ``shape`` in a larger array filled with a sentinel, and the array."""
    steps = case["steps"][: len(shape)] + [1] * (len(shape) - len(case["steps"]))
    big = np.full([n * abs(k) + 2 for n, k in zip(shape, steps)], 55, dtype=case["dtype"])
    index = tuple(
        slice(1, 1 + n * k, k) if k > 0 else slice(n * -k, 0, k) for n, k in zip(shape, steps)
    )  # fmt: skip
    view = big[index]
    assert view.shape == tuple(shape), (view.shape, shape)
    return big, view


def untouched(big, view, case, what):
    probe = np.zeros(big.shape, bool)
    steps = case["steps"][: view.ndim] + [1] * (view.ndim - len(case["steps"]))
    index = tuple(slice(1, 1 + n * k, k) if k > 0 else slice(n * -k, 0, k) for n, k in zip(view.shape, steps))
    probe[index] = True
    outside = big[~probe]
    assert (outside == np.array(55, dtype=big.dtype)).all(), f"{what}: a byte outside the view changed ({case})"


def send_arg(view, i):
    """What this rank passes to send ``view``."""
    if interposed:
        return view
    return np.ascontiguousarray(view) if i % 2 else commlib.buffer(view)


def recv_arg(view, i, reduction=False):
    """What this rank receives into for ``view``, and what to do once the operation completed."""
    if interposed:
        return view, lambda: None
    if i % 2 == 0 and not reduction:
        return commlib.buffer(view, writable=True), lambda: None
    tmp = np.empty(view.shape, view.dtype)
    return tmp, lambda: np.copyto(view, tmp)


for i, case in enumerate(cases):
    base, sent = data(case, salt=0)
    right, left = (rank + 1) % size, (rank - 1) % size
    # point to point, in three forms: each rank sends its view to the right, receives from the left
    big, view = receiver(case, sent.shape)
    status = MPI.Status()
    buf, done = recv_arg(view, i)
    if i % 3 == 0:
        req = comm.Isend(send_arg(sent, i), right, tag=i)
        comm.Recv(buf, left, i, status)
        req.Wait()
    elif i % 3 == 1:
        comm.Sendrecv(send_arg(sent, i), right, i, buf, left, i, status)
    else:
        req = comm.Irecv(buf, left, i)
        comm.Send(send_arg(sent, i), right, i)
        req.Wait(status)
    done()
    assert np.array_equal(view, sent), f"p2p {case}: {view} != {sent}"
    assert status.Get_count(MPI.BYTE) == sent.nbytes, (status.Get_count(MPI.BYTE), sent.nbytes, case)
    untouched(big, view, case, "p2p")
    # Bcast from a rotating root, into a strided view everywhere
    root = i % size
    big, view = receiver(case, sent.shape)
    if rank == root:
        view[...] = sent
        comm.Bcast(send_arg(view, i), root=root)
    else:
        buf, done = recv_arg(view, i)
        comm.Bcast(buf, root=root)
        done()
    assert np.array_equal(view, sent), f"Bcast {case}"
    untouched(big, view, case, "Bcast")
    # Allgather: each rank's view gathered into a strided receive view of size x its shape
    mine = sent if sent.ndim else sent.reshape(1)
    big, view = receiver(case, (size * mine.shape[0],) + mine.shape[1:])
    buf, done = recv_arg(view, i, reduction=True)  # several pieces: plain ranks use a temporary
    comm.Allgather(send_arg(mine, i), buf)
    done()
    assert np.array_equal(view, np.concatenate([mine] * size)), f"Allgather {case}"
    untouched(big, view, case, "Allgather")
    # Allreduce (SUM) of the view into a strided result
    if case["dtype"] in ("f8", "f4", "i4", "i8", "c16"):
        big, view = receiver(case, sent.shape)
        buf, done = recv_arg(view, i, reduction=True)
        comm.Allreduce(sent if interposed else np.ascontiguousarray(sent), buf)
        done()
        assert np.array_equal(view, sent * size), f"Allreduce {case}"
        untouched(big, view, case, "Allreduce")

comm.Barrier()
if rank == 0:
    print(f"OK {len(cases)} cases on {size} ranks", flush=True)
