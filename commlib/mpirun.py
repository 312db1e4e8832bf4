"""Bounded ``mpiexec`` launches.

A multi-rank run must end within a known time whatever its ranks do: the job
runs in its own process group, is killed as a whole when the timeout expires
and when waiting for it is interrupted in any way (Ctrl-C, any exception), so
it never outlives its launcher; the output left after a kill is collected
for at most :data:`DRAIN_SECONDS` (a process that left the group may hold the
pipes open). Every failure (timeout, non-zero exit) is reported with the
command and the tail of its output. Python ranks run under ``python -m mpi4py``, which
aborts the whole job when one rank raises, so a failing rank cannot leave the
others waiting.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DRAIN_SECONDS", "MPIRunError", "MPIRunResult", "mpiexec", "run", "run_command"]

DRAIN_SECONDS = 10.0  # collecting output after a kill, at most


class MPIRunError(RuntimeError):
    """An ``mpiexec`` job failed or did not finish in time."""


@dataclass(frozen=True)
class MPIRunResult:
    command: list[str]
    returncode: int | None  # None when the job was killed on timeout
    stdout: str
    stderr: str
    elapsed: float

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


def mpiexec() -> str:
    """The ``mpiexec`` to use: ``COMMLIB_MPIEXEC``, else the one beside this Python, else ``PATH``'s."""
    explicit = os.environ.get("COMMLIB_MPIEXEC")
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.exists():
        return str(beside)
    found = shutil.which("mpiexec")
    if found is None:
        raise MPIRunError("no mpiexec found: install the 'mpich' extra, or set COMMLIB_MPIEXEC")
    return found


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def run(
    nprocs: int,
    args: Sequence[str],
    *,
    timeout: float = 120.0,
    python: bool = True,
    env: dict[str, str] | None = None,
    mpiexec_args: Sequence[str] = (),
    check: bool = True,
    cwd: str | None = None,
) -> MPIRunResult:
    """Run ``mpiexec -n nprocs [python -m mpi4py] args`` and wait at most ``timeout`` seconds.

    With ``check`` (the default) a timeout or a non-zero exit raises
    :class:`MPIRunError` naming the command, the cause and the output tail.
    """
    if nprocs < 1:
        raise ValueError(f"mpirun: nprocs must be >= 1, got {nprocs}")
    command = [mpiexec(), *mpiexec_args, "-n", str(nprocs)]
    if python:
        command += [sys.executable, "-m", "mpi4py"]
    command += list(args)
    return run_command(command, timeout=timeout, env=env, check=check, cwd=cwd)


def run_command(
    command: Sequence[str],
    *,
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
    check: bool = True,
    cwd: str | None = None,
) -> MPIRunResult:
    """Run a prebuilt ``mpiexec`` command line with the same bounds and error reports as :func:`run`."""
    command = list(command)
    full_env = {**os.environ, **(env or {})}
    start = time.monotonic()
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=full_env,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        returncode: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        _kill(proc)
        stdout, stderr = _drain(proc)
        returncode = None
    except BaseException:  # Ctrl-C or anything else: the job goes down with its launcher
        _kill(proc)
        with contextlib.suppress(BaseException):
            _drain(proc)
        raise
    result = MPIRunResult(command, returncode, stdout, stderr, time.monotonic() - start)
    if check and result.timed_out:
        raise MPIRunError(
            f"mpirun: {' '.join(command)} did not finish within {timeout:g} s and was killed\n"
            f"--- stdout (tail) ---\n{_tail(stdout)}\n--- stderr (tail) ---\n{_tail(stderr)}"
        )
    if check and returncode != 0:
        raise MPIRunError(
            f"mpirun: {' '.join(command)} exited with code {returncode}\n"
            f"--- stdout (tail) ---\n{_tail(stdout)}\n--- stderr (tail) ---\n{_tail(stderr)}"
        )
    return result


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the job's whole process group (it runs in a session of its own)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        proc.kill()


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def _drain(proc: subprocess.Popen) -> tuple[str, str]:
    """The output of a killed job, collected for at most :data:`DRAIN_SECONDS` (then the pipes are closed)."""
    try:
        stdout, stderr = proc.communicate(timeout=DRAIN_SECONDS)
        return stdout or "", stderr or ""
    except subprocess.TimeoutExpired as exc:
        for pipe in (proc.stdout, proc.stderr):
            with contextlib.suppress(OSError):
                if pipe is not None:
                    pipe.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)
        note = f"\n[commlib.mpirun: output collection stopped after {DRAIN_SECONDS:g} s]"
        return _text(exc.stdout), _text(exc.stderr) + note
