"""collectives.allreduce: buffer specs, local reductions, the cost model, and multi-rank runs of every algorithm."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from collectives import allreduce_cost as cost
from collectives.allreduce import ALGORITHMS, allreduce, handles, plan, try_allreduce
from collectives.bufspec import typed_buffer
from collectives.reduction import reducer
from collectives.topology import release, topology
from commlib.mpirun import App, run_apps

HERE = Path(__file__).parent / "mpi"
CASES = str(HERE / "allreduce_cases.py")


# ----------------------------------------------------------------- reductions
@pytest.mark.parametrize(
    "op, code, fn",
    [
        ("SUM", "d", "add"),
        ("PROD", "i", "multiply"),
        ("MIN", "f", "minimum"),
        ("MAX", "Q", "maximum"),
        ("LAND", "?", "logical_and"),
        ("LXOR", "i", "logical_xor"),
        ("BAND", "B", "bitwise_and"),
        ("BXOR", "q", "bitwise_xor"),
        ("SUM", "D", "add"),
        ("SUM", "e", "add"),
    ],
)
def test_reducer_maps_predefined_pairs(op, code, fn):
    r = reducer(getattr(MPI, op), MPI.Datatype.fromcode(code))
    assert r is not None and r.function == fn and r.dtype == np.dtype(code)


@pytest.mark.parametrize(
    "op, datatype",
    [
        ("MAX", MPI.C_DOUBLE_COMPLEX),  # MPI defines no order on complex numbers
        ("LAND", MPI.DOUBLE),  # logical ops: integer and logical types only
        ("BOR", MPI.FLOAT),
        ("SUM", MPI.C_BOOL),
        ("SUM", MPI.BYTE),  # MPI_BYTE takes bitwise ops only
        ("MAXLOC", MPI.DOUBLE_INT),
        ("REPLACE", MPI.INT),
        ("SUM", MPI.CHAR),
    ],
)
def test_reducer_leaves_other_pairs_to_mpi(op, datatype):
    assert reducer(getattr(MPI, op), datatype) is None


def test_reducer_leaves_user_ops_to_mpi():
    user = MPI.Op.Create(lambda a, b, t: None, commute=True)
    try:
        assert reducer(user, MPI.DOUBLE) is None
    finally:
        user.Free()


def test_reduction_combines_in_place_with_c_semantics():
    acc = np.array([100, -100, 3], np.int8)
    reducer(MPI.SUM, MPI.SIGNED_CHAR)(acc, np.array([100, -100, 4], np.int8))
    assert acc.tolist() == [-56, 56, 7]  # wraps like C
    acc = np.array([0, 2, -1], np.int32)
    reducer(MPI.LAND, MPI.INT)(acc, np.array([5, 3, 0], np.int32))
    assert acc.tolist() == [0, 1, 0]
    bits = np.array([0b1100], np.uint8)
    reducer(MPI.BXOR, MPI.BYTE)(bits, np.array([0b1010], np.uint8))
    assert bits.tolist() == [0b0110]


# --------------------------------------------------------------- buffer specs
def test_typed_buffer_forms():
    a = np.arange(12.0)
    assert typed_buffer(a, "recvbuf", writable=True).array.base is not None
    tb = typed_buffer([a, MPI.DOUBLE], "recvbuf", writable=True)
    assert tb.count == 12 and tb.datatype == MPI.DOUBLE and np.shares_memory(tb.array, a)
    tb = typed_buffer([a, 5, MPI.DOUBLE], "recvbuf", writable=True)
    assert tb.count == 5 and tb.array[0] == 0
    tb = typed_buffer([a, (4, 3), MPI.DOUBLE], "recvbuf", writable=True)
    assert tb.array.tolist() == [3.0, 4.0, 5.0, 6.0]
    tb = typed_buffer([a, 4, 3, MPI.DOUBLE], "recvbuf", writable=True)
    assert tb.array.tolist() == [3.0, 4.0, 5.0, 6.0]
    tb = typed_buffer([a.view(np.uint8), 3, MPI.INT], "sendbuf", writable=False)
    assert tb.count == 3 and tb.array.dtype == np.int32
    tb = typed_buffer(bytearray(8), "recvbuf", writable=True)
    assert tb.count == 8 and tb.datatype == MPI.UNSIGNED_CHAR
    tb = typed_buffer(np.ones((3, 2), order="F"), "sendbuf", writable=False)
    assert tb.count == 6
    for leave in (MPI.IN_PLACE, None, MPI.BOTTOM, [a, 1, MPI.DOUBLE_INT], np.zeros(2, "U3")):
        assert typed_buffer(leave, "sendbuf", writable=False) is None


def test_typed_buffer_leaves_derived_datatypes_to_mpi():
    contiguous = MPI.INT.Create_contiguous(2).Commit()
    try:
        assert typed_buffer([np.zeros(4, np.int32), 2, contiguous], "recvbuf", writable=True) is None
    finally:
        contiguous.Free()


def test_typed_buffer_rejects_bad_buffers_before_touching_them():
    a = np.zeros(4)
    with pytest.raises(ValueError, match=r"allreduce: recvbuf holds 32 bytes.*count=5"):
        typed_buffer([a, 5, MPI.DOUBLE], "recvbuf", writable=True)
    with pytest.raises(ValueError, match="needs bytes"):
        typed_buffer([a, 2, 3, MPI.DOUBLE], "recvbuf", writable=True)
    ro = np.zeros(4)
    ro.flags.writeable = False
    with pytest.raises(BufferError, match="recvbuf .* is read-only"):
        typed_buffer(ro, "recvbuf", writable=True)
    assert typed_buffer(ro, "sendbuf", writable=False).count == 4
    with pytest.raises(BufferError, match="non-contiguous float64 array of shape \\(2, 2\\)"):
        typed_buffer(np.zeros((2, 4))[:, ::2], "sendbuf", writable=False)
    with pytest.raises(TypeError, match="sendbuf of type object is not a buffer"):
        typed_buffer(object(), "sendbuf", writable=False)


# --------------------------------------------------------------------- API
def test_single_process_every_algorithm_and_errors():
    comm = MPI.COMM_SELF.Dup()
    try:
        x = np.arange(10, dtype=np.float32)
        for alg in ALGORITHMS:
            y = np.zeros_like(x)
            allreduce(comm, x, y, MPI.SUM, alg)
            assert np.array_equal(x, y)
            z = x.copy()
            # one rank has nothing to reduce: try_allreduce hands the call back to MPI untouched
            assert try_allreduce(comm, MPI.IN_PLACE, z, MPI.MAX, alg) is NotImplemented and np.array_equal(z, x)
        with pytest.raises(ValueError, match="unknown algorithm 'fastest'"):
            allreduce(comm, x, np.zeros_like(x), MPI.SUM, "fastest")
        with pytest.raises(ValueError, match="sendbuf has 10 and recvbuf 9 elements"):
            allreduce(comm, x, np.zeros(9, np.float32), MPI.SUM, "ring")
        with pytest.raises(ValueError, match="datatypes must match"):
            allreduce(comm, x, np.zeros(10), MPI.SUM, "ring")
        assert handles(comm, x, np.zeros_like(x), MPI.SUM)
        assert not handles(comm, x, np.zeros_like(x), MPI.MAXLOC)
        assert try_allreduce(comm, x, np.zeros_like(x), MPI.REPLACE) is NotImplemented
        assert plan(comm, 1 << 20) == ("native", "native", 1)
    finally:
        release(comm)
        comm.Free()


def test_native_steps_do_not_reenter_an_overridden_allreduce():
    class Interposed(MPI.Intracomm):
        def Allreduce(self, *args, **kwargs):
            raise AssertionError("commlib called the communicator's own Allreduce")

    comm = Interposed(MPI.COMM_SELF.Dup())
    try:
        for alg in ALGORITHMS:
            y = np.zeros(3)
            allreduce(comm, np.ones(3), y, MPI.SUM, alg)
            assert y.tolist() == [1.0, 1.0, 1.0]
    finally:
        release(comm)
        MPI.Intracomm.Free(comm)


def test_topology_is_cached_and_freed_with_its_communicator():
    comm = MPI.COMM_SELF.Dup()
    topo = topology(comm)
    assert topology(comm) is topo and topo.nodes == ((0,),) and topo.method in ("shared", "env")
    inner = topo.node_comm
    comm.Free()  # the attribute's delete callback frees what the topology holds
    assert topo.node_comm is None and topo.comm is None and inner == MPI.COMM_NULL or topo.node_comm is None
    comm = MPI.COMM_SELF.Dup()
    try:
        assert topology(comm, method="name").method == "name"
        release(comm)
        assert topology(comm, method="env", node_id=7).nodes == ((0,),)
        release(comm)
        assert topology(comm, method="env", node_id="gpu-node-a7").nodes == ((0,),)
        release(comm)
        with pytest.raises(ValueError, match="COMMLIB_NODE_ID is not set on ranks \\[0\\]"):
            topology(comm, method="env", node_id=-1)
    finally:
        release(comm)
        comm.Free()


# ----------------------------------------------------------------- cost model
def test_cost_model_picks_native_on_one_node_and_hierarchical_for_large_multi_node():
    costs = cost.default_costs()
    one_node = cost.Shape.blocks([4])
    for nbytes in (8, 4096, 1 << 20, 64 << 20):
        assert cost.choose(nbytes, one_node, costs) == "native"
    two_by_four = cost.Shape.blocks([4, 4])
    times = cost.predict_all(16 << 20, two_by_four, costs)
    # MPICH's recursive halving on ranks placed node by node already sends n bytes per node link:
    # hierarchical only overlaps steps, not enough for auto's margin
    assert 0.8 < times["hierarchical-shard"] / times["native"] <= 1.0
    assert cost.choose(16 << 20, two_by_four, costs) == "native"
    interleaved = cost.Shape((0, 1, 0, 1))
    times = cost.predict_all(16 << 20, interleaved, costs)
    assert times["hierarchical-shard"] < 0.6 * times["native"]  # there it crosses nodes with n/2 per rank
    assert cost.choose(16 << 20, interleaved, costs) == "hierarchical-shard"
    # below MIN_BYTES the Python steps of any algorithm cost more than MPI's whole call, whatever the model says:
    # with a very slow network between nodes, hierarchical wins from MIN_BYTES on, and native stays below it
    slow = cost.Costs(intra=cost.Link(1e-6, 1e-10), inter=cost.Link(1e-6, 1e-5), reduce=1e-10, call=1e-7)
    assert cost.choose(cost.MIN_BYTES, interleaved, slow, saving=0.0).startswith("hierarchical")
    assert cost.predict("hierarchical", cost.MIN_BYTES - 8, interleaved, slow) < 0.6 * cost.predict(
        "native", cost.MIN_BYTES - 8, interleaved, slow
    )
    assert cost.choose(cost.MIN_BYTES - 8, interleaved, slow, saving=0.0) == "native"
    assert cost.choose(16 << 20, cost.Shape.blocks([2, 3]), costs).startswith("hierarchical")
    assert cost.predict("star", 8, two_by_four, costs) < cost.predict("ring", 8, two_by_four, costs)
    assert cost.predict("hierarchical", 1 << 20, two_by_four, costs) == min(
        times_ for name, times_ in cost.predict_all(1 << 20, two_by_four, costs).items() if name.startswith("hier")
    )
    with pytest.raises(ValueError, match="unknown algorithm"):
        cost.predict("fast", 8, one_node, costs)


def test_cost_model_takes_any_object_with_alpha_beta():
    class Model:
        def alpha_beta(self, level):
            return {"intra": (1e-6, 1e-10), "inter": (2e-6, 1e-11)}[level]

    costs = cost.costs_from_model(Model())
    assert costs.inter == cost.Link(2e-6, 1e-11) and costs.intra == cost.Link(1e-6, 1e-10)

    class Broken:
        def alpha_beta(self, level):
            return (float("nan"), 1.0)

    with pytest.raises(ValueError, match="alpha_beta\\('intra'\\) = \\(nan, 1.0\\) gave nan"):
        cost.costs_from_model(Broken())
    comm = MPI.COMM_SELF.Dup()
    try:
        y = np.zeros(4)
        allreduce(comm, np.ones(4), y, MPI.SUM, "auto", model=Model())
        assert y.tolist() == [1.0] * 4
    finally:
        release(comm)
        comm.Free()


def test_costs_follow_mpich_nolocal(monkeypatch):
    monkeypatch.setenv("MPIR_CVAR_NOLOCAL", "1")
    loopback = cost.default_costs().intra
    monkeypatch.delenv("MPIR_CVAR_NOLOCAL")
    assert loopback.alpha > cost.default_costs().intra.alpha


# ------------------------------------------------------------------ multi-rank
def _launch(segments: list[tuple[int, str | None]], args: list[str], timeout: float = 240) -> str:
    """One mpiexec with a segment of ``n`` ranks per entry, each with its COMMLIB_NODE_ID (or none)."""
    program = [sys.executable, "-m", "mpi4py", CASES, *args]
    apps = [App(n, program, {} if node is None else {"COMMLIB_NODE_ID": node}) for n, node in segments]
    return run_apps(apps, timeout=timeout).stdout


@pytest.mark.mpi
@pytest.mark.parametrize("nprocs", [1, 2, 3, 4, 5])
def test_every_algorithm_op_and_dtype_on_one_node(nprocs):
    out = _launch([(nprocs, None)], [])
    assert f"OK allreduce on {nprocs} ranks" in out and f"nodes [{nprocs}]" in out


@pytest.mark.mpi
@pytest.mark.parametrize("nodes", [(1, 2), (2, 3), (3, 1, 1), (2, 2)])
def test_every_algorithm_on_uneven_and_even_nodes(nodes):
    out = _launch([(n, str(k)) for k, n in enumerate(nodes)], [])
    assert f"OK allreduce on {sum(nodes)} ranks" in out and f"nodes {list(nodes)} by env" in out


@pytest.mark.mpi
def test_same_bits_run_after_run():
    args = ["--quick", "--algorithms", "star", "ring", "hierarchical-root", "hierarchical-shard"]
    first, second = (_launch([(2, "0"), (2, "1")], args) for _ in range(2))
    digest = [line.split("results ")[1] for line in (first, second) if "OK allreduce" in line]
    assert len(digest) == 2 and digest[0] == digest[1]


@pytest.mark.mpi
def test_interleaved_nodes():
    out = _launch([(5, None)], ["--node-id-mod", "2"])
    assert "OK allreduce on 5 ranks" in out and "nodes [3, 2] by env" in out


@pytest.mark.mpi
def test_some_ranks_with_a_node_id_is_an_error_on_every_rank():
    from commlib.mpirun import MPIRunError

    with pytest.raises(MPIRunError, match="COMMLIB_NODE_ID is set on ranks \\[0\\] but not on the other 1"):
        _launch([(1, "0"), (1, None)], ["--algorithms", "hierarchical"], timeout=60)


@pytest.mark.mpi
@pytest.mark.emulated
def test_every_algorithm_on_emulated_nodes():
    from commlib.cluster import EmulatedCluster, cluster_available

    ok, why = cluster_available()
    if not ok:
        pytest.skip(why)
    with EmulatedCluster(nodes=2, rate="1gbit") as cl:
        out = cl.mpirun([2, 1], [CASES, "--quick"], timeout=240).stdout
    assert "OK allreduce on 3 ranks" in out and "nodes [2, 1] by env" in out


@pytest.mark.mpi
def test_benchmark_quick_smoke(tmp_path):
    from commlib.bench.allreduce import main

    out = tmp_path / "allreduce.json"
    argv = ["--configs", "1node", "--ranks", "2", "--sizes", "8", "65536", "--rounds", "1", "--json", str(out)]
    assert main(argv) == 0
    rows = json.loads(out.read_text())["results"]["1node"]["rows"]
    assert [r["bytes"] for r in rows] == [8, 65536] and not any(e for r in rows for e in r["errors"].values())
    assert set(rows[0]["median_s"]) == {
        "native",
        "ring",
        "star",
        "star-arrival",
        "hierarchical",
        "hierarchical-root",
        "hierarchical-shard",
        "hierarchical-levels",
        "auto",
    }


@pytest.mark.mpi
def test_benchmark_noise_control(tmp_path, capsys):
    from commlib.bench.allreduce import main

    out = tmp_path / "allreduce.json"
    argv = ["--configs", "1node", "--ranks", "2", "--sizes", "8", "--rounds", "2", "--algorithms", "mpi-again"]
    assert main([*argv, "auto", "--json", str(out)]) == 0
    row = json.loads(out.read_text())["results"]["1node"]["rows"][0]
    assert set(row["median_s"]) == {"native", "mpi-again", "auto"} and not row["errors"]["mpi-again"]
    assert all(t > 0 for t in row["samples_s"]["mpi-again"]) and len(row["samples_s"]["mpi-again"]) == 2
    assert "1node: noise floor: MPI against itself differs by up to" in capsys.readouterr().out


def test_every_algorithm_is_named_once_and_has_a_runner_and_a_prediction():
    from collectives import allreduce_algorithms as names
    from collectives import allreduce_cost
    from collectives.allreduce import _HIERARCHICAL
    from collectives.allreduce_flat import FLAT
    from collectives.settings import ALLREDUCE_ALGORITHMS
    from commlib.bench.allreduce import ALGORITHMS as BENCHMARKED

    runners = {*FLAT, *_HIERARCHICAL}
    assert runners == set(allreduce_cost.ALGORITHMS) == set(names.FLAT + names.HIERARCHICAL)
    assert set(ALGORITHMS) == set(ALLREDUCE_ALGORITHMS) == runners | set(names.CHOOSERS)
    assert len(ALGORITHMS) == len(set(ALGORITHMS)) and set(ALGORITHMS) <= set(BENCHMARKED)
