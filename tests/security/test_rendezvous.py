"""Attacks on the monitor's rendezvous directory: planted directories, loose modes, symlinks, foreign records.

Every attack is a local user's: the tests plant what such a user could plant
(as root they can also chown it to ``nobody``) and check that commlib refuses
it or ignores it, and that the monitor never stops the application.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from commlib.mpirun import run
from transport import rendezvous

NOBODY = 65534
ROOT_NAME = f"commlib-monitor-{os.getuid()}"


def _record(rank: int, world_size: int = 2) -> dict:
    return {
        "rank": rank,
        "world_size": world_size,
        "pid": os.getpid(),
        "boot": "B",
        "host": "h",
        "node": "n",
        "address": "127.0.0.1",
        "port": 4000 + rank,
        "token": rendezvous.new_token(),
    }


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_directory_planted_by_another_user_is_refused(tmp_path):
    planted = tmp_path / ROOT_NAME
    planted.mkdir(mode=0o777)
    os.chmod(planted, 0o777)
    os.chown(planted, NOBODY, NOBODY)
    place = rendezvous.Rendezvous("job", str(tmp_path))
    with pytest.raises(PermissionError, match="owned by uid 65534"):
        place.register(_record(0))
    assert not (planted / "job").exists()


@pytest.mark.parametrize("level", ["root", "job"])
def test_a_directory_others_may_enter_is_made_private_or_refused(tmp_path, level):
    place = rendezvous.Rendezvous("job", str(tmp_path))
    loose = place.path if level == "job" else place.path.parent
    loose.mkdir(parents=True, mode=0o755)
    os.chmod(loose, 0o755)  # what an older commlib left behind: this user's, readable by all
    place.register(_record(0))
    assert _mode(loose) == 0o700 and _mode(place.path / "rank-0.json") == 0o600
    os.chmod(loose, 0o755)
    os.chown(loose, NOBODY, NOBODY)  # the same, but another user's: refused
    with pytest.raises(PermissionError, match="owned by uid 65534"):
        rendezvous.Rendezvous("job", str(tmp_path)).register(_record(0))
    assert _mode(loose) == 0o755


def test_a_symlinked_directory_is_refused(tmp_path):
    elsewhere = tmp_path / "attacker"
    elsewhere.mkdir(mode=0o700)
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / ROOT_NAME).symlink_to(elsewhere)
    place = rendezvous.Rendezvous("job", str(tmp_path / "base"))
    with pytest.raises(PermissionError, match="symbolic link"):
        place.register(_record(0))
    assert list(elsewhere.iterdir()) == []


def test_every_level_is_0700_and_the_record_0600(tmp_path):
    place = rendezvous.Rendezvous("job", str(tmp_path))
    place.register(_record(1))
    assert _mode(place.path.parent) == 0o700 and _mode(place.path) == 0o700
    record = place.path / "rank-1.json"
    assert _mode(record) == 0o600 and json.loads(record.read_text())["rank"] == 1
    assert [p.name for p in place.path.iterdir()] == ["rank-1.json"]  # no temporary file left behind


def test_a_symlink_planted_at_the_temporary_name_is_not_followed(tmp_path):
    place = rendezvous.Rendezvous("job", str(tmp_path))
    place.path.mkdir(parents=True, mode=0o700)
    os.chmod(place.path.parent, 0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    for name in (f".rank-0.{os.getpid()}.tmp", "rank-0.json"):  # the old fixed temporary name, and the target
        (place.path / name).unlink(missing_ok=True)
        (place.path / name).symlink_to(victim)
        place.register(_record(0))
        assert victim.read_text() == "precious"
    assert not (place.path / "rank-0.json").is_symlink() and _mode(place.path / "rank-0.json") == 0o600


def test_the_private_runtime_directory_is_preferred(tmp_path, monkeypatch):
    runtime = tmp_path / "run-user"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert rendezvous.Rendezvous("job").path == runtime / ROOT_NAME / "job"
    os.chmod(runtime, 0o755)  # not what the specification promises: not used
    assert not str(rendezvous.Rendezvous("job").path).startswith(str(runtime))


@pytest.mark.parametrize(
    "content", [b"[1]", b"null", b'"text"', b"{", b"[" * 100_000, b"{}", b'{"rank": 0, "world_size": 2}', b"x" * 9000]
)
def test_foreign_records_are_ignored(tmp_path, content):
    place = rendezvous.Rendezvous("job", str(tmp_path))
    place.register(_record(1))
    (place.path / "rank-0.json").write_bytes(content)
    assert sorted(place.peers(2)) == [1]
    rendezvous.Rendezvous("other", str(tmp_path)).register(_record(0, 1))  # sweeps, reading the foreign file


def test_records_of_another_user_and_symlinked_records_are_ignored(tmp_path):
    place = rendezvous.Rendezvous("job", str(tmp_path))
    place.register(_record(1))
    good = json.dumps(_record(0))
    theirs = place.path / "rank-0.json"
    theirs.write_text(good)
    os.chown(theirs, NOBODY, NOBODY)
    assert sorted(place.peers(2)) == [1]
    theirs.unlink()
    (tmp_path / "elsewhere.json").write_text(good)
    theirs.symlink_to(tmp_path / "elsewhere.json")
    assert sorted(place.peers(2)) == [1]


_APP = """
import sys
from pathlib import Path
import commlib
from mpi4py import MPI
session = commlib.interpose()
MPI.COMM_WORLD.Barrier()
Path(sys.argv[1], f"ran-{MPI.COMM_WORLD.Get_rank()}").write_text("ok")
"""


def _ran(where: Path) -> list[str]:
    return sorted(p.name for p in where.glob("ran-*"))


@pytest.mark.mpi
@pytest.mark.parametrize("nprocs", [2, 3])
def test_a_foreign_record_does_not_stop_the_application(tmp_path, nprocs):
    app = tmp_path / "app.py"
    app.write_text(_APP)
    root = tmp_path / "base" / ROOT_NAME
    for job, name, content in (("fixed-job", "rank-7.json", "null"), ("other-job", "rank-0.json", "[1]")):
        (root / job).mkdir(parents=True, mode=0o700, exist_ok=True)
        (root / job / name).write_text(content)  # read when peers are listed, and when old jobs are swept
    os.chmod(root, 0o700)
    env = {"COMMLIB_MONITOR_JOB": "fixed-job", "COMMLIB_MONITOR_DIR": str(tmp_path / "base")}
    run(nprocs, [str(app), str(tmp_path)], env=env, timeout=90)
    assert _ran(tmp_path) == [f"ran-{r}" for r in range(nprocs)]


@pytest.mark.mpi
def test_a_planted_rendezvous_directory_leaves_the_application_running(tmp_path):
    app = tmp_path / "app.py"
    app.write_text(_APP)
    planted = tmp_path / "base" / ROOT_NAME
    planted.mkdir(parents=True, mode=0o777)
    os.chmod(planted, 0o777)
    os.chown(planted, NOBODY, NOBODY)
    env = {"COMMLIB_MONITOR_JOB": "fixed-job", "COMMLIB_MONITOR_DIR": str(tmp_path / "base")}
    result = run(2, [str(app), str(tmp_path)], env=env, timeout=90)
    assert _ran(tmp_path) == ["ran-0", "ran-1"]
    assert "refusing to use it" in result.stderr and not (planted / "fixed-job").exists()
