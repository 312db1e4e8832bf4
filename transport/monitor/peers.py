"""The other ranks as the monitor sees them: their side-channel records, asking them, naming a silent one."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from ..sidechannel import SideChannelError, ask

_STATES = {"T": "stopped (SIGSTOP)", "t": "stopped by a debugger", "Z": "exited (a zombie)", "X": "exited"}
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    """This machine's boot id (its host name where /proc has none): ranks that share it can read each other's /proc."""
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return socket.gethostname()


class Peers:
    """Part of the monitor (:class:`transport.monitor.Monitor`): the other monitored ranks and their answers."""

    def peers(self, refresh: bool = False) -> dict[int, dict]:
        """Side-channel records of the other monitored ranks, by world rank."""
        if self.rendezvous is not None and not self._fixed_peers:
            now = time.monotonic()
            if refresh or (len(self._peers) < self.size and now - self._peers_read > 1.0):
                self._peers = self.rendezvous.peers(self.size)
                self._peers_read = now
        return {r: p for r, p in self._peers.items() if r != self.rank}

    def _gather(self, ranks: list[int], query: str) -> tuple[dict[int, dict], dict[int, str]]:
        peers = self.peers(refresh=True)
        answers: dict[int, dict] = {}
        silent: dict[int, str] = {}
        threads = []

        def silence(r: int) -> str:
            return (
                f"no answer on the side channel within {self.timeout:g} s (pid {peers[r].get('pid')} "
                f"on {peers[r].get('host')}): {self._process_state(peers[r])}"
            )

        def one(r: int) -> None:
            try:
                answers[r] = ask(peers[r], query, self.timeout)
            except SideChannelError:
                silent[r] = silence(r)

        for r in ranks:
            if r == self.rank:
                answers[r] = self.state() if query == "state" else self.dump()
            elif r in peers:
                threads.append(threading.Thread(target=one, args=(r,), name="commlib-monitor-ask", daemon=True))
            else:
                silent[r] = "not monitored (no side channel registered for it)"
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.timeout + 1.0)
        for r in ranks:
            if r not in answers and r not in silent:  # its asking thread is still waiting
                silent[r] = silence(r)
        return answers, silent

    def _process_state(self, peer: dict) -> str:
        """What a silent peer's process is, read from /proc where it runs on this machine."""
        pid = peer.get("pid")
        if peer.get("boot") != self.boot or not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            return "stopped (SIGSTOP), dead, or its host unreachable"
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return "exited (its process is gone)"
        state = stat.rpartition(")")[2].split()[:1]
        return _STATES.get(state[0] if state else "", "running but not answering (its side channel is stuck)")

    def _coordinator(self) -> bool:
        return self.size > 1 and all(r > self.rank for r in self.peers())
