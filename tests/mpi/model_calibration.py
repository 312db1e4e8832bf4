"""Calibrate on a tiny grid, load the file, then run the model-accuracy benchmark on it; any rank count.

Usage: model_calibration.py OUTDIR. Prints "OK calibration on N ranks (intra I, inter J)" on rank 0.
"""

import json
import sys
from pathlib import Path

from mpi4py import MPI

from commlib import calibration
from commlib.bench.model_accuracy import main as accuracy
from commlib.calibrate import main as calibrate
from datatypes import model as cm

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
out = Path(sys.argv[1])
path = out / "calibration.json"
tiny = ["--nbytes", "1024,8192,32768,131072", "--blocks", "8,128", "--p2p-bytes", "8,4096"]
tiny += ["--sample-time", "0.0002", "--reps", "2"]
assert calibrate([*tiny, "--output", str(path), "--no-progress"]) == 0

data, where = calibration.load(path)
assert data is not None, where
model = cm.Model.from_json(data)
pairs = data["launch"]["pairs"]
tables = set(data["tables"])
assert {f"{k}.{e}.{lv}" for k in ("pack", "unpack") for e in ("strided", "mpi") for lv in (1, 2, 3)} <= tables, tables
for level in ("intra", "inter"):
    measured = pairs[level] is not None
    assert (f"p2p.{level}" in tables) == measured, (level, tables)
    assert (f"send.native.{level}.2" in tables) == measured, (level, tables)
    if level == "intra":  # exchanges are measured within a node, from 16 KiB (here: 32 and 128 KiB, block 8)
        exchange_tables = {t for t in tables if t.startswith("xchg.")}
        assert {"xchg.native.intra.2", "xchg.pack.intra.3"} <= exchange_tables if measured else not exchange_tables
    assert (level in data["alpha_beta"]) == measured
    alpha, beta = model.alpha_beta(level)
    assert alpha >= 0 and beta >= 0
assert data["launch"]["size"] == size and sum(data["launch"]["ranks_per_node"]) == size
assert set(data["reduce_beta"]) == {"float32", "float64", "int32", "int64"}
assert (pairs["intra"] is not None) == ("pack_overhead" in data["constants"])
if size == 1:
    assert any("mpiexec -n 2" in note for note in data["not_measured"])

result = out / "accuracy.json"
assert accuracy(["--calibration", str(path), "--json", str(result), "--no-progress"]) == 0
if rank == 0:
    report = json.loads(result.read_text())
    rows = report["rows"]
    assert rows and report["summary"]["shapes"] == len(rows)
    measured_shapes = {(n, b) for n in (1024, 8192, 32768, 131072) for b in (8, 128)}
    assert all((r["nbytes"], r["block"]) not in measured_shapes for r in rows)
    sends = [r for r in rows if "send" in r]
    assert (len(sends) == len(rows)) == (size >= 2)
    exchanges = [r for r in rows if "exchange" in r]
    assert not exchanges if size == 1 else exchanges and all(r["nbytes"] >= 32768 for r in exchanges)
    for r in exchanges:
        assert {"model", "model, ping-pong tables only", "always native", "always pack"} <= set(r["exchange"]["regret"])
        assert {"xchg.native", "xchg.pack"} <= set(r["rel_error"])
    for r in rows:
        assert {"model", "analytic (uncalibrated)", "always mpi", "always strided"} <= set(r["engine"]["regret"])
        assert min(r["engine"]["regret"].values()) == 0.0
        assert all(t > 0 for t in r["measured_s"].values()) and all(e >= 0 for e in r["rel_error"].values())
    print(f"OK calibration on {size} ranks (intra {pairs['intra']}, inter {pairs['inter']})")
