"""Attacks through files: crafted calibrations that crash the cost model, and planted symlinks or loose
modes where commlib writes calibrations, recorded runs, monitor dumps and reports."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from commlib import calibration
from commlib.interposer.session import Session
from commlib.mpirun import run
from datatypes import model as cost_model
from transport.monitor import Monitor
from transport.reports import Reporter

SCRIPT = Path(__file__).parent.parent / "mpi" / "security_records.py"


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _document(**sections) -> dict:
    doc = calibration.new_file(calibration.current_key())
    doc.update(sections)
    return doc


_TABLE = {"nbytes": [1024, 4096], "blocks": [1], "seconds": [[1e-6], [2e-6]]}


def _text(doc: dict, old: str, new: str) -> str:
    """``doc`` as JSON with one literal replaced (for what ``json.dumps`` cannot write)."""
    text = json.dumps(doc)
    assert old in text
    return text.replace(old, new)


CRAFTED = {
    "a 5000-digit integer": _text(_document(tables={"p2p.intra": _TABLE}), "4096", "1" + "0" * 5000),
    "1e999 (infinity)": _text(_document(alpha_beta={"intra": [0.5, 0.5]}), "[0.5, 0.5]", "[1e999, 1e-9]"),
    "10**400 bytes": json.dumps(_document(tables={"p2p.intra": {**_TABLE, "nbytes": [1024, 10**400]}})),
    "a world size of 1e999": _text(_document(), '"world_size": 1', '"world_size": 1e999'),
    "a string for an integer": json.dumps(_document(launch={"nodes": "2", "size": 2})),
    "times of 1e-200": json.dumps(_document(tables={"p2p.intra": {**_TABLE, "seconds": [[1e-200], [2e-200]]}})),
    "times of 1e-160 (a NaN alpha)": json.dumps(
        _document(tables={"p2p.intra": {**_TABLE, "seconds": [[1e-160], [2e-160]]}})
    ),
    "nested arrays": _text(_document(), '"refinement": {}', '"refinement": ' + "[" * 100_000 + "]" * 100_000),
    "a bucket with a huge integer": json.dumps(
        _document(refinement={"buckets": [["send", "pack", "intra", 10**300, 1, 1, [0.1]]]})
    ),
}


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_a_crafted_calibration_gives_a_warning_and_the_defaults(tmp_path, capsys, name):
    path = tmp_path / "calibration.json"
    path.write_text(CRAFTED[name])
    model = cost_model.load(str(path))
    assert model.source == "analytic defaults"
    alpha, beta = model.alpha_beta("intra")
    assert 0 < alpha < 1 and 0 < beta < 1
    assert "using analytic defaults" in capsys.readouterr().err


def test_a_crafted_calibration_is_loaded_once_and_never_raises(tmp_path, monkeypatch, capsys):
    path = tmp_path / "calibration.json"
    path.write_text(CRAFTED["times of 1e-200"])
    monkeypatch.setenv("COMMLIB_MODEL", str(path))
    from commlib.config import config

    config.reload()
    try:
        cost_model.set_current(None)
        first = cost_model.current()
        assert cost_model.current() is first and first.source == "analytic defaults"
        assert capsys.readouterr().err.count("corrupt") == 1
    finally:
        monkeypatch.delenv("COMMLIB_MODEL")
        monkeypatch.setenv("COMMLIB_MODEL", "analytic")
        config.reload()
        cost_model.set_current(None)


def test_saving_a_calibration_follows_no_planted_symlink(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    target = cache / "calibration.json"
    (cache / f".{target.name}.{os.getpid()}.tmp").symlink_to(victim)  # the old fixed temporary name
    target.symlink_to(victim)
    calibration.save(_document(), target)
    assert victim.read_text() == "precious"
    assert not target.is_symlink() and _mode(target) == 0o600
    assert calibration.load(target)[0] is not None


def test_a_new_calibration_directory_is_private_and_a_shared_cache_is_refused(tmp_path, monkeypatch):
    from commlib.config import config

    calibration.save(_document(), tmp_path / "new" / "dir" / "calibration.json")
    assert _mode(tmp_path / "new") == 0o700 and _mode(tmp_path / "new" / "dir") == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # anyone could swap the calibrations the model picks up by itself
    monkeypatch.setenv("COMMLIB_CACHE_DIR", str(shared))
    config.reload()
    try:
        with pytest.raises(PermissionError, match="group or others may write"):
            calibration.save(_document(), calibration.path_for(calibration.current_key()))
        assert list(shared.iterdir()) == []
    finally:
        monkeypatch.delenv("COMMLIB_CACHE_DIR")
        config.reload()


def test_a_recorded_run_replaces_a_planted_symlink_and_is_0600(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    target = tmp_path / "run.json"
    target.symlink_to(victim)
    written = Session().save_run(target)
    assert written == target and victim.read_text() == "precious"
    assert not target.is_symlink() and _mode(target) == 0o600 and json.loads(target.read_text())["rank"] == 0


@pytest.mark.mpi
@pytest.mark.parametrize("nprocs", [2, 3])
def test_ranks_never_overwrite_each_others_recorded_run(tmp_path, nprocs):
    run(nprocs, [str(SCRIPT), str(tmp_path / "run.json")], timeout=90)
    found = sorted(p.name for p in tmp_path.iterdir())
    assert found == [f"run.rank{r}.json" for r in range(nprocs)]
    assert all(json.loads((tmp_path / name).read_text())["rank"] == r for r, name in enumerate(found))
    assert all(_mode(tmp_path / name) == 0o600 for name in found)


def test_monitor_dumps_are_atomic_private_and_named_after_the_rank(tmp_path):
    report = tmp_path / "report.jsonl"
    victim = tmp_path / "victim"
    victim.write_text("precious")
    monitor = Monitor(report=str(report))
    try:
        for planted in (tmp_path / "report.jsonl.dump.json", Path(monitor.dump_path())):
            planted.unlink(missing_ok=True)
            planted.symlink_to(victim)
        line = monitor._dump_all([0])
        dump = Path(monitor.dump_path())
        assert "written to" in line and dump.name == "report.jsonl.rank0.dump.json"
        assert victim.read_text() == "precious" and not dump.is_symlink() and _mode(dump) == 0o600
        assert "0" in json.loads(dump.read_text())["ranks"]
    finally:
        monitor.stop()


def test_the_report_file_is_created_0600_and_never_through_a_symlink(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "planted.jsonl").symlink_to(victim)
    Reporter(0, str(tmp_path / "planted.jsonl")).emit({"kind": "note", "lines": ["x"]})
    assert victim.read_text() == "precious"
    fresh = tmp_path / "fresh.jsonl"
    Reporter(0, str(fresh)).emit({"kind": "note", "lines": ["x"]})
    assert _mode(fresh) == 0o600 and json.loads(fresh.read_text())["kind"] == "note"
