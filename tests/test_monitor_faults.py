"""Fault injection under ``python -m commlib``: hangs, stragglers and healthy runs, with the monitor on.

Every job is bounded by the ``mpirun`` fixture's timeout; a rank that stops
itself is continued by a helper after a while, and killed here if it is
still around. The monitor's thresholds are scaled down (examined after 2 s,
the same place for 20 s makes a hang) so that each case takes seconds; one
case runs with the defaults.
"""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from transport.reports import ALARMS

pytestmark = pytest.mark.mpi

PROGRAM = str(Path(__file__).parent / "mpi" / "monitor_faults.py")
PREFIX = "[commlib monitor"


def _run(mpirun, nprocs, scenario, tmp_path, *extra, env=None, timeout=90):
    command = [sys.executable, "-m", "commlib", PROGRAM, scenario, *extra]
    full_env = {
        "COMMLIB_MONITOR_SUSPECT": "2",
        "COMMLIB_MONITOR_FLOOR": "20",
        "COMMLIB_MONITOR_TIMEOUT": "1",
        "COMMLIB_MONITOR_REPORT": str(tmp_path / "report-{rank}.jsonl"),
        "COMMLIB_MONITOR_DIR": str(tmp_path / "rendezvous"),
        **(env or {}),
    }
    result = mpirun(nprocs, command, python=False, env=full_env, timeout=timeout, check=False)
    return result


def _records(tmp_path, rank=None):
    files = sorted(tmp_path.glob("report-*.jsonl")) if rank is None else [tmp_path / f"report-{rank}.jsonl"]
    return [json.loads(line) for f in files if f.exists() for line in f.read_text().splitlines()]


def _cleanup(stdout):
    """Continue and kill any rank of this job still alive (a stopped rank the launcher could not end)."""
    for pid in map(int, re.findall(r"^PID \d+ (\d+)$", stdout, re.M)):
        with contextlib.suppress(OSError):
            if "monitor_faults.py" in Path(f"/proc/{pid}/cmdline").read_text():
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("nprocs, victim, defaults", [(3, 1, True), (2, 0, False)])
def test_stopped_rank_is_named_and_the_job_aborted(mpirun, tmp_path, nprocs, victim, defaults):
    result = None
    env = {"COMMLIB_MONITOR_ACTION": "abort"}
    if defaults:  # no threshold set: named within 15 s all the same
        env.update(COMMLIB_MONITOR_SUSPECT="", COMMLIB_MONITOR_FLOOR="", COMMLIB_MONITOR_TIMEOUT="")
    try:
        result = _run(mpirun, nprocs, "stop", tmp_path, "--victim", str(victim), "--seconds", "40", env=env)
    finally:
        if result is not None:
            _cleanup(result.stdout)
    assert not result.timed_out and result.returncode != 0, result.stderr[-3000:]
    leader = 1 if victim == 0 else 0
    hangs = [r for r in _records(tmp_path) if r["kind"] == "hang"]
    assert len(hangs) == 1 and hangs[0]["rank"] == leader, result.stderr[-3000:]
    hang = hangs[0]
    assert hang["op"] == "Allreduce" and hang["seq"] == 4
    assert hang["suspects"] == [victim] and hang["silent"] == [victim]
    assert hang["reported_after"] < 15 and hang["verdict"] == "hang"
    text = result.stderr
    assert f"{PREFIX}, rank {leader}] HANG: Allreduce #4 on COMM_WORLD ({nprocs} ranks)" in text
    assert f"rank {victim}: no answer on the side channel" in text and "stopped (SIGSTOP)" in text
    assert "aborting the job with exit code 70" in text


@pytest.mark.parametrize("action, nonblocking", [("warn", False), ("abort", True)])
def test_late_rank_is_a_straggler_named_with_its_stack_and_the_job_goes_on(mpirun, tmp_path, action, nonblocking):
    # peers found through one collective at start-up instead of the rendezvous directory
    env = {"COMMLIB_MONITOR_BOOTSTRAP": "mpi", "COMMLIB_MONITOR_ACTION": action}
    extra = ["--nonblocking"] if nonblocking else []
    result = _run(mpirun, 4, "late", tmp_path, "--victim", "2", "--seconds", "6", *extra, env=env)
    assert result.returncode == 0 and "OK late on 4 ranks (monitored: True)" in result.stdout, result.stderr[-3000:]
    records = _records(tmp_path)
    assert not [r for r in records if r["kind"] == "hang"], result.stderr[-3000:]
    (late,) = [r for r in records if r["kind"] == "straggler"]
    assert late["rank"] == 0 and late["source"] == "wait" and late["verdict"] == "straggler"
    assert late["stragglers"] == [2]
    assert late["op"] == ("Iallreduce" if nonblocking else "Allreduce") and late["arrived"] == [0, 1, 3]
    assert any(frame[2] == "slow_compute" for frame in late["ranks"]["2"]["stack"])
    text = result.stderr
    assert "HANG:" not in text and "aborting" not in text and "not a hang while it runs" in text
    assert f"{PREFIX}, rank 0] STRAGGLER: rank 2 (pid" in text
    assert "is computing at monitor_faults.py:" in text
    assert "in slow_compute (time.sleep(seconds)); rank 0 has waited" in text
    assert f"{PREFIX}, rank 0] resolved: {late['op']} #4 on COMM_WORLD (4 ranks) completed after" in text
    waits = [r for r in records if r["kind"] == "hang-wait"]
    assert {r["rank"] for r in waits} <= {1, 3} and all(r["leader"] == 0 and r["suspects"] == [2] for r in waits)


def test_rank_at_the_same_place_past_the_floor_is_a_hang(mpirun, tmp_path):
    env = {"COMMLIB_MONITOR_FLOOR": "5"}  # well past the first look (2 s), even on a loaded machine
    result = _run(mpirun, 3, "late", tmp_path, "--victim", "1", "--seconds", "8", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    kinds = [r["kind"] for r in _records(tmp_path, 0)]
    assert kinds.index("straggler") < kinds.index("hang") < kinds.index("hang-resolved"), kinds
    hang = next(r for r in _records(tmp_path, 0) if r["kind"] == "hang")
    assert hang["suspects"] == [1] and 5 <= hang["waited"] < 8
    assert "rank 1 has stayed at the same place for at least 5 s (monitor_faults.py:" in hang["cause"]
    assert hang["cause"].startswith("rank 1 has not reached Allreduce #4 and is running code")


def test_ranks_blocked_in_collectives_of_different_communicators_are_a_deadlock(mpirun, tmp_path):
    result = _run(mpirun, 3, "crossed", tmp_path, "--victim", "2", env={"COMMLIB_MONITOR_ACTION": "abort"})
    assert not result.timed_out and result.returncode != 0, result.stderr[-3000:]
    hangs = [r for r in _records(tmp_path) if r["kind"] == "hang"]
    assert hangs and all(r["waited"] < 15 for r in hangs), result.stderr[-3000:]
    for hang in hangs:
        assert hang["op"] == "Allreduce" and "blocked in another operation" in hang["cause"], hang["cause"]
        other = 2 if hang["rank"] != 2 else 0
        assert hang["behind"] == [other] and "blocked in Allreduce #" in hang["ranks"][str(other)]["status"]


def test_rank_that_never_enters_the_collective_is_named_with_what_blocks_it(mpirun, tmp_path):
    result = _run(mpirun, 3, "skip", tmp_path, "--victim", "1", env={"COMMLIB_MONITOR_ACTION": "abort"})
    assert not result.timed_out and result.returncode != 0, result.stderr[-3000:]
    # whichever side reports first aborts the job: rank 0 (stuck in the collective) or rank 1 (in its receive)
    hangs = [r for r in _records(tmp_path) if r["kind"] == "hang"]
    assert hangs and all(r["waited"] < 30 for r in hangs), result.stderr[-3000:]
    for hang in hangs:
        if hang["rank"] == 0:
            assert hang["op"] == "Allreduce" and hang["seq"] == 4 and hang["behind"] == [1] and hang["suspects"] == [1]
            assert "blocked in another operation" in hang["cause"]
            assert "blocked in Recv(source=0, tag=99) #1 on COMM_WORLD" in hang["ranks"]["1"]["status"]
        else:
            assert hang["rank"] == 1 and hang["call"].startswith("Recv(source=0, tag=99) #1 on COMM_WORLD")
            assert "blocked in Allreduce #4 on COMM_WORLD, a collective rank 1 has not entered" in hang["cause"]


def test_receive_without_a_send_names_the_peer_and_dumps_flight_records(mpirun, tmp_path):
    env = {"COMMLIB_MONITOR_ACTION": "dump", "COMMLIB_MONITOR_FLOOR": "3"}  # a hang once it sits 3 s in one place
    result = _run(mpirun, 2, "p2p", tmp_path, "--victim", "1", "--seconds", "7", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stderr
    assert f"{PREFIX}, rank 0] HANG: Recv(source=1, tag=7) #1 on COMM_WORLD (2 ranks)" in text
    assert "rank 1 did not post the matching send" in text and "in slow_compute" in text
    dump = json.loads((tmp_path / "report-0.jsonl.dump.json").read_text())
    assert dump["format"] == "commlib-flight-records" and dump["version"] == 1
    assert sorted(dump["ranks"]) == ["0", "1"] and "flight records of ranks 0-1 written to" in text
    assert [(e["op"], e["state"]) for e in dump["ranks"]["0"]["entries"]] == [
        ("Barrier", "completed"),
        ("Recv", "in-flight"),
    ]
    assert [(e["op"], e["state"]) for e in dump["ranks"]["1"]["entries"]] == [("Barrier", "completed")]


def _analyse(*files):
    command = [sys.executable, "-m", "commlib", "monitor", *map(str, files)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_dumped_hang_is_analysed_across_ranks_and_names_the_rank_that_did_not_enter(mpirun, tmp_path):
    env = {"COMMLIB_MONITOR_ACTION": "dump", "COMMLIB_MONITOR_FLOOR": "3"}  # a hang once it sits 3 s in one place
    result = _run(mpirun, 3, "late", tmp_path, "--victim", "1", "--seconds", "7", env=env)
    assert result.returncode == 0 and "OK late on 3 ranks" in result.stdout, result.stderr[-3000:]
    combined = tmp_path / "report-0.jsonl.dump.json"
    assert f"flight records of ranks 0-2 written to {combined}" in result.stderr
    analysed = _analyse(combined)
    assert analysed.returncode == 1, analysed.stderr
    out = analysed.stdout
    assert "flight records of ranks 0-2 of 3" in out
    assert re.search(r"#4 Allreduce: inside: ranks 0,2 \(for \d+\.\d s\); NOT entered: rank 1\n", out), out
    assert "rank 1 (last entered #3): no call in flight (running outside MPI)" in out
    # each rank's dump on its own, one of them missing, beside the report files
    doc = json.loads(combined.read_text())
    for rank, one in doc["ranks"].items():
        (tmp_path / f"rank{rank}.flight.json").write_text(json.dumps(one))
    partial = _analyse(tmp_path / "rank0.flight.json", tmp_path / "rank1.flight.json", tmp_path / "report-*.jsonl")
    assert partial.returncode == 1, partial.stderr
    assert "no dump from rank 2" in partial.stdout and "NOT entered: rank 1" in partial.stdout
    assert "alarms: " in partial.stdout and "HANG Allreduce #4 on COMM_WORLD (3 ranks)" in partial.stdout
    (tmp_path / "rank2.flight.json").write_text(json.dumps({**doc["ranks"]["2"], "rank": 7}))
    invalid = _analyse(tmp_path / "rank2.flight.json")
    assert invalid.returncode == 2 and invalid.stdout == ""
    assert invalid.stderr.strip().endswith("rank2.flight.json: rank: expected an integer in [0, 2], got 7")


def test_sleeping_rank_is_flagged_as_straggler_within_20_iterations(mpirun, tmp_path):
    result = _run(
        mpirun, 3, "straggler", tmp_path, "--victim", "2", "--seconds", "0.05", "--iters", "40",
        env={"COMMLIB_MONITOR_INTERVAL": "0.2"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    flags = [r for r in _records(tmp_path) if r["kind"] == "straggler"]
    assert len(flags) == 1 and flags[0]["straggler"] == 2 and flags[0]["rank"] == 0, result.stderr[-3000:]
    assert flags[0]["seen_at"] <= 20 and flags[0]["lateness"] > 0.03
    assert f"{PREFIX}, rank 0] STRAGGLER: rank 2 (pid" in result.stderr


LONG = bool(os.environ.get("COMMLIB_TEST_LONG"))  # the full-length runs of the targets (about 2 more minutes)


def test_healthy_run_with_compute_phases_raises_no_alarm(mpirun, tmp_path):
    # random compute phases of up to 50 ms under thresholds scaled down 10 and 12 times: the rule is under test;
    # 300 iterations here, the 1,000 of the target with COMMLIB_TEST_LONG=1
    iters = 1000 if LONG else 300
    env = {"COMMLIB_MONITOR_SUSPECT": "1", "COMMLIB_MONITOR_FLOOR": "5"}
    result = _run(mpirun, 4, "healthy", tmp_path, "--iters", str(iters), "--phase", "0.05", env=env, timeout=240)
    assert result.returncode == 0 and "OK healthy on 4 ranks (monitored: True)" in result.stdout, result.stderr[-3000:]
    records = _records(tmp_path)
    kinds = sorted(r["kind"] for r in records)
    assert kinds.count("start") == kinds.count("stop") == 4 and not set(kinds) & ALARMS, kinds
    assert all(r["calls"] >= 4 * iters for r in records if r["kind"] == "stop")
    assert PREFIX not in result.stderr
    assert not any((tmp_path / "rendezvous").rglob("rank-*.json"))  # every rank withdrew


@pytest.mark.skipif(not LONG, reason="about a minute; COMMLIB_TEST_LONG=1 runs it")
def test_healthy_run_with_phases_of_up_to_5_s_under_the_defaults_raises_no_alarm(mpirun, tmp_path):
    env = {"COMMLIB_MONITOR_SUSPECT": "", "COMMLIB_MONITOR_FLOOR": "", "COMMLIB_MONITOR_TIMEOUT": ""}
    result = _run(mpirun, 3, "healthy", tmp_path, "--iters", "20", "--phase", "5", env=env, timeout=300)
    assert result.returncode == 0 and "OK healthy on 3 ranks" in result.stdout, result.stderr[-3000:]
    assert not {r["kind"] for r in _records(tmp_path)} & ALARMS and PREFIX not in result.stderr


def test_monitor_off(mpirun, tmp_path):
    result = _run(mpirun, 2, "healthy", tmp_path, "--iters", "5", env={"COMMLIB_MONITOR": "0"})
    assert result.returncode == 0 and "(monitored: False)" in result.stdout
    assert _records(tmp_path) == []


def test_overhead_benchmark_smoke(tmp_path, capsys):
    from commlib.bench.monitor_overhead import main

    out = tmp_path / "overhead.json"
    argv = ["--launches", "1", "--rounds", "1", "--iters", "400", "--bytes", "8", "--json", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "off us" in printed and "<= 5 us" in printed and "monitored us" in printed and "enter+leave alone" in printed
    data = json.loads(out.read_text())
    (job,) = data["jobs"]
    assert job["bytes"] == 8 and len(job["launches_s"]["on"]) == len(job["launches_s"]["off"]) == 1
    (row,) = data["calls"]
    assert all(len(row["samples_s"][m]) == 4 for m in ("raw", "wrapped", "monitored"))
