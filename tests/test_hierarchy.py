"""collectives.hierarchy and the collectives over it: levels, the level cost model, multi-rank runs of every op."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from collectives import allreduce_cost as cost
from collectives import hierarchical_calls as hc
from collectives import hierarchy_cost as hcost
from collectives.hierarchy import _levels, parse_levels
from collectives.settings import CollectivesSettings
from commlib.mpirun import run

CASES = str(Path(__file__).parent / "mpi" / "hierarchy_cases.py")


class _Shape:
    """A stand-in communicator for building hierarchies of a given shape without MPI."""

    def __init__(self, size: int) -> None:
        self.size = size

    def Get_size(self) -> int:
        return self.size

    def Get_rank(self) -> int:
        return 0


def _racks(racks: int, nodes: int, ppn: int):
    p = racks * nodes * ppn
    node = [r // ppn for r in range(p)]
    return _levels(_Shape(p), ["node", "rack"], [node, [n // nodes for n in node]])


def test_levels_parse_and_refuse_bad_specs():
    assert parse_levels(" socket=0, node=n3,rack=r1 ") == [("socket", "0"), ("node", "n3"), ("rack", "r1")]
    assert parse_levels("") == []
    for bad in ("rack", "rack=", "rack=1,rack=2", "world=1", "1x=2"):
        with pytest.raises(ValueError, match="COMMLIB_TOPOLOGY"):
            parse_levels(bad)


def test_settings_read_their_variables(monkeypatch):
    monkeypatch.setenv("COMMLIB_TOPOLOGY", "node=1,rack=0")
    monkeypatch.setenv("COMMLIB_LEVEL_LINKS", "world=30e-6/200mbit")
    monkeypatch.setenv("COMMLIB_REDUCE_SCATTER", "hierarchical")
    monkeypatch.setenv("COMMLIB_ALLGATHER", "native")
    s = CollectivesSettings.from_env()
    assert (s.topology, s.level_links, s.reduce_scatter, s.allgather) == (
        "node=1,rack=0",
        "world=30e-6/200mbit",
        "hierarchical",
        "native",
    )
    monkeypatch.setenv("COMMLIB_ALLGATHER", "ring")
    with pytest.raises(ValueError, match="COMMLIB_ALLGATHER"):
        CollectivesSettings.from_env()


def test_uneven_and_degenerate_levels():
    # 2 racks: one of a 3-rank and a 1-rank node, one of a 2-rank node; a level equal to the node is dropped
    node = [0, 0, 0, 1, 2, 2]
    h = _levels(_Shape(6), ["node", "same", "rack"], [node, node, [0, 0, 0, 0, 1, 1]])
    assert h.names == ("node", "rack", "world")
    assert h.shards == (1, 1, 2)  # the 1-rank node bounds the node level, the 1-node rack the rack level
    assert h.index[0] == (0, 1, 2, 0, 0, 1) and h.index[2] == (0, 0, 0, 0, 1, 1)
    assert [h.participates(1, r) for r in range(6)] == [True, False, False, True, True, False]
    assert _levels(_Shape(4), ["node", "rack"], [[0] * 4, [0] * 4]).names == ("world",)


def test_link_figures_parse_and_refuse_bad_ones():
    links = hcost.parse_links("rack=30e-6/1gbit, world=1e-5/2.5e-8")
    assert links["rack"] == cost.Link(30e-6, 8e-9) and links["world"] == cost.Link(1e-5, 2.5e-8)
    for bad in ("rack=1", "rack=x/1gbit", "=1/2", "rack=-1/1gbit"):
        with pytest.raises(ValueError, match="COMMLIB_LEVEL_LINKS"):
            hcost.parse_links(bad)


def test_level_model_takes_the_rack_level_where_uplinks_are_slow():
    h = _racks(2, 2, 2)
    base = cost.default_costs()
    slow = hcost.level_costs(h, base, hcost.parse_links("rack=30e-6/1gbit,world=30e-6/200mbit"))
    for op in hcost.OPERATIONS:
        native = hcost.predict(op, 4 << 20, h, slow)
        depth, segments = hcost.best(op, 4 << 20, h, slow)
        assert depth == 2, op
        three = hcost.predict(op, 4 << 20, h, slow, 2, segments)
        assert three < min(hcost.predict(op, 4 << 20, h, slow, 1, k) for k in (1, 2, 4)) and three < native, op
        assert hcost.choose(op, 1 << 10, h, slow) == (0, 1), op  # below MIN_BYTES: MPI's own
    # reduce-scatter and allgather: MPI's algorithms cross the uplinks with all ranks' blocks, the levels once
    for op in ("reduce_scatter", "allgather"):
        assert hcost.choose(op, 4 << 20, h, slow)[0] == 2, op
    # allreduce: MPI's Rabenseifner crosses the uplink with n bytes too; only the pipelined levels gain
    assert hcost.choose("allreduce", 1 << 20, h, slow) == (0, 1)
    assert hcost.choose("allreduce", 4 << 20, h, slow) == (2, 4)
    assert hcost.choose("allreduce", 16 << 20, h, slow) == (2, 8)
    # equal links everywhere: the rack level buys nothing over two levels for allgather
    flat = hcost.level_costs(h, base)
    assert hcost.predict("allgather", 4 << 20, h, flat, 2) >= 0.95 * hcost.predict("allgather", 4 << 20, h, flat, 1)
    with pytest.raises(ValueError, match="unknown operation"):
        hcost.predict("bcast", 1, h, flat)


def test_single_process_calls_and_errors():
    comm = MPI.COMM_WORLD
    if comm.Get_size() != 1:
        pytest.skip("runs in the test process")
    x = np.arange(6.0)
    y = np.zeros(6)
    hc.reduce_scatter_block(comm, x, y, MPI.SUM, "hierarchical")
    assert np.array_equal(y, x)
    g = np.zeros(6)
    hc.allgatherv(comm, x, [g, ([6], [0])], "hierarchical")
    assert np.array_equal(g, x)
    with pytest.raises(ValueError, match="Reduce_scatter_block: sendbuf has 7 elements, not 1 x 6 .float64"):
        hc.try_reduce_scatter_block(comm, np.zeros(7), y, MPI.SUM, "hierarchical")
    with pytest.raises(ValueError, match="unknown algorithm"):
        hc.plan(comm, "allgather", 1 << 20, "ring")
    assert hc.try_allgather(comm, np.zeros(2), np.zeros(2)) is NotImplemented  # small: MPI's own, untouched
    # small: MPI's own before the spec is even read (a spec MPI refuses is MPI's to report)
    assert hc.try_allgatherv(comm, np.zeros(2), [np.zeros(2), [2, 2]]) is NotImplemented
    with pytest.raises(ValueError, match=r"Allgatherv: 2 counts and 2 displs for 1 ranks"):
        hc.try_allgatherv(comm, np.zeros(2), [np.zeros(2), [2, 2]], "hierarchical")


@pytest.mark.mpi
@pytest.mark.parametrize("nprocs", [3, 5, 8])
def test_every_op_and_dtype_on_two_and_three_level_shapes(nprocs):
    out = run(nprocs, [CASES], timeout=180).stdout
    assert f"OK hierarchy on {nprocs} ranks" in out
    three = "racks of 2-rank nodes: levels ['node', 'rack', 'world']"
    assert (three in out) == (nprocs >= 5)  # 3 ranks cannot hold three levels that all split


@pytest.mark.mpi
def test_same_bits_run_after_run():
    first, second = (run(3, [CASES], timeout=180).stdout for _ in range(2))
    digests = [line.split("results ")[1] for line in (first + second).splitlines() if "OK hierarchy" in line]
    assert len(digests) == 2 and digests[0] == digests[1]


@pytest.mark.mpi
@pytest.mark.skipif(not os.environ.get("COMMLIB_TEST_LONG"), reason="emulated racks; COMMLIB_TEST_LONG=1 runs it")
def test_three_levels_on_emulated_racks():
    from commlib.cluster import cluster_available
    from commlib.cluster.racks import EmulatedRacks

    ok, why = cluster_available()
    if not ok:
        pytest.skip(why)
    with EmulatedRacks(nodes=4, racks=2, rate="1gbit", uplink_rate="200mbit") as cl:
        out = cl.mpirun([2, 1, 2, 2], [CASES], timeout=300).stdout
    assert "OK hierarchy on 7 ranks" in out


@pytest.mark.emulated
def test_emulated_racks_put_nodes_on_rack_bridges_behind_shaped_uplinks():
    from commlib.cluster import cluster_available
    from commlib.cluster.netns import namespaces, tool
    from commlib.cluster.racks import EmulatedRacks

    ok, why = cluster_available()
    if not ok:
        pytest.skip(why)
    with pytest.raises(ValueError, match="racks must be an int in 1..nodes"):
        EmulatedRacks(nodes=2, racks=3)
    with EmulatedRacks(nodes=3, racks=2, rate="1gbit", uplink_rate="200mbit", local_rate="10gbit") as cl:
        assert cl.rack_of == [0, 0, 1]
        assert cl.node_env(2) == {"COMMLIB_NODE_ID": "2", "COMMLIB_TOPOLOGY": "rack=1"}
        links = tool("ip", "-n", cl.hub, "-o", "link", "show").stdout
        for port, bridge in (("p0", "br0"), ("p1", "br0"), ("p2", "br1"), ("u0", "br0"), ("u1", "br1"), ("c0", "brc")):
            assert any(f" {port}@" in line and f"master {bridge} " in line for line in links.splitlines()), port
        for dev in ("u0", "c1"):
            assert "rate 200Mbit" in tool("tc", "-n", cl.hub, "qdisc", "show", "dev", dev).stdout
        assert "rate 10Gbit" in tool("tc", "-n", cl.namespaces[0], "qdisc", "show", "dev", "lo").stdout
        assert "rate 1Gbit" in cl.qdiscs(2)
        made = [cl.hub, *cl.namespaces]
    assert not set(made) & set(namespaces())


def test_benchmark_report_names_each_target():
    from commlib.bench.hierarchy import _table, _targets

    def row(op, nbytes, mpi, two, three, auto):
        med = {"mpi": mpi, "2-level": two, "3-level": three, "auto": auto}
        return {"op": op, "bytes": nbytes, "median_s": med, "errors": dict.fromkeys(med, False), "auto_plan": [2, 2]}

    result = {
        "description": "2 racks",
        "shape": {"levels": ["node", "rack", "world"], "shards": [2, 2, 2]},
        "rows": [row("allreduce", 1 << 20, 1.0, 1.0, 0.9, 1.0), row("rs+ag", 1 << 20, 1.0, 0.7, 0.4, 0.4)],
    }
    table = "\n".join(_table(result))
    assert "| rs+ag | 1 MiB | 1000.00 ms | 0.70x | 0.40x | 0.40x | [2, 2] |" in table
    targets = _targets(result)
    assert any(t.startswith("allreduce: 3-level") and "0.90x 2-level" in t and "NOT met" in t for t in targets)
    assert any(t.startswith("rs+ag: 3-level") and "NOT met" not in t for t in targets)
