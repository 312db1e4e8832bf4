"""Path-pinned socket channels (transport.sockets): reassembly with clear-to-send, early parts, failures,
addresses; on two emulated nodes joined by two paths, the devices' byte counters show which paths each mode used.
"""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
from mpi4py import MPI
from split_messages import Model, pattern, roundtrip

from transport.flows import HEADER_BYTES, Splitter
from transport.sockets import SocketChannel, check_address


@pytest.mark.parametrize("n", [0, 1, HEADER_BYTES, 5000, (8 << 20) + 1])
def test_socket_channels_reassemble_with_clear_to_send(n, socket_loops):
    sp = Splitter(MPI.COMM_SELF, socket_loops, min_bytes=1024, model=Model(), explore=0)
    for _ in range(2):
        out, count = roundtrip(sp, pattern(n, n))
        assert count == n and np.array_equal(out[:n], pattern(n, n))


def test_socket_channel_keeps_early_parts_and_reports_failures():
    a, b = socket.socketpair()
    left, right = SocketChannel(a, 1, "left", timeout=5), SocketChannel(b, 0, "right", timeout=5)
    try:
        left.isend(memoryview(pattern(1000)), 1, 5).wait()
        left.isend(memoryview(pattern(10, 3)), 1, 6).wait()
        got6, got5 = bytearray(10), bytearray(1000)
        right.irecv(memoryview(got6), 0, 6).wait()  # posted after arrival, and out of order
        right.irecv(memoryview(got5), 0, 5).wait()
        assert bytes(got5) == pattern(1000).tobytes() and bytes(got6) == pattern(10, 3).tobytes()
        with pytest.raises(ValueError, match="joins rank 1, not rank 2"):
            left.isend(memoryview(b"x"), 2, 0)
        pending = right.irecv(memoryview(bytearray(4)), 0, 9)
        assert not pending.test()
        left.close()
        with pytest.raises(ConnectionError, match="closed"):
            pending.wait()
    finally:
        left.close()
        right.close()


def test_socket_addresses_are_checked():
    assert check_address("127.0.0.1") == "127.0.0.1" and check_address("198.18.1.2")
    with pytest.raises(ValueError, match="only loopback or private"):
        check_address("8.8.8.8")
    with pytest.raises(ValueError, match="not an IP address"):
        check_address("example.org")


@pytest.mark.mpi
@pytest.mark.emulated
def test_pinned_paths_on_emulated_nodes(tmp_path):
    from commlib.cluster import EmulatedCluster, cluster_available

    ok, why = cluster_available()
    if not ok:
        pytest.skip(why)
    out = tmp_path / "flows.json"
    with EmulatedCluster(nodes=2, paths=2, rate="1gbit") as cl:
        paths = [cl.path_addresses(i) for i in range(2)]
        args = ["-m", "commlib.bench.flows_worker", "--bytes", str(4 << 20), "--rounds", "1"]
        args += ["--paths", json.dumps(paths), "--ecmp", json.dumps(cl.addresses), "--json", str(out)]
        cl.mpirun([1, 1], [*args, "--modes", "mpi,tcp-1,tcp-split"], timeout=120)
    res = json.loads(out.read_text())
    (p0, p1), = res["tx_bytes"]["tcp-1"]  # fmt: skip
    assert p0 >= 4 << 20 and p1 < 1 << 20  # one pinned connection: path 0 only
    (q0, q1), = res["tx_bytes"]["tcp-split"]  # fmt: skip
    parts = res["tcp_split_parts"][-1]
    assert min(parts) > 0  # split: each path carries the part sized for it, and nothing else
    for sent, part in zip((q0, q1), parts):
        assert part <= sent <= part * 1.1 + (64 << 10)
    assert all(len(v) == 1 for v in res["gbps"].values())
