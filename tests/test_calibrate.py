"""The calibrate command (commlib.calibrate): its shapes, a run on one rank, runs on several ranks and nodes."""

import sys
from pathlib import Path

import pytest

from commlib import calibration
from commlib.calibrate import StridedShape
from commlib.calibrate import main as calibrate
from commlib.config import config
from commlib.mpirun import App, run_apps
from datatypes import model as cm

HERE = Path(__file__).parent / "mpi"
TINY = ["--nbytes", "1024,8192", "--blocks", "8,128", "--p2p-bytes", "8,4096", "--sample-time", "0.0002", "--reps", "1"]


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """A cache directory of the test's own, the calibrated model in use, nothing left behind."""
    monkeypatch.setenv("COMMLIB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("COMMLIB_MODEL", "auto")
    config.reload()
    cm.set_current(None)
    cm.process._warned.clear()
    yield
    monkeypatch.undo()
    config.reload()
    cm.set_current(None)


def test_shapes_have_the_levels_they_claim():
    from datatypes.canonical import canonicalize

    for shape in (
        StridedShape(4096),
        StridedShape.of(8192, 8, 2),
        StridedShape.of(8192, 8, 3),
        StridedShape.of(46336, 181, 3),
    ):
        dt = shape.make()
        try:
            sb = canonicalize(dt)
            assert (sb.size, sb.block, sb.ndim) == (shape.nbytes, shape.block, shape.levels), shape
        finally:
            dt.Free()
    assert StridedShape.of(100, 8, 2) is None and StridedShape.of(16, 8, 3) is None


def test_calibrate_on_one_rank_writes_host_tables(tmp_path, capsys):
    assert calibrate([*TINY, "--no-progress"]) == 0
    out = capsys.readouterr().out
    path = calibration.path_for(calibration.current_key())
    assert f"-> {path}" in out and "not measured: point-to-point" in out
    model = cm.current()
    assert str(path) in model.source
    assert {"pack.strided.2", "unpack.mpi.3", "pack.mpi.1"} <= set(model.tables)
    assert not any(name.startswith(("p2p.", "send.")) for name in model.tables)
    for bad in (["--nbytes", "0,1"], ["--blocks", "8,4"], ["--p2p-bytes", "x"]):
        with pytest.raises(SystemExit):
            calibrate(bad)
    assert calibrate([*TINY, "--reps", "0"]) == 2


@pytest.mark.mpi
@pytest.mark.parametrize("nprocs", [2, 3])
def test_calibrate_and_accuracy_benchmark_on_several_ranks(mpirun, tmp_path, nprocs):
    result = mpirun(nprocs, [str(HERE / "model_calibration.py"), str(tmp_path)], timeout=240)
    assert f"OK calibration on {nprocs} ranks (intra 1, inter None)" in result.stdout


@pytest.mark.mpi
def test_calibrate_measures_between_nodes(mpirun, tmp_path):
    """Three ranks on two (declared) nodes: rank 1 shares rank 0's node, rank 2 does not."""
    program = [sys.executable, "-m", "mpi4py", str(HERE / "model_calibration.py"), str(tmp_path)]
    apps = [App(2, program, {"COMMLIB_NODE_ID": "0"}), App(1, program, {"COMMLIB_NODE_ID": "1"})]
    result = run_apps(apps, timeout=240)
    assert "OK calibration on 3 ranks (intra 1, inter 2)" in result.stdout
