"""Token embedding with weight-tied output logits, and learned absolute positions."""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import partitioning as nn_partitioning

from gpt_plugin.layers.cache_vars import cache_variable


class TokenEmbedding(nn.Module):
  """Embedding table (vocab, embed), N(0, init_std); `attend` gives the tied output logits in float32."""

  vocab_size: int
  features: int
  init_std: float = 0.02
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    self.embedding = nn_partitioning.param_with_axes(
      "embedding",
      nn.initializers.normal(stddev=self.init_std),
      (self.vocab_size, self.features),
      self.param_dtype,
      axes=("vocab", "embed"),
    )

  def __call__(self, tokens):
    return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)

  def attend(self, x):
    """Tied logits `x @ E^T`, accumulated and returned in float32 (materialised once)."""
    return jnp.einsum(
      "...d,vd->...v", x.astype(self.dtype), self.embedding.astype(self.dtype), preferred_element_type=jnp.float32
    )


class PositionEmbedding(nn.Module):
  """Learned absolute positions (max_len, embed), looked up at the true positions (arange or packed positions).

  In decode mode it keeps its own `cache_index` (scalar after init, [batch] after prefill).
  """

  max_len: int
  features: int
  init_std: float = 0.02
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  cache_layer_axis: bool = False  # True under scan_layers: see layers/cache_vars.py

  @nn.compact
  def __call__(
    self,
    positions,
    *,
    decode: bool = False,
    prefill: bool = False,
    prefill_lengths: Optional[jax.Array] = None,
    seq_len: Optional[int] = None,
  ):
    table = nn_partitioning.param_with_axes(
      "embedding",
      nn.initializers.normal(stddev=self.init_std),
      (self.max_len, self.features),
      self.param_dtype,
      axes=("abspos_buckets", "embed"),
    )
    if decode or prefill:
      initialized = self.has_variable("cache", "cache_index")
      index = cache_variable(self, "cache_index", lambda: jnp.array(0, jnp.int32), layer_axis=self.cache_layer_axis)
      if decode and initialized:
        positions = jnp.reshape(index.value, (-1, 1))
        index.value = index.value + 1
      elif prefill:
        if seq_len is not None and prefill_lengths is None:
          prefill_lengths = jnp.full((positions.shape[0],), seq_len, jnp.int32)
        index.value = prefill_lengths.astype(jnp.int32)
    return jnp.take(table, positions, axis=0, mode="clip").astype(self.dtype)
