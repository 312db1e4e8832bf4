"""Collectives with derived datatypes through the interposer must give exactly what plain mpi4py gives.

Run under ``mpiexec -n N python -m commlib`` (any N >= 1), or with some ranks
under ``python -m mpi4py`` (mixed peers). Every case runs twice, through
``MPI.COMM_WORLD`` (interposed when commlib is installed) and through a plain
mpi4py communicator on the same handle, into receive buffers full of the same
poison, and the whole buffers are compared byte for byte: a byte outside the
type map that commlib wrote would show.
"""

import sys

import numpy as np
from mpi4py import MPI

import commlib.interposer.comm

world = MPI.COMM_WORLD
plain = MPI.Intracomm(world)
rank, size = world.Get_rank(), world.Get_size()
interposed = isinstance(world, commlib.interposer.comm.Intracomm)

TYPES = {
    "vector": MPI.DOUBLE.Create_vector(20, 3, 7),
    "subarray": MPI.INT.Create_subarray([6, 10, 4], [3, 10, 2], [1, 0, 1], order=MPI.ORDER_FORTRAN),
    "resized": MPI.SHORT.Create_hvector(4, 1, 6).Create_resized(0, 30),
    "irregular": MPI.SHORT.Create_indexed([1, 3, 2], [0, 5, 11]),  # no canonical form: native path
}
for t in TYPES.values():
    t.Commit()


def extent(dt):
    return dt.Get_extent()[1]


def span(dt, count):
    """Bytes a buffer needs for ``count`` objects, from its origin (lb >= -16 here)."""
    true_lb, true_extent = dt.Get_true_extent()
    return 16 + max(true_lb + true_extent + max(count - 1, 0) * extent(dt), 0) + 8


def data(nbytes, salt):
    return ((np.arange(nbytes, dtype=np.int64) * 31 + salt * 7 + 3) % 251).astype(np.uint8)


def poison(nbytes):
    return np.full(nbytes, 0xA5, np.uint8)


def at(buf):
    """A view from byte 16 on: room for types with a negative lower bound."""
    return buf[16:]


def run_case(name, body):
    """``body(comm)`` returns a dict of arrays; compare world's against plain's."""
    results = []
    for comm in (world, plain):
        comm.Barrier()
        results.append(body(comm))
    mine, theirs = results
    for key in mine:
        if not np.array_equal(mine[key], theirs[key]):
            bad = np.flatnonzero(mine[key] != theirs[key])[:5]
            sys.exit(f"rank {rank}: {name}: {key}: interposed result differs from mpi4py's at bytes {bad.tolist()}")


for tname, dt in TYPES.items():
    for count in (0, 1, 2):
        label = f"{tname} x {count}"

        def bcast(comm, dt=dt, count=count):
            root = size - 1
            buf = data(span(dt, count), 1) if rank == root else poison(span(dt, count))
            comm.Bcast([at(buf), count, dt], root=root)
            return {"buf": buf}

        def gather(comm, dt=dt, count=count):
            out = {}
            for root in {0, size - 1}:
                send = data(span(dt, count), rank)
                recv = poison(span(dt, count * size))
                comm.Gather([at(send), count, dt], [at(recv), count, dt] if rank == root else None, root=root)
                out[f"root {root}"] = recv
                # the root's own piece already in place
                recv = data(span(dt, count * size), 50 + rank)
                sendbuf = MPI.IN_PLACE if rank == root else [at(send), count, dt]
                comm.Gather(sendbuf, [at(recv), count, dt] if rank == root else None, root=root)
                out[f"in place {root}"] = recv
            return out

        def gatherv(comm, dt=dt, count=count):
            counts = [(count + i) % 3 for i in range(size)]
            displs = [2 * i + sum(counts[:i]) for i in range(size)]  # gaps between the pieces
            send = data(span(dt, counts[rank]), rank)
            recv = poison(span(dt, displs[-1] + counts[-1]))
            root = size // 2
            spec = [at(recv), (counts, displs), dt] if rank == root else None
            comm.Gatherv([at(send), counts[rank], dt], spec, root=root)
            return {"recv": recv}

        def scatter(comm, dt=dt, count=count):
            out = {}
            root = 0
            send = data(span(dt, count * size), 9)
            recv = poison(span(dt, count))
            comm.Scatter([at(send), count, dt] if rank == root else None, [at(recv), count, dt], root=root)
            out["recv"] = recv
            counts = [(count + 2 * i) % 3 for i in range(size)]
            displs = [3 * i for i in range(size)]
            send = data(span(dt, displs[-1] + counts[-1]), 10)
            recv = poison(span(dt, counts[rank]))
            sendspec = [at(send), counts, displs, dt] if rank == root else None
            recvspec = MPI.IN_PLACE if rank == root else [at(recv), counts[rank], dt]
            comm.Scatterv(sendspec, recvspec, root=root)
            out["scatterv"] = recv
            return out

        def allgather(comm, dt=dt, count=count):
            send = data(span(dt, count), rank)
            recv = poison(span(dt, count * size))
            comm.Allgather([at(send), count, dt], [at(recv), count, dt])
            recv2 = data(span(dt, count * size), 20 + rank)
            comm.Allgather(MPI.IN_PLACE, [at(recv2), count, dt])
            counts = [(count + i) % 3 for i in range(size)]
            recv3 = poison(span(dt, sum(counts)))
            comm.Allgatherv([at(data(span(dt, counts[rank]), rank)), counts[rank], dt], [at(recv3), counts, dt])
            return {"allgather": recv, "in place": recv2, "allgatherv": recv3}

        def alltoall(comm, dt=dt, count=count):
            send = data(span(dt, count * size), rank)
            recv = poison(span(dt, count * size))
            comm.Alltoall([at(send), count, dt], [at(recv), count, dt])
            scounts = [(count + rank + j) % 3 for j in range(size)]
            rcounts = [(count + j + rank) % 3 for j in range(size)]
            sdispls = [4 * j for j in range(size)]
            rdispls = [5 * j for j in range(size)]
            send2 = data(span(dt, 4 * size + 3), rank + 30)
            recv2 = poison(span(dt, 5 * size + 3))
            comm.Alltoallv([at(send2), (scounts, sdispls), dt], [at(recv2), (rcounts, rdispls), dt])
            return {"alltoall": recv, "alltoallv": recv2}

        for case in (bcast, gather, gatherv, scatter, allgather, alltoall):
            run_case(f"{case.__name__} {label}", case)


def alltoallw(comm):
    """Each peer its own type: derived, predefined, no canonical form; byte displacements."""
    kinds = [TYPES["vector"], MPI.DOUBLE, TYPES["subarray"], TYPES["irregular"]]
    types = [kinds[(rank + j) % len(kinds)] for j in range(size)]
    rtypes = [kinds[(j + rank) % len(kinds)] for j in range(size)]
    counts = [1 + (rank + j) % 2 for j in range(size)]
    stride = max(span(t, 2) for t in kinds)
    send = data(stride * size + 16, rank + 40)
    recv = poison(stride * size + 16)
    displs = [16 + stride * j for j in range(size)]
    if size == 1 and comm is plain:
        # what Alltoallw amounts to on one rank, as the reference: Open MPI 5.0's coll/self Alltoallw scales the
        # byte displacements by the type extents (writing far outside the buffer)
        d = displs[0]
        comm.Sendrecv([send[d:], counts[0], types[0]], 0, 7, [recv[d:], counts[0], rtypes[0]], 0, 7)
        return {"alltoallw": recv}
    comm.Alltoallw([send, (counts, displs), types], [recv, (counts, displs), rtypes])
    return {"alltoallw": recv}


run_case("alltoallw", alltoallw)


def transpose(comm):
    """A pencil transpose: column blocks of one array to row blocks of another, each piece a strided subarray;
    a rank's own piece (73 KiB) is large enough for commlib to copy it itself, past MPI."""
    rows, cols = 96, 96
    shape_a, shape_b = [rows, size * cols + 3], [size * rows, cols + 1]  # padded: strided even on one rank
    send = [MPI.DOUBLE.Create_subarray(shape_a, [rows, cols], [0, j * cols]).Commit() for j in range(size)]
    recv = [MPI.DOUBLE.Create_subarray(shape_b, [rows, cols], [j * rows, 0]).Commit() for j in range(size)]
    a = data(8 * shape_a[0] * shape_a[1], rank + 50)
    b = poison(8 * shape_b[0] * shape_b[1])
    counts, displs = [1] * size, [0] * size
    comm.Alltoallw([a, (counts, displs), send], [b, (counts, displs), recv])
    for t in send + recv:
        t.Free()
    return {"transpose": b}


run_case("transpose, staged", transpose)


def vector_exchange(comm):
    """Alltoallv of one strided type: each rank's own piece (96 KiB) is large enough for commlib to copy it."""
    vec = MPI.DOUBLE.Create_vector(96, 64, 100).Commit()  # 96 rows of 64 doubles at a stride of 100
    per = 2
    a = data(extent(vec) * per * size + 8 * 36, rank + 60)
    b = poison(extent(vec) * per * size + 8 * 36)
    counts, displs = [per] * size, [per * j for j in range(size)]
    comm.Alltoallv([a, (counts, displs), vec], [b, (counts, displs), vec])
    vec.Free()
    return {"alltoallv": b}


run_case("vector exchange", vector_exchange)
# the same with every side analysed and left on MPI's path (where interposed): the own piece still skips MPI
session = world._session if interposed else None
if session is not None:
    session.decision, kept = (lambda op, message: "native"), session.decision
run_case("transpose, MPI's path", transpose)
if session is not None:
    session.decision = kept

# neighbourhood collectives on a periodic ring and on a graph with a repeated neighbour
ring = world.Create_cart([size], [True])
graph = world.Create_dist_graph_adjacent([(rank - 1) % size, rank], [(rank + 1) % size, rank])
if interposed and not isinstance(ring, commlib.interposer.comm.Cartcomm):
    sys.exit(f"rank {rank}: Create_cart returned a plain {type(ring).__name__}")
plain_ring, plain_graph = MPI.Cartcomm(ring), MPI.Distgraphcomm(graph)
vec = TYPES["vector"]
for topo, plain_topo in ((ring, plain_ring), (graph, plain_graph)):
    indegree, outdegree = topo.degrees
    results = []
    for comm in (topo, plain_topo):
        comm.Barrier()
        out = {}
        recv = poison(span(vec, 2 * indegree))
        comm.Neighbor_allgather([at(data(span(vec, 2), rank)), 2, vec], [at(recv), 2, vec])
        out["allgather"] = recv
        recv = poison(span(vec, indegree))
        comm.Neighbor_alltoall([at(data(span(vec, outdegree), rank + 1)), 1, vec], [at(recv), 1, vec])
        out["alltoall"] = recv
        # a ring receives from its -1 neighbour what that one sent its +1 neighbour; the graph keeps the order
        scounts = [1, 2]
        rcounts = scounts[::-1] if topo is ring else scounts
        recv = poison(span(vec, 3 * indegree))
        comm.Neighbor_alltoallv(
            [at(data(span(vec, 3 * outdegree), rank + 2)), (scounts, 3), vec], [at(recv), (rcounts, 3), vec]
        )
        out["alltoallv"] = recv
        size_w = span(vec, 1)
        recv = poison(size_w * indegree)
        sdispls, rdispls = [size_w * i + 16 for i in range(outdegree)], [size_w * i + 16 for i in range(indegree)]
        comm.Neighbor_alltoallw(
            [data(size_w * outdegree, rank + 3), ([1] * outdegree, sdispls), [vec] * outdegree],
            [recv, ([1] * indegree, rdispls), [vec] * indegree],
        )
        out["alltoallw"] = recv
        results.append(out)
    for key in results[0]:
        if not np.array_equal(results[0][key], results[1][key]):
            sys.exit(f"rank {rank}: Neighbor_{key} on {type(topo).__name__}: interposed result differs from mpi4py's")
ring.Free()
graph.Free()

# bad input: refused before MPI sees it, on every rank alike, so no rank is left waiting
if interposed:
    small = np.zeros(8, np.uint8)
    try:
        world.Bcast([small, 1, vec], root=0)
    except ValueError as err:
        assert "Bcast" in str(err) and "touch bytes" in str(err), err
    else:
        sys.exit(f"rank {rank}: a too-small Bcast buffer was not refused")
    try:
        world.Allgather([small, 1, vec], [np.zeros(span(vec, size), np.uint8), 1, vec])
    except ValueError as err:
        assert "Allgather" in str(err), err
    else:
        sys.exit(f"rank {rank}: a too-small Allgather buffer was not refused")
world.Barrier()
if rank == 0:
    print(f"interposer_collectives: OK on {size} ranks ({'interposed' if interposed else 'plain'} rank 0)")
