"""Sequence layouts (collectives.sequence): shards, unsharding, the blocks a causal mask lets through."""

from pathlib import Path

import numpy as np
import pytest

from collectives import (
    shard_positions,
    shard_sequence,
    unshard_sequence,
)
from collectives.sequence import attention_blocks, query_start

HERE = Path(__file__).parent / "mpi"
ROOT = Path(__file__).resolve().parent.parent


def _rand(shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


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
