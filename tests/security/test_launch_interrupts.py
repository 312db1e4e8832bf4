"""Attacks on the bounded launcher: a Ctrl-C that left the job running, and a job whose escaped child keeps
the output pipes open after the kill."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from commlib import mpirun

_RANK = """
import os, sys, time
from pathlib import Path
from mpi4py import MPI
Path(sys.argv[1], f"pid-{MPI.COMM_WORLD.Get_rank()}").write_text(str(os.getpid()))
time.sleep(120)
"""

_DRIVER = """
import sys
from commlib.mpirun import run
run(2, [sys.argv[1], sys.argv[2]], timeout=300)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return False


def _wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.mpi
def test_ctrl_c_in_the_launcher_kills_the_whole_job(tmp_path):
    rank, driver = tmp_path / "rank.py", tmp_path / "driver.py"
    rank.write_text(_RANK)
    driver.write_text(_DRIVER)
    launcher = subprocess.Popen([sys.executable, str(driver), str(rank), str(tmp_path)], cwd=os.getcwd())
    pids: list[int] = []
    try:
        assert _wait_for(lambda: len(list(tmp_path.glob("pid-*"))) == 2, 60), "the ranks did not start"
        time.sleep(0.2)
        pids = [int(p.read_text()) for p in tmp_path.glob("pid-*")]
        launcher.send_signal(signal.SIGINT)  # what Ctrl-C in a terminal does to the launcher
        launcher.wait(30)
        assert _wait_for(lambda: not any(_alive(p) for p in pids), 15), "ranks outlived their launcher"
    finally:
        launcher.kill()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_output_collection_after_a_kill_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(mpirun, "DRAIN_SECONDS", 2.0, raising=False)
    escaped = tmp_path / "escaped.pid"
    # the job's child leaves the process group (its own session) and keeps the output pipes open
    command = ["sh", "-c", f"echo started; setsid sleep 60 & echo $! > {escaped}; sleep 60"]
    result: list = []
    worker = threading.Thread(
        target=lambda: result.append(mpirun.run_command(command, timeout=1.0, check=False)), daemon=True
    )
    t0 = time.monotonic()
    worker.start()
    try:
        worker.join(30)
        assert not worker.is_alive(), "run_command waited for a process outside the job"
        assert result[0].timed_out and "started" in result[0].stdout and time.monotonic() - t0 < 20
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(escaped.read_text()), signal.SIGKILL)
        worker.join(60)
