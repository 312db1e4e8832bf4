"""Emulated nodes: namespaces and links made and always removed, ranks placed per node, links shaped."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cluster_fixtures import emulated_cluster  # noqa: F401  (fixture)

from commlib.cluster import ClusterError, EmulatedCluster, clean_stale_namespaces, cluster_available, main
from commlib.cluster.netns import namespaces, tool
from commlib.cluster.shaping import parse_rate
from commlib.mpirun import MPIRunError, mpiexec_family

HERE = Path(__file__).parent / "mpi"
OK, WHY = cluster_available()

pytestmark = [pytest.mark.emulated, pytest.mark.skipif(not OK, reason=WHY)]

MBIT = 1e6


def _ours(cl: EmulatedCluster) -> list[str]:
    return [ns for ns in namespaces() if ns.startswith(cl._key + "-")]


def _pids(cl: EmulatedCluster) -> list[str]:
    return [p for ns in cl._made for p in tool("ip", "netns", "pids", ns, check=False).stdout.split()]


def test_cluster_available_answers_with_a_reason():
    ok, why = cluster_available()
    assert isinstance(ok, bool) and isinstance(why, str) and (ok or why)


def test_rate_parsing_and_validation():
    assert parse_rate("1gbit", "t") == 1e9 and parse_rate("100mbit", "t") == 1e8 and parse_rate("1mbps", "t") == 8e6
    assert parse_rate(5e8, "t") == 5e8 and parse_rate(None, "t") is None
    with pytest.raises(ValueError, match="not a tc rate"):
        parse_rate("1gbt", "t")
    with pytest.raises(ValueError, match="nodes must be"):
        EmulatedCluster(nodes=0)
    with pytest.raises(ValueError, match="needs exactly 2 nodes"):
        EmulatedCluster(nodes=3, paths=2)
    with pytest.raises(ValueError, match="not a tc rate"):
        EmulatedCluster(nodes=2, rate="fast")
    with pytest.raises(ValueError, match="not a tc size"):
        EmulatedCluster(nodes=2, burst="lots")


def test_namespaces_links_and_hostnames_are_made_then_removed(emulated_cluster):  # noqa: F811
    cl = emulated_cluster(nodes=3, rate="1gbit")
    made = set(_ours(cl))
    assert made == {*cl.namespaces, cl.hub} and len(cl) == 3
    assert cl.device == "cl0" and cl.hostnames == ["node0", "node1", "node2"]
    assert cl.node_rates == ["1gbit"] * 3 and "3 nodes (star)" in repr(cl)
    for node in range(3):
        out = cl.run_on(node, ["sh", "-c", "hostname; ip -o -4 addr show dev cl0"]).stdout
        assert out.splitlines()[0] == f"node{node}" and f"inet {cl.address(node)}/24" in out
        assert "tbf" in cl.qdiscs(node) and "rate 1Gbit" in cl.qdiscs(node)
    cl.close()
    cl.close()
    assert _ours(cl) == [] and cl.closed and "closed" in repr(cl)
    with pytest.raises(ClusterError, match="is closed"):
        cl.mpirun(1, ["-c", "pass"])


def test_context_manager_removes_namespaces_on_exception():
    with pytest.raises(RuntimeError, match="inside"):
        with EmulatedCluster(nodes=2, rate=None) as cl:
            assert len(_ours(cl)) == 3
            raise RuntimeError("inside")
    assert _ours(cl) == []


def test_ranks_land_on_their_nodes_and_inter_node_traffic_is_rate_limited(emulated_cluster):  # noqa: F811
    cl = emulated_cluster(nodes=3, rate="100mbit")
    nbytes = 2 << 20
    before = cl.link_bytes(0)["cl0"][1]
    res = cl.mpirun([2, 1, 1], [str(HERE / "cluster_placement.py"), str(nbytes)], timeout=120)
    assert "OK cluster_placement on 4 ranks" in res.stdout
    lines = {int(w[1]): (int(w[3]), w[5], int(w[7])) for w in map(str.split, res.stdout.splitlines()) if w[0] == "RANK"}
    # MPICH forced onto its network module shares memory with no peer; Open MPI (one daemon per node) with its node
    pair = 1 if mpiexec_family() == "hydra" else 2
    assert lines == {0: (0, "node0", pair), 1: (0, "node0", pair), 2: (1, "node1", 1), 3: (2, "node2", 1)}
    rates = {w[0]: float(w[1]) for w in map(str.split, res.stdout.splitlines()) if w[0] in ("INTER", "INTRA")}
    # 3 transfers of nbytes left node 0 through its veth; none of the intra-node ones did.
    assert cl.link_bytes(0)["cl0"][1] - before >= 3 * nbytes
    assert rates["INTER"] < 3 * 100 * MBIT, rates
    assert rates["INTRA"] > 3 * 100 * MBIT, rates


def test_failed_and_timed_out_jobs_leave_nothing_behind(emulated_cluster, tmp_path):  # noqa: F811
    cl = emulated_cluster(nodes=2, rate=None)
    fail = tmp_path / "fail.py"
    fail.write_text("import os\nif os.environ['COMMLIB_NODE_ID'] == '1':\n    raise RuntimeError('node one broke')\n")
    with pytest.raises(MPIRunError, match="exited with code") as err:
        cl.mpirun(1, [str(fail)], timeout=60)
    assert "node one broke" in str(err.value)
    hang = tmp_path / "hang.py"
    hang.write_text("from mpi4py import MPI\nif MPI.COMM_WORLD.rank == 1:\n    MPI.COMM_WORLD.recv(source=0)\n")
    with pytest.raises(MPIRunError, match="did not finish within 3 s"):
        cl.mpirun([1, 1], [str(hang)], timeout=3)
    assert _pids(cl) == []
    res = cl.mpirun([1, 1], [str(hang)], timeout=3, check=False)
    assert res.timed_out and _pids(cl) == []
    cl.close()
    assert _ours(cl) == []


def test_set_node_rate_and_set_link_rate_shape_what_they_claim(emulated_cluster):  # noqa: F811
    cl = emulated_cluster(nodes=3, rate=None)
    n = 1 << 20
    cl.set_link_rate(0, 1, "50mbit")
    assert cl.link_rates == {(0, 1): "50mbit"} and "htb" in cl.qdiscs(0) and "htb" in cl.qdiscs(1)
    assert cl.measure_throughput(0, 1, n) < 3 * 50 * MBIT
    assert cl.measure_throughput(1, 0, n) < 3 * 50 * MBIT
    assert cl.measure_throughput(0, 2, 4 * n) > 3 * 50 * MBIT
    cl.set_node_rate(2, "50mbit")
    assert cl.node_rates == [None, None, "50mbit"]
    assert cl.measure_throughput(0, 2, n) < 3 * 50 * MBIT
    assert cl.measure_throughput(2, 1, n) < 3 * 50 * MBIT
    cl.set_link_rate(1, 0, None)
    cl.set_node_rate(2, None)
    assert cl.link_rates == {} and all("htb" not in cl.qdiscs(i) and "tbf" not in cl.qdiscs(i) for i in range(3))
    assert cl.measure_throughput(0, 1, 4 * n) > 3 * 50 * MBIT


def test_two_paths_between_two_nodes(emulated_cluster):  # noqa: F811
    cl = emulated_cluster(nodes=2, rate=None, paths=2)
    assert cl.devices == ["cl0", "cl1"] and cl.hub is None and len(_ours(cl)) == 2
    assert cl.path_addresses(0) == ["198.18.1.1", "198.18.2.1"] and cl.peer_addresses(0, 1) == cl.path_addresses(1)
    route = cl.run_on(0, ["ip", "route", "show", cl.address(1)]).stdout
    assert route.count("nexthop") == 2 and "dev cl0" in route and "dev cl1" in route
    policy = cl.run_on(1, ["cat", "/proc/sys/net/ipv4/fib_multipath_hash_policy"]).stdout
    assert policy.strip() == "1"
    n = 4 << 20
    for path in (0, 1):
        before = cl.link_bytes(0)
        cl.measure_throughput(0, 1, n, address=cl.path_addresses(1)[path], source=cl.path_addresses(0)[path])
        after = cl.link_bytes(0)
        sent = {dev: after[dev][1] - before[dev][1] for dev in cl.devices}
        assert sent[f"cl{path}"] >= n and sent[f"cl{1 - path}"] < n // 10, sent
    cl.measure_throughput(0, 1, n, streams=4)  # over the multipath route between the lo addresses
    # MPI uses path 0 by default; naming both devices lets UCX (Open MPI's TCP transport) split a message over both.
    before = cl.link_bytes(0)
    cl.mpirun(1, ["-c", _SEND, str(n)], env=cl.mpi_env(devices=cl.devices), timeout=120)
    after = cl.link_bytes(0)
    assert all(after[dev][1] - before[dev][1] >= n // 4 for dev in cl.devices), (before, after)
    cl.set_path_rate(1, "50mbit")
    assert cl.path_rates == [None, "50mbit"]
    slow = cl.measure_throughput(0, 1, n // 4, address=cl.path_addresses(1)[1], source=cl.path_addresses(0)[1])
    assert slow < 3 * 50 * MBIT
    cl.set_path_rate(1, None)
    cl.set_node_rate(1, "50mbit")  # shapes both ends of every path, so node 0's sends too
    assert all("rate 50Mbit" in cl.qdiscs(node) for node in (0, 1))
    assert cl.measure_throughput(0, 1, n // 4, address=cl.path_addresses(1)[0]) < 3 * 50 * MBIT


_SEND = (
    "import sys, numpy as np\n"
    "from mpi4py import MPI\n"
    "buf = np.ones(int(sys.argv[1]), np.uint8)\n"
    "if MPI.COMM_WORLD.rank == 0: MPI.COMM_WORLD.Send(buf, dest=1)\n"
    "else: MPI.COMM_WORLD.Recv(buf, source=0)\n"
)


def test_clusters_coexist_with_identical_addresses():
    with EmulatedCluster(nodes=2, rate=None) as a, EmulatedCluster(nodes=2, rate="1gbit", name="second") as b:
        assert not set(_ours(a)) & set(_ours(b)) and a.addresses == b.addresses
        assert "'second'" in repr(b) and a.name != b.name
        assert a.measure_throughput(1, 0, 1 << 20) > 0 and b.measure_throughput(0, 1, 1 << 20) > 0
    assert _ours(a) == [] and _ours(b) == []


def test_missing_htb_or_u32_is_reported_as_not_implemented(emulated_cluster, monkeypatch):  # noqa: F811
    from commlib.cluster import shaped as cluster_module

    cl = emulated_cluster(nodes=2, rate="1gbit")
    real = cluster_module.shape_device

    def without_htb(ns, dev, rate, peers, burst=None):
        if peers:
            raise ClusterError("cluster: tc ... htb failed (exit 2): Error: Specified qdisc kind is unknown.")
        real(ns, dev, rate, peers, burst)

    monkeypatch.setattr(cluster_module, "shape_device", without_htb)
    with pytest.raises(NotImplementedError, match="sch_htb, cls_u32"):
        cl.set_link_rate(0, 1, "10mbit")
    assert cl.link_rates == {} and "tbf" in cl.qdiscs(0) and "tbf" in cl.qdiscs(1)
    with pytest.raises(ValueError, match="two different nodes"):
        cl.set_link_rate(1, 1, "10mbit")
    with pytest.raises(IndexError, match="out of range"):
        cl.set_node_rate(2, "10mbit")
    with pytest.raises(ValueError, match="one path per node"):
        cl.set_path_rate(0, "10mbit")
    with pytest.raises(ValueError, match="ranks_per_node has 3 entries for 2 nodes"):
        cl.mpirun([1, 1, 1], ["-c", "pass"])


_HOLDER = """
import sys, time
from commlib.cluster import EmulatedCluster
cl = EmulatedCluster(nodes=2, rate="1gbit")
print(cl._key, flush=True)
if sys.argv[1] == "busy":
    cl.mpirun([2, 1], ["-c", "import time; time.sleep(60)"], timeout=90)
time.sleep(60)
"""


def _namespaces_of(key: str) -> list[str]:
    return [ns for ns in namespaces() if ns.startswith(key + "-")]


def _wait(predicate, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.parametrize(
    "sig, state",
    [(signal.SIGTERM, "busy"), (signal.SIGINT, "idle"), (signal.SIGKILL, "busy")],
    ids=["TERM-during-mpirun", "INT-idle", "KILL-during-mpirun"],
)
def test_killed_harness_leaves_no_namespaces_and_no_ranks(sig, state):
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, state], stdout=subprocess.PIPE, text=True)
    try:
        key = holder.stdout.readline().strip()
        made = _namespaces_of(key)
        assert key and len(made) == 3
        ranks: list[int] = []
        if state == "busy":

            def pids() -> list[int]:
                return [int(p) for ns in made for p in tool("ip", "netns", "pids", ns, check=False).stdout.split()]

            assert _wait(lambda: len(pids()) >= 3), "ranks did not start"
            ranks = pids()
        os.kill(holder.pid, sig)
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
    if sig == signal.SIGKILL:
        assert sorted(_namespaces_of(key)) == sorted(made)  # nothing could run: left for the stale cleaner
        assert sorted(ns for ns in clean_stale_namespaces() if ns.startswith(key + "-")) == sorted(made)
    assert _namespaces_of(key) == []
    assert _wait(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in ranks), 10), "ranks outlived the harness"


def test_cli_runs_a_program_on_emulated_nodes(tmp_path, capsys):
    prog = tmp_path / "where.py"
    prog.write_text(
        "import os, sys\nfrom mpi4py import MPI\n"
        "sys.stdout.write(f\"AT {MPI.Get_processor_name()} {os.environ['COMMLIB_NODE_ID']}\\n\")\n"
    )
    assert (
        main(["--nodes", "2", "--ranks-per-node", "1,2", "--rate", "1gbit", "--timeout", "120", "--", str(prog)]) == 0
    )
    out = capsys.readouterr().out
    assert sorted(re.findall(r"AT (node\d) (\d)", out)) == [("node0", "0"), ("node1", "1"), ("node1", "1")]
    start = time.monotonic()
    assert main(["--nodes", "1", "--", "-c", "raise SystemExit(3)"]) != 0
    assert time.monotonic() - start < 120


def test_cluster_rates_benchmark_smoke(tmp_path, capsys):
    from commlib.bench.cluster_rates import main as bench_main

    out = tmp_path / "rates.json"
    assert bench_main(["--rates", "100mbit", "--reps", "1", "--seconds", "0.1", "--json", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["rate"] == "100mbit" and all(row["median_mbit"][k] > 0 for k in ("tcp", "tcp_64kb", "htb", "mpi"))
    assert "tbf adaptive" in capsys.readouterr().out
