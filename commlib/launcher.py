"""The two ``mpiexec`` families and the command lines each understands.

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

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

__all__ = ["FAMILIES", "App", "Launcher", "MPIRunError", "launcher_environment", "mpiexec", "mpiexec_family", "tail"]

FAMILIES = ("hydra", "prrte")


class MPIRunError(RuntimeError):
    """An ``mpiexec`` job failed or did not finish in time, or no ``mpiexec`` can run it."""


def tail(text: str, lines: int = 40) -> str:
    """The last ``lines`` lines of ``text``, for error messages."""
    return "\n".join(text.splitlines()[-lines:])


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
        f"set COMMLIB_MPIEXEC_FAMILY to one of {', '.join(FAMILIES)}\n{tail(text, 5)}"
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
