"""Pencil-decomposed 3D FFT in plain mpi4py: every transpose is one ``Alltoallw`` of subarray types.

The global ``N^3`` array is spread over a 2D process grid ``P0 x P1`` as
pencils: a z-pencil holds every ``z`` for its block of ``x`` and ``y``, a
y-pencil every ``y``, an x-pencil every ``x``. A forward transform takes
the FFT along z, transposes z -> y inside its grid row, FFTs along y,
transposes y -> x inside its grid column and FFTs along x; the backward
transform undoes it. Each transpose is the pattern of parallel FFT
libraries: one ``Alltoallw`` whose send and receive types are subarrays of
the local pencils, one per peer, with counts of 1 and displacements of 0.

``--types reuse`` builds the types once per transfer object, as a library
does; ``--types rebuild`` builds them (and the grid's sub-communicators)
anew for every transpose, as such libraries' own tests do, so each type is
used once.

Runs unchanged with or without commlib::

    mpiexec -n 4 python -m mpi4py  examples/pencil_fft.py --n 64
    mpiexec -n 4 python -m commlib examples/pencil_fft.py --n 64 --types rebuild

It checks the forward transform against ``numpy.fft.fftn`` of the global
array and the round trip against the input, and exits non-zero on a
mismatch.
"""

import argparse
import json
import statistics
import sys
import time

import numpy as np
from mpi4py import MPI

DTYPES = {"float32": np.float32, "float64": np.float64, "complex64": np.complex64, "complex128": np.complex128}


def block(n, parts, i):
    """(size, start) of part ``i`` of ``n`` cells split into ``parts`` nearly equal blocks."""
    q, r = divmod(n, parts)
    return q + (i < r), i * q + min(i, r)


def subarrays(mpitype, shape, axis, parts):
    """One committed subarray type per part of ``shape`` split along ``axis``."""
    types = []
    for i in range(parts):
        size, start = block(shape[axis], parts, i)
        subsizes, starts = list(shape), [0] * len(shape)
        subsizes[axis], starts[axis] = size, start
        types.append(mpitype.Create_subarray(list(shape), subsizes, starts).Commit())
    return types


class Transfer:
    """Moves a pencil distributed along ``axis_a`` (whole along ``axis_b``) to one whole along ``axis_a``."""

    def __init__(self, comm, mpitype, shape_a, axis_a, shape_b, axis_b, rebuild):
        self.comm, self.mpitype, self.rebuild = comm, mpitype, rebuild
        self.shape_a, self.axis_a, self.shape_b, self.axis_b = shape_a, axis_a, shape_b, axis_b
        p = comm.Get_size()
        self.counts, self.displs = [1] * p, [0] * p
        self.types = None if rebuild else self._types()

    def _types(self):
        p = self.comm.Get_size()
        return subarrays(self.mpitype, self.shape_a, self.axis_b, p), subarrays(
            self.mpitype, self.shape_b, self.axis_a, p
        )

    def _move(self, src, dst, forward):
        types = self._types() if self.rebuild else self.types
        send, recv = types if forward else types[::-1]
        self.comm.Alltoallw([src, (self.counts, self.displs), send], [dst, (self.counts, self.displs), recv])
        if self.rebuild:
            for t in (*types[0], *types[1]):
                t.Free()

    def forward(self, a, b):
        self._move(a, b, True)

    def backward(self, b, a):
        self._move(b, a, False)

    def free(self):
        if self.types is not None:
            for t in (*self.types[0], *self.types[1]):
                t.Free()


class PencilFFT:
    """Forward and backward 3D FFT of an ``N^3`` array on a ``P0 x P1`` grid of ``cart``."""

    def __init__(self, cart, n, dtype, rebuild):
        self.cart, self.n, self.rebuild = cart, n, rebuild
        self.dtype = np.dtype(dtype)
        self.mpitype = MPI._typedict[self.dtype.char]
        p0, p1 = cart.Get_topo()[0]
        c0, c1 = cart.Get_coords(cart.Get_rank())
        (a0, s0), (b1, t1) = block(n, p0, c0), block(n, p1, c1)  # this rank's x (over P0) and y (over P1)
        (b2, t2), (a1, s1) = block(n, p1, c1), block(n, p0, c0)  # its z (over P1) and y (over P0)
        self.z_shape, self.y_shape, self.x_shape = (a0, b1, n), (a0, n, b2), (n, a1, b2)
        self.z_slices = (slice(s0, s0 + a0), slice(t1, t1 + b1), slice(None))
        self.x_slices = (slice(None), slice(s1, s1 + a1), slice(t2, t2 + b2))
        self.z = np.zeros(self.z_shape, self.dtype)
        self.y = np.zeros(self.y_shape, self.dtype)
        self.x = np.zeros(self.x_shape, self.dtype)
        self.row = self.col = None
        self.zy = self.yx = None
        if not rebuild:
            self.row, self.col = self._subcomms()
            self.zy, self.yx = self._transfers(self.row, self.col)

    def _subcomms(self):
        return self.cart.Sub([False, True]), self.cart.Sub([True, False])  # along P1, along P0

    def _transfers(self, row, col):
        zy = Transfer(row, self.mpitype, self.z_shape, 1, self.y_shape, 2, self.rebuild)
        yx = Transfer(col, self.mpitype, self.y_shape, 0, self.x_shape, 1, self.rebuild)
        return zy, yx

    def transposes(self):
        """The transfer objects for one transform: made now (and freed after) with ``--types rebuild``."""
        if not self.rebuild:
            return self.zy, self.yx, lambda: None
        row, col = self._subcomms()
        zy, yx = self._transfers(row, col)

        def release():
            row.Free()
            col.Free()

        return zy, yx, release

    def forward(self, transform=True):
        zy, yx, release = self.transposes()
        if transform:
            self.z[...] = np.fft.fft(self.z, axis=2)
        zy.forward(self.z, self.y)
        if transform:
            self.y[...] = np.fft.fft(self.y, axis=1)
        yx.forward(self.y, self.x)
        if transform:
            self.x[...] = np.fft.fft(self.x, axis=0)
        release()

    def backward(self, transform=True):
        zy, yx, release = self.transposes()
        if transform:
            self.x[...] = np.fft.ifft(self.x, axis=0)
        yx.backward(self.x, self.y)
        if transform:
            self.y[...] = np.fft.ifft(self.y, axis=1)
        zy.backward(self.y, self.z)
        if transform:
            self.z[...] = np.fft.ifft(self.z, axis=2)
        release()

    def free(self):
        for t in (self.zy, self.yx):
            if t is not None:
                t.free()
        for c in (self.row, self.col):
            if c is not None:
                c.Free()


def global_field(n, dtype):
    """A deterministic global array every rank can rebuild."""
    rng = np.random.default_rng(12345)
    data = rng.standard_normal((n, n, n))
    if np.dtype(dtype).kind == "c":
        data = data + 1j * rng.standard_normal((n, n, n))
    return data.astype(dtype)


def check(fft, n, dtype):
    """Forward against numpy's fftn on the global array (complex types), round trip against the input."""
    field = global_field(n, dtype)
    fft.z[...] = field[fft.z_slices]
    ok = True
    if np.dtype(dtype).kind == "c":
        fft.forward()
        expected = np.fft.fftn(field.astype(np.complex128))[fft.x_slices]
        tol = 1e-3 if np.dtype(dtype) == np.complex64 else 1e-9
        ok = np.allclose(fft.x, expected, rtol=tol, atol=tol * n**1.5)
        fft.backward()
        ok = ok and np.allclose(fft.z, field[fft.z_slices], rtol=tol, atol=tol)
    else:  # real types: the transposes only, which must be exact
        fft.forward(transform=False)
        ok = np.array_equal(fft.x, field[fft.x_slices])
        fft.backward(transform=False)
        ok = ok and np.array_equal(fft.z, field[fft.z_slices])
    return bool(fft.cart.allreduce(ok, op=MPI.LAND))


def transform_time(world, n, dtype, rebuild, transform, iters):
    """Median time (the slowest rank's) of a forward + backward pair on an N^3 grid, and whether it was right."""
    cart = world.Create_cart(MPI.Compute_dims(world.Get_size(), 2), reorder=False)
    fft = PencilFFT(cart, n, dtype, rebuild)
    if np.dtype(dtype).kind != "c":
        transform = False  # real data: transposes only
    fft.z[...] = 1
    fft.forward(transform)  # warm-up
    fft.backward(transform)
    times = []
    for _ in range(iters):
        cart.Barrier()
        start = time.perf_counter()
        fft.forward(transform)
        fft.backward(transform)
        times.append(world.allreduce(time.perf_counter() - start, op=MPI.MAX))
    ok = check(fft, n, dtype)
    fft.free()
    cart.Free()
    return {"n": n, "median_s": statistics.median(times), "ok": ok, "transform": transform}


def main():
    parser = argparse.ArgumentParser(description="Pencil-decomposed 3D FFT (Alltoallw of subarray types) in mpi4py")
    parser.add_argument("--n", type=int, nargs="+", default=[32], help="global cells per side (32)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="complex128")
    parser.add_argument("--types", choices=["reuse", "rebuild"], default="reuse", help="build types once or per call")
    parser.add_argument("--mode", choices=["fft", "transpose"], default="fft", help="time transforms or transposes")
    parser.add_argument("--iters", type=int, default=20, help="timed forward + backward pairs (20)")
    parser.add_argument("--json", default=None, help="write the timings here")
    args = parser.parse_args()
    world = MPI.COMM_WORLD
    grid = "x".join(map(str, MPI.Compute_dims(world.Get_size(), 2)))
    rows = []
    for n in args.n:
        row = transform_time(world, n, DTYPES[args.dtype], args.types == "rebuild", args.mode == "fft", args.iters)
        rows.append(row)
        if world.Get_rank() == 0:
            what = "FFT forward + backward" if row["transform"] else "transposes forward + backward"
            print(
                f"{world.Get_size()} ranks ({grid}), N={n}, {args.dtype}, types {args.types}: "
                f"{what} median {row['median_s'] * 1e3:.3f} ms; " + ("OK" if row["ok"] else "WRONG")
            )
    if world.Get_rank() == 0 and args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"ranks": world.Get_size(), "dtype": args.dtype, "types": args.types, "rows": rows}, f)
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
