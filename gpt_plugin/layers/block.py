"""Transformer blocks: GPT-J parallel residual (one shared LayerNorm) or sequential pre-LN."""

import flax.linen as nn
import jax.numpy as jnp

from gpt_plugin.layers.attention import CausalSelfAttention
from gpt_plugin.layers.mlp import MLP
from gpt_plugin.layers.norms import LayerNorm
from gpt_plugin.layers.sgu import StaticSGU


class DecoderBlock(nn.Module):
  """Parallel: `x + mix(LN(x)) + MLP(LN(x))`. Sequential: `x + mix(LN1(x))`, then `+ MLP(LN2(.))`.

  `mix` is attention over all channels, or with the channel-split SGU: the first half of the channels
  through the static SGU and the second half through attention of half width (same head count).
  Positional call signature so it can be rematerialised (flags static) and scanned (returns a carry).
  """

  config: "GPTConfig"  # noqa: F821 (gpt_plugin.network.GPTConfig)
  scanned: bool = False

  @nn.compact
  def __call__(self, x, segment_ids, prefill_lengths, enable_dropout, decode, prefill):
    cfg = self.config
    dtype, param_dtype = cfg.compute_dtype, cfg.parameter_dtype
    flags = dict(decode=decode, prefill=prefill, prefill_lengths=prefill_lengths)
    norm = lambda name: LayerNorm(cfg.layer_norm_epsilon, dtype, param_dtype, cfg.use_bias, name=name)
    mix_width = cfg.emb_dim // 2 if cfg.use_static_sgu else cfg.emb_dim
    attention = CausalSelfAttention(
      num_heads=cfg.num_heads,
      head_dim=mix_width // cfg.num_heads,
      out_features=mix_width,
      use_alibi=cfg.position_embedding == "alibi",
      attention_impl=cfg.attention_impl,
      attention_dropout_rate=cfg.attention_dropout,
      dropout_rate=cfg.dropout_rate,
      init_std=cfg.init_std,
      out_init_std=cfg.residual_init_std,
      dtype=dtype,
      param_dtype=param_dtype,
      use_bias=cfg.use_bias,
      alibi_max_bias=cfg.alibi_max_bias,
      clip_qkv=cfg.clip_qkv,
      name="attention",
    )
    mlp = MLP(
      cfg.mlp_width,
      cfg.emb_dim,
      cfg.init_std,
      cfg.residual_init_std,
      cfg.gelu_approximate,
      cfg.dropout_rate,
      dtype,
      param_dtype,
      cfg.use_bias,
      name="mlp",
    )

    def mix(h):
      if not cfg.use_static_sgu:
        return attention(h, segment_ids, enable_dropout=enable_dropout, **flags)
      h_sgu, h_attn = jnp.split(h, 2, axis=-1)
      sgu = StaticSGU(cfg.sgu_kernel_size, cfg.sgu_legacy_zero_kernel, name="sgu")(h_sgu, segment_ids, **flags)
      return jnp.concatenate([sgu, attention(h_attn, segment_ids, enable_dropout=enable_dropout, **flags)], -1)

    h = norm("input_norm")(x)
    if cfg.block_type == "parallel":
      x = x + mix(h) + mlp(h, enable_dropout=enable_dropout)
    else:
      x = x + mix(h)
      x = x + mlp(norm("mlp_norm")(x), enable_dropout=enable_dropout)
    x = nn.with_logical_constraint(x.astype(dtype), ("batch", "length", "embed"))
    return (x, None) if self.scanned else x
