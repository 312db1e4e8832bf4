"""Expert all-to-all (collectives.moe): dispatch/combine on one rank, errors, multi-rank runs.

The multi-rank runs over MPI are in tests/mpi/moe_cases.py (launched at the end of this file).
"""

from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from collectives.moe import RecvInfo, combine, dispatch, release_buffers
from collectives.moe.combining import _weighted_sum
from collectives.placement import Placement

SELF = MPI.COMM_SELF


def identity_round_trip(x, idx, w, **kwargs):
    recv_x, info, handle = dispatch(x, idx, w, SELF, kwargs.pop("num_experts", 4), **kwargs)
    return recv_x, info, handle, combine(recv_x.copy(), handle)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize("dedup", [True, False])
@pytest.mark.parametrize("pack", ["gather", "mpi"])
def test_one_rank_identity_experts_give_the_weighted_sum_bitwise(dtype, dedup, pack):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 7)).astype(dtype)
    idx = np.argsort(rng.random((50, 4)), axis=1)[:, :2]
    idx[::7, 1] = -1
    w = rng.random((50, 2)).astype(np.float32)
    recv_x, info, handle, out = identity_round_trip(x, idx, w, dedup=dedup, pack=pack)
    acc = np.float32 if dtype == np.float16 else dtype
    weights = np.where(idx >= 0, w, 0).astype(acc)
    ref = x.astype(acc) * weights[:, :1] + x.astype(acc) * weights[:, 1:]
    assert out.dtype == dtype and np.array_equal(out, ref.astype(dtype))
    assert isinstance(info, RecvInfo) and len(info) == 4 and info.num_rows == recv_x.shape[0] == (idx >= 0).sum()
    assert handle.dispatch_bytes == 0  # nothing leaves a single rank


def test_one_rank_edge_cases():
    # no tokens
    _, info, _, out = identity_round_trip(np.zeros((0, 3), np.float32), np.zeros((0, 2), np.int64), np.zeros((0, 2)))
    assert out.shape == (0, 3) and info.num_rows == 0
    # every slot empty: zero output, no rows
    x = np.ones((4, 3), np.float32)
    _, info, _, out = identity_round_trip(x, np.full((4, 2), -1), np.ones((4, 2)))
    assert info.num_rows == 0 and not out.any()
    # capacity: experts keep ceil(cf * N * K / E) pairs
    idx = np.zeros((8, 1), np.int64)
    _, info, handle, out = identity_round_trip(x[:1].repeat(8, 0), idx, np.ones((8, 1)), capacity_factor=1.0)
    assert info.capacity == 2 and info.dropped.tolist() == [6, 0, 0, 0]
    assert out[:2].all() and not out[2:].any()
    # a strided x, and combine after the scratch buffers were released
    wide = np.arange(4 * 6, dtype=np.float32).reshape(4, 6)
    recv_x, _, handle = dispatch(wide[:, ::2], np.array([[0], [1], [2], [3]]), np.ones((4, 1)), SELF, 4)
    release_buffers()
    assert np.array_equal(combine(recv_x, handle), wide[:, ::2])
    # a one-layer Placement object and an owner array are both accepted
    for placement in (Placement(np.zeros((1, 4), np.int64), 1), np.zeros(4, np.int64)):
        _, info, _, out = identity_round_trip(x, np.array([[3], [1], [0], [2]]), np.ones((4, 1)), placement=placement)
        assert info.experts.tolist() == [0, 1, 2, 3] and np.array_equal(out, x)


def test_weighted_sum_in_chunks_matches_one_pass(monkeypatch):
    import collectives.moe.combining as moe

    rng = np.random.default_rng(0)
    rows = rng.standard_normal((30 * 3 + 1, 5)).astype(np.float16)
    rows[-1] = 0
    w = rng.random((30, 3))
    positions = rng.permutation(30 * 3).reshape(30, 3)
    positions[::4, 2] = 30 * 3  # the zero row: a missing pair
    w[::4, 2] = 0
    whole = _weighted_sum(np, rows, positions, w, np.dtype(np.float16))
    in_place = np.empty((30 * 3, 5), np.float16)
    in_place[np.arange(30 * 3)] = rows[positions.reshape(-1)]
    assert np.array_equal(_weighted_sum(np, in_place, None, w, np.dtype(np.float16)), whole)
    monkeypatch.setattr(moe, "_CHUNK_BYTES", 40)
    assert np.array_equal(_weighted_sum(np, rows, positions, w, np.dtype(np.float16)), whole)
    assert np.array_equal(_weighted_sum(np, in_place, None, w, np.dtype(np.float16)), whole)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"x": np.zeros(4)}, "x must be a"),
        ({"idx": np.zeros((3, 2), np.int64)}, "topk_idx must be"),
        ({"idx": np.zeros((4, 2))}, "integer expert ids"),
        ({"idx": np.full((4, 2), 4)}, "ids 4..4"),
        ({"idx": np.array([[0, 1], [2, 2], [0, -1], [-1, -1]])}, "row 1 names an expert twice"),
        ({"w": np.zeros((4, 1))}, "topk_weights has shape"),
        ({"w": np.zeros((4, 2), np.int64)}, "floating point"),
        ({"num_experts": 0}, "num_experts must be"),
        ({"placement": np.zeros(3, np.int64)}, "placement has 3 experts"),
        ({"placement": np.array([0, 1, 0, 0])}, "names ranks 0..1 on 1 ranks"),
        ({"placement": Placement(np.zeros((2, 4), np.int64), 1)}, "placement of 2 layers"),
        ({"capacity_factor": 0.0}, "capacity_factor must be > 0"),
        ({"pack": "memcpy"}, "pack must be one of gather, mpi"),
    ],
)
def test_dispatch_rejects_bad_input_before_communicating(kwargs, message):
    args = {"x": np.zeros((4, 3)), "idx": np.zeros((4, 2), np.int64), "w": np.ones((4, 2)), "num_experts": 4}
    args["idx"][:, 1] = 1
    args.update(kwargs)
    extra = {k: v for k, v in args.items() if k in ("placement", "capacity_factor", "pack")}
    with pytest.raises(ValueError, match=message):
        dispatch(args["x"], args["idx"], args["w"], SELF, args["num_experts"], **extra)


def test_combine_rejects_bad_outputs():
    x = np.ones((4, 3), np.float32)
    idx = np.array([[0], [1], [2], [3]])
    recv_x, _, handle = dispatch(x, idx, np.ones((4, 1)), SELF, 4)
    with pytest.raises(ValueError, match=r"y must be \[4, features >= 1\]"):
        combine(recv_x[:3], handle)
    with pytest.raises(ValueError, match="floating point"):
        combine(recv_x.astype(np.int32), handle)
    with pytest.raises(ValueError, match="MoEHandle"):
        combine(recv_x, object())


@pytest.mark.mpi
@pytest.mark.parametrize("nprocs", [1, 2, 3, 4, 5])
def test_dispatch_combine_across_ranks(mpirun, nprocs):
    script = Path(__file__).parent / "mpi" / "moe_cases.py"
    result = mpirun(nprocs, [str(script)], timeout=240)
    assert f"OK on {nprocs} ranks: 36 cases" in result.stdout


@pytest.mark.mpi
def test_moe_layer_example_matches_its_local_evaluation(mpirun):
    example = Path(__file__).parent.parent / "examples" / "moe_layer.py"
    result = mpirun(3, [str(example), "--tokens", "300", "--shuffle", "--capacity-factor", "1.25"], timeout=180)
    assert "moe_layer: 3 ranks" in result.stdout and result.stdout.rstrip().endswith("OK")
