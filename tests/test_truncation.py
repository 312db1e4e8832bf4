"""transport.truncation: receives too small for their message never write past the buffer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from transport import truncation

SCRIPT = Path(__file__).parent / "mpi" / "truncation_cases.py"


@pytest.mark.parametrize(
    ("spec", "room"),
    [
        (np.zeros(10, np.float64), 80),
        ([np.zeros(10, np.float64), MPI.DOUBLE], 80),
        ([np.zeros(7, np.uint8), MPI.INT], 4),
        ([np.zeros(80, np.uint8), 3, MPI.DOUBLE], 24),
        ([np.zeros(8, np.uint8), 3, MPI.DOUBLE], None),
        ([np.zeros(80, np.uint8), (3, 0), MPI.DOUBLE], None),
        ([np.zeros(80, np.uint8), MPI.DOUBLE.Create_vector(2, 1, 2)], None),
        (b"read-only", None),
        ([np.zeros(80, np.uint8), -1, MPI.DOUBLE], None),
        (object(), None),
    ],
)
def test_capacity_reads_the_specs_it_knows(spec, room):
    assert truncation.capacity(spec) == room


def test_a_message_too_long_raises_and_leaves_the_buffer_and_beyond_untouched():
    comm = MPI.COMM_SELF.Dup()
    try:
        message = np.full(100_000, 7, np.uint8)
        memory = np.zeros(100_064, np.uint8)
        send = comm.Isend(message, 0, 1)
        with pytest.raises(MPI.Exception, match=r"Recv: message of 100000 bytes .* buffer of 16 bytes") as info:
            truncation.recv(comm, memory[:16], 16, 0, 1, None, "Recv")
        send.Wait()
        assert info.value.Get_error_class() == MPI.ERR_TRUNCATE
        assert not memory.any()
        status = MPI.Status()
        send = comm.Isend(message, 0, 2)
        truncation.recv(comm, memory[:100_000], 100_000, MPI.ANY_SOURCE, MPI.ANY_TAG, status, "Recv")
        send.Wait()
        assert np.array_equal(memory[:100_000], message) and not memory[100_000:].any()
        assert (status.Get_count(MPI.BYTE), status.Get_tag(), status.Get_source()) == (100_000, 2, 0)
    finally:
        comm.Free()


def test_a_buffer_mpi4py_refuses_leaves_no_matched_message_behind():
    comm = MPI.COMM_SELF.Dup()
    try:
        send = comm.Isend(np.arange(3, dtype=np.uint8), 0, 5)
        with pytest.raises((BufferError, TypeError, ValueError)):
            truncation.recv(comm, b"abc", 3, 0, 5, None, "Recv")
        send.Wait()
        assert not comm.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG)
    finally:
        comm.Free()


def test_the_guard_follows_the_probe_unless_the_setting_forces_it(monkeypatch):
    monkeypatch.setenv("COMMLIB_RECV_GUARD", " AUTO ")
    assert truncation.guarded() is truncation.overruns()
    monkeypatch.setattr(truncation, "_overruns", True)
    assert truncation.guarded()
    monkeypatch.setattr(truncation, "_overruns", False)
    assert not truncation.guarded()
    monkeypatch.setenv("COMMLIB_RECV_GUARD", "on")
    assert truncation.guarded()
    monkeypatch.setenv("COMMLIB_RECV_GUARD", "off")
    assert not truncation.guarded()
    monkeypatch.setenv("COMMLIB_RECV_GUARD", "sometimes")
    with pytest.raises(ValueError, match="COMMLIB_RECV_GUARD must be auto, on or off"):
        truncation.guarded()


@pytest.mark.parametrize("nprocs", [1, 2, 3])
@pytest.mark.parametrize("guard", ["auto", "on"])
def test_interposed_receives_never_write_past_their_buffer(mpirun, nprocs, guard):
    command = [sys.executable, "-m", "commlib", str(SCRIPT)]
    result = mpirun(nprocs, command, python=False, env={"COMMLIB_RECV_GUARD": guard}, timeout=120)
    assert f"OK on {nprocs} ranks" in result.stdout


def test_before_mpi_init_nothing_is_probed_and_the_probe_waits_for_init():
    script = (
        "import mpi4py; mpi4py.rc.initialize = False\n"
        "from mpi4py import MPI\n"
        "from transport import truncation\n"
        "assert truncation.overruns() is False and truncation._overruns is None\n"
        "MPI.Init()\n"
        "answer = truncation.overruns()\n"
        "assert truncation._overruns is answer\n"
        "MPI.Finalize()\n"
        "print('probed after init')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "probed after init" in result.stdout, result.stderr
