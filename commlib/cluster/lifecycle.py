"""Emulated clusters alive in this process, and their teardown on exit and on SIGTERM/SIGINT."""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import signal
import sys
import threading
from typing import Any

from .netns import PREFIX, ClusterError, tool

__all__ = ["cluster_available", "forget", "install_handlers", "new_key", "remember"]

_counter = itertools.count()
_live: set[Any] = set()
_lock = threading.Lock()
_previous_handlers: dict[int, object] = {}


def new_key() -> str:
    """A name prefix no other cluster of this process (or a live other process) uses."""
    return f"{PREFIX}{os.getpid()}-{next(_counter)}"


def remember(cluster: Any) -> None:
    """Count ``cluster`` among those torn down at exit and on a signal."""
    with _lock:
        _live.add(cluster)


def forget(cluster: Any) -> None:
    with _lock:
        _live.discard(cluster)


_availability: tuple[bool, str] | None = None


def cluster_available() -> tuple[bool, str]:
    """Whether emulated clusters can be built here: ``(True, "")`` or ``(False, reason to skip)``.

    Needs root, ``ip``, ``tc`` and ``unshare``, and a kernel that lets us create
    a namespace with a veth link shaped by ``tbf``; the answer is probed once.
    """
    global _availability
    if _availability is not None:
        return _availability
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        uid = os.geteuid() if hasattr(os, "geteuid") else "?"
        _availability = (False, f"emulated cluster needs root (network namespaces, tc); running as uid {uid}")
        return _availability
    missing = [name for name in ("ip", "tc", "unshare") if shutil.which(name) is None]
    if missing:
        _availability = (False, f"emulated cluster needs {', '.join(missing)} on PATH (iproute2, util-linux)")
        return _availability
    ns = f"{new_key()}-probe"
    try:
        tool("ip", "netns", "add", ns)
        tool("ip", "-n", ns, "link", "add", "pa", "type", "veth", "peer", "name", "pb")
        tbf = ["tbf", "rate", "1gbit", "burst", "64kb", "latency", "50ms"]
        tool("tc", "-n", ns, "qdisc", "add", "dev", "pa", "root", *tbf)
        _availability = (True, "")
    except ClusterError as exc:
        _availability = (False, f"emulated cluster cannot be built here: {exc}")
    finally:
        tool("ip", "netns", "del", ns, check=False)
    return _availability


def _close_all() -> None:
    """Close every live cluster of this process; a failure is reported and the others are still closed."""
    with _lock:
        clusters = list(_live)
    for cl in clusters:
        try:
            cl.close()
        except Exception as exc:
            print(f"commlib.cluster: teardown of {cl.name!r} failed: {exc}", file=sys.stderr)


def _on_signal(signum: int, frame) -> None:
    _close_all()
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def install_handlers() -> None:
    """Tear clusters down on SIGTERM/SIGINT (then do what the previous handler did) and at exit."""
    if _previous_handlers or threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        _previous_handlers[sig] = signal.getsignal(sig)
        signal.signal(sig, _on_signal)


atexit.register(_close_all)
