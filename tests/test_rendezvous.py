"""The rendezvous directory (transport.rendezvous): job keys, publishing, reading, sweeping."""

import json
import os

from transport import rendezvous


def test_job_key_from_the_launcher():
    assert rendezvous.job_key("my job/1", {}) == "my_job_1"
    assert rendezvous.job_key("", {"PMIX_NAMESPACE": "prterun-x@1"}) == "pmix-prterun-x_1"
    assert rendezvous.job_key("", {"SLURM_JOB_ID": "42", "SLURM_STEP_ID": "3"}) == "slurm-42.3"


def _record(rank: int, world_size: int, pid: int | None = None, boot: str = "B") -> dict:
    return {
        "rank": rank,
        "world_size": world_size,
        "pid": os.getpid() if pid is None else pid,
        "boot": boot,
        "host": "h",
        "node": "n",
        "address": "127.0.0.1",
        "port": 4000 + rank,
        "token": rendezvous.new_token(),
    }


def test_rendezvous_publishes_reads_and_sweeps(tmp_path):
    a = rendezvous.Rendezvous("job1", str(tmp_path))
    b = rendezvous.Rendezvous("job1", str(tmp_path))
    a.register(_record(0, 2))
    b.register(_record(1, 2))
    stale = rendezvous.Rendezvous("job1", str(tmp_path))
    (stale.path / "rank-7.json").write_text(json.dumps(_record(7, 9)))
    assert sorted(a.peers(2)) == [0, 1]
    dead = rendezvous.Rendezvous("old", str(tmp_path))
    dead.path.mkdir(parents=True, mode=0o700)
    (dead.path / "rank-0.json").write_text(json.dumps(_record(0, 1, pid=2**22 + 12345)))
    rendezvous.Rendezvous("job2", str(tmp_path)).register(_record(0, 1))
    assert not dead.path.exists() and a.path.exists()
    a.unregister()
    assert sorted(b.peers(2)) == [1]
    assert rendezvous.choose_address("10.1.2.3") == "10.1.2.3"
    assert rendezvous.choose_address() in rendezvous.local_addresses() or rendezvous.choose_address()
