"""TokenRing and ring attention (collectives.tokenring, collectives.ringattention): one rank, input errors,
multi-rank runs against the float64 reference."""

from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from collectives import (
    reference_attention,
    reference_attention_backward,
    ring_attention,
    ring_attention_backward,
    token_ring_attention,
    token_ring_attention_backward,
)

HERE = Path(__file__).parent / "mpi"
ROOT = Path(__file__).resolve().parent.parent


def _rand(shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


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
