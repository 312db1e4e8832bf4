"""The do-no-harm sweep (commlib.bench.noharm) and the loops it times (commlib.bench.micro)."""

from __future__ import annotations

import json
import sys

import pytest

from commlib.__main__ import main

pytestmark = pytest.mark.mpi


def test_sweep_quick_run_compares_every_mode(tmp_path, capsys):
    out = tmp_path / "noharm.json"
    programs = ["halo", "pencil-rebuild", "pingpong", "oneshot"]
    assert main(["bench", "noharm", "--programs", *programs, "--ranks", "3", "--quick", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "worst cell:" in table and "control" in table
    cells = json.loads(out.read_text())["cells"]
    assert {c["program"] for c in cells} == set(programs) and all(c["ranks"] == 3 and c["ok"] for c in cells)
    for cell in cells:
        assert set(cell["samples_s"]) == {"plain", "commlib", "control"}
        assert all(len(v) == 1 and v[0] > 0 for v in cell["samples_s"].values())
        assert cell["ratio"] == pytest.approx(cell["median_s"]["commlib"] / cell["median_s"]["plain"])


@pytest.mark.parametrize("loop", ["pingpong", "allreduce", "oneshot"])
def test_micro_loops_run_plain_and_interposed(mpirun, tmp_path, loop):
    for runner in ("mpi4py", "commlib"):
        out = tmp_path / f"{loop}-{runner}.json"
        command = [sys.executable, "-m", runner, "-m", "commlib.bench.micro", loop, "--sizes", "64", "4096"]
        mpirun(3, [*command, "--rounds", "2", "--json", str(out)], python=False, timeout=120)
        rows = json.loads(out.read_text())["rows"]
        assert [r["bytes"] for r in rows] == [64, 4096] and all(r["median_s"] > 0 for r in rows)
