"""The monitor's link probe on emulated nodes: a slow link shows as one bad cell, a slow node as a row and column."""

import json
import re
import sys
import threading
from pathlib import Path

import pytest
from cluster_fixtures import emulated_cluster  # noqa: F401  (fixture)

pytestmark = [pytest.mark.mpi, pytest.mark.emulated]

PROGRAM = str(Path(__file__).parent / "mpi" / "monitor_links.py")


def _records(tmp_path):
    return [json.loads(x) for f in sorted(tmp_path.glob("report-*.jsonl")) for x in f.read_text().splitlines()]


def _launch(cl, tmp_path, *args, env=None):
    command = [sys.executable, "-m", "commlib", PROGRAM, *args]
    full_env = {"COMMLIB_MONITOR_REPORT": str(tmp_path / "report-{rank}.jsonl"), **(env or {})}
    return cl.mpirun([1] * len(cl), command, python=False, timeout=120, env=full_env)


def test_link_rate_limited_10x_lower_is_localised(emulated_cluster, tmp_path):  # noqa: F811
    cl = emulated_cluster(nodes=3, rate="1gbit")
    cl.set_link_rate(0, 1, "100mbit")
    result = _launch(cl, tmp_path, "explicit")
    links = json.loads(re.search(r"^LINKS (.*)$", result.stdout, re.M).group(1))
    assert links["slow_links"] == [["node0", "node1"]] and links["slow_nodes"] == []
    assert "SLOW LINK: node0 <-> node1:" in result.stderr and "SLOW NODE" not in result.stderr


def test_node_rate_limited_10x_lower_is_localised_by_the_periodic_probe(emulated_cluster, tmp_path):  # noqa: F811
    cl = emulated_cluster(nodes=4, rate="1gbit")
    cl.set_node_rate(2, "100mbit")
    result = _launch(cl, tmp_path, "periodic", "--seconds", "8", env={"COMMLIB_MONITOR_PROBE": "1"})
    probes = [r for r in _records(tmp_path) if r["kind"] == "links"]
    assert probes and probes[0]["slow_nodes"] == ["node2"] and not probes[0]["failed"], probes
    assert all(p["slow_nodes"] in ([], ["node2"]) and p["slow_links"] == [] for p in probes), probes
    slow = [r for r in _records(tmp_path) if r["kind"] == "slow-node"]
    assert [r["node"] for r in slow] == ["node2"]  # reported once, however many probes saw it
    assert "SLOW NODE: node2: every link to it is slow" in result.stderr


def test_a_link_slowing_down_mid_run_triggers_a_probe(emulated_cluster, tmp_path):  # noqa: F811
    cl = emulated_cluster(nodes=3, rate="1gbit")
    timer = threading.Timer(5.0, cl.set_link_rate, args=(1, 2, "100mbit"))  # once the job runs its loop
    timer.start()
    try:
        result = _launch(cl, tmp_path, "periodic", "--seconds", "14", "--floats", str(1 << 17))  # 1 MiB
    finally:
        timer.cancel()
    records = _records(tmp_path)
    triggers = [r for r in records if r["kind"] == "slowdown" or r.get("cause") == "communication"]
    assert triggers, [r["kind"] for r in records]
    # probed while the job's own traffic shares the links: the link, or one of its two nodes
    found = [r.get("link") or r.get("node") for r in records if r["kind"] in ("slow-link", "slow-node")]
    assert found and all(f in (["node1", "node2"], "node1", "node2") for f in found), result.stderr[-3000:]
