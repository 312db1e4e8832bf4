"""Link probes: the node-to-node bandwidth matrix, measured on demand, and its slow nodes and links reported."""

from __future__ import annotations

import time

from .. import linkprobe

PROBE_BYTES = 2 << 20
PROBE_ROUNDS = 5
PROBE_DEADLINE = 60.0  # seconds a whole link probe may take; pairs left then are reported as not measured


class LinkProbes:
    """Part of the monitor (:class:`transport.monitor.Monitor`): probing the links between nodes."""

    def _probe_request(self, request: dict) -> dict:
        return linkprobe.probe_request(request, self.peers(refresh=True), self._probe_timeout())

    def _probe_timeout(self) -> float:
        return self.timeout + PROBE_BYTES / 1.25e6  # down to 10 Mbit/s

    def probe_links(self) -> dict:
        """Measure the node-to-node matrix now, report slow nodes and links; returns the localisation.

        Callable from any rank's application thread or the monitor's; needs the
        side channel (a one-rank or one-node job has nothing to compare).
        """
        with self._lock:
            self._last_probe = time.perf_counter()
            if self._stop.is_set():
                return {"nodes": [], "slow_nodes": [], "slow_links": [], "bad": [], "skipped": "monitor stopping"}
            everyone = {**self.peers(refresh=True), self.rank: self._record}
            reps: dict[str, dict] = {}
            for r in sorted(everyone):
                reps.setdefault(str(everyone[r].get("node")), everyone[r])
            if len(reps) < 2:
                return {"nodes": list(reps), "slow_nodes": [], "slow_links": [], "bad": [], "skipped": "one node"}
            cells, failed = linkprobe.matrix(
                reps, self.rank, PROBE_BYTES, PROBE_ROUNDS, self._probe_timeout(),
                deadline=time.monotonic() + PROBE_DEADLINE,
            )  # fmt: skip
            result = linkprobe.localise(cells)
            result["failed"] = failed
            if self._stop.is_set():  # the job ended under the probe: peers that left look like broken links
                result["skipped"] = "monitor stopping"
                return result
            records, self._known_slow = linkprobe.records(result, cells, len(reps), self._known_slow)
            for record in records:
                self.reporter.emit(record)
            return result
