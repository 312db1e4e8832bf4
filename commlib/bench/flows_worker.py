"""One job of the flow-splitting benchmark: one large transfer between two ranks, unsplit vs split, per mode.

Run with exactly two ranks, one per emulated node (``python -m commlib bench
flows`` starts it inside an :class:`commlib.cluster.EmulatedCluster` with two
paths). Modes, timed in turns round after round so that noise hits all alike:

``mpi``         ``Comm.Send`` of the whole buffer: MPI's own connection.
``mpi-split``   :class:`transport.flows.Splitter` over 2 duplicated communicators, half each: MPI's
                own connections (whatever MPICH maps the duplicates onto).
``tcp-1``       the project's transport, one connection pinned to path 0: the unsplit baseline.
``tcp-split``   two connections pinned to paths 0 and 1, parts sized by the learned throughputs.
``tcp-ecmp``    two connections to the peer's multipath address (the kernel hashes each onto a
                path: they may collide), half each.

A sample is the time from rank 0 starting the send to it receiving rank 1's
one-byte acknowledgement after the whole buffer arrived and was checked on
the first round; throughput = bytes x 8 / time. Rank 0 also counts the bytes
each path device sent during each sample (sysfs of its namespace), which
shows which paths a mode really used. Rank 0 writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
from mpi4py import MPI

from transport.flows import Splitter, split_sizes
from transport.sockets import connect_paths

__all__ = ["main"]


def _timed(comm: MPI.Intracomm, send, recv, buf: np.ndarray, check: np.ndarray | None) -> float:
    """Seconds for one transfer rank 0 -> rank 1, acknowledged (rank 0's clock); 0 on rank 1."""
    ack = np.zeros(1, np.uint8)
    comm.Barrier()
    if comm.Get_rank() == 0:
        t = time.perf_counter()
        send(buf)
        req = comm.Irecv(ack, 1, 99)
        while not req.Test():  # no busy-polling MPI progress while the other rank still receives
            time.sleep(100e-6)
        return time.perf_counter() - t
    recv(buf)
    if check is not None and not np.array_equal(buf, check):
        raise AssertionError("flows benchmark: received bytes differ from the sent ones")
    comm.Send(ack, 0, 99)
    return 0.0


def _tx_bytes(devices: list[str]) -> list[int]:
    """Bytes each path device of this rank's namespace has sent (``ip netns exec`` mounts its own sysfs)."""
    out = []
    for dev in devices:
        try:
            with open(f"/sys/class/net/{dev}/statistics/tx_bytes") as f:
                out.append(int(f.read()))
        except OSError:
            out.append(-1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", type=int, default=64 << 20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--paths", required=True, help="JSON: [[node0 path addresses], [node1 path addresses]]")
    parser.add_argument("--ecmp", required=True, help="JSON: [node0 multipath address, node1 multipath address]")
    parser.add_argument("--modes", default="mpi,mpi-split,tcp-1,tcp-split,tcp-ecmp")
    parser.add_argument("--devices", default="cl0,cl1", help="path devices whose sent bytes are counted")
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    comm = MPI.COMM_WORLD
    if comm.Get_size() != 2:
        print("flows_worker: run with exactly 2 ranks", file=sys.stderr)
        return 2
    me, peer = comm.Get_rank(), 1 - comm.Get_rank()
    paths, ecmp_addr = json.loads(args.paths), json.loads(args.ecmp)
    modes = args.modes.split(",")
    n = args.bytes
    pattern = (np.arange(n, dtype=np.uint64) * 2654435761 % 251).astype(np.uint8)
    buf = pattern.copy() if me == 0 else np.zeros(n, np.uint8)

    pinned = connect_paths(comm, peer, paths[me])
    hashed = connect_paths(comm, peer, [ecmp_addr[me]] * 2)
    tcp = Splitter(comm, pinned, min_bytes=1 << 16, explore=0)
    ecmp = Splitter(comm, hashed, min_bytes=1 << 16, explore=0)
    dup = Splitter.dup(comm, 2, min_bytes=1 << 16, explore=0)
    half = [n // 2, n - n // 2]

    def learned() -> list[int]:
        """Rank 0's parts for paths 0 and 1, in proportion to the throughputs it has measured so far."""
        return split_sizes(n, tcp.estimator.channel_rates(peer)).tolist()

    runs: dict[str, tuple] = {
        "mpi": (lambda b: comm.Send(b, 1, 5), lambda b: comm.Recv(b, 0, 5)),
        "mpi-split": (lambda b: dup.Send(b, 1, 5, sizes=half), lambda b: dup.Recv(b, 0, 5)),
        "tcp-1": (lambda b: tcp.Send(b, 1, 5, sizes=[n, 0]), lambda b: tcp.Recv(b, 0, 5)),
        "tcp-split": (None, lambda b: tcp.Recv(b, 0, 5)),
        "tcp-ecmp": (lambda b: ecmp.Send(b, 1, 5, sizes=half), lambda b: ecmp.Recv(b, 0, 5)),
    }
    samples: dict[str, list[float]] = {m: [] for m in modes}
    sent: dict[str, list[list[int]]] = {m: [] for m in modes}
    devices = args.devices.split(",")
    split_parts: list[list[int]] = []
    for r in range(args.rounds + 1):  # round 0 warms up, checks the bytes and primes the estimates
        for mode in modes:
            send, recv = runs[mode]
            if mode == "tcp-split":
                sizes = learned()
                split_parts.append(sizes)

                def send(b, sizes=sizes):
                    tcp.Send(b, 1, 5, sizes=sizes)

            if me == 1:
                buf[:] = 0
            before = _tx_bytes(devices)
            t = _timed(comm, send, recv, buf, pattern if (me == 1 and r == 0) else None)
            after = _tx_bytes(devices)
            if r > 0:
                samples[mode].append(t)
                sent[mode].append([a - b for a, b in zip(after, before)])
    for ch in pinned + hashed:
        ch.close()
    dup.close()
    if me == 0:
        gbps = {m: [n * 8 / t / 1e9 for t in ts] for m, ts in samples.items()}
        out = {
            "bytes": n,
            "rounds": args.rounds,
            "gbps": gbps,
            "median_gbps": {m: statistics.median(v) for m, v in gbps.items() if v},
            "devices": devices,
            "tx_bytes": sent,
            "tcp_split_parts": split_parts,
            "tcp_rates": tcp.estimator.channel_rates(peer).tolist(),
            "ecmp_sockets": [repr(ch) for ch in hashed],
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
