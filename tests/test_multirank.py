"""Multi-rank tests, each launched under a bounded mpiexec."""

import sys
from pathlib import Path

import pytest

from commlib.mpirun import App, MPIRunError, run_apps

HERE = Path(__file__).parent / "mpi"

pytestmark = pytest.mark.mpi


@pytest.mark.parametrize("nprocs", [1, 2, 3, 4])
def test_packed_bytes_interoperate_with_derived_type_messages(mpirun, nprocs):
    result = mpirun(nprocs, [str(HERE / "pack_exchange.py")], timeout=120)
    assert f"OK on {nprocs} ranks" in result.stdout


def test_harness_kills_a_hung_job(mpirun, tmp_path):
    script = tmp_path / "hang.py"
    script.write_text("from mpi4py import MPI\nif MPI.COMM_WORLD.rank == 1:\n    MPI.COMM_WORLD.recv(source=0)\n")
    with pytest.raises(MPIRunError, match="did not finish within 10 s"):
        mpirun(2, [str(script)], timeout=10)


def test_harness_reports_a_failing_rank(mpirun, tmp_path):
    script = tmp_path / "fail.py"
    script.write_text(
        "from mpi4py import MPI\n"
        "if MPI.COMM_WORLD.rank == 2:\n"
        "    raise RuntimeError('rank two broke')\n"
        "MPI.COMM_WORLD.Barrier()\n"
    )
    with pytest.raises(MPIRunError, match="exited with code") as err:
        mpirun(3, [str(script)], timeout=60)
    assert "rank two broke" in str(err.value)


@pytest.mark.parametrize("nprocs", [1, 2, 3, 4])
@pytest.mark.parametrize("engine", ["auto", "strided", "mpi"])  # mpi: every message native, as a rebuilt type
def test_interposed_point_to_point_matches_mpi4py(mpirun, nprocs, engine):
    script = str(HERE / "interposer_p2p.py")
    command = [sys.executable, "-m", "commlib", script]
    result = mpirun(nprocs, command, python=False, env={"COMMLIB_PACK": engine}, timeout=180)
    assert f"OK on {nprocs} ranks (interposed" in result.stdout


@pytest.mark.parametrize("nprocs", [1, 2, 3, 4])
def test_interposed_collectives_match_mpi4py(mpirun, nprocs):
    script = str(HERE / "interposer_collectives.py")
    command = [sys.executable, "-m", "commlib", script]
    result = mpirun(nprocs, command, python=False, env={"COMMLIB_PACK": "strided"}, timeout=180)
    assert f"OK on {nprocs} ranks (interposed" in result.stdout


@pytest.mark.parametrize("nprocs", [1, 2, 3])
def test_interposed_point_to_point_splits_large_messages(mpirun, nprocs):
    command = [sys.executable, "-m", "commlib", str(HERE / "interposer_split.py")]
    env = {"COMMLIB_SPLIT": "1", "COMMLIB_SPLIT_MIN_BYTES": "65536"}
    result = mpirun(nprocs, command, python=False, env=env, timeout=180)
    assert f"OK on {nprocs} ranks" in result.stdout


@pytest.mark.parametrize("algorithm", ["ring", "star", "hierarchical-shard"])
def test_interposed_allreduce_runs_commlib_algorithms(algorithm):
    program = [sys.executable, "-m", "commlib", str(HERE / "interposer_allreduce.py"), algorithm]
    # uneven emulated nodes, by COMMLIB_NODE_ID
    apps = [App(2, program, {"COMMLIB_NODE_ID": "0"}), App(1, program, {"COMMLIB_NODE_ID": "1"})]
    setting = "hierarchical" if algorithm.startswith("hierarchical") else algorithm
    result = run_apps(apps, env={"COMMLIB_ALLREDUCE": setting}, timeout=180)
    assert f"OK on 3 ranks ({algorithm})" in result.stdout


@pytest.mark.parametrize("script", ["interposer_p2p.py", "interposer_collectives.py"])
def test_mixed_interposed_and_plain_peers(script):
    path = str(HERE / script)
    plain = [sys.executable, "-m", "mpi4py", path]
    ours = [sys.executable, "-m", "commlib", path]
    result = run_apps([App(1, ours), App(1, plain), App(1, ours)], env={"COMMLIB_PACK": "strided"}, timeout=180)
    assert "OK on 3 ranks (interposed rank 0)" in result.stdout


@pytest.mark.parametrize("nprocs", [1, 3, 4])
@pytest.mark.parametrize("runner", ["mpi4py", "commlib"])
def test_halo3d_example_runs_unchanged(mpirun, nprocs, runner):
    app = str(Path(__file__).parent.parent / "examples" / "halo3d.py")
    command = [sys.executable, "-m", runner, app, "--n", "8", "--iters", "2"]
    result = mpirun(nprocs, command, python=False, env={"COMMLIB_PACK": "strided"}, timeout=180)
    assert f"halo3d [{runner}]: {nprocs} ranks" in result.stdout and "halos OK" in result.stdout
