"""Float64 NumPy reference for ALiBi attention (causal and segment masks, softmax, hand-written gradients) and the
random inputs the kernel tests share. Written independently of the kernels under test."""

import math

import numpy as np


def np_slopes(n):
  """ALiBi slope rule (Press et al.), for any head count."""

  def geometric(m):
    r = 2.0 ** (-8.0 / m)
    return [r ** (i + 1) for i in range(m)]

  if math.log2(n).is_integer():
    return np.array(geometric(n))
  c = 2 ** int(math.floor(math.log2(n)))
  return np.array(geometric(c) + geometric(2 * c)[::2][: n - c])


def np_attention(q, k, v, slopes, seg, causal, scale):
  """Output [B, T, H, D] and probabilities [B, H, Tq, Tk] in float64."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  pos = np.arange(q.shape[1])
  s = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
  s = s + np.asarray(slopes, np.float64)[None, :, None, None] * (pos[None, :] - pos[:, None])
  keep = np.ones(s.shape, bool)
  if causal:
    keep &= pos[None, :] <= pos[:, None]
  if seg is not None:
    seg = np.asarray(seg)
    keep &= seg[:, None, :, None] == seg[:, None, None, :]
  s = np.where(keep, s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", p, v), p


def np_attention_grads(q, k, v, p, do, scale):
  """dq, dk, dv of sum(do * attention(q, k, v)) given the probabilities p."""
  q, k, v, do = (np.asarray(x, np.float64) for x in (q, k, v, do))
  dv = np.einsum("bhqk,bqhd->bkhd", p, do)
  dp = np.einsum("bqhd,bkhd->bhqk", do, v)
  ds = p * (dp - (dp * p).sum(-1, keepdims=True))
  dq = np.einsum("bhqk,bkhd->bqhd", ds, k) * scale
  dk = np.einsum("bhqk,bqhd->bkhd", ds, q) * scale
  return dq, dk, dv


def assert_matches_float64(out, grads, q, k, v, w, slopes, seg, causal, scale):
  """fp32 kernel output and (dq, dk, dv) of sum(w * out) against the float64 reference."""
  ref, p = np_attention(q, k, v, slopes, seg, causal, scale)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=2e-5)
  for got, want in zip(grads, np_attention_grads(q, k, v, p, w, scale)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=5e-5)


def make_segments(batch, t, rng, padded_rows=1):
  """Random packing: each row is 1-4 contiguous documents; rows with b % 2 == padded_rows end in a 0-id padding
  run (T5X convention)."""
  seg = np.zeros((batch, t), np.int32)
  for b in range(batch):
    cuts = np.sort(rng.choice(np.arange(1, t), size=rng.integers(1, 4), replace=False))
    seg[b] = np.searchsorted(cuts, np.arange(t), side="right") + 1
    if b % 2 == padded_rows:
      seg[b, t - t // 5 :] = 0
  return seg


def rel_err(a, b):
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))
