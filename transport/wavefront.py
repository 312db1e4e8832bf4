"""Hang analysis: from every rank's last entered and completed operations, who is holding the others up.

A collective numbered ``s`` on a communicator cannot complete before every
member has entered it. Given the states the ranks sent over the side channel
(see :meth:`transport.monitor.Monitor.state`), :func:`analyse` places each
member on the wavefront: arrived and waiting, not yet arrived (and what it
is doing instead: blocked in another operation, or running code, with its
Python stack), arrived in a different operation (a collective mismatch), or
silent (stopped, dead, unreachable, or not monitored). For a point-to-point
operation it looks at the peer instead. It returns a finding with the
probable cause, human-readable lines and a verdict: ``hang`` when the evidence
proves one (a rank silent, blocked in another operation or in a different
collective, a deadlock, or every member inside and none leaving),
``straggler`` when the ranks waited for are running code (they may yet come),
``unknown`` when they cannot be observed. It touches neither MPI nor sockets,
so it is tested on made-up states.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

__all__ = [
    "analyse", "call_text", "doing", "is_blocked", "parse_ranges", "ranges", "ranks_text", "stack_of",
    "straggler_lines", "user_frame", "where",
]  # fmt: skip

_OURS = tuple(
    os.path.dirname(os.path.abspath(p)) + os.sep
    for p in (__file__, os.path.join(os.path.dirname(__file__), "..", "commlib", "__init__.py"))
)
_SKIP = ("mpi4py" + os.sep, os.sep + "threading.py", os.sep + "runpy.py")


def ranges(ranks: tuple[int, ...] | list[int]) -> str:
    """``(0, 1, 2, 5)`` as ``"0-2,5"`` (the inverse of :func:`parse_ranges`)."""
    parts: list[str] = []
    items = sorted(ranks)
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[j] + 1:
            j += 1
        parts.append(str(items[i]) if i == j else f"{items[i]}-{items[j]}")
        i = j + 1
    return ",".join(parts)


def ranks_text(ranks: Iterable[int]) -> str:
    """``[0, 1, 2, 5]`` as ``"ranks 0-2,5"``, ``[3]`` as ``"rank 3"``, no rank as ``"none"``."""
    items = list(ranks)
    return ("rank " if len(items) == 1 else "ranks ") + ranges(items) if items else "none"


def parse_ranges(text: str) -> list[int]:
    """``"0-2,5"`` as ``[0, 1, 2, 5]``."""
    out: list[int] = []
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        out += range(int(first), int(last or first) + 1)
    return out


def user_frame(stack: list) -> list | None:
    """The innermost frame of ``stack`` (``[file, line, function, text]`` entries) outside commlib and mpi4py."""
    for frame in reversed(stack or []):
        path = os.path.abspath(frame[0])
        if not path.startswith(_OURS) and not any(s in path for s in _SKIP):
            return frame
    return None


def _frame_text(frame: list | None) -> str:
    if frame is None:
        return "an unknown place"
    path, line, function, text = frame
    return f"{os.path.basename(path)}:{line} in {function}" + (f" ({text.strip()})" if text else "")


def call_text(op: dict) -> str:
    """``Recv(source=1, tag=5) #3 on COMM_WORLD``: an operation record as one readable phrase."""
    fields = [f"{name}={op[name]}" for name in ("root", "dest", "source", "tag") if name in op]
    world = [
        f"{name} is world rank {op[name + '_world']}"
        for name in ("root", "dest", "source")
        if name + "_world" in op and op[name + "_world"] != op[name] and op.get("label") != "COMM_WORLD"
    ]
    suffix = f" [{'; '.join(world)}]" if world else ""
    call = f"{op['op']}({', '.join(fields)})" if fields else op["op"]
    return f"{call} #{op['seq']} on {op['label']} ({op['size']} ranks){suffix}"


def stack_of(state: dict) -> list:
    """The Python stack that matters in a rank's state: the thread blocked in a call, else the main thread."""
    threads = state.get("threads", {})
    blocked = [op for op in state.get("inflight", []) if op.get("blocking") and str(op.get("thread")) in threads]
    chosen = str(blocked[-1]["thread"]) if blocked else str(state.get("main"))
    return threads.get(chosen, {}).get("stack", [])


def doing(state: dict) -> str:
    """What a rank is doing now, from its side-channel state."""
    blocked = [op for op in state.get("inflight", []) if op.get("blocking")]
    if blocked:
        op = blocked[-1]
        return f"blocked in {call_text(op)} for {op['age']:.1f} s"
    waiting = [t for t in state.get("threads", {}).values() if t.get("waiting")]
    pending = state.get("inflight", [])
    if waiting and pending:
        ops = ", ".join(call_text(op) for op in pending[:3]) + (" ..." if len(pending) > 3 else "")
        return f"waiting for {ops}"
    return f"running at {where(stack_of(state))}"


def is_blocked(state: dict) -> bool:
    """Whether a rank's state shows it inside MPI: blocked in a call, or waiting for requests."""
    if any(op.get("blocking") for op in state.get("inflight", [])):
        return True
    return bool(state.get("inflight")) and any(t.get("waiting") for t in state.get("threads", {}).values())


def where(stack: list) -> str:
    """``train.py:48 in slow_compute (time.sleep(seconds))``: the user's innermost frame of ``stack``."""
    return _frame_text(user_frame(stack))


def straggler_lines(finding: dict, me: int) -> list[str]:
    """The warning for a wait on ranks that run code: where each is, how long ``me`` has waited."""
    lines = []
    for r in finding["suspects"]:
        info = finding["ranks"].get(str(r), {})
        lines.append(
            f"STRAGGLER: rank {r}{info.get('where_host', '')} is computing at {where(info.get('stack', []))}; "
            f"rank {me} has waited {finding['waited']:.1f} s for it in {finding['call']}"
        )
    return lines or [f"STRAGGLER: rank {me} has waited {finding['waited']:.1f} s in {finding['call']}"]


def _match(state: dict, ident: str) -> dict | None:
    """The peer's view of the communicator ``ident`` (same handle and members; else same members, if unique)."""
    comms = state.get("comms", {})
    if ident in comms:
        return comms[ident]
    digest = ident.split("-")[-1]
    same = [c for key, c in comms.items() if key.split("-")[-1] == digest]
    return same[0] if len(same) == 1 else None


def _op_at(state: dict, ident: str, seq: int) -> dict | None:
    for op in state.get("inflight", []):
        if op.get("comm") == ident and op.get("seq") == seq and op.get("kind") == "collective":
            return op
    return None


def analyse(
    stuck: dict,
    me: int,
    members: list[int],
    states: dict[int, dict],
    silent: dict[int, str],
) -> dict[str, Any]:
    """The finding for operation ``stuck`` of rank ``me`` (a record with ``waited`` and ``limit`` added).

    ``states`` holds the answers by world rank (``me`` included), ``silent``
    the reason for every rank that gave none ("no answer ...", "not monitored").
    """
    ranks: dict[int, dict[str, Any]] = {}
    header = f"HANG: {call_text(stuck)} has waited {stuck['waited']:.1f} s (limit {stuck['limit']:.1f} s)"
    if stuck["kind"] == "collective":
        finding = _collective(stuck, me, members, states, silent, ranks)
    else:
        finding = _point_to_point(stuck, me, members, states, silent, ranks)
    lines = [header, *finding.pop("lines")]
    for r in sorted(ranks):
        info = ranks[r]
        lines.append(f"  rank {r}{info.get('where_host', '')}: {info['status']}")
    lines.append(f"  probable cause: {finding['cause']}")
    return {
        "kind": "hang",
        "op": stuck["op"],
        "comm": stuck["comm"],
        "label": stuck["label"],
        "seq": stuck["seq"],
        "waited": stuck["waited"],
        "limit": stuck["limit"],
        "call": call_text(stuck),
        "members": members,
        "ranks": {str(r): info for r, info in ranks.items()},
        **finding,
        "lines": lines,
    }


def _host(state: dict | None) -> str:
    if not state:
        return ""
    return f" (pid {state.get('pid')} on {state.get('host')})"


def _place(state: dict, view: dict | None, seq: int, op: str) -> tuple[str, str]:
    """Where an answering member stands against collective ``op`` #``seq``: behind, left, mismatched or arrived,
    and its status line (``view``: its counters on the communicator, ``None`` if it never used it)."""
    entered = view["coll_entered"] if view else 0
    if view is None:
        return "behind", f"has never used this communicator; {doing(state)}"
    if entered < seq:
        last = f"last entered #{entered} ({view['last_op']})" if entered else "entered no collective on it yet"
        return "behind", f"has NOT arrived: {last}; {doing(state)}"
    if view["coll_done"] >= seq:
        return "left", f"has completed #{seq} (now at #{entered})"
    theirs = _op_at(state, view["ident"], seq)
    if theirs is not None and theirs["op"] != op:
        return "mismatched", f"arrived in {theirs['op']} as #{seq}, not {op}: collective MISMATCH"
    return "arrived", f"waiting in #{seq} for {theirs['age']:.1f} s" if theirs else f"entered #{seq}"


def _collective(stuck: dict, me: int, members: list[int], states: dict, silent: dict, ranks: dict) -> dict[str, Any]:
    ident, seq, op = stuck["comm"], stuck["seq"], stuck["op"]
    arrived, behind, mismatched, unanswered, unmonitored, left = [], [], [], [], [], []
    for r in members:
        state = states.get(r)
        if state is None:
            reason = silent.get(r, "no answer")
            (unmonitored if reason.startswith("not monitored") else unanswered).append(r)
            ranks[r] = {"status": reason}
            continue
        view = _match(state, ident)
        entered = view["coll_entered"] if view else 0
        done = view["coll_done"] if view else 0
        info: dict[str, Any] = {"entered": entered, "done": done, "where_host": _host(state) if r != me else ""}
        info["stack"] = stack_of(state)
        group, info["status"] = _place(state, view, seq, op)
        {"behind": behind, "left": left, "mismatched": mismatched, "arrived": arrived}[group].append(r)
        ranks[r] = info
    lines = [
        f"  wavefront on {stuck['label']}: {_list(arrived + mismatched)} entered #{seq}"
        + (f"; {_list(behind)} not yet" if behind else "")
        + (f"; {_list(unanswered)} silent" if unanswered else "")
        + (f"; {_list(unmonitored)} unmonitored" if unmonitored else "")
    ]
    verdict = "hang"
    if unanswered:
        cause = (
            f"{_list(unanswered)} do{'es' if len(unanswered) == 1 else ''} not answer on the side channel: "
            + "; ".join(_silence(silent.get(r, "")) for r in unanswered)
        )
    elif mismatched:
        cause = (
            f"collective mismatch: {_list(mismatched)} called another collective as #{seq} where the others call {op}"
        )
    elif behind:
        blocked = [r for r in behind if is_blocked(states[r])]
        if blocked:
            cause = (
                f"{_list(behind)} ha{'s' if len(behind) == 1 else 've'} not reached {op} #{seq}; "
                f"{_list(blocked)} {'is' if len(blocked) == 1 else 'are'} blocked in another operation "
                "(ordering bug or a chain of waits: see its line)"
            )
        else:
            verdict = "straggler"
            cause = (
                f"{_list(behind)} ha{'s' if len(behind) == 1 else 've'} not reached {op} #{seq} and "
                f"{'is' if len(behind) == 1 else 'are'} running code (slow compute, or a code path that skips it)"
            )
    elif unmonitored:
        verdict = "unknown"
        cause = (
            f"{_list(unmonitored)} run{'s' if len(unmonitored) == 1 else ''} without the commlib monitor: state unknown"
        )
    else:
        cause = f"every member entered {op} #{seq} and none left: suspect the network or the MPI library"
    suspects = unanswered + mismatched + behind + ([] if (unanswered or mismatched or behind) else unmonitored)
    return {
        "arrived": arrived,
        "behind": behind,
        "mismatched": mismatched,
        "silent": unanswered,
        "unmonitored": unmonitored,
        "left": left,
        "suspects": suspects,
        "cause": cause,
        "verdict": verdict,
        "lines": lines,
    }


def _silence(reason: str) -> str:
    """The part of a silent rank's reason that says what it is (stopped, gone, unreachable)."""
    _, known, what = reason.rpartition(": ")
    return what if known and what else "stopped (SIGSTOP), dead, or its host unreachable"


def _point_to_point(
    stuck: dict, me: int, members: list[int], states: dict, silent: dict, ranks: dict
) -> dict[str, Any]:
    peers = sorted({stuck[k] for k in ("dest_world", "source_world") if k in stuck})
    wildcard = "source" in stuck and "source_world" not in stuck
    if wildcard:
        peers = sorted(set(peers) | {r for r in members if r != me})
    suspects, silent_ranks = [], []
    for r in peers:
        state = states.get(r)
        if state is None:
            ranks[r] = {"status": silent.get(r, "no answer")}
            silent_ranks.append(r)
            suspects.append(r)
            continue
        ranks[r] = {"status": doing(state), "where_host": _host(state), "stack": stack_of(state)}
        suspects.append(r)
    lines = [f"  peer{'s' if len(peers) != 1 else ''}: {_list(peers) if peers else 'none named'}"]
    verdict = "hang"
    if silent_ranks:
        cause = f"{_list(silent_ranks)} do{'es' if len(silent_ranks) == 1 else ''} not answer: " + "; ".join(
            _silence(silent.get(r, "")) for r in silent_ranks
        )
    elif peers == [me]:
        verb = "send" if "source" in stuck else "receive"
        cause = f"rank {me} waits on itself: none of its threads has posted the matching {verb}"
    elif any(_waits_on(states.get(r), me) for r in peers):
        cause = "deadlock: the peer is itself blocked waiting for this rank"
    elif any(_skipped(states.get(r), states.get(me)) for r in peers):
        op = next(_skipped(states.get(r), states.get(me)) for r in peers if _skipped(states.get(r), states.get(me)))
        cause = (
            f"deadlock: the peer is blocked in {op['op']} #{op['seq']} on {op['label']}, a collective rank {me} "
            "has not entered (ordering bug: the collective and this call wait for each other)"
        )
    elif peers:
        verb = "post the matching send" if "source" in stuck else "post the matching receive"
        blocked = [r for r in peers if is_blocked(states[r])]
        if blocked:
            cause = f"{_list(peers)} did not {verb}: {_list(blocked)} blocked in another operation (see its line)"
        else:
            verdict = "straggler"
            cause = f"{_list(peers)} did not {verb} (see what it is doing)"
    else:
        verdict = "unknown"
        cause = "no peer named"
    return {
        "peers": peers,
        "silent": silent_ranks,
        "suspects": suspects,
        "cause": cause,
        "verdict": verdict,
        "lines": lines,
    }


def _waits_on(state: dict | None, rank: int) -> bool:
    if not state:
        return False
    for op in state.get("inflight", []):
        if op.get("blocking") and rank in (op.get("dest_world"), op.get("source_world")):
            return True
    return False


def _skipped(peer: dict | None, mine: dict | None) -> dict | None:
    """The collective the peer is blocked in that this rank is a member of and has not entered, if any."""
    if not peer or not mine:
        return None
    for op in peer.get("inflight", []):
        if op.get("blocking") and op.get("kind") == "collective":
            view = _match(mine, op["comm"])
            if view is not None and view["coll_entered"] < op["seq"]:
                return op
    return None


def _list(ranks: list[int]) -> str:
    if not ranks:
        return "no rank"
    if len(ranks) == 1:
        return f"rank {ranks[0]}"
    return "ranks " + ",".join(map(str, ranks))
