"""The launcher: command lines for both mpiexec families, the environment each needs, MPMD runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from commlib import mpirun
from commlib.cluster.netns import agent_command
from commlib.mpirun import App, Launcher, MPIRunError, launcher_environment, mpiexec_family, run_apps

HYDRA = Launcher("/x/mpiexec", "hydra")
PRRTE = Launcher("/x/mpiexec", "prrte")


def test_hydra_command_lines():
    apps = [App(2, ["a", "1"], {"X": "1"}), App(1, ["b"], host="h1")]
    assert HYDRA.command(apps, args=["-genvall"]) == [
        "/x/mpiexec", "-genvall", "-n", "2", "-env", "X", "1", "a", "1", ":", "-n", "1", "-host", "h1", "b",
    ]  # fmt: skip


def test_prrte_command_lines_and_the_first_contexts_settings():
    apps = [App(2, ["a"], {"X": "1", "Y": "2"}, host="node0"), App(1, ["b"], {"Y": "3"}, host="node1")]
    # Open MPI applies the first context's -x to every context: X goes back to the inherited value, or is unset
    assert PRRTE.command(apps, inherited={"X": "outer"}) == [
        "/x/mpiexec", "-n", "2", "--host", "node0:2", "-x", "X=1", "-x", "Y=2", "a",
        ":", "-n", "1", "--host", "node1:1", "-x", "Y=3", "-x", "X=outer", "b",
    ]  # fmt: skip
    assert PRRTE.command(apps, inherited={})[-4:] == ["env", "-u", "X", "b"]


def test_bad_apps_are_refused_before_anything_runs():
    with pytest.raises(ValueError, match="no app"):
        HYDRA.command([])
    with pytest.raises(ValueError, match="app 1 needs nprocs >= 1"):
        HYDRA.command([App(1, ["a"]), App(0, ["b"])])
    with pytest.raises(ValueError, match="app 0 has no command"):
        PRRTE.command([App(1, [])])
    with pytest.raises(ValueError, match="invalid environment variable names"):
        PRRTE.command([App(1, ["a"], {"A=B": "1"})])
    with pytest.raises(ValueError, match="family 'slurm'"):
        Launcher("/x/mpiexec", "slurm")


def test_environment_for_root_and_oversubscription(monkeypatch):
    assert HYDRA.environment() == {}
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert PRRTE.environment() == {
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe",
    }
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert PRRTE.environment(oversubscribe=False) == {}
    # what the user's environment sets wins over the launcher's needs; the caller's env wins over both
    monkeypatch.setenv("PRTE_MCA_rmaps_default_mapping_policy", ":pe=1")
    assert launcher_environment(PRRTE, {"A": "1"}) == {"A": "1"}
    monkeypatch.delenv("PRTE_MCA_rmaps_default_mapping_policy")
    assert launcher_environment(PRRTE, {"A": "1"})["PRTE_MCA_rmaps_default_mapping_policy"] == ":oversubscribe"


def _fake_mpiexec(tmp_path: Path, text: str) -> str:
    fake = tmp_path / f"mpiexec-{abs(hash(text))}"
    fake.write_text(f"#!/bin/sh\necho '{text}'\n")
    fake.chmod(0o755)
    return str(fake)


def test_family_from_version_output(tmp_path, monkeypatch):
    monkeypatch.delenv("COMMLIB_MPIEXEC_FAMILY", raising=False)
    assert mpiexec_family(_fake_mpiexec(tmp_path, "HYDRA build details:")) == "hydra"
    assert mpiexec_family(_fake_mpiexec(tmp_path, "mpiexec (Open MPI) 5.0.11")) == "prrte"
    with pytest.raises(MPIRunError, match="COMMLIB_MPIEXEC_FAMILY"):
        mpiexec_family(_fake_mpiexec(tmp_path, "srun 23.02"))
    monkeypatch.setenv("COMMLIB_MPIEXEC_FAMILY", "prrte")
    assert mpiexec_family(_fake_mpiexec(tmp_path, "HYDRA build details:")) == "prrte"
    monkeypatch.setenv("COMMLIB_MPIEXEC_FAMILY", "lam")
    with pytest.raises(ValueError, match="COMMLIB_MPIEXEC_FAMILY='lam'"):
        mpiexec_family()


def test_this_pythons_mpiexec_is_one_of_the_families():
    family = mpiexec_family()
    library = subprocess.run(
        [sys.executable, "-m", "mpi4py", "--mpi-lib-version"], capture_output=True, text=True, timeout=60
    ).stdout
    assert family == ("prrte" if "Open MPI" in library else "hydra")


@pytest.mark.mpi
def test_mpmd_ranks_get_their_own_environment():
    line = 'f\'ENV {os.environ.get("A")} {os.environ.get("B")}\\n\'.encode()'
    show = [sys.executable, "-c", f"import os; os.write(1, {line})"]  # one write: lines from ranks do not mix
    apps = [App(2, show, {"A": "first", "B": "one"}), App(1, show, {"B": "two"})]
    result = run_apps(apps, env={"C": "all"}, timeout=120)
    lines = sorted(line for line in result.stdout.splitlines() if line.startswith("ENV"))
    assert lines == ["ENV None two", "ENV first one", "ENV first one"]


@pytest.mark.mpi
def test_more_ranks_than_cores_start():
    n = (os.cpu_count() or 1) + 2
    code = "import os; from mpi4py import MPI; os.write(1, b'SIZE %d\\n' % MPI.COMM_WORLD.size)"
    result = mpirun.run(n, ["-c", code], timeout=120)
    assert result.stdout.count(f"SIZE {n}") == n


def test_netns_agent_knows_only_its_hosts():
    assert agent_command({"node0": "commlib-1-0-n0"}).endswith("-m commlib.cluster.netns agent node0=commlib-1-0-n0")
    with pytest.raises(ValueError, match="not a plain name"):
        agent_command({"node0; rm -rf /": "ns"})
    proc = subprocess.run(
        [sys.executable, "-m", "commlib.cluster.netns", "agent", "node0=commlib-1-0-n0", "node9", "true"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 255 and "unknown host 'node9'" in proc.stderr


def test_each_launch_gets_a_private_session_directory_removed_after(tmp_path):
    show = ["sh", "-c", 'echo "$PRTE_MCA_prte_tmpdir_base"; test -d "$PRTE_MCA_prte_tmpdir_base" && echo there']
    first = mpirun.run_command(show, timeout=30).stdout.split()
    second = mpirun.run_command(show, timeout=30).stdout.split()
    assert first[1] == second[1] == "there" and first[0] != second[0]
    assert Path(first[0]).name.startswith("commlib-prte-") and not Path(first[0]).exists()
    mine = str(tmp_path)
    kept = mpirun.run_command(show, timeout=30, env={"PRTE_MCA_prte_tmpdir_base": mine})
    assert kept.stdout.split() == [mine, "there"]
    assert tmp_path.exists()
