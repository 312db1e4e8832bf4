"""Benchmark commands (commlib.bench) on their smallest settings: they run, refuse what they cannot do, and write
their JSON; timing figures are the benchmarks' own business, never asserted here."""

import json

import pytest

import commlib.cluster


def test_flows_benchmark_refuses_without_a_cluster(monkeypatch, capsys):
    from commlib.bench import flows as bench

    monkeypatch.setattr(commlib.cluster, "cluster_available", lambda: (False, "not root (test)"))
    assert bench.main(["--quick"]) == 1
    assert "not root (test)" in capsys.readouterr().err


@pytest.mark.mpi
def test_tokenring_benchmark_quick_run_writes_json(tmp_path):
    from commlib.bench.tokenring import main

    out = tmp_path / "tokenring.json"
    assert main(["--quick", "--ranks", "2", "--heads", "4/4", "--masks", "causal", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = report["runs"][0]["rows"]
    assert [r["algorithm"] for r in rows] == ["ring", "tokenring"]
    ring, token = rows
    assert ring["max_abs_diff"] < 1e-4 and ring["total_s"] > 0 and token["total_s"] > 0
    assert token["max_direction_share"] < 0.55  # deterministic byte counts, not a timing


@pytest.mark.emulated
def test_tokenring_benchmark_runs_on_emulated_nodes(tmp_path):
    from commlib.cluster import cluster_available

    ok, why = cluster_available()
    if not ok:
        pytest.skip(why)
    from commlib.bench.tokenring import main

    out = tmp_path / "tokenring.json"
    assert main(["--emulated", "--quick", "--heads", "4/4", "--masks", "full", "--json", str(out)]) == 0
    run = json.loads(out.read_text())["runs"][0]
    assert run["topology"] == {"nodes": 2, "ranks_per_node": 1, "kind": "star", "rate": "100mbit"}
    assert run["raw"]["nodes"] == [0, 1]  # one rank on each emulated node
    token = run["rows"][1]
    assert token["algorithm"] == "tokenring" and token["link_bytes_per_step"] > 0


@pytest.mark.mpi
def test_moe_benchmark_quick_run_writes_json(tmp_path, capsys):
    from commlib.bench.moe import main

    out = tmp_path / "moe.json"
    args = ["--quick", "--parts", "exchange", "placement", "--iters", "2", "--dtypes", "float16"]
    assert main([*args, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "straightforward mpi4py" in table and "node cut" in table
    data = json.loads(out.read_text())
    (row,) = data["exchange"]
    assert row["ok"] and set(row["median_s"]) == {"dedup", "typed", "replicated", "mpi4py"}
    assert row["bytes"]["dedup"]["dispatch"] < row["bytes"]["replicated"]["dispatch"]
    assert {p["fanout"] for p in data["placement"]} == {1, 2}
    assert all(
        p["fractions"]["milp"]["cross_node"] <= p["fractions"]["contiguous"]["cross_node"] for p in data["placement"]
    )


@pytest.mark.parametrize("name", ["pingpong", "staging", "pack-kernels"])
def test_benchmark_scripts_are_commands_of_the_installed_package(name, capsys):
    from commlib.__main__ import main

    with pytest.raises(SystemExit) as stop:
        main(["bench", name, "--help"])
    assert stop.value.code == 0 and f"python -m commlib bench {name}" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["pingpong", "staging"])
def test_two_rank_benchmarks_refuse_other_rank_counts(name, tmp_path, capsys):
    from commlib.__main__ import main

    out = tmp_path / "never.json"
    assert main(["bench", name, "--json", str(out)]) == 2  # this process is one rank
    assert "run with exactly 2 ranks" in capsys.readouterr().err and not out.exists()
