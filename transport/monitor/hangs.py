"""Hangs: a stuck operation examined against the other ranks' states, reported, followed up, aborted."""

from __future__ import annotations

import contextlib
import os
import sys
import time

from mpi4py import MPI

from .. import wavefront
from ..sidechannel import ask_many
from ..watchdog import Stuck
from ..wavefront import analyse, call_text, ranks_text, straggler_lines

ABORT_CODE = 70  # exit status of a job the monitor aborts


class Hangs:
    """Part of the monitor (:class:`transport.monitor.Monitor`): what happens to the watchdog's stuck operations."""

    def _watch(self, now: float, finishing: bool = False) -> None:
        new, reminders, resolved = self.watchdog.poll(now)
        if finishing:
            new, reminders = [], []
        for stuck in new:
            self._examine(stuck, now)
        if not finishing:
            for stuck in list(self.watchdog.stuck.values()):
                if stuck not in new and stuck.extra.get("verdict") != "hang" and now >= stuck.extra["next_look"]:
                    self._examine(stuck, now)
        hangs = [s for s in reminders if s.extra.get("verdict") == "hang" and s.extra.get("told")]
        told = [s for s in resolved if s.extra.get("told")]  # what this rank reported gets its follow-up
        resolved_line = "resolved: {call} completed after {waited:.1f} s"
        follow_ups = (
            ("hang-reminder", hangs, "still waiting: {call} for {waited:.1f} s"),
            ("hang-resolved", [s for s in told if s.extra["verdict"] == "hang"], resolved_line),
            ("straggler-resolved", [s for s in told if s.extra["verdict"] != "hang"], resolved_line),
        )
        for kind, stucks, line in follow_ups:
            for stuck in stucks:
                call = call_text(self.recorder.describe(stuck.record, now))
                text = line.format(call=call, waited=stuck.waited)
                self.reporter.emit({"kind": kind, "call": call, "waited": stuck.waited, "lines": [text]})

    def _act(self, now: float) -> None:
        """Carry out the delayed abort of a hang another rank reports, if that hang is still there."""
        for stuck in list(self.watchdog.stuck.values()):
            due = stuck.extra.get("abort_at")
            if due is not None and now >= due:
                self._abort(f"{stuck.extra.get('call', 'an operation')} hung and did not resolve")

    def _examine(self, stuck: Stuck, now: float) -> None:
        """Ask the ranks ``stuck`` waits for what they do: a hang on evidence, a straggler while they run code.

        A rank silent, blocked in another operation or in another collective
        makes a hang at once. Ranks running code make a straggler warning, told
        once; the wait is looked at again every few seconds and becomes a hang
        when one of them is seen at the same place for ``floor`` seconds (or
        stops answering, or blocks). Ranks that cannot be observed make a hang
        after ``floor`` seconds, on the clock alone.
        """
        op = self.recorder.describe(stuck.record, now)
        op.update(waited=stuck.waited, limit=stuck.limit)
        members = list(stuck.record[1].members) or [self.rank]
        ask_ranks = self._waited_for(op, members)
        states, silent = self._gather(ask_ranks, "state")
        stuck.extra["next_look"] = now + max(0.5, min(5.0, self.floor / 12))
        if self.aborting is not None:  # the job ends under another rank's report: its peers may be gone already
            if not stuck.extra.get("told_verdict"):
                stuck.extra["told_verdict"] = "aborting"
                call, leader = call_text(op), self.aborting["rank"]
                line = f"waiting in {call}; rank {leader} aborts the job ({self.aborting['why']})"
                self.reporter.emit({"kind": "hang-wait", "call": call, "leader": leader, "lines": [line]})
            return
        finding = analyse(op, self.rank, members, states, silent)
        finding["states"] = {str(r): s for r, s in states.items()}
        verdict = finding["verdict"]
        stuck.extra["call"] = finding["call"]
        if verdict == "straggler":
            verdict = self._still_moving(stuck, finding, now)
        elif verdict == "unknown" and stuck.waited >= self.floor:
            verdict = "hang"
        stuck.extra["verdict"] = verdict
        if verdict == "unknown" or verdict == stuck.extra.get("told_verdict"):
            return
        stuck.extra["told_verdict"] = verdict
        leader = self.rank
        if op["kind"] == "collective":
            leader = min([*finding.get("arrived", []), *finding.get("mismatched", []), self.rank])
        finding["leader"] = stuck.extra["leader"] = leader
        if leader != self.rank:
            self.reporter.emit(
                {
                    "kind": "hang-wait",
                    "verdict": verdict,
                    "call": finding["call"],
                    "waited": stuck.waited,
                    "leader": leader,
                    "suspects": finding["suspects"],
                    "lines": [
                        f"waiting in {finding['call']} for {stuck.waited:.1f} s ({verdict}); "
                        f"suspects: {ranks_text(finding['suspects'])}; rank {leader} reports the details"
                    ],
                }
            )
        elif verdict == "straggler":
            lines = straggler_lines(finding, self.rank)
            lines.append(
                f"  not a hang while it runs: a hang if it stays at the same place for {self.floor:g} s, "
                "stops answering or blocks in another operation"
            )
            stragglers = finding["suspects"]
            first = stragglers[0] if stragglers else None
            record = {"kind": "straggler", "source": "wait", "straggler": first, "stragglers": stragglers}
            self.reporter.emit({**finding, **record, "lines": lines})
            stuck.extra["told"] = True
        else:
            if self.action == "dump":
                finding["lines"].append(self._dump_all(ask_ranks))
            finding["reported_after"] = time.perf_counter() - stuck.record[0]  # since the operation began
            self.reporter.emit(finding)
            stuck.extra["told"] = True
        if verdict == "hang" and self.action == "abort":
            if leader == self.rank:
                self._abort(f"{finding['call']} hung")
            else:  # leave the leader time to report first; cancelled if the operation completes
                stuck.extra["abort_at"] = now + 2 * self.timeout + 2.0

    def _waited_for(self, op: dict, members: list[int]) -> list[int]:
        """The ranks to ask about a stuck ``op``: a collective's members; a message's peers and this rank."""
        if op["kind"] == "collective":
            return members
        named = [op[k] for k in ("dest_world", "source_world") if k in op]
        wildcard = "source" in op and "source_world" not in op
        return sorted(set(members if wildcard else named) | {self.rank})

    def _still_moving(self, stuck: Stuck, finding: dict, now: float) -> str:
        """``straggler`` while every rank waited for has moved within ``floor`` s; else ``hang`` (cause rewritten)."""
        places = stuck.extra.setdefault("places", {})
        for r in finding["suspects"]:
            stack = finding["ranks"].get(str(r), {}).get("stack", [])
            place = tuple((f[0], f[1], f[2]) for f in stack)
            if r not in places or places[r][0] != place:
                places[r] = (place, now - stuck.waited if r not in places else now)
        still = [r for r in finding["suspects"] if now - places[r][1] >= self.floor]
        if not still:
            return "straggler"
        where = [wavefront.where(finding["ranks"].get(str(r), {}).get("stack", [])) for r in still]
        finding["cause"] = (
            f"{finding['cause']}; {ranks_text(still)} ha{'s' if len(still) == 1 else 've'} stayed at the same place "
            f"for at least {self.floor:g} s ({'; '.join(where)}): a loop that makes no progress, or a wait outside MPI"
        )
        finding["lines"][-1] = f"  probable cause: {finding['cause']}"
        finding["verdict"] = "hang"
        return "hang"

    def _abort(self, why: str) -> None:
        """End the job: MPI_Abort where MPI allows calls from this thread, else this process (mpiexec ends the rest)."""
        multiple = self.thread_level is not None and self.thread_level >= MPI.THREAD_MULTIPLE
        how = "" if multiple else "; MPI is not THREAD_MULTIPLE: ending this process, mpiexec ends the others"
        self.reporter.emit(
            {
                "kind": "error",
                "lines": [f"aborting the job with exit code {ABORT_CODE} ({why}; COMMLIB_MONITOR_ACTION=abort{how})"],
            }
        )
        with contextlib.suppress(Exception):
            sys.stderr.flush()
            sys.stdout.flush()
        with contextlib.suppress(Exception):  # so that no rank reports the peers this abort takes down as dead
            ask_many(self.peers().values(), "aborting", min(1.0, self.timeout), rank=self.rank, why=why)
        try:
            if multiple:
                MPI.COMM_WORLD.Abort(ABORT_CODE)
        finally:
            os._exit(ABORT_CODE)
