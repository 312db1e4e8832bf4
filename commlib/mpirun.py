"""Bounded ``mpiexec`` launches, for MPICH's and Open MPI's ``mpiexec`` alike.

A multi-rank run must end within a known time whatever its ranks do: the job
runs in its own process group, is killed as a whole when the timeout expires
and when waiting for it is interrupted in any way (Ctrl-C, any exception), so
it never outlives its launcher; the output left after a kill is collected
for at most :data:`DRAIN_SECONDS` (a process that left the group may hold the
pipes open). Every failure (timeout, non-zero exit) is reported with the
command and the tail of its output. Python ranks run under ``python -m mpi4py``, which
aborts the whole job when one rank raises, so a failing rank cannot leave the
others waiting.

The command line is written by :mod:`commlib.launcher` for the ``mpiexec`` family in use
(MPICH's Hydra or Open MPI's PRRTE).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .launcher import FAMILIES, App, Launcher, MPIRunError, launcher_environment, mpiexec, mpiexec_family, tail

__all__ = [
    "DRAIN_SECONDS",
    "FAMILIES",
    "App",
    "Launcher",
    "MPIRunError",
    "MPIRunResult",
    "launcher_environment",
    "mpiexec",
    "mpiexec_family",
    "run",
    "run_apps",
    "run_command",
]

DRAIN_SECONDS = 10.0  # collecting output after a kill, at most


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
    oversubscribe: bool = True,
) -> MPIRunResult:
    """Run ``mpiexec -n nprocs [python -m mpi4py] args`` and wait at most ``timeout`` seconds.

    With ``check`` (the default) a timeout or a non-zero exit raises
    :class:`MPIRunError` naming the command, the cause and the output tail.
    ``env`` is added to every rank's environment; ``oversubscribe`` lets more
    ranks than cores start under Open MPI too (see the module docstring).
    """
    if nprocs < 1:
        raise ValueError(f"mpirun: nprocs must be >= 1, got {nprocs}")
    program = [sys.executable, "-m", "mpi4py", *args] if python else list(args)
    return run_apps(
        [App(nprocs, program)],
        timeout=timeout,
        env=env,
        mpiexec_args=mpiexec_args,
        check=check,
        cwd=cwd,
        oversubscribe=oversubscribe,
    )


def run_apps(
    apps: Sequence[App],
    *,
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
    mpiexec_args: Sequence[str] = (),
    check: bool = True,
    cwd: str | None = None,
    oversubscribe: bool = True,
    launcher: Launcher | None = None,
) -> MPIRunResult:
    """Run the MPMD job ``apps`` (each a full command line, with its own environment) like :func:`run`."""
    launcher = launcher or Launcher()
    full_env = launcher_environment(launcher, env, oversubscribe=oversubscribe)
    command = launcher.command(apps, args=mpiexec_args, inherited={**os.environ, **full_env})
    return run_command(command, timeout=timeout, env=full_env, check=check, cwd=cwd)


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
    with _session_directory(full_env):
        return _run_bounded(command, timeout=timeout, env=full_env, check=check, cwd=cwd)


@contextlib.contextmanager
def _session_directory(env: dict[str, str]) -> Iterator[None]:
    """A private, fresh base for Open MPI's session directory (``PRTE_MCA_prte_tmpdir_base``), removed after.

    PRRTE names the directory after the launcher's process id and keeps
    PMIx's sockets in it; a killed launcher leaves it behind, and a later
    launcher that gets the same process id fails with "The PMIx server's
    listener thread failed to start". Hydra ignores the variable. A base the
    caller set is kept as it is.
    """
    if "PRTE_MCA_prte_tmpdir_base" in env:
        yield
        return
    base = tempfile.mkdtemp(prefix="commlib-prte-")  # 0700
    env["PRTE_MCA_prte_tmpdir_base"] = base
    try:
        yield
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _run_bounded(
    command: list[str], *, timeout: float, env: dict[str, str], check: bool, cwd: str | None
) -> MPIRunResult:
    start = time.monotonic()
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
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
            f"--- stdout (tail) ---\n{tail(stdout)}\n--- stderr (tail) ---\n{tail(stderr)}"
        )
    if check and returncode != 0:
        raise MPIRunError(
            f"mpirun: {' '.join(command)} exited with code {returncode}\n"
            f"--- stdout (tail) ---\n{tail(stdout)}\n--- stderr (tail) ---\n{tail(stderr)}"
        )
    return result


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from ``/proc``; empty where there is none to read)."""
    children: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the job: its process group (it runs in a session of its own) and every descendant.

    Open MPI's launcher puts the ranks in process groups of their own, so the
    group alone would leave them running; the descendants are found first,
    while they are still children of the launcher.
    """
    family = _descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        proc.kill()
    for pid in family:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


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
