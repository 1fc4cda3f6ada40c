"""Tests for gpt_plugin.kernels.flash_alibi_tpu (Pallas TPU / Mosaic kernels).

There is no TPU in CI: numerics run the kernels on CPU in Pallas' TPU
interpret mode (``pltpu.force_tpu_interpret_mode()`` or ``interpret=True``)
against the float64 NumPy reference in tests/attention_reference.py (ALiBi
scores, causal and segment masks, softmax, hand-written gradients), and Mosaic
compilation is covered up to lowering by cross-platform lowering for "tpu".
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from gpt_plugin.kernels import flash_alibi_tpu as fat
from gpt_plugin.kernels.flash_alibi_tpu import flash_alibi_tpu
from attention_reference import make_segments, np_attention, np_attention_grads, np_slopes


# ----------------------------------------------------------------------------
# float64 NumPy reference
# ----------------------------------------------------------------------------
def np_reference(q, k, v, do, slopes, seg, causal):
  scale = 1.0 / math.sqrt(q.shape[-1])
  o, p = np_attention(q, k, v, slopes, seg, causal, scale)
  return (o, *np_attention_grads(q, k, v, p, do, scale))


def make_inputs(batch, t, heads, d, packed, seed=0):
  rng = np.random.default_rng(seed)
  q, k, v, do = (rng.standard_normal((batch, t, heads, d)).astype(np.float32) for _ in range(4))
  seg = make_segments(batch, t, rng, padded_rows=0) if packed else None
  return q, k, v, do, np_slopes(heads).astype(np.float32), seg


# ----------------------------------------------------------------------------
# Kernel runner: output and vjp w.r.t. (q, k, v, slopes), jitted per config.
# ----------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("causal", "block_q", "block_k", "interpret"))
def _fwd_bwd(q, k, v, do, slopes, seg, *, causal, block_q, block_k, interpret):
  def f(q, k, v, slopes):
    return flash_alibi_tpu(
      q, k, v, slopes=slopes, segment_ids=seg, causal=causal, block_q=block_q, block_k=block_k, interpret=interpret
    )

  o, vjp = jax.vjp(f, q, k, v, slopes)
  return o, vjp(do.astype(o.dtype))


def run_kernel(q, k, v, do, slopes, seg, *, causal, block_q=128, block_k=128, dtype=jnp.float32, interpret=False):
  """(o, dq, dk, dv, dslopes) as float64 NumPy; TPU interpret mode."""
  q, k, v, do = (jnp.asarray(x, dtype) for x in (q, k, v, do))
  seg = None if seg is None else jnp.asarray(seg)
  with pltpu.force_tpu_interpret_mode():
    o, grads = _fwd_bwd(
      q, k, v, do, jnp.asarray(slopes), seg, causal=causal, block_q=block_q, block_k=block_k, interpret=interpret
    )
  return tuple(np.asarray(x, np.float64) for x in (o, *grads))


NAMES = ("out", "dq", "dk", "dv")

# (batch, seq, heads, head_dim, causal, packed, block_q, block_k)
FP32_CASES = {
  # T=200 -> padded to 256: 2x2 tiles, one skipped above the diagonal.
  "causal_pad": (2, 200, 3, 64, True, False, 128, 128),
  # Short sequence: one 48-long tile, padded keys masked (non-causal).
  "noncausal_short": (2, 45, 3, 64, False, False, 128, 128),
  # 12 heads, packed documents (+ a trailing 0-id padding run in row 0).
  "causal_packed_12h": (2, 128, 12, 64, True, True, 128, 128),
  # block_q < block_k, non-causal packed, T=300 -> 512 (padded keys masked).
  "noncausal_packed_bk256": (1, 300, 3, 64, False, True, 128, 256),
  # block_q > block_k, causal packed; head_dim 160 is zero-padded to 256.
  "causal_packed_bq256_d160": (1, 300, 3, 160, True, True, 256, 128),
}


@pytest.mark.parametrize("case", list(FP32_CASES))
def test_fp32_matches_reference(case):
  batch, t, heads, d, causal, packed, bq, bk = FP32_CASES[case]
  q, k, v, do, slopes, seg = make_inputs(batch, t, heads, d, packed)
  *got, dslopes = run_kernel(q, k, v, do, slopes, seg, causal=causal, block_q=bq, block_k=bk)
  want = np_reference(q, k, v, do, slopes, seg, causal)
  for name, g, w in zip(NAMES, got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=5e-5, err_msg=name)


def test_slopes_get_zero_gradient():
  # Same configuration as FP32_CASES["causal_pad"]: reuses its compilation.
  q, k, v, do, slopes, _ = make_inputs(2, 200, 3, 64, packed=False)
  *_, dslopes = run_kernel(q, k, v, do, slopes, None, causal=True)
  np.testing.assert_array_equal(dslopes, 0.0)


def test_bf16_relative_error():
  """bf16 inputs (interpret=True flag instead of the context manager)."""
  q, k, v, do, slopes, seg = make_inputs(2, 200, 3, 64, packed=True, seed=1)
  q, k, v, do = (np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32) for x in (q, k, v, do))
  *got, _ = run_kernel(q, k, v, do, slopes, seg, causal=True, dtype=jnp.bfloat16, interpret=True)
  want = np_reference(q, k, v, do, slopes, seg, True)
  for name, g, w in zip(NAMES, got, want):
    rel = np.linalg.norm(g - w) / np.linalg.norm(w)
    assert rel <= 1e-2, (name, rel)


def test_causal_skips_tiles_above_diagonal():
  """Tiles above the diagonal are never computed: NaN in a later key block
  (or in earlier query rows, for dk/dv) does not leak.  A kernel that only
  masked those tiles would give NaN (0 * NaN in p @ v)."""
  b, t, h, d, blk = 1, 256, 2, 64, 128
  q, k, v, do, slopes, _ = make_inputs(b, t, h, d, packed=False, seed=2)
  want = np_reference(q, k, v, do, slopes, None, True)
  first, second = slice(None, blk), slice(blk, None)

  # NaN keys/values in block 1: query block 0 (out, dq) stays exact.
  k_bad, v_bad = k.copy(), v.copy()
  k_bad[:, second] = np.nan
  v_bad[:, second] = np.nan
  got = run_kernel(q, k_bad, v_bad, do, slopes, None, causal=True)
  for name, g, w in zip(NAMES[:2], got[:2], want[:2]):
    np.testing.assert_allclose(g[:, first], w[:, first], rtol=1e-4, atol=5e-5, err_msg=name)

  # NaN queries/cotangents in block 0: key block 1 (dk, dv) and query block 1
  # (out, dq) stay exact.
  q_bad, do_bad = q.copy(), do.copy()
  q_bad[:, first] = np.nan
  do_bad[:, first] = np.nan
  got = run_kernel(q_bad, k, v, do_bad, slopes, None, causal=True)
  for name, g, w in zip(NAMES, got[:4], want):
    np.testing.assert_allclose(g[:, second], w[:, second], rtol=1e-4, atol=5e-5, err_msg=name)


def test_packed_skips_tiles_of_other_segments():
  """Non-causal, two documents of one block each: NaN in document 2's keys,
  values, queries and cotangents leaves document 1 exact in every output."""
  b, t, h, d, blk = 1, 256, 2, 64, 128
  q, k, v, do, slopes, _ = make_inputs(b, t, h, d, packed=False, seed=3)
  seg = np.repeat(np.array([[1, 2]], np.int32), blk, axis=1)
  want = np_reference(q, k, v, do, slopes, seg, False)
  bad = [x.copy() for x in (q, k, v, do)]
  for x in bad:
    x[:, blk:] = np.nan
  got = run_kernel(*bad, slopes, seg, causal=False)
  for name, g, w in zip(NAMES, got[:4], want):
    np.testing.assert_allclose(g[:, :blk], w[:, :blk], rtol=1e-4, atol=5e-5, err_msg=name)


@pytest.mark.parametrize("d,packed,causal", [(128, False, True), (64, True, False)])
def test_lowers_to_mosaic_for_tpu(d, packed, causal):
  """Cross-platform lowering of fwd and fwd+bwd (bf16) emits Mosaic custom
  calls (1 forward, 2 backward) and no T x T array."""
  b, t, h = 1, 1024, 2
  x = jax.ShapeDtypeStruct((b, t, h, d), jnp.bfloat16)
  slopes = jax.ShapeDtypeStruct((h,), jnp.float32)
  seg = jax.ShapeDtypeStruct((b, t), jnp.int32)

  def loss(q, k, v, s, seg_ids):
    out = flash_alibi_tpu(q, k, v, slopes=s, causal=causal, segment_ids=seg_ids if packed else None)
    return jnp.sum(out.astype(jnp.float32))

  def lowered_text(fn):
    return jax.jit(fn).trace(x, x, x, slopes, seg).lower(lowering_platforms=("tpu",)).as_text()

  fwd = lowered_text(loss)
  fwd_bwd = lowered_text(jax.grad(loss, argnums=(0, 1, 2)))
  assert fwd.count("@tpu_custom_call") == 1
  assert fwd_bwd.count("@tpu_custom_call") == 3  # fwd, dq, dk/dv
  assert f"{t}x{t}" not in fwd_bwd


@pytest.mark.parametrize("packed", [False, True])
def test_block_bookkeeping_matches_mask(packed):
  """The tiles each kernel computes are exactly the (query block, key block)
  pairs with an unmasked score, and a skipped grid step reads the block of
  the nearest computed step (so it triggers no new DMA)."""
  t, blk, n = 512, 128, 4
  cfg = fat._Config(seq_len=t, block_q=blk, block_k=blk, sm_scale=1.0, causal=True, packed=packed, interpret=True)
  seg = np.repeat(np.array([[1, 2, 3]], np.int32), [100, 200, 212], axis=1)
  pos = np.arange(t)
  keep = pos[None, :] <= pos[:, None]
  if packed:
    keep &= seg[0][:, None] == seg[0][None, :]
  tiles = keep.reshape(n, blk, n, blk).any(axis=(1, 3))  # [q blk, k blk]
  ranges = []
  if packed:
    segs = fat._make_segments(jnp.asarray(seg), cfg, t)
    ranges = [segs.k_lo, segs.k_hi, segs.q_lo, segs.q_hi]
  _, k_block = fat._q_major_blocks(cfg)
  q_block, _ = fat._k_major_blocks(cfg)

  def check(needed, block_of, in_range):
    idx = np.flatnonzero(needed)
    assert (np.diff(idx) == 1).all()  # a contiguous range
    want = np.clip(np.arange(n), idx[0], idx[-1])
    np.testing.assert_array_equal([int(block_of(x)) for x in range(n)], want)
    np.testing.assert_array_equal([bool(in_range(x)) for x in range(n)], needed)

  for qi in range(n):  # forward / dq grid (b, h, qi, kj)
    lo_hi = fat._k_range(cfg, 0, qi, *ranges[:2])
    check(tiles[qi], lambda kj: k_block(0, 0, qi, kj, None, *ranges[:2]), lambda kj: fat._in_range(kj, *lo_hi))
  for kj in range(n):  # dk/dv grid (b, h, kj, qi)
    lo_hi = fat._q_range(cfg, 0, kj, *ranges[2:])
    check(tiles[:, kj], lambda qi: q_block(0, 0, kj, qi, None, *ranges[2:]), lambda qi: fat._in_range(qi, *lo_hi))
