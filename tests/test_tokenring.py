"""TokenRing attention: sequence layouts, block kernels, the float64 reference, input errors, multi-rank runs."""

import json
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

import collectives.attention as attention
from collectives import (
    reference_attention,
    reference_attention_backward,
    ring_attention,
    ring_attention_backward,
    shard_positions,
    shard_sequence,
    token_ring_attention,
    token_ring_attention_backward,
    unshard_sequence,
)
from collectives.attention import KeyValues, block_attention, block_attention_backward, merge_partial
from collectives.sequence import attention_blocks, query_start

HERE = Path(__file__).parent / "mpi"
ROOT = Path(__file__).resolve().parent.parent


def _rand(shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ------------------------------------------------------------------------------------------- sequence layouts


@pytest.mark.parametrize("layout", ["zigzag", "contiguous"])
@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_shards_partition_the_sequence_and_unshard_inverts(layout, world):
    seq = 2 * world * 3
    x = _rand((2, seq, 3, 4))
    shards = [shard_sequence(x, r, world, layout) for r in range(world)]
    assert all(s.shape == (2, seq // world, 3, 4) for s in shards)
    np.testing.assert_array_equal(unshard_sequence(shards, layout), x)
    positions = np.concatenate([shard_positions(seq, r, world, layout) for r in range(world)])
    assert sorted(positions) == list(range(seq))
    for r, s in enumerate(shards):
        np.testing.assert_array_equal(s, x[:, shard_positions(seq, r, world, layout)])
    lse = _rand((seq, 3))
    parts = [shard_sequence(lse, r, world, layout, axis=-2) for r in range(world)]
    np.testing.assert_array_equal(unshard_sequence(parts, layout, axis=-2), lse)


def test_zigzag_rank_holds_chunks_r_and_mirror():
    np.testing.assert_array_equal(shard_positions(16, 1, 4, "zigzag"), [2, 3, 12, 13])
    np.testing.assert_array_equal(shard_positions(16, 1, 4, "contiguous"), [4, 5, 6, 7])


@pytest.mark.parametrize(
    "seq, world, layout, needed", [(10, 4, "contiguous", "multiple of 4"), (12, 4, "zigzag", "multiple of 8")]
)
def test_lengths_that_do_not_divide_are_rejected(seq, world, layout, needed):
    with pytest.raises(ValueError, match=f"sequence of {seq} tokens cannot be split over {world} ranks.*{needed}"):
        shard_sequence(np.zeros((seq, 2, 4)), 0, world, layout)
    with pytest.raises(ValueError, match="layout must be one of"):
        shard_positions(16, 0, 4, "striped")
    with pytest.raises(ValueError, match="rank 4 is outside 0..3"):
        shard_positions(16, 4, 4)
    with pytest.raises(ValueError, match="shards must all have the same shape"):
        unshard_sequence([np.zeros((4, 2, 4)), np.zeros((6, 2, 4))])
    with pytest.raises(ValueError, match="zigzag shards hold two equal chunks, but their length is 3"):
        unshard_sequence([np.zeros((3, 2, 4))] * 2)


@pytest.mark.parametrize("layout", ["zigzag", "contiguous"])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 5])
def test_blocks_cover_exactly_the_causal_mask(layout, world):
    seq = 4 * world
    length = seq // world
    for qr in range(world):
        for kr in range(world):
            covered = np.zeros((length, length), bool)
            for blk in attention_blocks(qr, kr, world, length, layout, causal=True):
                part = np.ones((blk.q_rows.stop - blk.q_rows.start, blk.kv_rows.stop - blk.kv_rows.start), bool)
                if blk.diagonal:
                    part = np.tril(part)
                assert not covered[blk.q_rows, blk.kv_rows][part].any(), "blocks overlap"
                covered[blk.q_rows, blk.kv_rows] |= part
            qp, kp = shard_positions(seq, qr, world, layout), shard_positions(seq, kr, world, layout)
            np.testing.assert_array_equal(covered, qp[:, None] >= kp[None, :], err_msg=f"q rank {qr}, kv rank {kr}")
            rows = np.flatnonzero(covered.any(axis=1))
            assert query_start(qr, kr, world, length, layout, True) == (rows[0] if len(rows) else length)
            if len(rows):
                assert rows[-1] == length - 1 and len(rows) == length - rows[0], "needed query rows are a suffix"
    assert attention_blocks(0, 1, world, length, layout, causal=False)[0].q_rows == slice(0, length)


# ----------------------------------------------------------------------------------------------- block kernels


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (6, 2), (3, 1)])
def test_block_kernels_match_the_reference(monkeypatch, causal, heads, kv_heads):
    monkeypatch.setattr(attention, "TILE_BYTES", 4 * heads * 23 * 5)  # several query tiles
    q, k, v, dout = (_rand((23, h, 8), s, np.float32) for s, h in enumerate((heads, kv_heads, kv_heads, heads)))
    out, lse = block_attention(q[:, None], KeyValues(k[:, None], v[:, None]), 0.3, causal)
    ref_out, ref_lse = reference_attention(q, k, v, causal, softmax_scale=0.3)
    np.testing.assert_allclose(out[:, 0], ref_out, rtol=0, atol=2e-6)
    np.testing.assert_allclose(lse[:, 0], ref_lse, rtol=0, atol=2e-6)
    dq = np.zeros((23, 1, heads, 8), np.float32)
    kv = KeyValues(k[:, None], v[:, None], grads=True)
    delta = (dout * out[:, 0]).sum(-1)[:, None]
    block_attention_backward(dout[:, None], q[:, None], kv, lse, delta, 0.3, causal, dq)
    for got, want in zip((dq, *kv.gradients()), reference_attention_backward(dout, q, k, v, causal, softmax_scale=0.3)):
        np.testing.assert_allclose(got[:, 0], want, rtol=0, atol=5e-6)


def test_merge_guards_minus_infinity():
    out = np.array([[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]], np.float32)
    lse = np.array([0.5, -np.inf, -np.inf], np.float32)
    blk_out = np.array([[5.0, 6.0], [7.0, 8.0], [9.0, 9.0]], np.float32)
    blk_lse = np.array([-np.inf, 1.0, -np.inf], np.float32)
    merge_partial(out, lse, blk_out, blk_lse)
    np.testing.assert_array_equal(out, [[1.0, 2.0], [7.0, 8.0], [0.0, 0.0]])
    np.testing.assert_array_equal(lse, [0.5, 1.0, -np.inf])
    out, lse = np.array([[2.0]]), np.array([np.log(1.0)])
    merge_partial(out, lse, np.array([[4.0]]), np.array([np.log(3.0)]))
    np.testing.assert_allclose(out, [[(2.0 * 1 + 4.0 * 3) / 4]])
    np.testing.assert_allclose(lse, [np.log(4.0)])


def test_a_row_that_sees_no_key_gets_zero_output_and_minus_infinity():
    q = _rand((1, 1, 2, 4), 0, np.float32)
    kv = np.full((1, 1, 2, 4), np.nan, np.float32)[:0]  # no keys at all
    out, lse = block_attention(q, KeyValues(kv, kv), 1.0)
    assert np.all(out == 0) and np.all(lse == -np.inf)


@pytest.mark.parametrize("causal", [False, True])
def test_reference_gradients_match_finite_differences(causal):
    q, k, v, dout = _rand((5, 2, 3), 1), _rand((5, 1, 3), 2), _rand((5, 1, 3), 3), _rand((5, 2, 3), 4)
    grads = reference_attention_backward(dout, q, k, v, causal)
    for x, g in zip((q, k, v), grads):
        numeric = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            old = x[idx]
            x[idx] = old + 1e-6
            plus = (reference_attention(q, k, v, causal)[0] * dout).sum()
            x[idx] = old - 1e-6
            minus = (reference_attention(q, k, v, causal)[0] * dout).sum()
            x[idx] = old
            numeric[idx] = (plus - minus) / 2e-6
        np.testing.assert_allclose(g, numeric, rtol=0, atol=1e-7)


# ------------------------------------------------------------------------------------ one rank, bad arguments


@pytest.mark.parametrize("algorithm", ["tokenring", "ring"])
@pytest.mark.parametrize("layout, causal", [("zigzag", True), ("contiguous", False)])
def test_one_rank_equals_local_attention(algorithm, layout, causal):
    forward, backward = {
        "tokenring": (token_ring_attention, token_ring_attention_backward),
        "ring": (ring_attention, ring_attention_backward),
    }[algorithm]
    q, dout = _rand((2, 10, 4, 8), 1, np.float32), _rand((2, 10, 4, 8), 2, np.float32)
    k, v = _rand((2, 10, 2, 8), 3, np.float32), _rand((2, 10, 2, 8), 4, np.float32)
    out, lse = forward(q, k, v, MPI.COMM_SELF, causal, layout, softmax_scale=0.2)
    ref_out, ref_lse = reference_attention(q, k, v, causal, softmax_scale=0.2)
    np.testing.assert_allclose(out, ref_out, rtol=0, atol=2e-6)
    np.testing.assert_allclose(lse, ref_lse, rtol=0, atol=2e-6)
    grads = backward(dout, q, k, v, out, lse, MPI.COMM_SELF, causal, layout, softmax_scale=0.2)
    for got, want in zip(grads, reference_attention_backward(dout, q, k, v, causal, softmax_scale=0.2)):
        np.testing.assert_allclose(got, want, rtol=0, atol=5e-6)


def _bad(**change):
    args = {"q": np.zeros((8, 4, 16), np.float32), "k": np.zeros((8, 2, 16), np.float32)}
    args.update(change)
    args.setdefault("v", args["k"])
    return args


@pytest.mark.parametrize(
    "change, error, message",
    [
        (
            {"k": np.zeros((6, 2, 16), np.float32)},
            ValueError,
            r"same tokens \(shard length L\).*\(6, 2, 16\)",
        ),
        ({"k": np.zeros((8, 3, 16), np.float32)}, ValueError, r"H=4 must be a multiple of .* H_kv=3"),
        ({"k": np.zeros((8, 2, 8), np.float32)}, ValueError, "same head size D"),
        ({"v": np.zeros((8, 1, 16), np.float32)}, ValueError, "k and v must have the same shape"),
        ({"k": np.zeros((8, 2, 16), np.float64)}, TypeError, "k must have q's dtype float32"),
        ({"q": np.zeros((8, 4, 16), np.int32)}, TypeError, "q must be float16, float32 or float64"),
        ({"q": np.zeros((8, 16), np.float32)}, ValueError, r"q must be \[L, H, D\] or \[B, L, H, D\]"),
        ({"q": np.zeros((2, 8, 4, 16), np.float32)}, ValueError, "k must have q's number of axes"),
        ({"q": [[0.0]]}, TypeError, "q must be a numpy or cupy array, got list"),
        (
            {"q": np.zeros((7, 4, 16), np.float32), "k": np.zeros((7, 2, 16), np.float32)},
            ValueError,
            "zigzag shard holds two equal chunks, so its length must be even, got L=7",
        ),
    ],
)
@pytest.mark.parametrize("function", [token_ring_attention, ring_attention])
def test_bad_inputs_are_rejected_clearly(function, change, error, message):
    args = _bad(**change)
    with pytest.raises(error, match=f"^{function.__name__}: .*{message}"):
        function(args["q"], args["k"], args["v"], MPI.COMM_SELF)


def test_bad_arguments_of_the_calls_are_rejected_clearly():
    q, k = np.zeros((8, 4, 16), np.float32), np.zeros((8, 2, 16), np.float32)
    with pytest.raises(ValueError, match="token_ring_attention: layout must be one of 'zigzag', 'contiguous'"):
        token_ring_attention(q, k, k, MPI.COMM_SELF, layout="striped")
    with pytest.raises(TypeError, match="ring_attention: comm must be an mpi4py intracommunicator"):
        ring_attention(q, k, k, "world")
    with pytest.raises(ValueError, match=r"token_ring_attention: pieces must be an int in 1..L=8"):
        token_ring_attention(q, k, k, MPI.COMM_SELF, pieces=0)
    with pytest.raises(ValueError, match="softmax_scale must be a finite number"):
        token_ring_attention(q, k, k, MPI.COMM_SELF, softmax_scale=float("nan"))
    lse = np.zeros((8, 4), np.float32)
    with pytest.raises(ValueError, match=r"token_ring_attention_backward: lse must have shape \(8, 4\), got"):
        token_ring_attention_backward(q, q, k, k, q, lse.T, MPI.COMM_SELF)
    with pytest.raises(ValueError, match=r"ring_attention_backward: dout must have shape \(8, 4, 16\)"):
        ring_attention_backward(q[:4], q, k, k, q, lse, MPI.COMM_SELF)


# ------------------------------------------------------------------------------------------------- many ranks


@pytest.mark.mpi
@pytest.mark.parametrize("nprocs", [1, 2, 3, 4])
def test_distributed_attention_matches_float64_reference(mpirun, nprocs):
    result = mpirun(nprocs, [str(HERE / "tokenring_cases.py")], timeout=240)
    assert f"configurations OK on {nprocs} ranks" in result.stdout


@pytest.mark.mpi
def test_example_runs(mpirun):
    result = mpirun(3, [str(ROOT / "examples" / "tokenring_attention.py"), "--tokens", "96"], timeout=180)
    assert "matches the single-process float64 reference" in result.stdout


@pytest.mark.mpi
def test_benchmark_quick_run_writes_json(tmp_path):
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
def test_benchmark_runs_on_emulated_nodes(tmp_path):
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
