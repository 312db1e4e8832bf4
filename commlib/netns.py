"""Network-namespace primitives for the emulated cluster: run ``ip``/``tc``, list, empty and delete namespaces.

Every namespace the harness makes is named ``commlib-<pid>-<k>-<role>``, so a
later process can recognise (and only then delete) namespaces whose creating
process has died: :func:`clean_stale_namespaces`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess

__all__ = [
    "PREFIX",
    "ClusterError",
    "clean_stale_namespaces",
    "delete_namespace",
    "kill_processes_in",
    "namespaces",
    "tool",
]

PREFIX = "commlib-"
_NAME = re.compile(rf"^{re.escape(PREFIX)}(\d+)-(\d+)-")


class ClusterError(RuntimeError):
    """Building, shaping, using or tearing down an emulated cluster failed."""


def tool(*args: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run one ``ip``/``tc``/``sysctl`` command; a failure raises :class:`ClusterError` with its stderr."""
    try:
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise ClusterError(f"cluster: {args[0]} not found ({exc})") from None
    except subprocess.TimeoutExpired:
        raise ClusterError(f"cluster: {' '.join(args)} did not finish within {timeout:g} s") from None
    if check and proc.returncode != 0:
        raise ClusterError(f"cluster: {' '.join(args)} failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc


def namespaces() -> list[str]:
    """Names of all network namespaces ``ip netns`` knows."""
    out = tool("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def kill_processes_in(ns: str) -> list[int]:
    """SIGKILL every process inside namespace ``ns`` (only harness-started processes live there); return pids."""
    killed = []
    for word in tool("ip", "netns", "pids", ns, check=False).stdout.split():
        try:
            os.kill(int(word), signal.SIGKILL)
            killed.append(int(word))
        except (ProcessLookupError, ValueError):
            pass
    return killed


def delete_namespace(ns: str) -> None:
    """Kill the processes in ``ns`` and delete it; its veth links go with it."""
    kill_processes_in(ns)
    tool("ip", "netns", "del", ns, check=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_namespaces() -> list[str]:
    """Delete namespaces left by harness processes that no longer exist; return their names.

    Only names ``commlib-<pid>-<k>-...`` whose ``<pid>`` is not a live process
    are touched: namespaces of running harnesses and of anyone else stay.
    """
    removed = []
    for ns in namespaces():
        m = _NAME.match(ns)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            delete_namespace(ns)
            removed.append(ns)
    return removed
