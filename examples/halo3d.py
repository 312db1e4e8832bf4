"""3D halo exchange in plain mpi4py: 26 neighbours, one subarray datatype per direction.

Each rank owns an n^3 block of a periodic global grid (8 double quantities
per cell) with a halo of `radius` cells on every side. Every exchange sends
the 26 boundary regions (faces, edges, corners) with Isend/Irecv and
completes them with Waitall; the program then checks every halo cell
against the global field and exits non-zero on a mismatch.

Runs unchanged with or without commlib:
    mpiexec -n 4 python -m mpi4py  examples/halo3d.py --n 32
    mpiexec -n 4 python -m commlib examples/halo3d.py --n 32
"""

import argparse
import itertools
import json
import statistics
import sys
import time

import numpy as np
from mpi4py import MPI


def field(gx, gy, gz, q, shape):
    """The global field: a distinct value per (global cell, quantity)."""
    nx, ny, nz = shape
    return (((gx % nx) * ny + (gy % ny)) * nz + (gz % nz)) * 8.0 + q


def region(d, n, r, halo):
    """(starts, subsizes) along one axis of the halo (halo=True) or the interior slab sent toward d."""
    if d == 0:
        return r, n
    if halo:
        return (0 if d < 0 else n + r), r
    return (r if d < 0 else n), r


def exchange_time(world, n, r, q, iters):
    """Median exchange time (the slowest rank's) of an n^3 block, and the number of wrong halo values."""
    dims = MPI.Compute_dims(world.Get_size(), 3)
    cart = world.Create_cart(dims, periods=[True] * 3, reorder=False)
    coords = cart.Get_coords(cart.Get_rank())
    full = [n + 2 * r] * 3 + [q]
    grid = np.full(full, -1.0)
    inner = tuple(slice(r, r + n) for _ in range(3))
    g = [np.arange(n) + c * n for c in coords]
    gx, gy, gz, qq = np.meshgrid(*g, np.arange(q), indexing="ij")
    global_shape = [d * n for d in dims]
    grid[inner] = field(gx, gy, gz, qq, global_shape)

    directions = [d for d in itertools.product((-1, 0, 1), repeat=3) if d != (0, 0, 0)]
    tag = {d: i for i, d in enumerate(directions)}
    types, peers = {}, {}
    for d in directions:
        for halo in (True, False):
            starts, sizes = zip(*(region(x, n, r, halo) for x in d))
            types[d, halo] = MPI.DOUBLE.Create_subarray(full, list(sizes) + [q], list(starts) + [0]).Commit()
        peers[d] = cart.Get_cart_rank([c + x for c, x in zip(coords, d)])

    def exchange():
        reqs = [cart.Irecv([grid, 1, types[d, True]], peers[d], tag[tuple(-x for x in d)]) for d in directions]
        reqs += [cart.Isend([grid, 1, types[d, False]], peers[d], tag[d]) for d in directions]
        MPI.Request.Waitall(reqs)

    exchange()  # warm-up, and the exchange that is checked
    hx, hy, hz, hq = np.meshgrid(*[np.arange(-r, n + r) + c * n for c in coords], np.arange(q), indexing="ij")
    expected = field(hx, hy, hz, hq, global_shape)
    # corners/edges of the halo are filled too (26 neighbours), so the whole padded block must match
    bad = np.count_nonzero(grid != expected)

    times = []
    for _ in range(iters):
        cart.Barrier()
        t = time.perf_counter()
        exchange()
        times.append(time.perf_counter() - t)
    slowest = cart.allreduce(statistics.median(times), op=MPI.MAX)
    bad_total = cart.allreduce(bad, op=MPI.SUM)
    sent = sum(types[d, False].Get_size() for d in directions)
    for t in types.values():
        t.Free()
    cart.Free()
    return {"n": n, "dims": dims, "median_exchange_s": slowest, "bytes_sent_per_rank": sent, "ok": bool(bad_total == 0)}


def main():
    parser = argparse.ArgumentParser(description="3D halo exchange (26 neighbours) in plain mpi4py")
    parser.add_argument("--n", type=int, nargs="+", default=[32], help="cells per side of each rank's block (32)")
    parser.add_argument("--radius", type=int, default=3, help="halo width in cells (3)")
    parser.add_argument("--quantities", type=int, default=8, help="doubles per cell (8)")
    parser.add_argument("--iters", type=int, default=20, help="timed exchanges (20)")
    parser.add_argument("--json", default=None, help="write the timings here")
    args = parser.parse_args()
    r, q = args.radius, args.quantities
    world = MPI.COMM_WORLD
    mode = "commlib" if type(world).__module__.startswith("commlib") else "mpi4py"
    rows = []
    for n in args.n:
        row = exchange_time(world, n, r, q, args.iters)
        rows.append(row)
        if world.Get_rank() == 0:
            print(
                f"halo3d [{mode}]: {world.Get_size()} ranks, dims {row['dims']}, {n}^3 cells x {q} quantities, "
                f"radius {r}: median exchange {row['median_exchange_s'] * 1e3:.3f} ms "
                f"({row['bytes_sent_per_rank'] / 1e6:.2f} MB sent per rank), "
                + ("halos OK" if row["ok"] else "WRONG halo values")
            )
    if world.Get_rank() == 0 and args.json:
        with open(args.json, "w") as f:
            json.dump({"mode": mode, "ranks": world.Get_size(), "radius": r, "quantities": q, "rows": rows}, f)
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
