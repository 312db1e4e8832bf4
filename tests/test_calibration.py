"""The calibration file (location, key, validation, fallbacks) and the explain command."""

import json
import pickle
import time
from pathlib import Path

import pytest

from commlib import calibration
from commlib.config import config
from commlib.explain import SpecError, parse_spec
from commlib.explain import main as explain
from datatypes import model as cm
from datatypes.cost_table import Table


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("COMMLIB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("COMMLIB_MODEL", "auto")
    config.reload()
    cm.set_current(None)
    cm.process._warned.clear()
    yield
    monkeypatch.undo()
    config.reload()
    cm.set_current(None)


def a_calibration(**changes) -> dict:
    doc = calibration.new_file(calibration.current_key())
    doc["tables"] = {"pack.strided.2": Table([1024, 4096], [8], [[1e-6], [2e-6]]).to_json()}
    doc.update(changes)
    return doc


# -- location and key -----------------------------------------------------------------------------


def test_cache_directory_precedence(monkeypatch, tmp_path):
    assert calibration.cache_dir() == tmp_path / "cache"
    monkeypatch.setenv("COMMLIB_CACHE_DIR", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    config.reload()
    assert calibration.cache_dir() == tmp_path / "xdg" / "commlib"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert calibration.cache_dir() == tmp_path / "home" / ".cache" / "commlib"


def test_key_names_host_mpi_and_launch_shape():
    key = calibration.current_key()
    assert key.host and "MPI" in key.mpi_library.upper() and key.world_size == 1
    other = calibration.current_key(world_size=4)
    assert calibration.path_for(key) != calibration.path_for(other)
    assert calibration.path_for(key).parent == calibration.cache_dir()
    assert calibration.CalibrationKey.from_json(key.to_json()) == key


def test_find_prefers_the_exact_launch_shape_then_the_nearest():
    key = calibration.current_key()
    assert calibration.find(key) is None
    four = calibration.save(a_calibration(), calibration.path_for(calibration.current_key(4)))
    assert calibration.find(key) == four
    two = calibration.save(a_calibration(), calibration.path_for(calibration.current_key(2)))
    assert calibration.find(key) == two
    exact = calibration.save(a_calibration(), calibration.path_for(key))
    assert calibration.find(key) == exact


# -- validation and fallbacks ----------------------------------------------------------------------


def write(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.mark.parametrize(
    "content, reason",
    [
        ("{not json", "corrupt"),
        (b"\x80\x04\x95", "cannot be read"),  # a pickle: never unpickled
        ([1, 2], "not a commlib calibration file"),
        ({"schema": "something else"}, "not a commlib calibration file"),
        ("stale-version", "stale: schema version 0"),
        ("stale-age", "stale: 400 days old"),
        ("foreign", "foreign: measured on elsewhere"),
        ("no-key", "corrupt: 'key'"),
        ("bad-section", "corrupt: 'tables' is not an object"),
    ],
)
def test_bad_files_give_one_line_and_analytic_defaults(tmp_path, capsys, content, reason):
    doc = a_calibration()
    if content == "stale-version":
        content = {**doc, "version": 0}
    elif content == "stale-age":
        content = {**doc, "created": time.time() - 400 * 86400}
    elif content == "foreign":
        content = {**doc, "key": {**doc["key"], "host": "elsewhere"}}
    elif content == "no-key":
        content = {**doc, "key": {"host": "x"}}
    elif content == "bad-section":
        content = {**doc, "tables": [1]}
    path = write(calibration.path_for(calibration.current_key()), content)
    data, why = calibration.load()
    assert data is None and reason in why and str(path) in why
    model = cm.current()
    assert model.source == "analytic defaults"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and reason in err and "using analytic defaults" in err
    cm.set_current(None)
    cm.current()
    assert capsys.readouterr().err == ""  # said once per process


def test_no_calibration_yet_is_silent_and_said_in_the_description(monkeypatch, capsys):
    model = cm.current()
    assert model.source == "analytic defaults" and capsys.readouterr().err == ""
    assert "no calibration for " in model.describe() and "python -m commlib calibrate" in model.describe()
    monkeypatch.setenv("COMMLIB_MODEL", "/nonexistent/calibration.json")  # a file named but missing: a warning
    config.reload()
    cm.process._warned.clear()
    assert cm.current().source == "analytic defaults"
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.setenv("COMMLIB_MODEL", "analytic")
    config.reload()
    cm.process._warned.clear()
    assert cm.current().source == "analytic defaults" and capsys.readouterr().err == ""


def test_bad_tables_inside_a_valid_file_fall_back(capsys):
    doc = a_calibration()
    doc["tables"]["pack.mpi.2"] = {"nbytes": [1, 2], "blocks": [1], "seconds": [[1e-6], [-5]]}
    write(calibration.path_for(calibration.current_key()), doc)
    assert cm.current().source == "analytic defaults"
    assert "table 'pack.mpi.2'" in capsys.readouterr().err


def test_a_valid_file_is_used_and_a_pickle_is_never_loaded(tmp_path, monkeypatch, capsys):
    path = calibration.save(a_calibration(), calibration.path_for(calibration.current_key()))
    model = cm.current()
    assert str(path) in model.source and "pack.strided.2" in model.tables
    assert capsys.readouterr().err == ""
    trap = tmp_path / "trap.pkl"
    trap.write_bytes(pickle.dumps({"schema": calibration.SCHEMA}))
    monkeypatch.setenv("COMMLIB_MODEL", str(trap))
    config.reload()
    assert cm.current().source == "analytic defaults"
    assert str(trap) in capsys.readouterr().err


def test_saving_is_atomic_json(tmp_path):
    path = calibration.save(a_calibration(), tmp_path / "deep" / "c.json")
    assert json.loads(path.read_text())["schema"] == calibration.SCHEMA
    assert [p.name for p in path.parent.iterdir()] == ["c.json"]
    with pytest.raises(ValueError):
        calibration.save({"x": float("nan")}, tmp_path / "nan.json")


# -- explain --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        "MPI.DOUBLE.Create_vector(512, 4, 512)",
        "MPI.INT.Create_subarray([8, 8, 8], [4, 4, 4], [1, 1, 1], order=MPI.ORDER_FORTRAN)",
        "MPI.BYTE.Create_hvector(3, 2, -16).Create_resized(0, 64)",
        "MPI.FLOAT.Create_struct([1, 2], [0, 8], [MPI.FLOAT, MPI.FLOAT])",
    ],
)
def test_specs_parse_to_committed_datatypes(spec):
    dt = parse_spec(spec)
    try:
        assert dt.Get_size() > 0
    finally:
        dt.Free()


@pytest.mark.parametrize(
    "spec, message",
    [
        ("__import__('os').system('true')", "system is not a datatype constructor"),
        ("__import__('os')", "cannot read"),
        ("MPI.DOUBLE.__class__", "cannot read"),
        ("MPI.COMM_WORLD.Free()", "not a datatype constructor"),
        ("MPI.DOUBLE.Free()", "not a datatype constructor"),
        ("MPI.Datatype", "not a predefined datatype"),
        ("MPI.DOUBLE.Create_vector(2, 1, x)", "cannot read"),
        ("MPI.DOUBLE.Create_vector(2, 1, 1.5)", "cannot read"),
        ("MPI.DOUBLE.Create_vector(-2, 1, 1)", "Create_vector"),
        ("MPI.DOUBLE.Create_vector(2, 1, 1", "not an expression"),
        ("MPI.DOUBLE.Create_vector(*[2, 1, 1])", "cannot read"),
    ],
)
def test_bad_specs_are_refused_without_evaluation(spec, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(spec)


def test_explain_prints_canonical_form_predictions_and_choice(capsys):
    assert explain(["MPI.DOUBLE.Create_vector(512, 4, 512)", "--count", "2", "--model", "analytic"]) == 0
    out = capsys.readouterr().out
    assert "canonical form: StridedBlock(" in out and "2 objects:" in out
    assert "features: 32768 packed bytes, blocks of 32 B, 3 level(s)" in out
    for name in ("strided", "mpi", "native", "pack", "DEVICE", "ONESHOT", "STAGED"):
        assert f"  {name} " in out
    assert out.count("<- chosen") == 2 and "never chosen unmeasured" in out
    assert explain(["MPI.INT.Create_indexed([1, 3], [0, 10])", "--model", "analytic"]) == 0
    assert "canonical form: none" in capsys.readouterr().out
    assert explain(["MPI.DOUBLE.Frobnicate(1)"]) == 2
    assert "not a datatype constructor" in capsys.readouterr().err


def test_explain_refuses_bad_recorded_runs(tmp_path, capsys):
    bad = write(tmp_path / "run.json", {"schema": "commlib-recorded-run", "shapes": [{"op": "Send"}]})
    assert explain([str(bad), "--model", "analytic"]) == 2
    assert "malformed shape entry" in capsys.readouterr().err
    assert explain([str(write(tmp_path / "x.json", "{"))]) == 2


def test_explain_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    model_path = calibration.save(a_calibration(), tmp_path / "m.json")
    png = tmp_path / "plot.png"
    assert explain(["MPI.BYTE.Create_vector(256, 8, 16)", "--model", str(model_path), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
