"""Channel-split static SGU: a fixed (parameter-free) causal band kernel mixing tokens over a short window.

Output position t is `sum_{d=0..K} w[d] * x[t-d]` with `w[d] = 1 / (d + 2)`: the band matrix
`tril(ones) * triu(ones, -K)` normalised as `K / (cumsum(K, axis=-2) + 1)` (the intended kernel of the
original; diagonal 1/2, then 1/3, 1/4, ...). The input is stop-gradient. The band is applied blockwise
(chunks of K tokens see their own chunk and the previous one), so no T x T matrix is ever built and any
length works. Packed rows never mix across segments. Decoding keeps the last K inputs in
`cache/cached_sgu_window` [batch, K, channels].
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def band_weights(kernel_size: int) -> np.ndarray:
  """w[d] for d = 0..kernel_size (the weight of x[t-d] in output t)."""
  return 1.0 / (np.arange(kernel_size + 1, dtype=np.float64) + 2.0)


def dense_band_matrix(length: int, kernel_size: int) -> np.ndarray:
  """The full [length, length] kernel, built the way the original describes (for tests and docs only)."""
  band = np.tril(np.ones((length, length))) * np.triu(np.ones((length, length)), -kernel_size)
  return band / (np.cumsum(band, axis=-2) + 1.0)


def static_sgu_mix(x, segment_ids, kernel_size: int):
  """Apply the band kernel along time. x [B, T, C] -> [B, T, C] (float32 accumulation)."""
  batch, seq, channels = x.shape
  k = kernel_size
  n = -(-seq // k)
  pad = n * k - seq
  xp = jnp.pad(x.astype(jnp.float32), ((0, 0), (0, pad), (0, 0))).reshape(batch, n, k, channels)
  prev = jnp.concatenate([jnp.zeros_like(xp[:, :1]), xp[:, :-1]], axis=1)
  window = jnp.concatenate([prev, xp], axis=2)  # [B, n, 2K, C]: times chunk_start-K .. chunk_start+K-1
  i = np.arange(k)[:, None]
  j = np.arange(2 * k)[None, :]
  d = i + k - j
  weights = np.where((d >= 0) & (d <= k), 1.0 / (np.clip(d, 0, None) + 2.0), 0.0).astype(np.float32)
  if segment_ids is None:
    out = jnp.einsum("ij,bnjc->bnic", weights, window)
  else:
    seg = jnp.pad(segment_ids, ((0, 0), (0, pad)), constant_values=-1).reshape(batch, n, k)
    seg_prev = jnp.concatenate([jnp.full_like(seg[:, :1], -2), seg[:, :-1]], axis=1)
    seg_window = jnp.concatenate([seg_prev, seg], axis=2)
    same = seg[..., :, None] == seg_window[..., None, :]
    out = jnp.einsum("bnij,bnjc->bnic", jnp.where(same, weights, 0.0), window)
  return out.reshape(batch, n * k, channels)[:, :seq]


class StaticSGU(nn.Module):
  """Parameter-free causal token mixing for the SGU half of the channels."""

  kernel_size: int = 128
  legacy_zero_kernel: bool = False

  @nn.compact
  def __call__(self, x, segment_ids=None, *, decode: bool = False, prefill: bool = False, prefill_lengths=None):
    x = jax.lax.stop_gradient(x)
    if self.legacy_zero_kernel:
      # The original's kernel: triu(tril(ones, -K)) is empty, so this half of the channels is always 0.
      return jnp.zeros_like(x)
    batch, seq, channels = x.shape
    k = self.kernel_size
    if decode or prefill:
      initialized = self.has_variable("cache", "cached_sgu_window")
      window = self.variable("cache", "cached_sgu_window", jnp.zeros, (batch, k, channels), x.dtype)
      if decode and initialized:
        if seq != 1:
          raise ValueError(f"decode=True expects one token per step, got {seq}")
        full = jnp.concatenate([window.value.astype(jnp.float32), x.astype(jnp.float32)], axis=1)
        weights = jnp.asarray(band_weights(k)[::-1], jnp.float32)  # index j <-> time t-K+j
        window.value = full[:, 1:].astype(window.value.dtype)
        return jnp.einsum("j,bjc->bc", weights, full)[:, None].astype(x.dtype)
      if prefill:
        lengths = jnp.full((batch,), seq, jnp.int32) if prefill_lengths is None else prefill_lengths
        idx = lengths[:, None] - k + jnp.arange(k)[None, :]
        gathered = jnp.take_along_axis(x, jnp.clip(idx, 0, seq - 1)[..., None], axis=1)
        window.value = jnp.where((idx >= 0)[..., None], gathered, 0).astype(window.value.dtype)
    return static_sgu_mix(x, segment_ids, k).astype(x.dtype)
