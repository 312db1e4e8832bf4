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
import sys

__all__ = [
    "PREFIX",
    "ClusterError",
    "agent",
    "agent_command",
    "batch",
    "clean_stale_namespaces",
    "delete_namespaces",
    "kill_processes_in",
    "namespaces",
    "processes_in",
    "tool",
]

PREFIX = "commlib-"
NETNS_DIR = "/var/run/netns"  # where ip netns keeps its named namespaces
_NAME = re.compile(rf"^{re.escape(PREFIX)}(\d+)-(\d+)-")


class ClusterError(RuntimeError):
    """Building, shaping, using or tearing down an emulated cluster failed."""


def tool(
    *args: str, check: bool = True, timeout: float = 30.0, input: str | None = None
) -> subprocess.CompletedProcess:
    """Run one ``ip``/``tc``/``sysctl`` command (``input`` on its stdin); a failure raises :class:`ClusterError`."""
    stdin = subprocess.DEVNULL if input is None else None
    try:
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, stdin=stdin, input=input)
    except FileNotFoundError as exc:
        raise ClusterError(f"cluster: {args[0]} not found ({exc})") from None
    except subprocess.TimeoutExpired:
        raise ClusterError(f"cluster: {' '.join(args)} did not finish within {timeout:g} s") from None
    if check and proc.returncode != 0:
        raise ClusterError(f"cluster: {' '.join(args)} failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc


def batch(program: str, lines: list[str], ns: str | None = None, timeout: float = 60.0) -> None:
    """Run ``lines`` as one ``-batch`` of ``program`` (``ip``, ``tc``) in namespace ``ns``; the first error raises.

    The error names the failing line's number (``Command failed -:N``).
    """
    if lines:
        tool(program, *(["-n", ns] if ns else []), "-batch", "-", input="\n".join(lines) + "\n", timeout=timeout)


def namespaces() -> list[str]:
    """Names of all network namespaces ``ip netns`` knows."""
    out = tool("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def processes_in(*names: str) -> list[int]:
    """Pids of the processes whose network namespace is one of ``names`` (what ``ip netns pids`` reports)."""
    wanted = set()
    for ns in names:
        try:
            st = os.stat(os.path.join(NETNS_DIR, ns))
        except OSError:
            continue
        wanted.add((st.st_dev, st.st_ino))
    pids = []
    if not wanted:
        return pids
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                st = os.stat(f"/proc/{entry}/ns/net")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in wanted:
                pids.append(int(entry))
    return pids


def kill_processes_in(*names: str) -> list[int]:
    """SIGKILL every process inside the namespaces ``names`` (only harness-started processes live there)."""
    killed = []
    for pid in processes_in(*names):
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    return killed


def delete_namespaces(*names: str) -> None:
    """Kill the processes in ``names`` and delete those namespaces (missing ones are skipped); links go with them."""
    if names:
        kill_processes_in(*names)
        tool("ip", "-force", "-batch", "-", check=False, input="".join(f"netns del {ns}\n" for ns in names))


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
            removed.append(ns)
    delete_namespaces(*removed)
    return removed


_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def agent_command(hosts: dict[str, str]) -> str:
    """The remote-shell command that starts a program "on" host ``h`` inside namespace ``hosts[h]``.

    Open MPI's launcher starts one daemon per host through a remote shell
    (``ssh host command``); given this as ``plm_ssh_agent``, every emulated
    node gets its own daemon, in its own namespace, under its own host name.
    """
    for host, ns in hosts.items():
        if not (_HOST.match(host) and _HOST.match(ns)):
            raise ValueError(f"agent_command: host {host!r} or namespace {ns!r} is not a plain name")
    mapping = ",".join(f"{host}={ns}" for host, ns in hosts.items())
    return f"{sys.executable} -m commlib.cluster.netns agent {mapping}"


def agent(argv: list[str]) -> int:
    """``agent HOST=NS[,HOST=NS...] HOST WORD...``: run ``WORD...`` as ``ssh HOST WORD...`` would, in NS.

    As with ssh, the words are joined into one shell command line; it runs in
    the host's namespace, in a new UTS namespace named after the host. An
    unknown host exits with 255 (ssh's code for a host it cannot reach).
    """
    if len(argv) < 3:
        print("commlib.cluster.netns agent: usage: agent HOST=NS[,HOST=NS...] HOST COMMAND...", file=sys.stderr)
        return 255
    hosts = dict(item.partition("=")[::2] for item in argv[0].split(","))
    host, words = argv[1], argv[2:]
    ns = hosts.get(host)
    if ns is None or not _HOST.match(host) or not _HOST.match(ns):
        print(f"commlib.cluster.netns agent: unknown host {host!r} (known: {', '.join(hosts)})", file=sys.stderr)
        return 255
    script = f'hostname {host} && exec sh -c "$0"'
    os.execvp("ip", ["ip", "netns", "exec", ns, "unshare", "--uts", "sh", "-c", script, " ".join(words)])
    return 255  # not reached: execvp replaces this process or raises


if __name__ == "__main__":
    if sys.argv[1:2] != ["agent"]:
        print("usage: python -m commlib.cluster.netns agent HOST=NS[,HOST=NS...] HOST COMMAND...", file=sys.stderr)
        sys.exit(2)
    sys.exit(agent(sys.argv[2:]))
