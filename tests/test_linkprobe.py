"""Link probes (transport.linkprobe): telling a slow node from a slow link, measuring over a side channel."""

from transport import linkprobe
from transport.sidechannel import SideChannel


def _matrix(nodes, slow_nodes=(), slow_links=(), good=1.2e8, bad=1.2e7):
    cells = {}
    for a in range(nodes):
        for b in range(nodes):
            if a != b:
                slow = a in slow_nodes or b in slow_nodes or {a, b} in [set(p) for p in slow_links]
                cells[a, b] = {"bandwidth": bad if slow else good * (1 + 0.05 * ((a + b) % 3)), "rtt": 1e-4}
    return cells


def test_localise_tells_a_slow_node_from_a_slow_link():
    assert linkprobe.localise(_matrix(4))["bad"] == []
    r = linkprobe.localise(_matrix(3, slow_nodes=[2]))
    assert r["slow_nodes"] == [2] and r["slow_links"] == []
    r = linkprobe.localise(_matrix(4, slow_nodes=[0]))
    assert r["slow_nodes"] == [0] and r["slow_links"] == []
    r = linkprobe.localise(_matrix(3, slow_links=[(0, 1)]))
    assert r["slow_nodes"] == [] and r["slow_links"] == [[0, 1]]
    r = linkprobe.localise(_matrix(4, slow_links=[(1, 3)]))
    assert r["slow_nodes"] == [] and r["slow_links"] == [[1, 3]]
    r = linkprobe.localise(_matrix(2, slow_links=[(0, 1)]))
    assert r["bad"] == [] and not r["ambiguous"]  # two nodes alike: nothing to compare with
    cells = _matrix(3)
    cells[0, 2]["rtt"] = 8e-3  # queueing on a busy link, or waiting for the GIL: not a fault
    assert linkprobe.localise(cells)["bad"] == []
    cells[0, 2]["rtt"] = 50e-3  # one slow direction by latency
    assert linkprobe.localise(cells)["slow_links"] == [[0, 2]]
    del cells[1, 2], cells[2, 1]  # pairs not measured count neither way
    assert linkprobe.localise(cells)["slow_nodes"] == [] and linkprobe.localise(cells)["slow_links"] == [[0, 2]]


def test_probe_records_report_each_fault_once():
    cells = {(str(a), str(b)): c for (a, b), c in _matrix(3, slow_links=[(0, 1)]).items()}
    result = linkprobe.localise(cells)
    records, known = linkprobe.records(result, cells, 3, set())
    assert [r["kind"] for r in records] == ["links", "slow-link"] and records[1]["link"] == ["0", "1"]
    assert "SLOW LINK: 0 <-> 1: 96 Mbit/s vs" in records[1]["lines"][0] and "0->1" in records[0]["matrix"]
    again, known = linkprobe.records(result, cells, 3, known)
    assert [r["kind"] for r in again] == ["links"]
    cells = {(str(a), str(b)): c for (a, b), c in _matrix(3, slow_nodes=[2]).items()}
    records, _ = linkprobe.records(linkprobe.localise(cells), cells, 3, known)
    assert [r["kind"] for r in records] == ["links", "slow-node"] and records[1]["node"] == "2"


def test_measure_over_a_loopback_side_channel():
    server = SideChannel("127.0.0.1", "t0k")
    server.handle_stream("sink", linkprobe.sink)
    server.start()
    try:
        peer = {"rank": 1, "address": server.address, "port": server.port, "token": "t0k"}
        res = linkprobe.measure(peer, 1 << 20, 3, timeout=20)
    finally:
        server.stop()
    assert res["bytes"] == 1 << 20 and res["seconds"] > 0 and res["rtt"] > 0 and res["bandwidth"] > 1e6
