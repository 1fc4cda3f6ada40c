"""Causal multi-head self-attention with ALiBi, segment packing, a KV cache and a choice of kernel.

`attention_impl` picks how the full-sequence attention is computed:
  - `xla`: reference einsum attention; the ALiBi bias is built from the actual lengths.
  - `cudnn`: `jax.nn.dot_product_attention` (cuDNN on GPU; XLA elsewhere), bias passed explicitly.
  - `flash_alibi`: the fused kernel in `gpt_plugin.kernels.flash_alibi` (ALiBi added inside the score tile).
Single-token decode steps always use the O(cache length) einsum path: the ALiBi row is computed from
`cache_index`, never sliced out of a T x T matrix.
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen import partitioning as nn_partitioning

from gpt_plugin.kernels.common import MASK_VALUE
from gpt_plugin.layers.alibi import alibi_bias, alibi_slopes
from gpt_plugin.layers.dense import Dense

ATTENTION_IMPLS = ("xla", "cudnn", "flash_alibi")


def causal_segment_mask(q_len: int, k_len: int, segment_ids: Optional[jax.Array] = None):
  """Boolean [batch or 1, 1, q_len, k_len] mask: causal, and (when packed) same segment only."""
  q_pos = jnp.arange(q_len)[:, None] + (k_len - q_len)
  mask = (jnp.arange(k_len)[None, :] <= q_pos)[None, None]
  if segment_ids is not None:
    same = segment_ids[:, None, -q_len:, None] == segment_ids[:, None, None, :]
    mask = jnp.logical_and(mask, same)
  return mask


def xla_attention(q, k, v, *, slopes, mask, q_positions, k_positions, dropout_rng=None, dropout_rate=0.0):
  """Reference attention: fp32 scores, ALiBi bias, fp32 softmax. q [B,Tq,H,D], k/v [B,Tk,H,D], mask [B|1,1,Tq,Tk]."""
  scale = 1.0 / np.sqrt(q.shape[-1])
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  if slopes is not None:
    scores = scores + alibi_bias(slopes, q_positions, k_positions)
  scores = jnp.where(mask, scores, MASK_VALUE)
  probs = jax.nn.softmax(scores, axis=-1)
  if dropout_rng is not None and dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
    probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
  return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)


def cudnn_attention(q, k, v, *, slopes, segment_ids):
  """`jax.nn.dot_product_attention` with the ALiBi bias materialised ([1,H,T,T]) and a segment mask."""
  seq = q.shape[1]
  bias = None
  if slopes is not None:
    pos = jnp.arange(seq)
    bias = alibi_bias(slopes, pos, pos)[None].astype(q.dtype)
  mask = None if segment_ids is None else segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
  implementation = "cudnn" if jax.default_backend() == "gpu" else None
  return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, is_causal=True, implementation=implementation)


def flash_attention(q, k, v, *, slopes, segment_ids):
  """The fused kernel. Under a mesh with logical axis rules (the trainer's context) it runs per shard via
  `shard_map` over the batch and head axes: XLA cannot partition a Pallas call itself."""
  from gpt_plugin.kernels import flash_alibi  # pylint: disable=import-outside-toplevel

  slopes = jnp.zeros((q.shape[2],), jnp.float32) if slopes is None else jnp.asarray(slopes, jnp.float32)

  def kernel(q, k, v, slopes, segment_ids=None):
    return flash_alibi.flash_alibi_attention(q, k, v, slopes=slopes, segment_ids=segment_ids, causal=True)

  mesh = jax.sharding.get_abstract_mesh()
  rules = nn.get_logical_axis_rules()
  if mesh.empty or not rules:
    return kernel(q, k, v, slopes, segment_ids)
  batch_axes, heads_axes = nn.logical_to_mesh_axes(("batch", "heads"), rules)
  qkv_spec = jax.sharding.PartitionSpec(batch_axes, None, heads_axes, None)
  in_specs = (qkv_spec, qkv_spec, qkv_spec, jax.sharding.PartitionSpec(heads_axes))
  args = (q, k, v, slopes)
  if segment_ids is not None:
    in_specs += (jax.sharding.PartitionSpec(batch_axes, None),)
    args += (segment_ids,)
  return jax.shard_map(kernel, mesh=mesh, in_specs=in_specs, out_specs=qkv_spec, check_vma=False)(*args)


class FusedQKV(nn.Module):
  """One matmul for q, k and v: kernel (d_in, 3, heads*head_dim) with axes (embed, stack, joined_kv)."""

  inner_dim: int
  init_std: float = 0.02
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = nn_partitioning.param_with_axes(
      "kernel",
      nn.initializers.normal(stddev=self.init_std),
      (x.shape[-1], 3, self.inner_dim),
      self.param_dtype,
      axes=("embed", "stack", "joined_kv"),
    )
    bias = nn_partitioning.param_with_axes(
      "bias", nn.initializers.zeros, (3, self.inner_dim), self.param_dtype, axes=("stack", "joined_kv")
    )
    y = jnp.einsum("btd,dzf->btzf", x.astype(self.dtype), kernel.astype(self.dtype))
    return y + bias.astype(self.dtype)


def _write_rows(cache, new, rows):
  """Write `new` [B, n, ...] into `cache` [B, L, ...] at per-row offsets `rows` [B]."""
  update = lambda c, x, i: jax.lax.dynamic_update_slice_in_dim(c, x, i, axis=0)
  return jax.vmap(update)(cache, new.astype(cache.dtype), rows)


class CausalSelfAttention(nn.Module):
  """Causal MHA: fused q/k/v projection, 1/sqrt(d_head) scaling, ALiBi, fp32 softmax, dropout, KV cache."""

  num_heads: int
  head_dim: int
  out_features: int
  use_alibi: bool = True
  attention_impl: str = "xla"
  attention_dropout_rate: float = 0.0
  dropout_rate: float = 0.0
  init_std: float = 0.02
  out_init_std: float = 0.02
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
    self,
    x,
    segment_ids=None,
    *,
    enable_dropout: bool = False,
    decode: bool = False,
    prefill: bool = False,
    prefill_lengths: Optional[jax.Array] = None,
  ):
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"attention_impl={self.attention_impl!r} is not one of {ATTENTION_IMPLS}")
    batch, seq, _ = x.shape
    inner = self.num_heads * self.head_dim
    qkv = FusedQKV(inner, self.init_std, self.dtype, self.param_dtype, name="qkv")(x)
    qkv = qkv.reshape(batch, seq, 3, self.num_heads, self.head_dim)
    q, k, v = (nn.with_logical_constraint(qkv[:, :, i], ("batch", "length", "heads", "kv")) for i in range(3))
    slopes = alibi_slopes(self.num_heads) if self.use_alibi else None

    attn_rng = None
    if enable_dropout and self.attention_dropout_rate > 0.0:
      attn_rng = self.make_rng("dropout")

    out = None
    if decode or prefill:
      out = self._cached_attention(q, k, v, slopes, decode=decode, prefill=prefill, prefill_lengths=prefill_lengths)
    if out is None:
      out = self._full_attention(q, k, v, slopes, segment_ids, attn_rng)

    out = nn.with_logical_constraint(out.reshape(batch, seq, inner), ("batch", "length", "joined_kv"))
    y = Dense(
      self.out_features,
      ("joined_kv", "embed"),
      nn.initializers.normal(self.out_init_std),
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="out",
    )(out)
    return nn.Dropout(rate=self.dropout_rate)(y, deterministic=not enable_dropout)

  def _full_attention(self, q, k, v, slopes, segment_ids, attn_rng):
    seq = q.shape[1]
    if self.attention_impl == "xla" or attn_rng is not None:
      if attn_rng is not None and self.attention_impl != "xla":
        raise ValueError(
          f"attention_impl={self.attention_impl!r} does not support attention-probability "
          "dropout; set GPTConfig.attention_dropout_rate = 0.0 or attention_impl = 'xla'"
        )
      pos = jnp.arange(seq)
      return xla_attention(
        q,
        k,
        v,
        slopes=slopes,
        mask=causal_segment_mask(seq, seq, segment_ids),
        q_positions=pos,
        k_positions=pos,
        dropout_rng=attn_rng,
        dropout_rate=self.attention_dropout_rate,
      )
    if self.attention_impl == "cudnn":
      return cudnn_attention(q, k, v, slopes=slopes, segment_ids=segment_ids)
    return flash_attention(q, k, v, slopes=slopes, segment_ids=segment_ids)

  def _cached_attention(self, q, k, v, slopes, *, decode, prefill, prefill_lengths):
    """Maintains `cached_key`/`cached_value` [B, L, H, D] and `cache_index`. Returns None when the
    full-sequence path should compute the output (cache init, prefill)."""
    batch, seq = q.shape[:2]
    initialized = self.has_variable("cache", "cached_key")
    cached_key = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    if not initialized:
      return None  # Creating the cache: compute the ordinary forward pass.
    cache_len = cached_key.value.shape[1]
    if prefill:
      if seq > cache_len:
        raise ValueError(f"prefill length {seq} exceeds the cache length {cache_len}")
      cached_key.value = jax.lax.dynamic_update_slice_in_dim(cached_key.value, k, 0, axis=1)
      cached_value.value = jax.lax.dynamic_update_slice_in_dim(cached_value.value, v, 0, axis=1)
      if prefill_lengths is None:
        prefill_lengths = jnp.full((batch,), seq, jnp.int32)
      cache_index.value = prefill_lengths.astype(jnp.int32)
      return None
    if seq != 1:
      raise ValueError(f"decode=True expects one token per step, got a query of length {seq}")
    index = cache_index.value
    rows = jnp.broadcast_to(jnp.reshape(index, (-1,)) if index.ndim else index, (batch,))  # t5x beams: [B, n]
    keys = _write_rows(cached_key.value, k, rows)
    values = _write_rows(cached_value.value, v, rows)
    cached_key.value, cached_value.value, cache_index.value = keys, values, index + 1
    key_pos = jnp.arange(cache_len)
    mask = (key_pos[None, :] <= rows[:, None])[:, None, None, :]
    return xla_attention(
      q, keys, values, slopes=slopes, mask=mask, q_positions=rows[:, None], k_positions=key_pos[None, :]
    )
