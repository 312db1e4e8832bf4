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

:class:`Launcher` knows the two ``mpiexec`` families and writes the command
line each understands: ``hydra`` (MPICH, Intel MPI, MVAPICH: ``-env VAR
value`` per context) and ``prrte`` (Open MPI 5: ``-x VAR=value``, ``--host
name:slots``). An MPMD job is a list of :class:`App` contexts, each with its
rank count, its command (which may start with a per-rank wrapper such as
``ip netns exec NS`` or ``env``), its own environment and optionally a host.
Hydra runs as root and starts more ranks than cores as it is; Open MPI's
refuses both unless told, so for a ``prrte`` launch :func:`run` and
:func:`run_apps` set ``OMPI_ALLOW_RUN_AS_ROOT=1`` and
``OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1`` (only when running as root) and
``PRTE_MCA_rmaps_default_mapping_policy=:oversubscribe`` (unless
``oversubscribe=False``), each only where the environment does not set it.
The family comes from ``mpiexec --version`` (once per executable), or from
``COMMLIB_MPIEXEC_FAMILY`` (``hydra`` or ``prrte``) for an ``mpiexec`` it does
not recognise.
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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

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

FAMILIES = ("hydra", "prrte")
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
        raise MPIRunError("no mpiexec found: install the 'mpich' or 'openmpi' extra, or set COMMLIB_MPIEXEC")
    return found


@cache
def _family_of(executable: str) -> str:
    try:
        proc = subprocess.run(
            [executable, "--version"], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MPIRunError(f"mpirun: cannot run {executable} --version to tell its family: {exc}") from None
    text = proc.stdout + proc.stderr
    if any(mark in text for mark in ("Open MPI", "OpenRTE", "PRRTE", "prterun")):
        return "prrte"
    if any(mark in text for mark in ("HYDRA", "Intel(R) MPI", "MPICH", "MVAPICH")):
        return "hydra"
    raise MPIRunError(
        f"mpirun: {executable} --version names neither Hydra (MPICH) nor PRRTE (Open MPI): "
        f"set COMMLIB_MPIEXEC_FAMILY to one of {', '.join(FAMILIES)}\n{_tail(text, 5)}"
    )


def mpiexec_family(executable: str | None = None) -> str:
    """``"hydra"`` or ``"prrte"``: the options ``executable`` (default :func:`mpiexec`) understands."""
    explicit = os.environ.get("COMMLIB_MPIEXEC_FAMILY", "").strip().lower()
    if explicit:
        if explicit not in FAMILIES:
            raise ValueError(f"COMMLIB_MPIEXEC_FAMILY={explicit!r}: expected one of {', '.join(FAMILIES)}")
        return explicit
    return _family_of(executable or mpiexec())


@dataclass(frozen=True)
class App:
    """One context of an MPMD launch: ``nprocs`` ranks running ``args`` (a full command line).

    ``env`` is set for these ranks only; ``host`` places them on that host
    (with ``nprocs`` slots there).
    """

    nprocs: int
    args: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    host: str | None = None


class Launcher:
    """Command lines for one ``mpiexec`` (default :func:`mpiexec`) of a known family (default: detected)."""

    def __init__(self, executable: str | None = None, family: str | None = None) -> None:
        self.executable = executable or mpiexec()
        self.family = family or mpiexec_family(self.executable)
        if self.family not in FAMILIES:
            raise ValueError(f"Launcher: family {self.family!r} is not one of {', '.join(FAMILIES)}")

    def __repr__(self) -> str:
        return f"Launcher({self.executable!r}, family={self.family!r})"

    def command(
        self, apps: Sequence[App], *, args: Sequence[str] = (), inherited: Mapping[str, str] | None = None
    ) -> list[str]:
        """The ``mpiexec`` command line running ``apps`` (ranks numbered in app order), ``args`` first.

        Every app sees the environment ``mpiexec`` runs in (``inherited``,
        default ``os.environ``) plus its own ``env``. Open MPI applies the
        first context's ``-x`` settings to every context: a later app that
        does not set such a variable gets the inherited value back, or runs
        under ``env -u VAR`` where there is none.
        """
        if not apps:
            raise ValueError("Launcher.command: no app to run")
        inherited = os.environ if inherited is None else inherited
        command = [self.executable, *args]
        first = dict(apps[0].env)
        for i, app in enumerate(apps):
            if not isinstance(app.nprocs, int) or app.nprocs < 1:
                raise ValueError(f"Launcher.command: app {i} needs nprocs >= 1, got {app.nprocs!r}")
            if not app.args:
                raise ValueError(f"Launcher.command: app {i} has no command")
            bad = [k for k in app.env if not k or "=" in k]
            if bad:
                raise ValueError(f"Launcher.command: app {i} has invalid environment variable names {bad}")
            if i:
                command.append(":")
            command += ["-n", str(app.nprocs)]
            program = list(app.args)
            if self.family == "hydra":
                if app.host is not None:
                    command += ["-host", app.host]
                for key, value in app.env.items():
                    command += ["-env", key, str(value)]
            else:
                if app.host is not None:
                    command += ["--host", f"{app.host}:{app.nprocs}"]
                env = dict(app.env)
                unset = []
                for key in sorted(first.keys() - env.keys()) if i else ():
                    if key in inherited:
                        env[key] = inherited[key]
                    else:
                        unset.append(key)
                for key, value in env.items():
                    command += ["-x", f"{key}={value}"]
                if unset:
                    program = ["env", *(arg for key in sorted(unset) for arg in ("-u", key)), *program]
            command += program
        return command

    def environment(self, *, oversubscribe: bool = True) -> dict[str, str]:
        """What this family needs in the environment to run here: as root, and with more ranks than cores."""
        if self.family != "prrte":
            return {}
        env = {}
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        if oversubscribe:
            env["PRTE_MCA_rmaps_default_mapping_policy"] = ":oversubscribe"
        return env


def launcher_environment(launcher: Launcher, env: Mapping[str, str] | None = None, **options: bool) -> dict[str, str]:
    """``env`` plus what ``launcher`` needs (:meth:`Launcher.environment`) and the environment does not set."""
    needed = {k: v for k, v in launcher.environment(**options).items() if k not in os.environ}
    return {**needed, **(env or {})}


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
            f"--- stdout (tail) ---\n{_tail(stdout)}\n--- stderr (tail) ---\n{_tail(stderr)}"
        )
    if check and returncode != 0:
        raise MPIRunError(
            f"mpirun: {' '.join(command)} exited with code {returncode}\n"
            f"--- stdout (tail) ---\n{_tail(stdout)}\n--- stderr (tail) ---\n{_tail(stderr)}"
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
