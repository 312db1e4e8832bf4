"""Block attention kernels and the float64 reference (collectives.attention)."""

from pathlib import Path

import numpy as np
import pytest

import collectives.attention.kernels as kernels
from collectives import (
    reference_attention,
    reference_attention_backward,
)
from collectives.attention import KeyValues, block_attention, block_attention_backward, merge_partial

HERE = Path(__file__).parent / "mpi"
ROOT = Path(__file__).resolve().parent.parent


def _rand(shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (6, 2), (3, 1)])
def test_block_kernels_match_the_reference(monkeypatch, causal, heads, kv_heads):
    monkeypatch.setattr(kernels, "TILE_BYTES", 4 * heads * 23 * 5)  # several query tiles
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
