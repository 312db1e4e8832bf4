"""The cost model (datatypes.model): strategy choice, analytic defaults, online refinement, the process model."""

import json
import math

import numpy as np
import pytest
from model_fixtures import (
    isolated,  # noqa: F401  (fixture)
    synthetic_model,
)
from mpi4py import MPI

import datatypes
from commlib import calibration
from commlib.config import config
from datatypes import model as cm
from datatypes.cost_table import Table
from datatypes.refinement import Refinement


@pytest.fixture(autouse=True)
def _isolated(isolated):  # noqa: F811
    yield


# -- strategies on synthetic tables -------------------------------------------------------------------


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
