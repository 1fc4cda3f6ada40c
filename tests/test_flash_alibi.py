"""Tests for gpt_plugin.kernels.flash_alibi.

Everything is compared against the float64 NumPy implementation of ALiBi
attention (causal + segment masking) in tests/attention_reference.py, including
hand-written softmax-attention gradients.  On CPU the Pallas kernels run in interpret mode;
on a GPU (``JAX_PLATFORMS=cuda python -m pytest tests/test_flash_alibi.py``)
the kernel-vs-NumPy tests run the compiled Triton kernels (interpret=None).
"""

import math
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_plugin.kernels import flash_alibi as fa
from gpt_plugin.kernels.common import segment_extent
from attention_reference import (
  assert_matches_float64,
  make_segments,
  np_attention,
  np_attention_grads,
  np_slopes,
  rel_err,
)


# ----------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------
def make_inputs(batch, t, heads, d, seed=0, packed=False):
  rng = np.random.default_rng(seed)
  q, k, v, w = (rng.standard_normal((batch, t, heads, d)).astype(np.float32) for _ in range(4))
  seg = make_segments(batch, t, rng) if packed else None
  return q, k, v, w, seg


def run_fn(fn, q, k, v, w, dtype):
  """Jitted forward + gradients of sum(w * out) w.r.t. q, k, v."""

  def f(q, k, v, w):
    out, vjp = jax.vjp(fn, q, k, v)
    return (out,) + vjp(w.astype(out.dtype))

  args = [jnp.asarray(x, dtype) for x in (q, k, v, w)]
  return [np.asarray(x.astype(jnp.float32)) for x in jax.jit(f)(*args)]


# ----------------------------------------------------------------------------
# Kernel vs float64 reference
# ----------------------------------------------------------------------------
CASES = [
  # (T, heads, head_dim, causal, packed, block_q, block_k)
  (48, 12, 16, True, False, 32, 32),
  (100, 12, 24, True, True, 32, 32),  # head_dim padded to 32
  (130, 4, 32, True, True, 32, 32),
  (100, 6, 16, False, False, 32, 32),
  (130, 12, 16, False, True, 32, 32),
  (100, 3, 16, True, True, 32, 16),  # block_q != block_k
  (64, 5, 16, True, False, 16, 32),
]


@pytest.mark.parametrize("t,heads,d,causal,packed,bq,bk", CASES)
def test_flash_alibi_fp32_matches_numpy(t, heads, d, causal, packed, bq, bk):
  q, k, v, w, seg = make_inputs(2, t, heads, d, seed=t + heads, packed=packed)
  slopes = np_slopes(heads)
  scale = 1.0 / math.sqrt(d)

  def fn(q, k, v):
    return fa.flash_alibi_attention(
      q,
      k,
      v,
      slopes=jnp.asarray(slopes, jnp.float32),
      segment_ids=None if seg is None else jnp.asarray(seg),
      causal=causal,
      block_q=bq,
      block_k=bk,
      interpret=None,
    )

  out, dq, dk, dv = run_fn(fn, q, k, v, w, jnp.float32)
  assert out.shape == q.shape
  assert_matches_float64(out, (dq, dk, dv), q, k, v, w, slopes, seg, causal, scale)


def test_flash_alibi_bf16_relative_error():
  t, heads, d = 100, 12, 32
  q, k, v, w, seg = make_inputs(2, t, heads, d, seed=7, packed=True)
  slopes = np_slopes(heads)

  def fn(q, k, v):
    return fa.flash_alibi_attention(
      q,
      k,
      v,
      slopes=jnp.asarray(slopes, jnp.float32),
      segment_ids=jnp.asarray(seg),
      causal=True,
      block_q=32,
      block_k=32,
      interpret=None,
    )

  # Reference sees the same bf16-rounded inputs.
  qb, kb, vb, wb = (np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32)) for x in (q, k, v, w))

  def fwd_bwd(q, k, v, w):
    out, vjp = jax.vjp(fn, q, k, v)
    return (out,) + vjp(w)

  out, *grads = jax.jit(fwd_bwd)(*(jnp.asarray(x, jnp.bfloat16) for x in (q, k, v, w)))
  assert out.dtype == jnp.bfloat16
  ref, p = np_attention(qb, kb, vb, slopes, seg, True, 1.0 / math.sqrt(d))
  refs = np_attention_grads(qb, kb, vb, p, wb, 1.0 / math.sqrt(d))
  assert rel_err(np.asarray(out, np.float32), ref) <= 1e-2
  for g, r in zip(grads, refs):
    assert g.dtype == jnp.bfloat16
    assert rel_err(np.asarray(g, np.float32), r) <= 1e-2


def test_custom_sm_scale_and_jit_outer():
  t, heads, d = 40, 2, 16
  q, k, v, w, _ = make_inputs(1, t, heads, d, seed=3)
  slopes = np.array([0.5, 0.0625])
  f = jax.jit(
    lambda q, k, v: fa.flash_alibi_attention(
      q, k, v, slopes=jnp.asarray(slopes, jnp.float32), sm_scale=0.3, block_q=16, block_k=16
    )
  )  # interpret=None -> interpret on CPU
  ref, _ = np_attention(q, k, v, slopes, None, True, 0.3)
  np.testing.assert_allclose(np.asarray(f(q, k, v)), ref, rtol=1e-4, atol=2e-5)


def test_slopes_are_constants():
  t, heads, d = 32, 2, 16
  q, k, v, _, _ = make_inputs(1, t, heads, d, seed=4)
  g = jax.grad(
    lambda s: fa.flash_alibi_attention(
      jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), slopes=s, block_q=16, block_k=16, interpret=True
    ).sum()
  )(jnp.asarray([0.5, 0.25], jnp.float32))
  np.testing.assert_array_equal(np.asarray(g), 0.0)


# ----------------------------------------------------------------------------
# Blockwise jnp reference fallback
# ----------------------------------------------------------------------------
@pytest.mark.parametrize(
  "t,causal,packed,block", [(100, True, True, 32), (130, False, True, 48), (48, True, False, 512)]
)
def test_reference_fallback_matches_numpy(t, causal, packed, block):
  heads, d = 12, 16
  q, k, v, w, seg = make_inputs(2, t, heads, d, seed=11, packed=packed)
  slopes = np_slopes(heads)
  scale = 1.0 / math.sqrt(d)

  def fn(q, k, v):
    return fa.flash_alibi_reference(
      q,
      k,
      v,
      slopes=jnp.asarray(slopes, jnp.float32),
      segment_ids=None if seg is None else jnp.asarray(seg),
      causal=causal,
      block_k=block,
    )

  out, dq, dk, dv = run_fn(fn, q, k, v, w, jnp.float32)
  assert_matches_float64(out, (dq, dk, dv), q, k, v, w, slopes, seg, causal, scale)


def test_interpret_false_on_cpu_falls_back_to_reference():
  if jax.default_backend() != "cpu":
    pytest.skip("CPU-only behaviour")
  q, k, v, _, _ = make_inputs(1, 24, 2, 16, seed=5)
  slopes = np.array([0.5, 0.25])
  fa._WARNED.discard("no_triton_cpu")
  with warnings.catch_warnings(record=True) as rec:
    warnings.simplefilter("always")
    out = fa.flash_alibi_attention(
      jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), slopes=jnp.asarray(slopes, jnp.float32), interpret=False
    )
  assert any("reference" in str(r.message) for r in rec)
  ref, _ = np_attention(q, k, v, slopes, None, True, 0.25)
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=2e-5)


# ----------------------------------------------------------------------------
# Causal block skipping
# ----------------------------------------------------------------------------
def test_causal_block_counts():
  q, k, v, _, _ = make_inputs(1, 128, 2, 16, seed=6)
  slopes = jnp.asarray([0.5, 0.25], jnp.float32)
  args = [jnp.asarray(x) for x in (q, k, v)]
  counts = jax.jit(
    fa.flash_alibi_block_counts, static_argnames=("causal", "block_q", "block_k", "bwd_block_q", "bwd_block_k")
  )
  _, fwd, dq, dkdv = counts(*args, slopes=slopes, block_q=32, block_k=16, bwd_block_q=32, bwd_block_k=32)
  # 8 key blocks of 16; query block i needs key blocks 0 .. 2i+1.
  np.testing.assert_array_equal(np.asarray(fwd)[0, 0], [2, 4, 6, 8])
  np.testing.assert_array_equal(np.asarray(dq)[0, 0], [1, 2, 3, 4])
  np.testing.assert_array_equal(np.asarray(dkdv)[0, 0], [4, 3, 2, 1])
  _, fwd, dq, dkdv = counts(*args, slopes=slopes, causal=False, block_q=32, block_k=16, bwd_block_q=32, bwd_block_k=32)
  assert (np.asarray(fwd) == 8).all() and (np.asarray(dkdv) == 4).all()


def test_fully_masked_blocks_are_never_read():
  """NaN-poison the tiles that causal masking makes irrelevant.

  A kernel that loads a fully masked tile and multiplies it by p=0 would
  propagate NaN (0 * NaN = NaN); a block-skipping kernel stays finite and
  exact for every row/column not sharing a tile with the poison.
  """
  t, heads, d, blk = 128, 2, 16, 32
  q, k, v, w, _ = make_inputs(1, t, heads, d, seed=8)
  slopes = np.array([0.5, 0.25])
  scale = 1.0 / math.sqrt(d)
  clean_ref, p = np_attention(q, k, v, slopes, None, True, scale)
  _, rdk, rdv = np_attention_grads(q, k, v, p, w, scale)

  def fn(q, k, v):
    return fa.flash_alibi_attention(
      q,
      k,
      v,
      slopes=jnp.asarray(slopes, jnp.float32),
      block_q=blk,
      block_k=blk,
      bwd_block_q=blk,
      bwd_block_k=blk,
      interpret=True,
    )

  # Forward: poison the last key block; query blocks 0..2 never see it.
  kp, vp = k.copy(), v.copy()
  kp[:, -blk:] = np.nan
  vp[:, -blk:] = np.nan
  out = np.asarray(jax.jit(fn)(q, kp, vp))
  assert np.isnan(out[:, -blk:]).any()  # the diagonal tile does read it
  np.testing.assert_allclose(out[:, :-blk], clean_ref[:, :-blk], rtol=1e-4, atol=2e-5)

  # Backward (dk/dv kernel): poison the first query block; key blocks 1..3
  # never pair with it, so their dk/dv stay exact.
  qp = q.copy()
  qp[:, :blk] = np.nan
  _, _, dk, dv = run_fn(fn, qp, k, v, w, jnp.float32)
  assert np.isnan(dk[:, :blk]).any()
  np.testing.assert_allclose(dk[:, blk:], rdk[:, blk:], rtol=1e-4, atol=5e-5)
  np.testing.assert_allclose(dv[:, blk:], rdv[:, blk:], rtol=1e-4, atol=5e-5)


# ----------------------------------------------------------------------------
# Packed-segment block skipping
# ----------------------------------------------------------------------------
def test_segment_extent_matches_brute_force():
  rng = np.random.default_rng(3)
  runs = np.repeat([1, 2, 1, 3, 0], [5, 7, 4, 9, 7])  # id 1 occurs in two runs
  layouts = np.stack([runs, rng.integers(-1, 4, size=runs.size), np.sort(rng.integers(0, 5, size=runs.size))])
  first, last = (np.asarray(x) for x in segment_extent(jnp.asarray(layouts, jnp.int32)))
  for b, row in enumerate(layouts):
    for t, s in enumerate(row):
      where = np.flatnonzero(row == s)
      assert (first[b, t], last[b, t]) == (where[0], where[-1])


def _visible_block_pairs(seg, rows, cols, causal, transpose=False):
  """Brute force: for each block of `rows` queries (or keys when `transpose`), how many blocks of `cols` keys
  (queries) hold at least one pair the mask keeps."""
  t = seg.size
  pos = np.arange(t)
  keep = seg[:, None] == seg[None, :]
  if causal:
    keep &= pos[None, :] <= pos[:, None]  # [query, key]
  if transpose:
    keep = keep.T
  blocks = keep.reshape(t // rows, rows, t // cols, cols).any(axis=(1, 3))
  return blocks.sum(axis=1)


@pytest.mark.parametrize("causal", [True, False])
def test_packed_blocks_outside_the_segments_are_skipped(causal):
  """Contiguous documents: every kernel visits exactly the tiles that hold a same-document pair."""
  t, blk = 256, 32
  seg = np.repeat([1, 2, 3, 4, 5, 0], [40, 70, 10, 90, 30, 16]).astype(np.int32)
  q, k, v, _, _ = make_inputs(1, t, 2, 16, seed=9)
  counts = jax.jit(
    fa.flash_alibi_block_counts, static_argnames=("causal", "block_q", "block_k", "bwd_block_q", "bwd_block_k")
  )
  out, fwd, dq, dkdv = counts(
    *(jnp.asarray(x) for x in (q, k, v)),
    slopes=jnp.asarray([0.5, 0.25]),
    segment_ids=jnp.asarray(seg[None]),
    causal=causal,
    block_q=blk,
    block_k=blk,
    bwd_block_q=blk,
    bwd_block_k=blk,
  )
  want = _visible_block_pairs(seg, blk, blk, causal)
  np.testing.assert_array_equal(np.asarray(fwd)[0, 0], want)
  np.testing.assert_array_equal(np.asarray(dq)[0, 0], want)
  np.testing.assert_array_equal(np.asarray(dkdv)[0, 0], _visible_block_pairs(seg, blk, blk, causal, transpose=True))
  dense = (t // blk) * (t // blk + 1) // 2 if causal else (t // blk) ** 2
  assert want.sum() < 0.6 * dense  # the skipping actually saves work here
  ref, _ = np_attention(q, k, v, np.array([0.5, 0.25]), seg[None], causal, 1.0 / math.sqrt(16))
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("layout", ["recurring", "scattered"])
def test_segments_that_are_not_one_run_stay_exact(layout):
  """A segment id may recur after other ids (or ids may be scattered): the block ranges widen to cover every
  occurrence, and values and gradients still equal the float64 reference."""
  t, heads, d = 96, 2, 16
  rng = np.random.default_rng(11)
  if layout == "recurring":
    seg = np.repeat([1, 2, 1, 3, 2], [20, 30, 10, 26, 10])[None].astype(np.int32)
  else:
    seg = rng.integers(0, 3, size=(1, t)).astype(np.int32)
  q, k, v, w, _ = make_inputs(1, t, heads, d, seed=13)
  slopes = np_slopes(heads)
  scale = 1.0 / math.sqrt(d)

  def fn(q, k, v):
    return fa.flash_alibi_attention(
      q,
      k,
      v,
      slopes=jnp.asarray(slopes, jnp.float32),
      segment_ids=jnp.asarray(seg),
      block_q=16,
      block_k=32,
      bwd_block_q=32,
      bwd_block_k=16,
      interpret=None,
    )

  out, dq, dk, dv = run_fn(fn, q, k, v, w, jnp.float32)
  assert_matches_float64(out, (dq, dk, dv), q, k, v, w, slopes, seg, True, scale)


# ----------------------------------------------------------------------------
# Interface, errors, GPU lowering
# ----------------------------------------------------------------------------
def test_alibi_slopes_rule():
  np.testing.assert_allclose(fa.alibi_slopes(8), 2.0 ** -np.arange(1, 9))
  for n in (1, 2, 4, 6, 12, 16, 20, 24, 25):
    np.testing.assert_allclose(fa.alibi_slopes(n), np_slopes(n), rtol=1e-6)


def test_unsupported_configurations_raise():
  x = jnp.zeros((1, 32, 2, 16), jnp.float32)
  s = jnp.ones((2,), jnp.float32)
  with pytest.raises(NotImplementedError, match="GQA"):
    fa.flash_alibi_attention(x, x[:, :, :1], x[:, :, :1], slopes=s)
  with pytest.raises(NotImplementedError, match="power of two"):
    fa.flash_alibi_attention(x, x, x, slopes=s, block_q=48, implementation="triton", interpret=False)
  big = jnp.zeros((1, 32, 2, 512), jnp.bfloat16)
  with pytest.raises(NotImplementedError, match="head_dim"):
    fa.flash_alibi_attention(big, big, big, slopes=s, implementation="triton", interpret=False)
  with pytest.raises(ValueError, match="slopes"):
    fa.flash_alibi_attention(x, x, x, slopes=jnp.ones((3,)))


def test_auto_choice_falls_back_with_a_warning_where_the_kernel_cannot_run(monkeypatch):
  """On a GPU, head_dim > 256 cannot use the Triton tiles: the automatic choice warns once, naming the value, and
  returns the blockwise reference's result; asking for the Triton kernel explicitly raises."""
  q, k, v, _, _ = make_inputs(1, 40, 2, 320, seed=21)
  slopes = jnp.asarray([0.5, 0.25], jnp.float32)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  fa._WARNED.discard("unsupported_triton_float32_320")
  with pytest.warns(UserWarning, match="head_dim <= 256, not 320"):
    out = fa.flash_alibi_attention(q, k, v, slopes=slopes)
  ref, _ = np_attention(q, k, v, np.asarray(slopes), None, True, 1.0 / math.sqrt(320))
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=2e-5)
  with pytest.raises(NotImplementedError, match="head_dim=320"):
    fa.flash_alibi_attention(q, k, v, slopes=slopes, implementation="triton", interpret=False)


def test_lowers_to_triton_for_cuda():
  """Cross-platform lowering: the kernels lower to Triton IR custom calls.

  This runs Pallas' Triton lowering on CPU (no GPU, no PTX compilation), so it
  catches unsupported primitives/shapes in the kernel bodies.
  """
  if fa.plgpu is None:
    pytest.skip("Pallas Triton backend not available")
  b, t, h, d = 1, 200, 3, 64
  x = jax.ShapeDtypeStruct((b, t, h, d), jnp.bfloat16)
  seg = jax.ShapeDtypeStruct((b, t), jnp.int32)
  slopes = jnp.asarray(fa.alibi_slopes(h))

  def loss(q, k, v, s):
    o = fa.flash_alibi_attention(
      q, k, v, slopes=slopes, segment_ids=s, implementation="triton", interpret=False, block_q=64, block_k=32
    )
    return o.astype(jnp.float32).sum()

  lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(x, x, x, seg).lower(lowering_platforms=("cuda",))
  text = lowered.as_text()
  assert text.count("xla.gpu.triton") == 3  # fwd, dq, dk/dv
  for name in ("flash_alibi_fwd", "flash_alibi_bwd_dq", "flash_alibi_bwd_dkdv"):
    assert name in text


@pytest.mark.parametrize("d", [64, 128, 256])
def test_default_launch_reaches_the_triton_calls(d):
  """The front end's default tiles, warps and stages for this head_dim are what the three Triton calls get."""
  if fa.plgpu is None:
    pytest.skip("Pallas Triton backend not available")
  x = jax.ShapeDtypeStruct((1, 1000, 2, d), jnp.bfloat16)
  seg = jax.ShapeDtypeStruct((1, 1000), jnp.int32)
  slopes = jnp.asarray(fa.alibi_slopes(2))
  loss = lambda q, k, v, s: (
    fa.flash_alibi_attention(q, k, v, slopes=slopes, segment_ids=s, implementation="triton", interpret=False)
    .astype(jnp.float32)
    .sum()
  )
  text = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(x, x, x, seg).lower(lowering_platforms=("cuda",)).as_text()
  bq, bk, bbq, bbk = fa.default_tiles(d)
  for name, tiles in (
    ("flash_alibi_fwd", (bq, bk)),
    ("flash_alibi_bwd_dq", (bbq, bbk)),
    ("flash_alibi_bwd_dkdv", (bbq, bbk)),
  ):
    call = re.search(r'name = "%s".*?num_stages = (\d+).*?num_warps = (\d+)' % name, text, re.S)
    assert call, name
    kernel = {"flash_alibi_fwd": "fwd", "flash_alibi_bwd_dq": "dq", "flash_alibi_bwd_dkdv": "dkdv"}[name]
    assert int(call.group(1)) == fa.default_num_stages(d)
    assert int(call.group(2)) == fa.default_num_warps(kernel, *tiles, d)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")
@pytest.mark.parametrize("d", [64, 128])
def test_gpu_default_tiles_bf16(d):
  """Compiled Triton kernels at the default tiles, ragged length, packed."""
  t, heads = 1000, 4
  q, k, v, w, seg = make_inputs(2, t, heads, d, seed=d, packed=True)
  slopes = np_slopes(heads)

  def fn(q, k, v):
    return fa.flash_alibi_attention(
      q, k, v, slopes=jnp.asarray(slopes, jnp.float32), segment_ids=jnp.asarray(seg), causal=True
    )

  qb, kb, vb, wb = (np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32)) for x in (q, k, v, w))
  out, dq, dk, dv = run_fn(fn, q, k, v, w, jnp.bfloat16)
  ref, p = np_attention(qb, kb, vb, slopes, seg, True, 1.0 / math.sqrt(d))
  refs = np_attention_grads(qb, kb, vb, p, wb, 1.0 / math.sqrt(d))
  assert rel_err(out, ref) <= 1e-2
  for g, r in zip((dq, dk, dv), refs):
    assert rel_err(g, r) <= 1e-2


def test_tpu_path_in_tpu_interpret_mode():
  """The TPU branch (Pallas TPU flash attention + ALiBi `ab`), run through
  Pallas' TPU interpreter on CPU."""
  pltpu = pytest.importorskip("jax.experimental.pallas.tpu")
  if not hasattr(pltpu, "force_tpu_interpret_mode"):
    pytest.skip("no TPU interpret mode in this jax")
  t, heads, d = 100, 3, 16
  q, k, v, w, seg = make_inputs(1, t, heads, d, seed=12, packed=True)
  slopes = np_slopes(heads)
  scale = 1.0 / math.sqrt(d)

  def fn(q, k, v):
    return fa.flash_alibi_attention(
      q, k, v, slopes=jnp.asarray(slopes, jnp.float32), segment_ids=jnp.asarray(seg), causal=True, implementation="tpu"
    )

  with pltpu.force_tpu_interpret_mode():
    out, dq, dk, dv = run_fn(fn, q, k, v, w, jnp.float32)
  assert_matches_float64(out, (dq, dk, dv), q, k, v, w, slopes, seg, True, scale)
