"""TokenRing and ring attention against a float64 single-process reference, at any rank count.

Run under ``mpiexec -n N python -m mpi4py``; exits non-zero on any mismatch. Every rank draws the
same seeded full sequence, computes the float64 reference of the whole attention (out, lse and the
gradients), and checks its own shard of the distributed results: causal and not, both layouts,
multi-head and grouped-query heads, with and without a batch axis, float32 (1e-5 relative) and
float16 inputs (1e-2 relative), several piece counts. Also checks the bytes each algorithm hands
to MPI, that ranks calling with different sizes all get the same error, and that the cached
channels die with their communicator.
"""

import itertools

import numpy as np
from mpi4py import MPI

import collectives
from collectives import (
    RingStats,
    reference_attention,
    reference_attention_backward,
    ring_attention,
    ring_attention_backward,
    shard_sequence,
    token_ring_attention,
    token_ring_attention_backward,
)

comm = MPI.COMM_WORLD
rank, world = comm.Get_rank(), comm.Get_size()
ALGORITHMS = {
    "tokenring": (token_ring_attention, token_ring_attention_backward),
    "ring": (ring_attention, ring_attention_backward),
}
TOLERANCE = {np.float32: 1e-5, np.float16: 1e-2, np.float64: 1e-10}


def relative_error(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    finite = np.isfinite(want)
    assert np.array_equal(np.isfinite(got), finite), "non-finite values differ"
    return float(np.max(np.abs(got[finite] - want[finite])) / max(np.max(np.abs(want[finite])), 1e-30))


def full_sequence(seed, batch, seq, heads, kv_heads, dim):
    rng = np.random.default_rng(seed)
    lead = (seq,) if batch is None else (batch, seq)
    return (
        rng.standard_normal((*lead, heads, dim)),
        rng.standard_normal((*lead, kv_heads, dim)),
        rng.standard_normal((*lead, kv_heads, dim)),
        rng.standard_normal((*lead, heads, dim)),
    )


checked = 0
cases = itertools.product(["zigzag", "contiguous"], [False, True], [(4, 4), (6, 2)], [None, 2])
for n, (layout, causal, (heads, kv_heads), batch) in enumerate(cases):
    seq = 2 * world * 3
    q, k, v, dout = full_sequence(100 + n, batch, seq, heads, kv_heads, 8)
    for dtype in (np.float32, np.float16) if batch is None else (np.float32,):
        qd, kd, vd, dd = (x.astype(dtype) for x in (q, k, v, dout))
        ref_out, ref_lse = reference_attention(qd, kd, vd, causal)
        ref_grads = reference_attention_backward(dd, qd, kd, vd, causal)

        def mine(x, axis=-3, layout=layout):
            return shard_sequence(x, rank, world, layout, axis=axis)

        for name, (forward, backward) in ALGORITHMS.items():
            for pieces in (None, 2, 3) if name == "tokenring" and dtype == np.float32 else (None,):
                kw = {} if pieces is None else {"pieces": pieces}
                where = (
                    f"{name} {layout} causal={causal} H={heads}/{kv_heads} B={batch} {dtype.__name__} pieces={pieces}"
                )
                out, lse = forward(mine(qd), mine(kd), mine(vd), comm, causal, layout, **kw)
                assert out.dtype == dtype and out.shape == mine(qd).shape, f"{where}: out {out.dtype} {out.shape}"
                assert lse.dtype == np.float32 and lse.shape == mine(qd).shape[:-1], f"{where}: lse {lse.shape}"
                errors = {"out": relative_error(out, mine(ref_out)), "lse": relative_error(lse, mine(ref_lse, -2))}
                grads = backward(mine(dd), mine(qd), mine(kd), mine(vd), out, lse, comm, causal, layout, **kw)
                for g_name, got, want in zip(("dq", "dk", "dv"), grads, ref_grads):
                    assert got.dtype == dtype and got.shape == mine(want).shape, f"{where}: {g_name} {got.shape}"
                    errors[g_name] = relative_error(got, mine(want))
                worst = max(errors, key=errors.get)
                assert errors[worst] <= TOLERANCE[dtype], f"rank {rank}: {where}: {worst} relative error {errors}"
                checked += 1

# float64 inputs accumulate in float64
q, k, v, dout = full_sequence(7, None, 2 * world, 2, 1, 4)
out, lse = token_ring_attention(*(shard_sequence(x, rank, world) for x in (q, k, v)), comm, causal=True)
ref_out, ref_lse = reference_attention(q, k, v, causal=True)
assert out.dtype == np.float64 and lse.dtype == np.float64
assert relative_error(out, shard_sequence(ref_out, rank, world)) < 1e-12

# bytes handed to MPI: multi-head attention, no mask, float32 (records have no padding here)
length, heads, dim = 8, 4, 16
q, k, v, _ = (
    shard_sequence(x, rank, world).astype(np.float32) for x in full_sequence(9, None, length * world, heads, heads, dim)
)
sent = {}
for name, (forward, _) in ALGORITHMS.items():
    stats = RingStats()
    forward(q, k, v, comm, False, "zigzag", stats=stats)
    sent[name] = [sum(step[c] for step in stats.sent) for c in range(2)]
    assert len(stats.compute_s) == world and all(t >= 0 for t in stats.wait_s) and stats.total_s > 0
rows = length * heads * (world - 1)
assert sent["ring"] == [rows * 2 * dim * 4, 0], sent
assert sent["tokenring"] == [rows * dim * 4, rows * (dim + 1) * 4], sent
if world > 1:
    assert max(sent["tokenring"]) / max(sent["ring"]) <= (dim + 1) / (2 * dim) + 1e-12

# under a causal mask TokenRing sends only the query rows (and results) the mask lets through.
# zigzag: owner s's queries go to rank s-1, s-2, ...; hop u needs the whole shard while some later
# holder is below s (u <= s), else only the second half; a result is whole when its owner is above
# the rank that computed it, half otherwise. contiguous: only ranks below s see s's queries.
pairs = world * (world - 1) // 2
expected_rows = {
    "zigzag": (sum(s + (world - 1 - s) / 2 for s in range(world)) * length, 1.5 * pairs * length),
    "contiguous": (pairs * length, pairs * length),
}
for layout, (q_rows, result_rows) in expected_rows.items():
    stats = RingStats()
    token_ring_attention(q, k, v, comm, True, layout, stats=stats)
    got = [comm.allreduce(sum(step[c] for step in stats.sent)) for c in range(2)]
    assert got == [q_rows * heads * dim * 4, result_rows * heads * (dim + 1) * 4], (layout, got)

# ranks that disagree on their sizes all get the same error instead of hanging
if world > 1:
    mine_len = 4 if rank == 0 else 6
    a = np.zeros((mine_len, 2, 4), np.float32)
    for forward, _ in ALGORITHMS.values():
        try:
            forward(a, a, a, comm)
        except ValueError as exc:
            assert "ranks disagree" in str(exc) and "shard length L" in str(exc), exc
        else:
            raise AssertionError("mismatched shard lengths were accepted")

# the channels are cached on the communicator and freed with it
dup = comm.Dup()
a = shard_sequence(np.ones((2 * world, 2, 4), np.float32), rank, world)
token_ring_attention(a, a, a, dup)
if world > 1:
    channels = collectives.ringexchange.ring_channels(dup)
    assert channels is collectives.ringexchange.ring_channels(dup)
dup.Free()
if world > 1:
    assert all(c == MPI.COMM_NULL for c in channels), "channels outlived their communicator"

comm.Barrier()
if rank == 0:
    print(f"tokenring_cases: {checked} configurations OK on {world} ranks")
