"""Flight-record dumps (transport.flightdump): the format from a real recorder, validation of hostile
input, matching ranks on made-up dumps, and the ``python -m commlib monitor`` analyser."""

from __future__ import annotations

import copy
import json
import os
import stat
import time

import numpy as np
import pytest
from mpi4py import MPI

from transport import flightdump, reports
from transport.flightdump import schema
from transport.monitor import Monitor

WORLD = "44000000.1-00000000"


# -- made-up dumps ----------------------------------------------------------------------
def comm(ident=WORLD, members="0-2", entered=0, done=None, p2p=0, label="COMM_WORLD"):
    size = len(flightdump.parse_members(members, 1 << 20))
    done = entered if done is None else done
    return {"ident": ident, "label": label, "size": size, "members": members, "coll_entered": entered,
            "coll_done": done, "p2p": p2p, "last_op": ""}  # fmt: skip


def entry(op, seq, *, state="completed", kind="collective", ident=WORLD, label="COMM_WORLD", size=3, at=1, **peers):
    enter = 1_000_000_000_000 + at * 1_000_000
    return {"op": op, "comm": ident, "label": label, "size": size, "seq": seq, "kind": kind, "blocking": True,
            "thread": 1, "enter_ns": enter, "leave_ns": None if state == "in-flight" else enter + 1000,
            "state": state, **peers}  # fmt: skip


def dump(rank, comms, entries=(), *, world=3, dropped=0, job="job-1", wall=1_000_010_000_000):
    entries = list(entries)
    return {"format": "commlib-flight-record", "version": 1, "job": job, "rank": rank, "world_size": world,
            "host": "h", "pid": 100 + rank, "node": "n", "clock": {"wall_ns": wall, "mono_ns": 5},
            "comms": comms, "entries": entries, "capacity": 16, "recorded": len(entries) + dropped,
            "dropped": dropped}  # fmt: skip


def allreduces(n, state_last="completed", at=0):
    return [entry("Allreduce", s, at=at + s, state=state_last if s == n else "completed") for s in range(1, n + 1)]


def hang_of_three():
    """Ranks 0 and 2 inside Allreduce #4; rank 1 never entered it: it waits in a receive from rank 0."""
    inside = [comm(entered=4, done=3)]
    return {
        0: dump(0, inside, allreduces(4, "in-flight")),
        1: dump(1, [comm(entered=3, p2p=1)], [*allreduces(3), entry("Recv", 1, kind="p2p", state="in-flight", at=9,
                                                                    source=0, source_world=0, tag=99)]),
        2: dump(2, inside, allreduces(4, "in-flight")),
    }  # fmt: skip


# -- the format, from a real recorder ------------------------------------------------------
def test_a_monitor_dumps_a_valid_self_describing_record(tmp_path):
    monitor = Monitor(ring=16, report=str(tmp_path / "r-{rank}.jsonl"))
    world, buf = MPI.COMM_WORLD, np.zeros(2)
    before = time.time_ns()
    for _ in range(20):
        monitor.leave(monitor.enter(world, "Allreduce", (buf, buf), {}))
    monitor.enter(world, "Recv", (buf,), {"source": 0, "tag": 5})
    doc = monitor.dump()
    after = time.time_ns()
    flightdump.validate(json.loads(json.dumps(doc)), "dump")  # JSON-serialisable and valid
    assert (doc["format"], doc["version"], doc["rank"], doc["world_size"]) == ("commlib-flight-record", 1, 0, 1)
    assert doc["pid"] == os.getpid() and doc["capacity"] == 16
    assert doc["recorded"] == 21 and doc["dropped"] == 4 and len(doc["entries"]) == 17  # 16 kept + 1 in flight
    (world_comm,) = doc["comms"]
    assert (world_comm["label"], world_comm["coll_entered"], world_comm["coll_done"], world_comm["p2p"]) == (
        "COMM_WORLD", 20, 20, 1,
    )  # fmt: skip
    assert [e["seq"] for e in doc["entries"][:-1]] == list(range(5, 21))
    last = doc["entries"][-1]
    assert (last["op"], last["state"], last["leave_ns"], last["source"], last["tag"]) == (
        "Recv",
        "in-flight",
        None,
        0,
        5,
    )
    for e in doc["entries"]:  # wall-clock nanoseconds, converted from the recorder's monotonic clock
        assert before - 10**6 <= e["enter_ns"] <= after and (e["leave_ns"] is None or e["enter_ns"] <= e["leave_ns"])
    assert doc["clock"]["wall_ns"] >= last["enter_ns"]
    small = monitor.dump({"limit": 3})
    assert len(small["entries"]) == 4 and small["dropped"] == 4 + 13 and small["recorded"] == 21
    path = monitor.write_dump()
    assert path.endswith("r-0.jsonl.flight.json") and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert flightdump.load([path])["ranks"][0]["entries"][-1]["op"] == "Recv"
    mine = monitor.write_dump(str(tmp_path / "mine.json"))
    assert json.loads(open(mine).read())["recorded"] == 21


def test_the_dump_action_writes_one_combined_document_and_checks_the_answers(tmp_path):
    monitor = Monitor(ring=16, report=str(tmp_path / "r-{rank}.jsonl"))
    monitor.leave(monitor.enter(MPI.COMM_WORLD, "Barrier", (), {}))
    monitor.size = 2  # as one of two ranks whose peer answers garbage
    good = monitor.dump()
    monitor._gather = lambda ranks, query: ({0: good, 1: {"format": "commlib-flight-record", "version": 1}}, {})
    line = monitor._dump_all([0, 1])
    path = tmp_path / "r-0.jsonl.dump.json"
    assert f"flight records of rank 0 written to {path}" in line
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    doc = json.loads(path.read_text())
    flightdump.validate(doc, "combined")
    assert doc["format"] == "commlib-flight-records" and doc["version"] == 1 and list(doc["ranks"]) == ["0"]
    assert "answered an invalid flight record (the dump of rank 1: missing fields job" in doc["silent"]["1"]


# -- validation -----------------------------------------------------------------------------
def _bad(change):
    doc = copy.deepcopy(hang_of_three()[1])
    change(doc)
    return doc


HOSTILE = [
    (lambda d: d.update(format="commlib-flight-recorder"), "format 'commlib-flight-recorder' is not"),
    (lambda d: d.update(version=2), "version 2 (newer than this commlib reads)"),
    (lambda d: d.update(version="1"), "version must be an integer"),
    (lambda d: d.pop("entries"), "missing field entries"),
    (lambda d: d.update(rank=True), "rank: expected an integer in [0, 2], got True"),
    (lambda d: d.update(rank=3), "rank: expected an integer in [0, 2], got 3"),
    (lambda d: d.update(world_size=1 << 30), "world_size: expected an integer in [1, 16777216]"),
    (lambda d: d.update(pid=-1), "pid: expected an integer"),
    (lambda d: d.update(host="x" * 257), "host: expected a string of at most 256 characters"),
    (lambda d: d.update(clock={"wall_ns": 1.5, "mono_ns": 0}), "clock.wall_ns: expected an integer"),
    (lambda d: d.update(clock=[]), "clock: expected a JSON object, got list"),
    (lambda d: d.update(dropped=10**6), "dropped: expected an integer in [0, 4]"),
    (lambda d: d.update(recorded=2), "4 entries but only 2 calls recorded"),
    (lambda d: d.update(comms={}), "comms: expected a list of at most 65536 items, got dict"),
    (lambda d: d["comms"].append(dict(d["comms"][0])), "listed twice"),
    (lambda d: d["comms"][0].update(members="2,0-1"), "'0-1' is out of order"),
    (lambda d: d["comms"][0].update(members="0-3"), "not below the world size 3"),
    (lambda d: d["comms"][0].update(members="0-99999999999"), "is not a rank or a range of ranks"),
    (lambda d: d["comms"][0].update(members="0,x"), "'x' is not a rank"),
    (lambda d: d["comms"][0].update(members="0,2", size=2), "rank 1 is not a member of its own communicator"),
    (lambda d: d["comms"][0].update(size=4), "comms[0].size: expected an integer in [3, 3]"),
    (lambda d: d["comms"][0].update(coll_done=9), "coll_done: expected an integer in [0, 3]"),
    (lambda d: d["entries"][0].update(comm="elsewhere"), "communicator 'elsewhere' is not in comms"),
    (lambda d: d["entries"][0].update(seq=0), "entries[0].seq: expected an integer in [1, 3]"),
    (lambda d: d["entries"][0].update(seq=4), "entries[0].seq: expected an integer in [1, 3]"),
    (lambda d: d["entries"][3].update(seq=2), "entries[3].seq: expected an integer in [1, 1]"),  # p2p counter
    (lambda d: d["entries"][0].update(kind="weird"), "kind: expected one of collective, p2p"),
    (lambda d: d["entries"][0].update(state="done"), "state: expected one of completed, in-flight"),
    (lambda d: d["entries"][0].update(leave_ns=0), "leave_ns: expected an integer in [1000001000000"),
    (lambda d: d["entries"][3].update(leave_ns=5), "a call in flight has no leave time"),
    (lambda d: d["entries"][3].update(source=2**40), "entries[3].source: expected an integer"),
    (lambda d: d["entries"][3].update(blocking="yes"), "blocking: expected true or false"),
    (lambda d: d["entries"][0].update(op=["Allreduce"]), "entries[0].op: expected a string"),
]


@pytest.mark.parametrize("change, message", HOSTILE)
def test_validation_refuses_what_is_not_a_version_1_dump(change, message):
    flightdump.validate(hang_of_three()[1], "ok.json")  # the unchanged document passes
    with pytest.raises(ValueError) as info:
        flightdump.validate(_bad(change), "bad.json")
    assert str(info.value).startswith("bad.json: ") and message in str(info.value), str(info.value)


def test_validation_bounds_list_lengths_and_member_counts(monkeypatch):
    monkeypatch.setattr(schema, "MAX_ENTRIES", 3)  # the bound validation reads
    with pytest.raises(ValueError, match="entries: expected a list of at most 3 items, got of 4 items"):
        flightdump.validate(hang_of_three()[1], "f")
    with pytest.raises(ValueError, match="more than 10 members"):
        flightdump.parse_members("0-99", 1000, budget=10)
    assert flightdump.parse_members("0-2,5,7-8", 9) == [0, 1, 2, 5, 7, 8]


def test_validation_of_combined_documents():
    good = {"format": "commlib-flight-records", "version": 1, "job": "job-1", "world_size": 3,
            "ranks": {str(r): d for r, d in hang_of_three().items()}, "silent": {}}  # fmt: skip
    flightdump.validate(good, "all.json")
    cases = [
        ({"ranks": {"1": hang_of_three()[0]}}, "ranks[1]: the dump of rank 0 of 3"),
        ({"ranks": {"-1": hang_of_three()[0]}}, "'-1' is not a rank below the world size 3"),
        ({"silent": {"7": "gone"}}, "'7' is not a rank below the world size 3"),
        ({"silent": {"1": 5}}, "silent[1]: expected a string"),
        ({"silent": {"1": "x" * 2000}}, "silent[1]: expected a string of at most 1024"),
        ({"world_size": 2}, "more ranks than the world size 2"),
        ({"version": 3}, "version 3 (newer"),
        ({"ranks": []}, "ranks: expected a JSON object, got list"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match="^all.json: ") as info:
            flightdump.validate({**good, **change}, "all.json")
        assert message in str(info.value), (change, str(info.value))


def test_parse_takes_only_flight_record_documents():
    assert flightdump.parse(b'{"format": "commlib-flight-record"}') == {"format": "commlib-flight-record"}
    assert flightdump.parse(b'{"kind": "start"}\n{"kind": "stop"}\n') is None  # JSON lines: a report file
    assert flightdump.parse(b'{"format": "other"}') is None and flightdump.parse(b"[1]") is None
    assert flightdump.parse(b"[" * 100_000 + b"]" * 100_000) is None  # nested beyond reason
    assert flightdump.parse(b"\xff\xfe") is None


def test_read_refuses_large_and_special_files_before_reading(tmp_path):
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(flightdump.MAX_FILE + 1)  # sparse: nothing is written, nothing may be read
    with pytest.raises(ValueError, match=r"big.json: 268435457 B, more than the 256 MiB accepted"):
        flightdump.read(str(big))
    with pytest.raises(ValueError, match="not a regular file"):
        flightdump.read(str(tmp_path))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="fifo: not a regular file"):  # refused, not waited on
        flightdump.read(str(fifo))
    with pytest.raises(FileNotFoundError):
        flightdump.read(str(tmp_path / "absent.json"))


def test_load_reads_single_and_combined_files_and_patterns(tmp_path):
    dumps = hang_of_three()
    for r in (0, 1):
        (tmp_path / f"rank{r}.json").write_text(json.dumps(dumps[r]))
    combined = flightdump.combine({2: dumps[2]}, {1: "no answer"}, job="job-1", world_size=3)
    (tmp_path / "all.json").write_text(json.dumps(combined))
    loaded = flightdump.load([str(tmp_path / "rank*.json"), str(tmp_path / "all.json")])
    assert sorted(loaded["ranks"]) == [0, 1, 2] and loaded["silent"] == {}  # rank 1's own dump answers for it
    only = flightdump.load([str(tmp_path / "all.json")])
    assert sorted(only["ranks"]) == [2] and only["silent"] == {1: "no answer"}
    newer = {**dumps[0], "clock": {"wall_ns": dumps[0]["clock"]["wall_ns"] + 1, "mono_ns": 5}, "pid": 999}
    (tmp_path / "later.json").write_text(json.dumps(newer))
    assert flightdump.load([str(tmp_path / "rank0.json"), str(tmp_path / "later.json")])["ranks"][0]["pid"] == 999
    (tmp_path / "other.json").write_text(json.dumps({**dumps[1], "job": "job-2"}))
    with pytest.raises(ValueError, match="other.json: job 'job-2', but .*rank0.json is of job 'job-1'"):
        flightdump.load([str(tmp_path / "rank0.json"), str(tmp_path / "other.json")])
    (tmp_path / "wider.json").write_text(json.dumps(dump(1, [comm(members="0-3")], world=4)))
    with pytest.raises(ValueError, match="a job of 4 ranks, but .* is one of 3"):
        flightdump.load([str(tmp_path / "rank0.json"), str(tmp_path / "wider.json")])
    (tmp_path / "report.jsonl").write_text('{"kind": "start"}\n')
    with pytest.raises(ValueError, match="report.jsonl: not a flight-record document"):
        flightdump.load([str(tmp_path / "report.jsonl")])
    with pytest.raises(FileNotFoundError, match="no flight record file matches"):
        flightdump.load([str(tmp_path / "none-*.json")])


# -- matching ranks ---------------------------------------------------------------------------
def test_diverge_names_the_rank_that_did_not_enter_and_what_it_waits_for():
    analysis = flightdump.diverge(hang_of_three())
    assert analysis["diverged"] and analysis["missing"] == [] and analysis["ranks"] == [0, 1, 2]
    (world,) = analysis["comms"]
    assert world["completed"] == 3 and world["completed_op"] == "Allreduce" and world["mismatches"] == []
    (step,) = world["frontier"]
    assert (step["seq"], step["op"], step["inside"], step["not_entered"], step["done"]) == (
        4,
        "Allreduce",
        [0, 2],
        [1],
        [],
    )
    assert step["last_entered"] == {"1": 3} and "in Recv(source=0, tag=99) #1 on COMM_WORLD" in step["doing"]["1"]
    (p2p,) = analysis["p2p"]
    assert (p2p["rank"], p2p["op"], p2p["peer"], p2p["tag"]) == (1, "Recv", 0, 99)
    assert p2p["peer_doing"].startswith("in Allreduce #4 on COMM_WORLD (3 ranks) for ")
    text = "\n".join(flightdump.describe(analysis))
    assert "COMM_WORLD [44000000.1-00000000] (3 ranks): every member with a dump completed #3 (Allreduce)" in text
    assert "#4 Allreduce: inside: ranks 0,2 (for 0.0 s); NOT entered: rank 1" in text
    assert "rank 1 (last entered #3): in Recv(source=0, tag=99) #1 on COMM_WORLD (3 ranks) for 0.0 s" in text
    assert "rank 1: Recv(source=0, tag=99) #1 on COMM_WORLD (3 ranks) for 0.0 s; rank 0: in Allreduce #4" in text
    assert text.endswith("verdict: the ranks diverge (see above)")


def test_diverge_tolerates_missing_ranks():
    dumps = hang_of_three()
    analysis = flightdump.diverge({0: dumps[0], 2: dumps[2]}, {1: "no answer on the side channel"})
    assert analysis["missing"] == [1] and analysis["silent"] == {"1": "no answer on the side channel"}
    (world,) = analysis["comms"]
    assert world["present"] == [0, 2] and world["missing"] == [1] and world["completed"] == 3
    assert world["frontier"][0]["inside"] == [0, 2] and world["frontier"][0]["not_entered"] == []
    text = "\n".join(flightdump.describe(analysis))
    assert "flight records of ranks 0,2 of 3 (job job-1); no dump from rank 1" in text
    assert "rank 1: no answer on the side channel" in text and "no dump from members rank 1" in text
    alone = flightdump.diverge({1: dumps[1]})  # its receive's peer has no dump
    assert alone["p2p"][0]["peer_doing"] == "its dump is missing" and alone["missing"] == [0, 2]


def test_diverge_finds_a_collective_mismatch_and_a_root_mismatch():
    world = [comm(entered=2)]
    bcast0 = entry("Bcast", 2, at=2, root=0, root_world=0)
    dumps = {
        0: dump(0, world, [entry("Barrier", 1), bcast0]),
        1: dump(1, world, [entry("Barrier", 1), entry("Allreduce", 2, at=2)]),
        2: dump(2, world, [entry("Barrier", 1), entry("Bcast", 2, at=2, root=1, root_world=1)]),
    }
    analysis = flightdump.diverge(dumps)
    (found,) = analysis["comms"][0]["mismatches"]
    assert found == {"seq": 2, "calls": {"Allreduce": [1], "Bcast(root=0)": [0], "Bcast(root=1)": [2]}}
    assert analysis["diverged"] and analysis["comms"][0]["frontier"] == []
    text = "\n".join(flightdump.describe(analysis))
    assert "MISMATCH at #2: Allreduce on rank 1; Bcast(root=0) on rank 0; Bcast(root=1) on rank 2" in text


def test_diverge_on_ranks_in_step_and_the_dropped_count():
    world = [comm(entered=5)]
    dumps = {r: dump(r, world, allreduces(5)[2:], dropped=2) for r in range(3)}
    analysis = flightdump.diverge(dumps)
    assert not analysis["diverged"] and analysis["p2p"] == [] and analysis["comms"][0]["frontier"] == []
    assert analysis["dropped"] == {"0": [2, 5], "1": [2, 5], "2": [2, 5]}
    lines = flightdump.describe(analysis)
    assert "  rank 1: the oldest 2 of its 5 calls are not in its dump (ring overwritten)" in lines
    assert lines[-1].startswith("verdict: no divergence")
    single = {0: dump(0, [comm(members="0", entered=1)], [entry("Barrier", 1, size=1)], world=1)}
    assert flightdump.diverge(single)["comms"] == []  # a one-rank communicator cannot diverge


def test_diverge_bounds_the_frontier():
    ahead = [entry("Ibarrier", s, at=s, state="in-flight") for s in range(1, 21)]
    dumps = {0: dump(0, [comm(members="0-1", entered=20, done=0)], ahead, world=2),
             1: dump(1, [comm(members="0-1")], [], world=2)}  # fmt: skip
    (world,) = flightdump.diverge(dumps)["comms"]
    assert len(world["frontier"]) == flightdump.FRONTIER and world["more"] == 12
    assert world["frontier"][0]["not_entered"] == [1] and world["frontier"][0]["inside"] == [0]


# -- the analyser command ----------------------------------------------------------------------
def test_monitor_command_analyses_dumps_beside_reports(tmp_path, capsys):
    dumps = hang_of_three()
    combined = tmp_path / "run.dump.json"
    combined.write_text(json.dumps(flightdump.combine(dumps, {}, job="job-1", world_size=3)))
    assert reports.main([str(combined)]) == 1
    out = capsys.readouterr().out
    assert "NOT entered: rank 1" in out and "records from" not in out
    report = tmp_path / "run-0.jsonl"
    report.write_text(json.dumps({"kind": "start", "rank": 0, "time": 1}) + "\n")
    steady = tmp_path / "steady.json"
    steady.write_text(json.dumps(dump(0, [comm(members="0", entered=1)], [entry("Barrier", 1, size=1)], world=1)))
    assert reports.main([str(report), str(steady)]) == 0
    out = capsys.readouterr().out
    assert "1 records from 1 file" in out and "alarms: none" in out and "verdict: no divergence" in out
    assert reports.main([str(report), str(combined), "--json"]) == 1
    printed = json.loads(capsys.readouterr().out)
    assert printed["reports"][0]["kind"] == "start" and printed["flight"]["comms"][0]["frontier"][0]["not_entered"] == [
        1
    ]
    assert reports.main([str(report), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["kind"] == "start"  # reports alone: the list, as before


def test_monitor_command_rejects_invalid_input_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_bad(lambda d: d.update(version=7))))
    assert reports.main([str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"python -m commlib monitor: error: {bad}: version 7 (newer than this commlib reads); " \
        "this commlib reads version 1"  # fmt: skip
    binary = tmp_path / "binary.bin"
    binary.write_bytes(b"\xff\x00\x01")
    assert reports.main([str(binary)]) == 2
    assert "binary.bin: neither a flight record nor JSON lines" in capsys.readouterr().err
    assert reports.main([str(tmp_path / "absent-*.json")]) == 2
    assert "no report or dump file matches" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        reports.main(["--help"])
    assert info.value.code == 0
    help_text = capsys.readouterr().out
    assert "usage: python -m commlib monitor [options] FILE ..." in help_text and "exit status: 0" in help_text
