"""The self-check of MPI's reductions: what it finds, how ranks agree, and the allreduce it protects."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from collectives import reduction_check as rc
from collectives.allreduce import allreduce, plan
from collectives.bufspec import datatype_of
from collectives.reduction import reducible_pairs
from commlib.mpirun import run

HERE = Path(__file__).parent / "mpi"
CASES = str(HERE / "reduction_check_cases.py")
WARNING = "pairs wrongly, so commlib's allreduce reduces them itself"


@pytest.fixture
def fresh_probe():
    """Run local_faults anew in the test, and give the process back the verdict it had."""
    saved = rc._local
    yield
    rc._local = saved


def _mpi_wraps_int8_sum() -> bool:
    x = np.full(64, 100, np.int8)
    acc = x.copy()
    MPI.SUM.Reduce_local([x, MPI.INT8_T], [acc, MPI.INT8_T])
    return bool((acc == np.int8(-56)).all())


def _mpi_keeps_nan_in_max() -> bool:
    x = np.array([np.nan, 1.0] * 32)
    acc = np.array([1.0, np.nan] * 32)
    MPI.MAX.Reduce_local([x, MPI.DOUBLE], [acc, MPI.DOUBLE])
    return bool(np.isnan(acc).all())


def test_probe_flags_exactly_what_this_mpi_gets_wrong():
    faults = rc.local_faults()
    assert (("SUM", "MPI_INT8_T") in faults) == (not _mpi_wraps_int8_sum())
    assert (("MAX", "MPI_DOUBLE") in faults) == (not _mpi_keeps_nan_in_max())
    if ("MAX", "MPI_DOUBLE") in faults:
        assert faults[("MAX", "MPI_DOUBLE")] == "nan"
    # what every MPI reduces exactly on these probes
    for pair in [("SUM", "MPI_INT64_T"), ("BXOR", "MPI_UINT32_T"), ("LAND", "MPI_INT"), ("PROD", "MPI_DOUBLE")]:
        assert pair not in faults, faults


def test_injected_faults_are_found_with_their_kind_and_nothing_else(fresh_probe):
    def faulty(op, x, acc, datatype):
        op.Reduce_local([x, datatype], [acc, datatype])
        if op == MPI.SUM and datatype == MPI.INT8_T:
            np.clip(acc.astype(np.int16) + x, -128, 127, out=acc, casting="unsafe")  # Open MPI's op/avx
        if op == MPI.MAX and datatype == MPI.FLOAT:
            np.fmax(acc, x, out=acc)  # a NaN operand is dropped

    found = rc.local_faults(reduce_local=faulty)
    exact = rc.local_faults(reduce_local=rc._reduce_local)  # the same MPI, unmodified
    assert found[("SUM", "MPI_INT8_T")] == "wrap" and found[("MAX", "MPI_FLOAT")] == "nan"
    assert set(found) == set(exact) | {("SUM", "MPI_INT8_T"), ("MAX", "MPI_FLOAT")}


def test_every_pair_commlib_reduces_is_probed(fresh_probe):
    probed = set()

    def recording(op, x, acc, datatype):
        probed.add((op.handle, datatype.handle))
        op.Reduce_local([x, datatype], [acc, datatype])

    rc.local_faults(reduce_local=recording)
    pairs = {(op.handle, dt.handle) for _, op, dt, _ in reducible_pairs()}
    assert probed == pairs and len(pairs) > 200


def test_the_warning_names_the_mpi_the_pairs_and_the_fix():
    int8 = datatype_of(np.dtype(np.int8))  # what mpi4py sends int8 arrays as
    faults = [("MAX", "MPI_DOUBLE", "nan"), ("SUM", "MPI_INT8_T", "wrap"), ("SUM", int8.Get_name(), "wrap")]
    verdict = rc._verdict(faults)
    text = rc.describe(verdict, "Open MPI v5.0.11")
    assert text.startswith("Open MPI v5.0.11 reduces some (operation, datatype) pairs wrongly")
    assert "MPI_SUM on MPI_INT8_T" in text and "OMPI_MCA_op=^avx" in text and "COMMLIB_REDUCTION_CHECK=0" in text
    assert "MPI_MAX" not in text  # a dropped NaN is mended with MPI's own algorithm: nothing to warn of
    assert verdict.nan_only == {(MPI.MAX.handle, MPI.DOUBLE.handle)}
    assert "OMPI_MCA_op" not in rc.describe(verdict, "MPICH 5.0.2")
    assert {(MPI.SUM.handle, np.dtype(np.int8).char), (MPI.MAX.handle, np.dtype(np.float64).char)} <= verdict.by_code
    assert {(MPI.MAX.handle, MPI.DOUBLE.handle), (MPI.SUM.handle, MPI.INT8_T.handle)} <= verdict.by_handle
    assert (MPI.SUM.handle, np.dtype(np.int16).char) not in verdict.by_code


def test_the_mpi_is_named():
    name = rc.mpi_library()
    assert name.split()[0] in ("MPICH", "Open") and "\n" not in name


def test_one_rank_agrees_on_nothing_without_communicating():
    comm = MPI.COMM_SELF.Dup()
    try:
        assert rc.agreed(comm) is None
        assert rc.agree(comm) is rc.NONE and rc.agreed(comm) is rc.NONE
        x = np.full(8, 100, np.int8)
        out = np.empty_like(x)
        allreduce(comm, x, out, MPI.SUM, "native")  # one rank: a copy, whatever the MPI
        assert (out == x).all()
        assert plan(comm, 8, "native", op=MPI.SUM, datatype=np.int8) == ("native", "native", 1)
    finally:
        handle = comm.handle
        comm.Free()
    assert handle not in rc._by_handle and handle not in rc.codes_by_handle  # the verdict dies with the communicator


@pytest.mark.mpi
@pytest.mark.parametrize("runner", ["mpi4py", "commlib"])
@pytest.mark.parametrize("nprocs", [1, 2, 3, 4])
def test_results_equal_numpys_exact_ones_direct_and_interposed(runner, nprocs):
    result = run(nprocs, [sys.executable, "-m", runner, CASES], python=False, timeout=180)
    kind = "interposed" if runner == "commlib" else "direct"
    assert f"OK reduction check on {nprocs} ranks ({kind})" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if WARNING in line]
    real = any(not rc.nan_only((op, dt, kind)) for (op, dt), kind in rc.local_faults().items())
    assert len(warnings) == (1 if nprocs > 1 and real else 0), result.stderr  # none for NaN MAX/MIN alone


@pytest.mark.mpi
@pytest.mark.parametrize("runner", ["mpi4py", "commlib"])
def test_a_fault_seen_by_one_rank_reroutes_every_rank(runner):
    result = run(3, [sys.executable, "-m", runner, CASES, "--inject", "2"], python=False, timeout=180)
    assert "OK reduction check on 3 ranks" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if WARNING in line]
    assert len(warnings) == 1 and f"MPI_SUM on {datatype_of(np.dtype(np.int32)).Get_name()}" in warnings[0]


@pytest.mark.mpi
def test_check_off_trusts_mpi():
    env = {"COMMLIB_REDUCTION_CHECK": "0"}
    result = run(3, [CASES, "--algorithms", "native"], env=env, timeout=180)
    assert "OK reduction check on 3 ranks (direct)" in result.stdout and WARNING not in result.stderr
