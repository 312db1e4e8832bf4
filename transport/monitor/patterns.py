"""Stragglers and slowdowns: collective arrival times pulled from every rank, findings turned into reports."""

from __future__ import annotations

import threading
import time

from ..sidechannel import SideChannelError, ask


class Patterns:
    """Part of the monitor (:class:`transport.monitor.Monitor`): arrival collection and its reports."""

    def _pull(self) -> None:
        peers = self.peers()
        answers: dict[int, tuple[dict, float, float]] = {}

        def one(r: int, peer: dict | None) -> None:
            since = self.collector.cursor.get(r, 0)
            sent = time.perf_counter()
            try:
                answer = (
                    self.arrivals({"since": since})
                    if peer is None
                    else ask(peer, "arrivals", min(self.timeout, max(1.0, self.interval)), since=since)
                )
            except SideChannelError:
                return
            answers[r] = (answer, sent, time.perf_counter())

        one(self.rank, None)
        threads = [
            threading.Thread(target=one, args=(r, p), name="commlib-monitor-pull", daemon=True)
            for r, p in peers.items()
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.timeout + 1.0)
        for finding in self.collector.pull(dict(answers)):
            self._report_pattern(finding)

    def _label(self, ident: str) -> tuple[str, int]:
        for state in self.recorder.comms():
            if state.ident == ident:
                return state.label, state.coll_entered
        return f"communicator {ident}", 0

    def _report_pattern(self, finding: dict) -> None:
        label, at = self._label(finding["comm"])
        finding = {**finding, "label": label, "seen_at": at}
        if finding["kind"] == "straggler":
            r = finding["straggler"]
            peer = self._record if r == self.rank else self.peers().get(r, {})
            where = f" (pid {peer.get('pid')} on {peer.get('host')}, node {peer.get('node')})" if peer else ""
            finding["node"] = peer.get("node")
            why = {
                "compute": "a compute straggler (it spends longer between collectives than the others)",
                "communication": "it leaves each collective late: a slow link or node on its side; probing the links",
                "unknown": "a straggler",
            }[finding["cause"]]
            finding["lines"] = [
                f"STRAGGLER: rank {r}{where} arrived last at collectives on {label} in {finding['last']} of the "
                f"last {finding['window']} (#{finding['first_seq']}-#{finding['last_seq']}), a median "
                f"{finding['lateness'] * 1e3:.1f} ms after the others (threshold {finding['threshold'] * 1e3:.1f} ms, "
                f"period {finding['period'] * 1e3:.1f} ms): {why}"
            ]
            self.reporter.emit(finding)
            if finding["cause"] == "communication" and time.perf_counter() - self._last_probe > 30.0:
                self.probe_links()
            return
        finding["lines"] = [
            f"SLOWDOWN: {finding['op'] or 'collectives'} on {label} now spend{'s' if finding['op'] else ''} "
            f"{finding['now'] * 1e3:.2f} ms communicating, "
            f"{finding['now'] / finding['baseline']:.1f}x its baseline {finding['baseline'] * 1e3:.2f} ms "
            f"(#{finding['first_seq']}-#{finding['last_seq']}); probing the links"
        ]
        self.reporter.emit(finding)
        if time.perf_counter() - self._last_probe > 30.0:
            self.probe_links()
