"""Split point-to-point on N ranks: ring, ANY_SOURCE, reversed tags, both directions, pinned sockets.

Run under ``mpiexec -n N python -m mpi4py flows_cases.py [--registry]``; prints
``OK flows on N ranks`` when every message arrived whole, in the right place,
with the right status. ``--registry`` goes through :func:`transport.flows.attach`
and the ``split_*`` functions (run it with ``COMMLIB_SPLIT=1``).
"""

import sys

import numpy as np
from mpi4py import MPI

from transport import flows
from transport.flows import HEADER_BYTES, Splitter, wait_all
from transport.sockets import connect_paths

SIZES = [0, 1, 7, HEADER_BYTES - 1, HEADER_BYTES, 4095, 4096, 100_003, 3 << 20]


def pattern(n: int, src: int, salt: int = 0) -> np.ndarray:
    return ((np.arange(n, dtype=np.uint64) * 2654435761 + 977 * src + salt) % 251).astype(np.uint8)


def check(buf, n, src, salt, status, what):
    assert np.array_equal(buf[:n], pattern(n, src, salt)), f"{what}: {n} bytes from {src} differ"
    assert (buf[n:] == 0xEE).all(), f"{what}: bytes past the message were written"
    assert status.Get_count(MPI.BYTE) == n, f"{what}: status count {status.Get_count(MPI.BYTE)} != {n}"
    assert status.Get_source() == src, f"{what}: status source {status.Get_source()} != {src}"


def ring(send, recv, comm, salt):
    p, r = comm.Get_size(), comm.Get_rank()
    nxt, prv = (r + 1) % p, (r - 1) % p
    for i, n in enumerate(SIZES):
        out = np.full(n + 3, 0xEE, np.uint8)
        st = MPI.Status()
        reqs = [recv(out, prv, i), send(pattern(n, r, salt), nxt, i)]
        wait_all(reqs, [st, None])
        check(out, n, prv, salt, st, f"ring size {n}")


def main() -> int:
    comm = MPI.COMM_WORLD
    p, r = comm.Get_size(), comm.Get_rank()
    if "--registry" in sys.argv:
        from commlib.config import config

        assert config.split, "run with COMMLIB_SPLIT=1"
        flows.attach(comm, 2, min_bytes=4096)
        assert flows.worth_splitting(1 << 20, comm, (r + 1) % p)
        ring(
            lambda b, d, t: flows.split_isend(comm, b, d, t), lambda b, s, t: flows.split_irecv(comm, b, s, t), comm, 1
        )
        flows.detach(comm)
        comm.Barrier()
        if r == 0:
            print(f"OK flows on {p} ranks (registry)")
        return 0

    sp = Splitter.dup(comm, 3, min_bytes=4096, explore=0)
    ring(sp.Isend, sp.Irecv, comm, 0)

    # every rank to rank 0, received with ANY_SOURCE / ANY_TAG in whatever order they come
    n = 200_001
    sends = [sp.Isend(pattern(n, r, 7), 0, 40 + r)]
    if r == 0:
        seen = set()
        for _ in range(p):
            out, st = np.full(n + 1, 0xEE, np.uint8), MPI.Status()
            req = sp.Irecv(out, MPI.ANY_SOURCE, MPI.ANY_TAG)
            wait_all([req], [st])  # not the own send: its receive is posted in a later turn
            check(out, n, st.Get_source(), 7, st, "any source")
            assert st.Get_tag() == 40 + st.Get_source()
            seen.add(st.Get_source())
        assert seen == set(range(p))
    wait_all(sends)
    comm.Barrier()  # ANY_TAG above must not catch the next section's messages

    # two messages to the next rank; the receiver takes the second tag first
    nxt, prv = (r + 1) % p, (r - 1) % p
    sends = [sp.Isend(pattern(50_000, r, 1), nxt, 1), sp.Isend(pattern(60_000, r, 2), nxt, 2)]
    b2, b1 = np.full(60_000, 0xEE, np.uint8), np.full(50_000, 0xEE, np.uint8)
    s2, s1 = MPI.Status(), MPI.Status()
    req2 = sp.Irecv(b2, prv, 2)
    wait_all([req2] + sends[1:], [s2, None])
    req1 = sp.Irecv(b1, prv, 1)
    wait_all([req1, sends[0]], [s1, None])
    check(b2, 60_000, prv, 2, s2, "second tag first")
    check(b1, 50_000, prv, 1, s1, "then the first")

    # a collective step: Sendrecv around the ring
    out, st = np.full(2 << 20, 0xEE, np.uint8), MPI.Status()
    sp.Sendrecv(pattern(2 << 20, r, 5), nxt, 5, out, prv, 5, st)
    check(out, 2 << 20, prv, 5, st, "sendrecv")

    # both directions at once: to next and previous
    outs = [np.full(1 << 20, 0xEE, np.uint8) for _ in range(2)]
    sts = [MPI.Status(), MPI.Status()]
    reqs = [sp.Irecv(outs[0], prv, 9), sp.Irecv(outs[1], nxt, 8)]
    sends = [sp.Isend(pattern(1 << 20, r, 9), nxt, 9), sp.Isend(pattern(1 << 20, r, 8), prv, 8)]
    wait_all(reqs + sends, sts + [None, None])
    check(outs[0], 1 << 20, prv, 9, sts[0], "both ways, from previous")
    check(outs[1], 1 << 20, nxt, 8, sts[1], "both ways, from next")
    sp.close()

    # pinned sockets between ranks 0 and 1 (loopback), both directions at once, learned sizes
    if p >= 2 and r < 2:
        peer = 1 - r
        channels = connect_paths(comm, peer, ["127.0.0.1", "127.0.0.1"], timeout=30)
        tcp = Splitter(comm, channels, min_bytes=4096, explore=0)
        for it, n in enumerate([5 << 20, 1, 3 << 20, HEADER_BYTES, 12_345]):
            out, st = np.full(n + 2, 0xEE, np.uint8), MPI.Status()
            wait_all([tcp.Irecv(out, peer, 30 + it), tcp.Isend(pattern(n, r, it), peer, 30 + it)], [st, None])
            check(out, n, peer, it, st, f"sockets size {n}")
        for ch in channels:
            ch.close()
    comm.Barrier()
    if r == 0:
        print(f"OK flows on {p} ranks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
