"""The cost model: tables, analytic defaults, strategy choice, online refinement, the session's use of it."""

import json
import math

import numpy as np
import pytest
from mpi4py import MPI

import datatypes
from commlib import calibration
from commlib.config import config
from commlib.interposer.comm import wrap
from commlib.interposer.decision import PACK_MARGIN
from commlib.interposer.session import RECORD_SCHEMA, Session
from datatypes import model as cm
from datatypes.cost_table import Table
from datatypes.refinement import Refinement


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No test reads or writes the user's cache; the process model is reloaded before and after."""
    monkeypatch.setenv("COMMLIB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("COMMLIB_MODEL", "analytic")
    for name in ("COMMLIB_PACK", "COMMLIB_PACK_MIN_BYTES", "COMMLIB_PACK_MIN_BLOCK", "COMMLIB_RECORD"):
        monkeypatch.delenv(name, raising=False)
    config.reload()
    cm.set_current(None)
    yield
    monkeypatch.undo()
    config.reload()
    cm.set_current(None)


NBYTES, BLOCKS = (1 << 10, 1 << 15, 1 << 20), (1, 8, 64, 512)


def copy_cost(n: float, b: float) -> float:
    """Fixed + per byte + per block: the cost structure of a strided copy."""
    return 2e-6 + 0.1e-9 * n + 10e-9 * n / b


def power_law(n: float, b: float) -> float:
    return 1e-9 * n**0.9 / b**0.5


def grid(cost, interpolation: str) -> Table:
    return Table(NBYTES, BLOCKS, [[cost(n, b) for b in BLOCKS] for n in NBYTES], interpolation=interpolation)


# -- tables -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("interpolation, cost", [("affine", copy_cost), ("log", power_law)])
def test_tables_are_exact_on_the_grid_and_for_their_cost_shape_between(interpolation, cost):
    table = grid(cost, interpolation)
    for n, b, t in table.points():
        assert table(n, b) == pytest.approx(t, rel=1e-12)
    for n, b in [(3000, 20), (100_000, 300), (1 << 12, 8), (5793, 3)]:
        assert table(n, b) == pytest.approx(cost(n, b), rel=1e-9)


def test_log_interpolation_errs_on_copy_costs_between_distant_grid_points():
    errors = [abs(grid(copy_cost, "log")(n, 64) / copy_cost(n, 64) - 1) for n in (5793, 185_364)]
    assert max(errors) > 0.15  # why affine is the default


def test_table_clamps_blocks_and_bounds_the_extrapolation():
    for interpolation in ("affine", "log"):
        table = grid(copy_cost, interpolation)
        assert table(1 << 14, 1) == table(1 << 14, 0)  # below the smallest block: clamped
        assert table(1 << 14, 1 << 20) == table(1 << 14, 512)
    affine = grid(copy_cost, "affine")
    assert affine(1 << 24, 64) == pytest.approx(copy_cost(1 << 24, 64))  # the last segment's slope continues
    assert affine(100, 64) == pytest.approx(copy_cost(100, 64))  # and the first one's below
    steep = Table([1000, 2000], [1], [[1e-6], [1e-4]])  # extrapolated toward 0: never below proportional
    assert steep(10, 1) == pytest.approx(1e-8) and steep(0, 1) > 0
    down = Table([1, 2], [1], [[2e-6], [1e-6]], interpolation="log")  # negative slope: clamped to 0
    assert down(1 << 20, 1) == pytest.approx(1e-6) and down(0, 1) == pytest.approx(2e-6)
    assert Table([1, 2], [1], [[2e-6], [1e-6]])(1 << 20, 1) == pytest.approx(1e-6)
    steep_log = Table([1, 2], [1], [[1e-6], [1e-4]], interpolation="log")  # log-log slope clamped to 1
    assert steep_log(8, 1) == pytest.approx(4e-4)


def test_table_fills_unmeasured_cells_from_the_nearest_block_and_drops_empty_rows():
    table = Table([1024, 4096, 8192], [8, 64, 512], [[1e-6, 2e-6, None], [None, None, None], [4e-6, None, 8e-6]])
    assert table.nbytes == [1024, 8192]
    assert table(1024, 512) == pytest.approx(2e-6)
    assert table(8192, 64) in (pytest.approx(4e-6), pytest.approx(8e-6))
    assert len(table.points()) == 4
    assert Table.from_json(json.loads(json.dumps(table.to_json()))).points() == table.points()


@pytest.mark.parametrize(
    "nbytes, blocks, seconds, message",
    [
        ([], [1], [], "non-empty"),
        ([2, 1], [1], [[1.0], [1.0]], "increasing"),
        ([1], [0], [[1.0]], "positive integers"),
        ([1], [True], [[1.0]], "positive integers"),
        ([1, 2], [1], [[1.0]], "one row per"),
        ([1], [1, 2], [[1.0]], "must have 2 values"),
        ([1], [1], [[-1.0]], "positive finite"),
        ([1], [1], [[float("nan")]], "positive finite"),
        ([1], [1], [["1"]], "positive finite"),
        ([1], [1], [[None]], "no measured value"),
    ],
)
def test_bad_tables_are_refused(nbytes, blocks, seconds, message):
    with pytest.raises(ValueError, match=message):
        Table(nbytes, blocks, seconds)
    with pytest.raises(ValueError, match="interpolation must be one of affine, log"):
        Table([1], [1], [[1.0]], interpolation="cubic")


# -- strategies on synthetic tables -------------------------------------------------------------------


def synthetic_model(native_fixed=5e-6, native_per_byte=2e-9, engine_winner="strided") -> cm.Model:
    """native: fixed + n * per_byte; pack: fast engine + a 20 us link; MPI's engine 3x slower than strided."""
    nbytes, blocks = (1 << 8, 1 << 12, 1 << 16, 1 << 20, 1 << 24), (1, 16, 256, 4096)
    fast = Table(nbytes, blocks, [[1e-6 + n * 0.1e-9 for _ in blocks] for n in nbytes])
    slow = Table(nbytes, blocks, [[3e-6 + n * 0.3e-9 for _ in blocks] for n in nbytes])
    strided, mpi = (fast, slow) if engine_winner == "strided" else (slow, fast)
    tables = {
        "pack.strided.2": strided,
        "unpack.strided.2": strided,
        "pack.mpi.2": mpi,
        "unpack.mpi.2": mpi,
        "p2p.intra": Table(nbytes, [1], [[20e-6 + n * 0.5e-9] for n in nbytes]),
        "send.native.intra.2": Table(
            nbytes, blocks, [[native_fixed + n * native_per_byte for _ in blocks] for n in nbytes]
        ),
    }
    return cm.Model(tables, constants={"pack_overhead": 0.0, "pack_overhead_byte": 0.0})


def test_model_picks_the_fastest_strategy_on_synthetic_tables():
    model = synthetic_model()
    small, large = cm.Features(1 << 10, 16, 2), cm.Features(1 << 22, 16, 2)
    # native: 5 us + 2 ns/B; pack: 2 x (1 us + 0.1 ns/B) + 20 us + 0.5 ns/B
    assert model.choose("Send", small) == "native"
    assert model.choose("Send", large) == "pack"
    times = model.predict("Send", large)
    assert times["pack"] == pytest.approx(2 * (1e-6 + 0.1e-9 * (1 << 22)) + 20e-6 + 0.5e-9 * (1 << 22), rel=1e-9)
    assert times["native"] == pytest.approx(5e-6 + 2e-9 * (1 << 22), rel=1e-9)
    # crossover where 5 us + 2 ns/B = 22 us + 0.7 ns/B, about 13 KB
    assert model.choose("Send", cm.Features(10_000, 16, 2)) == "native"
    assert model.choose("Send", cm.Features(16_000, 16, 2)) == "pack"
    assert model.engine_for(1 << 20, 16, 2) == "strided"
    assert synthetic_model(engine_winner="mpi").engine_for(1 << 20, 16, 2) == "mpi"


def test_strided_blocks_copied_as_words_and_as_opaque_elements_have_their_own_tables():
    words = Table([1 << 10, 1 << 20], [1, 8], [[1e-6, 1e-6], [1e-3, 1e-4]])
    opaque = Table([1 << 10, 1 << 20], [3, 64], [[2e-6, 2e-6], [4e-3, 2e-4]])
    model = cm.Model({"pack.strided.2": words, "pack.strided.opaque.2": opaque})
    assert model.pack_time("strided", cm.Features(1 << 20, 4, 2)) == words(1 << 20, 4)
    assert model.pack_time("strided", cm.Features(1 << 20, 5, 2)) == opaque(1 << 20, 5)
    assert cm.Model({"pack.strided.2": words}).pack_time("strided", cm.Features(1 << 20, 5, 2)) == words(1 << 20, 5)
    assert model.unpack_time("strided", cm.Features(1 << 20, 5, 2)) == model.prior.pack("strided", 1 << 20, 5)


def test_gpu_strategies_are_never_chosen_without_measurements_and_chosen_with_them():
    model = synthetic_model()
    f = cm.Features(1 << 20, 256, 2)
    everything = tuple(cm.STRATEGIES)
    assert {s: model.predict("Send", f)[s] for s in cm.GPU_STRATEGIES} == dict.fromkeys(cm.GPU_STRATEGIES)
    assert model.choose("Send", f, everything) in cm.HOST_STRATEGIES
    nbytes, blocks = (1 << 10, 1 << 24), (1, 4096)
    tiny = Table(nbytes, blocks, [[1e-7, 1e-7], [1e-7, 1e-7]])
    device = cm.Model({**model.tables, "pack.device.2": tiny, "unpack.device.2": tiny, "p2p.device.intra": tiny})
    assert device.predict("Send", f)["DEVICE"] == pytest.approx(3e-7)
    assert device.predict("Send", f)["STAGED"] is None  # its copies were not measured
    assert device.choose("Send", f, everything) == "DEVICE"
    assert device.choose("Send", f) in cm.HOST_STRATEGIES  # host buffers: only native and pack are allowed


def test_strategies_are_extensible():
    cm.register_strategy("TEST_ZERO", lambda model, f, level: 1e-12)
    try:
        model = synthetic_model()
        assert model.choose("Send", cm.Features(1 << 16, 16, 2), ("native", "pack", "TEST_ZERO")) == "TEST_ZERO"
    finally:
        del cm.STRATEGIES["TEST_ZERO"]
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        synthetic_model().predict("Send", cm.Features(8, 8, 2), strategies=["nope"])


def test_native_at_an_unmeasured_level_swaps_the_transfer_time():
    model = synthetic_model()
    model.tables["p2p.inter"] = Table([1 << 8, 1 << 24], [1], [[100e-6], [100e-6 + 8e-9 * (1 << 24)]])
    f = cm.Features(1 << 20, 16, 2)
    expected = model.base("native", f, "intra") - model.p2p_time(f.nbytes, "intra") + model.p2p_time(f.nbytes, "inter")
    assert model.base("native", f, "inter") == pytest.approx(expected)


# -- analytic defaults --------------------------------------------------------------------------------


def test_uncalibrated_engine_choice_keeps_the_documented_thresholds():
    model = cm.Model()
    big = 1 << 24
    assert model.engine_for(big, 3, 2) == "mpi" and model.engine_for(big, 4, 2) == "strided"
    assert model.engine_for(1 << 10, 4096, 2) == "mpi"  # fixed cost dominates
    assert model.engine_for(1 << 20, 64, 2) == "strided"
    assert model.engine_for(1 << 20, 1 << 20, 1) == "strided"  # large contiguous: one copy


def test_thresholds_from_the_environment_move_the_prior(monkeypatch):
    monkeypatch.setenv("COMMLIB_PACK_MIN_BLOCK", "64")
    config.reload()
    model = cm.Model()
    assert model.engine_for(1 << 24, 32, 2) == "mpi" and model.engine_for(1 << 24, 64, 2) == "strided"


def test_alpha_beta_defaults_and_fit():
    model = cm.Model()
    for level in cm.LEVELS:
        alpha, beta = model.alpha_beta(level)
        assert alpha > 0 and beta > 0
    assert model.alpha_beta("inter")[0] > model.alpha_beta("intra")[0]
    sizes = [1, 1 << 10, 1 << 16, 1 << 22]
    fitted = cm.Model({"p2p.inter": Table(sizes, [1], [[40e-6 + n * 1e-9] for n in sizes])})
    alpha, beta = fitted.alpha_beta("inter")
    assert alpha == pytest.approx(40e-6, rel=1e-3) and beta == pytest.approx(1e-9, rel=1e-3)
    assert fitted.alpha_beta("intra") == model.alpha_beta("intra")
    assert model.reduce_beta(np.float32) == model.prior.reduce
    measured = cm.Model(reduce_beta={"float32": 1e-10, "float64": 2e-10, "int8": 5e-10})
    assert measured.reduce_beta(np.dtype("float64")) == 2e-10
    assert measured.reduce_beta("complex128") == 2e-10  # unknown dtype: the median of the measured ones


# -- online refinement --------------------------------------------------------------------------------


def test_observations_move_predictions_toward_them():
    model = synthetic_model()
    f = cm.Features(1 << 22, 16, 2)
    base = model.predict("Send", f)["pack"]
    previous = base
    for _ in range(12):
        model.observe("Send", f, "pack", 3 * base)
        now = model.predict("Send", f)["pack"]
        assert previous < now <= 3 * base * (1 + 1e-9)
        previous = now
    assert previous == pytest.approx(3 * base, rel=0.15)
    assert model.predict("Recv", f)["pack"] == base  # another operation family is not touched
    assert model.predict("Send", f)["native"] == model.base("native", f)


def test_refinement_is_robust_to_outliers_and_bounded():
    ref = Refinement(max_buckets=4, window=8, prior_weight=0.0)
    bucket = ("send", "pack", "intra", 2, 10, 3)
    for _ in range(7):
        ref.add(bucket, 0.0)
    ref.add(bucket, math.log(1e6))  # one wild sample
    assert ref.factor(bucket) == 1.0
    assert ref.samples(bucket) == 8
    for _ in range(3):
        ref.add(bucket, math.log(10.0))  # a peer kept this rank waiting in 4 of the last 8 calls
    assert ref.factor(bucket) == 1.0
    ref.add(bucket, math.log(1e-3))  # one low outlier moves the quantile by one rank only
    assert ref.factor(bucket) == 1.0
    for _ in range(100):
        ref.add(bucket, math.log(2.0))
    assert ref.samples(bucket) == 8 and ref.factor(bucket) == pytest.approx(2.0)
    for i in range(10):
        ref.add(("send", "pack", "intra", 2, 20 + i, 3), 0.1)
    assert len(ref) == 4 and ref.factor(bucket) == 1.0  # least recently used dropped
    assert Refinement(clip=math.log(4)).add(bucket, math.log(1e9)) <= 4.0


def test_learning_flips_a_wrong_choice():
    model = synthetic_model()
    f = cm.Features(1 << 22, 16, 2)
    assert model.choose("Send", f) == "pack"
    slow = 10 * model.base("native", f)
    for _ in range(8):
        model.observe("Send", f, "pack", slow)
    assert model.choose("Send", f) == "native"
    assert model.choose("Recv", f) == "pack"  # learned for sends only


def test_useless_observations_are_ignored():
    model = synthetic_model()
    f = cm.Features(1 << 20, 16, 2)
    for seconds in (0.0, -1.0, float("nan"), float("inf")):
        model.observe("Send", f, "pack", seconds)
    model.observe("Send", f, "UNKNOWN", 1.0)
    model.observe("Send", f, "DEVICE", 1.0)  # no prediction to compare with
    assert len(model.refinement) == 0


def test_refinements_are_saved_and_loaded_back(tmp_path):
    model = synthetic_model()
    f = cm.Features(1 << 20, 16, 2)
    for _ in range(5):
        model.observe("Send", f, "pack", 2 * model.base("pack", f))
    path = model.save(tmp_path / "saved.json")
    data, where = calibration.load(path)
    assert data is not None, where
    again = cm.Model.from_json(data)
    assert again.predict("Send", f)["pack"] == pytest.approx(model.predict("Send", f)["pack"])
    assert set(again.tables) == set(model.tables)
    assert "pickle" not in path.read_text() and json.loads(path.read_text())["schema"] == calibration.SCHEMA


# -- features and the process model ---------------------------------------------------------------


def test_features_of_datatypes():
    vec = MPI.DOUBLE.Create_vector(16, 2, 5).Commit()
    try:
        assert cm.features(1, vec) == cm.Features(256, 16, 2)
        assert cm.features(3, vec).levels == 3
        assert cm.features(4, MPI.DOUBLE) == cm.Features(32, 32, 1)
    finally:
        vec.Free()
    irregular = MPI.INT.Create_indexed([1, 3], [0, 10]).Commit()
    try:
        assert cm.features(1, irregular) is None
    finally:
        irregular.Free()


def test_current_model_follows_the_configuration(tmp_path, monkeypatch, capsys):
    analytic = cm.current()
    assert analytic is cm.current() and analytic.source == "analytic defaults"
    path = synthetic_model().save(tmp_path / "mine.json")
    monkeypatch.setenv("COMMLIB_MODEL", str(path))
    config.reload()
    loaded = cm.current()
    assert loaded is not analytic and "pack.strided.2" in loaded.tables and str(path) in loaded.source
    assert capsys.readouterr().err == ""


def test_packer_asks_the_model(monkeypatch):
    vec = MPI.BYTE.Create_vector(1 << 14, 64, 128).Commit()
    try:
        assert datatypes.choose_engine(1, vec) == "strided"  # analytic: 1 MiB in 64 B blocks
        cm.set_current(synthetic_model(engine_winner="mpi"), cm.process._setting)
        assert datatypes.choose_engine(1, vec) == "mpi"
        assert datatypes.choose_engine(1, vec, "strided") == "strided"  # engine= still overrides
        monkeypatch.setenv("COMMLIB_PACK", "strided")
        config.reload()
        cm.set_current(synthetic_model(engine_winner="mpi"), cm.process._setting)
        assert datatypes.choose_engine(1, vec) == "strided"  # and so does COMMLIB_PACK
    finally:
        vec.Free()


# -- the session ----------------------------------------------------------------------------------


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


def test_nonblocking_sends_are_predicted_from_the_exchange_tables_where_measured():
    model = synthetic_model()
    nbytes, blocks = (1 << 16, 1 << 20), (16, 4096)
    model.tables["xchg.native.intra.2"] = Table(nbytes, blocks, [[1e-3, 1e-3], [1e-2, 1e-2]])
    model.tables["xchg.pack.intra.2"] = Table(nbytes, blocks, [[5e-5, 5e-5], [5e-4, 5e-4]])
    small, large = cm.Features(1 << 10, 16, 2), cm.Features(1 << 20, 16, 2)
    assert cm.op_class("Isend") == "isend" and cm.op_class("Irecv") == "irecv" and cm.op_class("Send") == "send"
    assert model.predict("Isend", large, strategies=("native", "pack")) == pytest.approx({"native": 1e-2, "pack": 5e-4})
    assert model.predict("Irecv", large, strategies=("native",))["native"] == pytest.approx(1e-2)
    assert model.predict("Send", large, strategies=("native",))["native"] == model.base("native", large, "intra")
    # below the smallest measured exchange: predicted like a blocking send
    assert model.exchange_time("native", small) is None
    assert model.predict("Isend", small) == model.predict("Send", small)
    assert model.choose("Isend", small) == model.choose("Send", small) == "native"
    # the exchange tables make packing win where ping-pongs alone would not, and vice versa
    model.tables["xchg.native.intra.2"] = Table(nbytes, blocks, [[1e-5, 1e-5], [1e-4, 1e-4]])
    assert model.choose("Isend", large) == "native" and model.choose("Send", large) == "pack"
