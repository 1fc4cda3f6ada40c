"""Head-QK trick (RWKV-LM): a 256-d query/key over the final hidden states adds copy logits.

`logits[t, tokens[j]] += (q_t . k_j) / 256` for every j <= t in the same segment (diagonal included),
by scatter-add into the vocabulary columns; no one-hot over the vocabulary is ever built. q starts at zero,
so at init the logits equal the model without it. Decoding caches k and the input tokens.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt_plugin.layers.cache_vars import cache_variable
from gpt_plugin.layers.dense import Dense


def scatter_copy_logits(logits, scores, tokens):
  """logits [B,Tq,V] + scores [B,Tq,Tk] added at columns tokens [B,Tk]."""
  return jax.vmap(lambda lg, sc, tk: lg.at[:, tk].add(sc))(logits, scores, tokens)


class HeadQK(nn.Module):
  dim: int = 256
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  cache_layer_axis: bool = False  # True under scan_layers: see layers/cache_vars.py

  @nn.compact
  def __call__(
    self, hidden, tokens, logits, segment_ids=None, *, decode: bool = False, prefill: bool = False, prefill_lengths=None
  ):
    q = Dense(
      self.dim,
      ("embed", "head_qk"),
      nn.initializers.zeros,
      use_bias=False,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="q",
    )(hidden).astype(jnp.float32)
    k = Dense(
      self.dim,
      ("embed", "head_qk"),
      nn.initializers.orthogonal(scale=0.1),
      use_bias=False,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="k",
    )(hidden).astype(jnp.float32)
    batch, seq = tokens.shape
    if decode or prefill:
      initialized = self.has_variable("cache", "cached_head_k")
      axis = dict(layer_axis=self.cache_layer_axis)
      cached_k = cache_variable(self, "cached_head_k", jnp.zeros, k.shape, jnp.float32, **axis)
      cached_tokens = cache_variable(self, "cached_tokens", jnp.zeros, tokens.shape, jnp.int32, **axis)
      cache_index = cache_variable(self, "cache_index", lambda: jnp.array(0, jnp.int32), **axis)
      if decode and initialized:
        index = cache_index.value
        rows = jnp.broadcast_to(jnp.reshape(index, (-1,)) if index.ndim else index, (batch,))  # t5x beams: [B, n]
        write = lambda c, x, i: jax.lax.dynamic_update_slice_in_dim(c, x, i, axis=0)
        keys = jax.vmap(write)(cached_k.value, k, rows)
        toks = jax.vmap(write)(cached_tokens.value, tokens.astype(jnp.int32), rows)
        cached_k.value, cached_tokens.value, cache_index.value = keys, toks, index + 1
        scores = jnp.einsum("bqd,bkd->bqk", q, keys) / self.dim
        valid = jnp.arange(keys.shape[1])[None, None, :] <= rows[:, None, None]
        return scatter_copy_logits(logits, jnp.where(valid, scores, 0.0), toks)
      if prefill:
        cached_k.value = jax.lax.dynamic_update_slice_in_dim(cached_k.value, k, 0, axis=1)
        cached_tokens.value = jax.lax.dynamic_update_slice_in_dim(
          cached_tokens.value, tokens.astype(jnp.int32), 0, axis=1
        )
        lengths = jnp.full((batch,), seq, jnp.int32) if prefill_lengths is None else prefill_lengths
        cache_index.value = lengths.astype(jnp.int32)
    scores = jnp.einsum("bqd,bkd->bqk", q, k) / self.dim
    valid = jnp.tril(jnp.ones((seq, seq), bool))[None]
    if segment_ids is not None:
      valid = jnp.logical_and(valid, segment_ids[:, :, None] == segment_ids[:, None, :])
    return scatter_copy_logits(logits, jnp.where(valid, scores, 0.0), tokens)
