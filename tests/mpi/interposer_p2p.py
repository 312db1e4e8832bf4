"""Point-to-point through the interposer must give exactly what plain mpi4py gives.

Run under ``mpiexec -n N python -m commlib`` (any N >= 1), or with some ranks
under ``python -m mpi4py`` (mixed peers). Every check runs the same exchange
twice, through ``MPI.COMM_WORLD`` (interposed when commlib is installed) and
through a plain mpi4py communicator on the same handle, and compares the
receive buffers and statuses byte for byte.
"""

import sys

import numpy as np
from mpi4py import MPI

import commlib.interposer.comm

world = MPI.COMM_WORLD
plain = MPI.Intracomm(world)  # mpi4py's own class, same handle
rank, size = world.Get_rank(), world.Get_size()
right, left = (rank + 1) % size, (rank - 1) % size
interposed = isinstance(world, commlib.interposer.comm.Intracomm)

TYPES = {
    "vector": MPI.DOUBLE.Create_vector(300, 3, 7),
    "subarray": MPI.INT.Create_subarray([20, 30, 8], [5, 30, 3], [2, 0, 4], order=MPI.ORDER_FORTRAN),
    "irregular": MPI.SHORT.Create_indexed([1, 3, 2], [0, 5, 11]),  # no canonical form: native path
}
for t in TYPES.values():
    t.Commit()


def data(nbytes, salt):
    return ((np.arange(nbytes, dtype=np.int64) * 31 + salt * 7 + 3) % 251).astype(np.uint8)


def span(dt, count):
    true_lb, true_extent = dt.Get_true_extent()
    return true_lb + true_extent + max(count - 1, 0) * dt.Get_extent()[1] + 8


def check(name, got, want):
    if not np.array_equal(got, want):
        bad = np.flatnonzero(got != want)[:5]
        sys.exit(f"rank {rank}: {name}: interposed result differs from mpi4py's at bytes {bad.tolist()}")


def status_fields(st, dt):
    return (st.Get_source(), st.Get_tag(), st.Get_count(dt), st.Get_elements(dt), st.Get_count(MPI.BYTE))


for name, dt in TYPES.items():
    for count in (0, 1, 3):
        n = span(dt, count)
        results = []
        for comm in (world, plain):
            out = {}
            # blocking ring with a wildcard receive (barriers keep every other message out of its reach)
            recv = np.zeros(n, np.uint8)
            st = MPI.Status()
            comm.Barrier()
            if size == 1:
                comm.Sendrecv([data(n, rank), count, dt], 0, 7, [recv, count, dt], MPI.ANY_SOURCE, MPI.ANY_TAG, st)
            else:
                req = comm.Isend([data(n, rank), count, dt], right, 7)
                comm.Recv([recv, count, dt], MPI.ANY_SOURCE, MPI.ANY_TAG, st)
                req.Wait()
            comm.Barrier()
            out["ring"] = recv
            out["ring status"] = status_fields(st, dt)
            # nonblocking both ways, completed by the class-level Waitall
            a, b = np.zeros(n, np.uint8), np.zeros(n, np.uint8)
            reqs = [
                comm.Irecv([a, count, dt], left, 1),
                comm.Irecv([b, count, dt], right, 2),
                comm.Issend([data(n, rank + 10), count, dt], right, 1),
                comm.Isend([data(n, rank + 20), count, dt], left, 2),
            ]
            MPI.Request.Waitall(reqs)
            out["irecv left"], out["irecv right"] = a, b
            # Waitany / Testall loop
            c = np.zeros(n, np.uint8)
            reqs = [comm.Irecv([c, count, dt], left, 3), comm.Isend([data(n, rank + 30), count, dt], right, 3)]
            done = 0
            while done < 2:
                if MPI.Request.Waitany(reqs) != MPI.UNDEFINED:
                    done += 1
            out["waitany"] = c
            d = np.zeros(n, np.uint8)
            reqs = [comm.Irecv([d, count, dt], left, 4), comm.Isend([data(n, rank + 40), count, dt], right, 4)]
            while not MPI.Request.Testall(reqs):
                pass
            out["testall"] = d
            # Sendrecv_replace
            e = data(n, rank + 50)
            comm.Sendrecv_replace([e, count, dt], right, 5, left, 5)
            out["replace"] = e
            # persistent requests, data changed between starts
            src, dst = data(n, rank + 60), np.zeros(n, np.uint8)
            preqs = [comm.Recv_init([dst, count, dt], left, 6), comm.Send_init([src, count, dt], right, 6)]
            for round_ in range(2):
                src[:] = data(n, rank + 60 + round_)
                MPI.Prequest.Startall(preqs)
                MPI.Request.Waitall(preqs)
                out[f"persistent {round_}"] = dst.copy()
            for p in preqs:
                p.Free()
            # probe, then receive with the derived type; a short message into a larger receive
            st = MPI.Status()
            req = comm.Isend([data(n, rank + 70), count, dt], right, 8)
            comm.Probe(left, 8, st)
            out["probe status"] = status_fields(st, dt)
            f = np.zeros(span(dt, count + 2), np.uint8)
            comm.Recv([f, count + 2, dt], left, 8, st)
            out["short receive"] = f
            out["short status"] = status_fields(st, dt)
            req.Wait()
            results.append(out)
        mine, theirs = results
        for key in mine:
            if isinstance(mine[key], tuple):
                if mine[key] != theirs[key]:
                    sys.exit(f"rank {rank}: {name} x {count}: {key}: {mine[key]} != {theirs[key]}")
            else:
                check(f"{name} x {count}: {key}", mine[key], theirs[key])

# bad input: refused on the sender before anything is sent; the next message arrives intact
vec = TYPES["vector"]
good = data(span(vec, 1), rank)
if interposed:
    try:
        world.Send([good[:100], 1, vec], right, 9)
    except ValueError as err:
        assert "Send" in str(err) and "touch bytes" in str(err), err
    else:
        sys.exit(f"rank {rank}: a too-small send buffer was not refused")
    small = np.zeros(100, np.uint8)
    try:
        world.Recv([small, 1, vec], left, 9)
    except ValueError as err:
        assert "Recv" in str(err), err
    else:
        sys.exit(f"rank {rank}: a too-small receive buffer was not refused")
results = []
for comm, tag in ((world, 9), (plain, 10)):
    got = np.zeros_like(good)
    req = comm.Isend([good, 1, vec], right, tag)
    comm.Recv([got, 1, vec], left, tag)
    req.Wait()
    results.append(got)
check("the message after refused input", *results)
world.Barrier()

# derived communicators come back wrapped (creation is collective: every rank takes part)
cart = world.Create_cart([size], [True])
derived = {
    "Dup": world.Dup(),
    "Split": world.Split(rank % 2, rank),
    "Split_type": world.Split_type(MPI.COMM_TYPE_SHARED),
    "Create_group": world.Create_group(world.Get_group()),
    "Create": world.Create(world.Get_group()),
    "Create_cart": cart,
    "Sub": cart.Sub([True]),
    "Create_graph": world.Create_graph([1] * size, list(range(size))[1:] + [0]),
    "Create_dist_graph_adjacent": world.Create_dist_graph_adjacent([left], [right]),
}
if interposed:
    for what, comm in derived.items():
        if not isinstance(comm, commlib.interposer.comm._Interposed):
            sys.exit(f"rank {rank}: {what} returned a plain {type(comm).__name__}")
    assert isinstance(derived["Create_cart"], MPI.Cartcomm) and isinstance(
        derived["Sub"], commlib.interposer.comm.Cartcomm
    )
for comm in derived.values():
    comm.Free()

world.Barrier()
if rank == 0:
    print(f"interposer_p2p: OK on {size} ranks ({'interposed' if interposed else 'plain'} rank 0)")
