"""Straggler and slowdown detection from collective arrival times (transport.stragglers)."""

import numpy as np
import pytest

from transport.stragglers import Collector, StragglerDetector


def _instances(n, late_rank=None, lateness=0.05, noise=0.002, ranks=4, seed=0, period=0.1):
    rng = np.random.default_rng(seed)
    for seq in range(1, n + 1):
        base = seq * period
        arrivals = {r: base + float(rng.uniform(0, noise)) for r in range(ranks)}
        if late_rank is not None:
            arrivals[late_rank] += lateness
        done = max(arrivals.values()) + 0.001
        yield seq, arrivals, {r: done for r in range(ranks)}


def test_straggler_is_flagged_within_a_window_and_once():
    det = StragglerDetector(window=8, skew=0.01, fraction=0.85)
    found = []
    for seq, arrivals, exits in _instances(30, late_rank=2):
        for f in det.add("c", seq, arrivals, exits):
            found.append((seq, f))
    assert [(seq, f["straggler"]) for seq, f in found] == [(8, 2)]
    assert found[0][1]["lateness"] > 0.045 and found[0][1]["last"] == 8


def test_two_rank_straggler_and_no_flag_for_noise_or_small_lateness():
    det = StragglerDetector(window=8, skew=0.01, fraction=0.85)
    flags = [f for s, a, e in _instances(20, late_rank=1, ranks=2) for f in det.add("c", s, a, e)]
    assert [f["straggler"] for f in flags] == [1]
    for ranks in (2, 3, 4):
        det = StragglerDetector(window=8, skew=0.01, fraction=0.85)
        noisy = _instances(1000, noise=0.02, ranks=ranks, seed=ranks)  # up to 2x the skew of random delay
        assert [f for s, a, e in noisy for f in det.add("c", s, a, e) if f["kind"] == "straggler"] == []
    det = StragglerDetector(window=8, skew=0.01, fraction=0.85)  # 5 ms late every time: below the skew
    assert [f for s, a, e in _instances(50, late_rank=0, lateness=0.005) for f in det.add("c", s, a, e)] == []
    det = StragglerDetector(
        window=8, skew=0.01, fraction=0.85
    )  # 20 ms late, but collectives come every 2 s: not worth a flag
    slow = _instances(50, late_rank=0, lateness=0.02, period=2.0)
    assert [f for s, a, e in slow for f in det.add("c", s, a, e)] == []


def test_straggler_can_be_flagged_again_after_it_recovers():
    det = StragglerDetector(window=4, skew=0.01)
    pattern = [True] * 6 + [False] * 8 + [True] * 6
    flags = []
    for (seq, arrivals, exits), late in zip(_instances(len(pattern)), pattern):
        if late:
            arrivals[2] += 0.05
        for f in det.add("c", seq, arrivals, exits):
            flags.append((seq, f["straggler"]))
    assert flags == [(4, 2), (18, 2)]


def test_root_of_rooted_collectives_is_not_a_straggler():
    det = StragglerDetector(window=8, skew=0.01)
    found = []
    for seq, arrivals, exits in _instances(40, late_rank=0, lateness=0.03):
        # rank 0 is the root of every other collective and comes back late from it
        found += det.add("c", seq, arrivals, exits, op="Gather" if seq % 2 else "Allreduce")
    assert found == []
    found = [f for s, a, e in _instances(20, late_rank=0, lateness=0.03) for f in det.add("d", s, a, e, op="Barrier")]
    assert [f["straggler"] for f in found] == [0]


def test_one_delay_seen_through_a_burst_is_not_a_straggler():
    det = StragglerDetector(window=8, skew=0.01)
    burst = _instances(30, late_rank=0, lateness=0.1, period=1e-4)  # 30 collectives posted within 3 ms
    assert [f for s, a, e in burst for f in det.add("c", s, a, e)] == []


def test_straggler_cause_tells_compute_from_communication():
    def run(compute):
        det = StragglerDetector(window=8, skew=0.01)
        t, found = 0.0, []
        for seq in range(1, 20):
            # rank 1 arrives 30 ms late: it computes 30 ms longer, or it left the last collective 30 ms late
            arrivals = {0: t, 1: t + 0.03}
            done = t + 0.03 + 0.002
            exits = {0: done, 1: done if compute else done + 0.03}
            found += det.add("c", seq, arrivals, exits)
            t = done + 0.01 + (0 if compute else 0.03)
        return [f["cause"] for f in found]

    assert run(compute=True) == ["compute"]
    assert run(compute=False) == ["communication"]


def test_slowdown_against_the_best_window():
    det = StragglerDetector(window=4, skew=0.001, slow_factor=4.0)
    found = []
    for seq in range(1, 20):
        comm_time = 0.002 if seq < 10 else 0.02
        arrivals = {0: seq * 1.0, 1: seq * 1.0}
        found += det.add("c", seq, arrivals, {0: seq + comm_time, 1: seq + comm_time})
    assert [f["kind"] for f in found] == ["slowdown"]
    assert found[0]["baseline"] == pytest.approx(0.002) and found[0]["now"] >= 4 * found[0]["baseline"]


def test_collector_completes_instances_across_ranks_and_clocks():
    det = StragglerDetector(window=3, skew=0.01)
    col = Collector(det, boot="A")
    comms = {"c": [0, 1]}
    a0 = {
        "pos": 3,
        "now": 10.0,
        "boot": "A",
        "comms": comms,
        "arrivals": [["c", s, s * 1.0, s + 0.01] for s in (1, 2, 3)],
    }
    # rank 1 runs on another clock, 100 s ahead, and arrives 100 ms late every time
    a1 = {"pos": 2, "now": 110.0, "boot": "B", "comms": comms,
          "arrivals": [["c", s, 100 + s + 0.1, 100 + s + 0.11] for s in (1, 2)]}  # fmt: skip
    assert col.pull({0: (a0, 9.99, 10.01), 1: (a1, 9.99, 10.01)}) == []
    assert col.cursor == {0: 3, 1: 2} and col.state()["pending"] == 1
    a1 = {**a1, "pos": 3, "arrivals": [["c", 3, 103.1, 103.11]]}
    found = col.pull({1: (a1, 9.99, 10.01)})
    assert [f["straggler"] for f in found] == [1] and found[0]["lateness"] == pytest.approx(0.1, abs=0.011)
