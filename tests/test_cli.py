"""The ``python -m commlib`` command line and the pack benchmark."""

import json
import subprocess
import sys

import pytest

from commlib import __version__
from commlib.__main__ import main


def test_version(capsys):
    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


def test_help_lists_program_forms_and_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "-m <mod>" in out and "-c <cmd>" in out and "--no-interpose" in out and "bench" in out


def test_missing_and_unknown_commands_are_usage_errors(capsys):
    assert main([]) == 2
    assert "no program or command given" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2
    assert "'frobnicate' is neither a command nor a file" in capsys.readouterr().err
    assert main(["--frob"]) == 2
    assert "unknown option '--frob'" in capsys.readouterr().err
    assert main(["-c"]) == 2
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "nothing"])
    assert exit_.value.code == 2


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "commlib", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "bench" in result.stdout


def test_pack_benchmark_quick_run_writes_json(tmp_path, capsys):
    out = tmp_path / "pack.json"
    assert main(["bench", "pack", "--quick", "--min-time", "0.005", "--min-reps", "3", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "Median speedup over MPI_Pack" in table
    data = json.loads(out.read_text())
    names = {row["name"] for row in data["rows"]}
    assert "2D 1MiB block 64" in names and "3D 512x64x64" in names
    for row in data["rows"]:
        assert set(row["median_s"]) == {"mpi", "strided", "auto", "memcpy"}
        assert all(t > 0 for t in row["median_s"].values())
        assert row["auto_engine"] in ("mpi", "strided")
    assert data["summary"]["median_speedup"]["all"]["shapes"] == len(data["rows"])
