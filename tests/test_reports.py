"""Monitor reports (transport.reports): what is printed, the report file, the summary command."""

import io
import json

from transport import reports


def test_reporter_prints_alarms_only_and_survives_bad_callbacks(tmp_path):
    stream = io.StringIO()
    rep = reports.Reporter(2, str(tmp_path / "r-{rank}.jsonl"), stream=stream)
    seen = []
    rep.callbacks += [seen.append, lambda r: 1 / 0]
    rep.emit({"kind": "start", "lines": ["monitor started"]})
    rep.emit({"kind": "straggler", "lines": ["STRAGGLER: rank 1"], "straggler": 1})
    lines = (tmp_path / "r-2.jsonl").read_text().splitlines()
    assert [json.loads(x)["kind"] for x in lines] == ["start", "straggler"]
    out = stream.getvalue()
    assert "[commlib monitor, rank 2] STRAGGLER: rank 1" in out and "monitor started" not in out
    assert "raised ZeroDivisionError" in out
    assert [r["kind"] for r in seen] == ["straggler"] and rep.alarms == 1


def test_reporter_tells_report_file_write_errors(tmp_path):
    stream = io.StringIO()
    rep = reports.Reporter(0, str(tmp_path / "missing-dir" / "r.jsonl"), stream=stream)
    rep.emit({"kind": "start", "lines": ["monitor started"]})
    rep.emit({"kind": "stop", "lines": ["monitor stopped"]})
    out = stream.getvalue()
    assert rep.write_errors == 2 and out.count("cannot write the report file") == 1  # told once a minute
    assert "missing-dir" in out and "No such file or directory" in out


def test_summary_command(tmp_path, capsys):
    quiet = tmp_path / "quiet.jsonl"
    quiet.write_text(json.dumps({"kind": "start", "rank": 0, "time": 1}) + "\n")
    assert reports.main([str(quiet)]) == 0
    assert "alarms: none" in capsys.readouterr().out
    loud = tmp_path / "loud-1.jsonl"
    hang = {"kind": "hang", "rank": 1, "time": 2, "call": "Allreduce #4 on COMM_WORLD (3 ranks)", "waited": 2.5,
            "suspects": [2], "cause": "rank 2 has not reached Allreduce #4", "lines": ["HANG"]}  # fmt: skip
    loud.write_text(json.dumps(hang) + "\n")
    assert reports.main([str(quiet), str(tmp_path / "loud-*.jsonl")]) == 1
    out = capsys.readouterr().out
    assert "alarms: 1 hang" in out and "HANG Allreduce #4 on COMM_WORLD (3 ranks) after 2.5 s; suspects: 2" in out
    assert reports.main([str(tmp_path / "missing.jsonl")]) == 2
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    assert reports.main([str(tmp_path / "bad.jsonl")]) == 2
    assert "bad.jsonl:1: not a JSON line" in capsys.readouterr().err
