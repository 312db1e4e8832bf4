"""An interposer session with the cost model: deciding, learning, recording and saving what it saw."""

import json

import numpy as np
import pytest
from model_fixtures import (
    isolated,  # noqa: F401  (fixture)
    synthetic_model,
)
from mpi4py import MPI

from commlib import calibration
from commlib.config import config
from commlib.interposer.comm import wrap
from commlib.interposer.decision import PACK_MARGIN
from commlib.interposer.session import RECORD_SCHEMA, Session
from datatypes import model as cm


@pytest.fixture(autouse=True)
def _isolated(isolated):  # noqa: F811
    yield


@pytest.fixture
def vec():
    dt = MPI.DOUBLE.Create_vector(2048, 8, 16).Commit()  # 128 KiB in 64-byte blocks
    yield dt
    dt.Free()


def test_session_decides_with_its_model_and_learns(vec):
    model = synthetic_model()
    session = Session(model=model)
    comm = wrap(MPI.COMM_SELF, session)
    src, dst = np.arange(2048 * 16.0), np.zeros(2048 * 16)
    comm.Sendrecv([src, 1, vec], 0, 0, [dst, 1, vec], 0, 0)
    assert np.array_equal(dst.reshape(-1, 16)[:, :8], src.reshape(-1, 16)[:, :8])
    f = cm.features(1, vec)
    assert f == cm.Features(1 << 17, 64, 2)
    choice = model.choose("Sendrecv", f)
    assert f"Sendrecv: {choice} 2 calls" in session.report()
    assert session.report().splitlines()[-1].startswith("cost model:")
    message = type("M", (), {"count": 1, "datatype": vec})()
    before = model.predict("Send", f)[choice]
    session.observe("Send", message, choice, 5 * before)
    assert model.predict("Send", f)[choice] > before
    assert session.seconds["Send", choice] == 5 * before


def test_default_session_uses_the_process_model_and_pack_override(vec, monkeypatch):
    session = Session()
    message = type("M", (), {"count": 1, "datatype": vec})()
    assert session.model is cm.current()
    predicted = cm.current().predict("Send", cm.features(1, vec), None, ("native", "pack"))
    clearly = predicted["pack"] * PACK_MARGIN <= predicted["native"]  # packed only where clearly faster
    assert session.decide("Send", message) == ("pack" if clearly else "native")
    for engine, choice in (("strided", "pack"), ("mpi", "native")):
        monkeypatch.setenv("COMMLIB_PACK", engine)
        config.reload()
        assert session.decide("Send", message) == choice
    custom = Session(lambda op, m: "native")
    assert custom.decide("Send", message) == "native" and custom.report().startswith("no operation")


def test_recorded_run_round_trips_through_explain(vec, tmp_path, capsys):
    from commlib.explain import main as explain

    session = Session(lambda op, m: "pack" if op == "Send" else "native", model=synthetic_model())
    message = type("M", (), {"count": 2, "datatype": vec})()
    for _ in range(3):
        session.observe("Send", message, session.decide("Send", message), 1e-4)
    session.decide("Irecv", message)  # nonblocking: decided, not timed
    session.observe("Recv", message, "native", 2e-4)
    path = session.save_run(tmp_path / "run-{rank}.json")
    assert path.name == "run-0.json"
    data = json.loads(path.read_text())
    assert data["schema"] == RECORD_SCHEMA and len(data["shapes"]) == 3
    send = next(s for s in data["shapes"] if s["op"] == "Send")
    assert send["calls"] == send["timed"] == 3 and send["nbytes"] == 2 << 17 and send["levels"] == 3
    irecv = next(s for s in data["shapes"] if s["op"] == "Irecv")
    assert (irecv["calls"], irecv["timed"], irecv["choice"]) == (1, 0, "native")
    assert send["canonical"]["counts"] == [64, 2048]
    assert explain([str(path), "--model", "analytic"]) == 0
    out = capsys.readouterr().out
    assert "Send x 3, count 2, chose pack, observed 100.00 us (3 timed)" in out and "<- chosen" in out
    assert "Irecv x 1, count 2, chose native, not timed (nonblocking)" in out


def test_at_exit_a_session_saves_its_run_and_what_the_model_learned(vec, tmp_path, monkeypatch):
    import atexit

    monkeypatch.setenv("COMMLIB_RECORD", str(tmp_path / "run-{rank}.json"))
    monkeypatch.setenv("COMMLIB_MODEL_SAVE", "1")
    config.reload()
    session = Session(model=synthetic_model())
    atexit.unregister(session._at_exit)  # called by hand here
    session._at_exit()
    assert not list(tmp_path.glob("run-*.json"))  # a session that saw nothing writes nothing
    message = type("M", (), {"count": 1, "datatype": vec})()
    session.observe("Send", message, "pack", 1e-3)
    session._at_exit()
    assert json.loads((tmp_path / "run-0.json").read_text())["shapes"][0]["timed"] == 1
    data, where = calibration.load()
    assert data is not None, where
    assert len(data["refinement"]["buckets"]) == 1 and "pack.strided.2" in data["tables"]
