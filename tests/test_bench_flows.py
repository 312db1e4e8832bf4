"""The flows benchmark command (commlib.bench.flows)."""

import commlib.cluster
from commlib.bench import flows as bench


def test_benchmark_refuses_without_a_cluster(monkeypatch, capsys):
    monkeypatch.setattr(commlib.cluster, "cluster_available", lambda: (False, "not root (test)"))
    assert bench.main(["--quick"]) == 1
    assert "not root (test)" in capsys.readouterr().err
