"""Where ranks diverge: their records matched by communicator and collective sequence number, then told."""

from __future__ import annotations

from collections.abc import Mapping

from ..wavefront import call_text, ranks_text
from .schema import PEER_FIELDS, parse_members

FRONTIER = 8  # collectives past the last completed one described per communicator


def _signature(entry: dict) -> str:
    return f"{entry['op']}(root={entry['root']})" if "root" in entry else entry["op"]


def _age(dump: dict, entry: dict) -> float:
    return max(0.0, (dump["clock"]["wall_ns"] - entry["enter_ns"]) / 1e9)


def _doing(dump: dict | None) -> str:
    """What a rank was doing when it dumped: its calls in flight, else running outside MPI."""
    if dump is None:
        return "its dump is missing"
    calls = [e for e in dump["entries"] if e["state"] == "in-flight"]
    if not calls:
        return "no call in flight (running outside MPI)"
    blocking = [e for e in calls if e.get("blocking")] or calls
    return "in " + "; ".join(f"{call_text(_sized(e))} for {_age(dump, e):.1f} s" for e in blocking[-3:])


def _sized(entry: dict) -> dict:
    return entry if "size" in entry else {**entry, "size": "?"}


def diverge(dumps: Mapping[int, dict], silent: Mapping[int, str] | None = None) -> dict:
    """Where the ranks' flight records diverge; ``dumps`` are validated per-rank dumps by rank (a subset is fine).

    Per communicator (by its identity, the same on every member): the last
    collective every present member completed, then for the next ones
    (``frontier``) which ranks are inside (in flight), done, or have not
    entered it, and what those are doing instead; the collectives whose
    operation or root differs between ranks (``mismatches``); members whose
    dump is missing. Also point-to-point calls in flight, with what their
    peer is doing. ``diverged`` is true when any of these shows a rank
    waiting or ranks disagreeing.
    """
    silent = dict(silent or {})
    present = sorted(dumps)
    world = max((d["world_size"] for d in dumps.values()), default=0)
    jobs = sorted({d["job"] for d in dumps.values() if d["job"]})
    comms: dict[str, dict] = {}
    for rank in present:
        for comm in dumps[rank]["comms"]:
            comms.setdefault(comm["ident"], comm)
    out_comms = []
    for ident, comm in comms.items():
        members = parse_members(comm["members"], world)
        if len(members) < 2:
            continue
        out_comms.append(_comm(ident, comm, members, dumps))
    p2p = []
    for rank in present:
        dump = dumps[rank]
        for entry in dump["entries"]:
            if entry["kind"] != "p2p" or entry["state"] != "in-flight":
                continue
            peer = entry.get("dest_world", entry.get("source_world"))
            item = {
                "rank": rank,
                "call": call_text(_sized(entry)),
                "comm": entry["comm"],
                "op": entry["op"],
                "seq": entry["seq"],
                "waited": _age(dump, entry),
                **{k: entry[k] for k in PEER_FIELDS if k in entry},
                "peer": peer,
            }
            if peer is not None and peer != rank:
                item["peer_doing"] = _doing(dumps.get(peer))
            elif peer is None and "source" in entry:
                item["peer_doing"] = "any source"
            p2p.append(item)
    dropped = {r: [d["dropped"], d["recorded"]] for r, d in dumps.items() if d["dropped"]}
    diverged = bool(p2p) or any(c["frontier"] or c["mismatches"] for c in out_comms)
    return {
        "job": jobs[0] if len(jobs) == 1 else (jobs or None),
        "world_size": world,
        "ranks": present,
        "missing": [r for r in range(world) if r not in dumps],
        "silent": {str(r): silent[r] for r in sorted(silent)},
        "dropped": {str(r): v for r, v in sorted(dropped.items())},
        "comms": out_comms,
        "p2p": p2p,
        "diverged": diverged,
    }


def _comm(ident: str, comm: dict, members: list[int], dumps: Mapping[int, dict]) -> dict:
    here = [r for r in members if r in dumps]
    counters: dict[int, tuple[int, int]] = {}
    inflight: dict[int, dict[int, dict]] = {}  # seq -> rank -> entry
    calls: dict[int, dict[str, list[int]]] = {}  # seq -> signature -> ranks
    ops: dict[int, str] = {}
    for rank in here:
        mine = next((c for c in dumps[rank]["comms"] if c["ident"] == ident), None)
        counters[rank] = (mine["coll_entered"], mine["coll_done"]) if mine else (0, 0)
        for entry in dumps[rank]["entries"]:
            if entry["comm"] != ident or entry["kind"] != "collective":
                continue
            seq = entry["seq"]
            ops.setdefault(seq, entry["op"])
            ranks = calls.setdefault(seq, {}).setdefault(_signature(entry), [])
            if rank not in ranks:
                ranks.append(rank)
            if entry["state"] == "in-flight":
                inflight.setdefault(seq, {})[rank] = entry
    done = min((counters[r][1] for r in here), default=0)
    top = max((counters[r][0] for r in here), default=0)
    frontier = []
    for seq in range(done + 1, min(top, done + FRONTIER) + 1):
        inside = sorted(inflight.get(seq, {}))
        absent = [r for r in here if counters[r][0] < seq]
        step = {
            "seq": seq,
            "op": ops.get(seq),
            "inside": inside,
            "done": [r for r in here if r not in inside and r not in absent],
            "not_entered": absent,
            "waited": max((_age(dumps[r], e) for r, e in inflight.get(seq, {}).items()), default=0.0),
            "last_entered": {str(r): counters[r][0] for r in absent},
            "doing": {str(r): _doing(dumps[r]) for r in absent},
        }
        frontier.append(step)
    mismatches = [
        {"seq": seq, "calls": {sig: sorted(ranks) for sig, ranks in sorted(found.items())}}
        for seq, found in sorted(calls.items())
        if len(found) > 1
    ]
    return {
        "ident": ident,
        "label": comm["label"],
        "size": len(members),
        "members": comm["members"],
        "present": here,
        "missing": [r for r in members if r not in dumps],
        "completed": done,
        "completed_op": ops.get(done),
        "entered": {str(r): counters[r][0] for r in here},
        "frontier": frontier,
        "more": max(0, top - done - FRONTIER),
        "mismatches": mismatches,
    }


def describe(analysis: dict) -> list[str]:
    """The lines a person reads: per communicator where its ranks stand, then point-to-point calls in flight."""
    ranks, world = analysis["ranks"], analysis["world_size"]
    job = analysis["job"]
    head = f"flight records of {ranks_text(ranks)} of {world}" + (f" (job {job})" if isinstance(job, str) else "")
    lines = [head + (f"; no dump from {ranks_text(analysis['missing'])}" if analysis["missing"] else "")]
    for rank, reason in analysis["silent"].items():
        lines.append(f"  rank {rank}: {reason}")
    for rank, (dropped, recorded) in analysis["dropped"].items():
        lines.append(
            f"  rank {rank}: the oldest {dropped} of its {recorded} calls are not in its dump (ring overwritten)"
        )
    for comm in analysis["comms"]:
        last = f"#{comm['completed']} ({comm['completed_op']})" if comm["completed_op"] else f"#{comm['completed']}"
        lines.append(
            f"{comm['label']} [{comm['ident']}] ({comm['size']} ranks): "
            + (f"every member with a dump completed {last}" if comm["completed"] else "no collective completed by all")
        )
        if comm["missing"]:
            lines.append(f"  no dump from members {ranks_text(comm['missing'])}: their progress is unknown")
        for step in comm["frontier"]:
            what = f"  #{step['seq']} {step['op'] or '(operation not in any record)'}:"
            parts = []
            if step["inside"]:
                parts.append(f"inside: {ranks_text(step['inside'])} (for {step['waited']:.1f} s)")
            if step["done"]:
                parts.append(f"done: {ranks_text(step['done'])}")
            if step["not_entered"]:
                parts.append(f"NOT entered: {ranks_text(step['not_entered'])}")
            lines.append(f"{what} {'; '.join(parts)}")
            for rank in step["not_entered"]:
                r = str(rank)
                lines.append(f"    rank {rank} (last entered #{step['last_entered'][r]}): {step['doing'][r]}")
        if comm["more"]:
            lines.append(f"  ... and {comm['more']} more collectives entered by some rank")
        for bad in comm["mismatches"]:
            calls = "; ".join(f"{sig} on {ranks_text(rs)}" for sig, rs in bad["calls"].items())
            lines.append(f"  MISMATCH at #{bad['seq']}: {calls}")
    if analysis["p2p"]:
        lines.append("point-to-point calls in flight:")
        for item in analysis["p2p"]:
            peer = ""
            if "peer_doing" in item:
                who = f"rank {item['peer']}" if item["peer"] is not None else "its peer"
                peer = f"; {who}: {item['peer_doing']}"
            lines.append(f"  rank {item['rank']}: {item['call']} for {item['waited']:.1f} s{peer}")
    lines.append(
        "verdict: the ranks diverge (see above)"
        if analysis["diverged"]
        else "verdict: no divergence: nothing in flight, every rank at the same collectives"
    )
    return lines
