"""Multi-rank tests, each launched under a bounded mpiexec."""

from pathlib import Path

import pytest

from commlib.mpirun import MPIRunError

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
