"""Each package owns its settings; commlib.config composes them (datatypes/transport/collectives.settings)."""

from __future__ import annotations

import dataclasses
import importlib
import os
import subprocess
import sys

import numpy as np
import pytest
from mpi4py import MPI

from collectives.settings import CollectivesSettings
from commlib.config import PACKAGE_FIELDS, Config, config
from datatypes.settings import DatatypesSettings
from transport.settings import TransportSettings

config_module = importlib.import_module("commlib.config")  # commlib.config is also the object
OWNERS = {"datatypes": DatatypesSettings, "transport": TransportSettings, "collectives": CollectivesSettings}

# every setting commlib has documented, with its documented default
DEFAULTS = {
    "pack_engine": "auto",
    "pack_min_bytes": 16384,
    "pack_min_block": 4,
    "rebuild": True,
    "analyse_bytes": -1,
    "staging_bytes": 64 << 20,
    "interpose": True,
    "report": False,
    "cuda_aware_mpi": False,
    "moe_pack": "gather",
    "node_detect": "auto",
    "node_id": "",
    "allreduce": "auto",
    "reduction_check": True,
    "topology": "",
    "level_links": "",
    "reduce_scatter": "auto",
    "allgather": "auto",
    "model": "auto",
    "cache_dir": "",
    "model_max_age": 90,
    "model_save": False,
    "record": "",
    "views": "copy",
    "monitor": True,
    "monitor_action": "warn",
    "monitor_suspect": 10.0,
    "monitor_floor": 60.0,
    "monitor_multiple": 10.0,
    "monitor_timeout": 2.0,
    "monitor_report": "",
    "monitor_ring": 4096,
    "monitor_interval": 0.5,
    "monitor_window": 12,
    "monitor_skew": 0.01,
    "monitor_probe": 0.0,
    "monitor_dir": "",
    "monitor_address": "",
    "monitor_bootstrap": "auto",
    "monitor_job": "",
    "split": False,
    "split_channels": 2,
    "split_min_bytes": 1 << 20,
}


@pytest.fixture
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("COMMLIB_"):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture
def vec():
    dt = MPI.DOUBLE.Create_vector(64, 2, 4).Commit()  # 1 KiB packed, 2 KiB extent
    yield dt
    dt.Free()


@pytest.fixture
def restore():
    """Put the process's settings back as the environment says (request it before the fixtures that set it)."""
    yield
    config.reload()


def test_every_setting_has_one_owner_and_its_documented_default(clean_env):
    own = {f.name for f in dataclasses.fields(Config)}
    for package, cls in OWNERS.items():
        assert tuple(f.name for f in dataclasses.fields(cls)) == PACKAGE_FIELDS[package]
        assert not own & set(PACKAGE_FIELDS[package])
    assert sorted(own.union(*PACKAGE_FIELDS.values())) == sorted(DEFAULTS)
    fresh = Config.from_env()
    assert {name: getattr(fresh, name) for name in DEFAULTS} == DEFAULTS


def test_settings_set_through_config_reach_their_package_and_back(restore, monkeypatch):
    import collectives.settings
    import datatypes.settings
    import transport.settings

    heard = []
    monkeypatch.setattr(config_module, "_listeners", [*config_module._listeners, lambda: heard.append(1)])
    cases = [
        (datatypes.settings.settings, "pack_min_block", 9),
        (transport.settings.settings, "monitor_floor", 3.5),
        (collectives.settings.settings, "moe_pack", "mpi"),
    ]
    for owner, name, value in cases:
        before, told = Config.changes, len(heard)
        setattr(config, name, value)
        assert getattr(owner, name) == value and Config.changes > before and len(heard) == told + 1
        setattr(owner, name, DEFAULTS[name])  # set on the package's own object: commlib hears of it too
        assert getattr(config, name) == DEFAULTS[name] and len(heard) == told + 2
    before = Config.changes
    config.staging_bytes = 0  # commlib's own
    assert Config.changes == before + 1 and len(heard) == 7


def test_the_interposer_sees_a_change_made_on_a_package_settings(restore, vec):
    import datatypes.settings
    from commlib.interposer.messages import derived
    from commlib.interposer.session import Session

    session = Session()
    message = derived([np.zeros(256), 1, vec], eager=True)
    datatypes.settings.settings.pack_engine = "strided"
    assert [session.choose("Isend", message) for _ in range(2)] == ["pack"] * 2
    datatypes.settings.settings.pack_engine = "mpi"  # the remembered decision is stale now
    assert session.choose("Isend", message) == "native"


def test_reload_rereads_every_package_or_nothing(restore, clean_env):
    import collectives.settings
    import datatypes.settings
    import transport.settings

    clean_env.setenv("COMMLIB_PACK", "mpi")
    clean_env.setenv("COMMLIB_SPLIT_CHANNELS", "0x5")
    clean_env.setenv("COMMLIB_MOE_PACK", "MPI")
    clean_env.setenv("COMMLIB_STAGING_BYTES", "0")
    config.reload()
    assert datatypes.settings.settings.pack_engine == "mpi" and transport.settings.settings.split_channels == 5
    assert collectives.settings.settings.moe_pack == "mpi" and config.staging_bytes == 0
    clean_env.setenv("COMMLIB_PACK", "strided")
    clean_env.setenv("COMMLIB_STAGING_BYTES", "1")
    clean_env.setenv("COMMLIB_MONITOR_FLOOR", "soon")
    with pytest.raises(ValueError, match="COMMLIB_MONITOR_FLOOR='soon': expected a number"):
        config.reload()
    assert datatypes.settings.settings.pack_engine == "mpi" and config.staging_bytes == 0  # nothing assigned


@pytest.mark.parametrize("value", ["7", "gpu-node-a7", "  rack2/node13  "])
def test_a_node_id_is_any_name(clean_env, value):
    clean_env.setenv("COMMLIB_NODE_ID", value)
    assert TransportSettings.from_env().node_id == value.strip()


@pytest.mark.parametrize(
    ("cls", "variable", "value", "message"),
    [
        (DatatypesSettings, "COMMLIB_PACK", "fast", "COMMLIB_PACK='fast': expected one of auto, strided, mpi"),
        (DatatypesSettings, "COMMLIB_MODEL_MAX_AGE", "-1", "COMMLIB_MODEL_MAX_AGE='-1': expected a non-negative"),
        (TransportSettings, "COMMLIB_NODE_ID", "n" * 257, "COMMLIB_NODE_ID must be at most 256 characters"),
        (TransportSettings, "COMMLIB_SPLIT", "maybe", "COMMLIB_SPLIT='maybe': expected 1/0, true/false"),
        (TransportSettings, "COMMLIB_MONITOR_BOOTSTRAP", "dns", "expected one of auto, file, mpi"),
        (CollectivesSettings, "COMMLIB_ALLREDUCE", "best", "expected one of auto, native, ring, star, hierarchical"),
        (CollectivesSettings, "COMMLIB_REDUCTION_CHECK", "2", "COMMLIB_REDUCTION_CHECK='2'"),
    ],
)
def test_package_settings_refuse_bad_variables_by_name(clean_env, cls, variable, value, message):
    clean_env.setenv(variable, value)
    with pytest.raises(ValueError, match=message):
        cls.from_env()
    with pytest.raises(ValueError, match=message):
        Config.from_env()


def test_a_config_from_the_environment_has_settings_of_its_own(restore, clean_env):
    import transport.settings

    clean_env.setenv("COMMLIB_MONITOR_RING", "64")
    snapshot = Config.from_env()
    assert snapshot.monitor_ring == 64 and transport.settings.settings.monitor_ring == 4096
    snapshot.split = True
    assert transport.settings.settings.split is False and config.split is False


def test_commlib_config_loads_no_package_and_the_packages_never_load_commlib(tmp_path):
    from commlib import calibration

    if MPI.COMM_WORLD.Get_size() != 1:
        pytest.skip("the calibration key is the world size's")
    path = calibration.save(calibration.new_file(calibration.current_key()), tmp_path / "c.json")
    program = f"""
import sys
import commlib.config
assert not [m for m in sys.modules if m.split(".")[0] in ("datatypes", "transport", "collectives", "mpi4py")]
del sys.modules["commlib.config"], sys.modules["commlib"]
import collectives, datatypes, transport.flows, transport.monitor
from datatypes import model
assert not [m for m in sys.modules if m.split(".")[0] == "commlib"], "a package loaded commlib"
assert model.current().source == "calibrated ({path})", model.current().source
try:
    model.Model().save({str(tmp_path / "saved.json")!r})
except RuntimeError as exc:
    assert "no calibration store" in str(exc)
else:
    raise AssertionError("saved without commlib's private-file writer")
print("OK")
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMMLIB_")}
    env["COMMLIB_MODEL"] = str(path)
    done = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "OK", done.stderr
    assert not (tmp_path / "saved.json").exists()
