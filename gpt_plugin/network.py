"""The GPT decoder: `GPTConfig` (every architecture option, bound by gin) and `GPTDecoder`, the top-level
Flax module with the call signature of T5X's `DecoderOnlyModel` module contract.

    logits = GPTDecoder(config).apply(variables, decoder_input_tokens, decoder_target_tokens,
                                      decoder_segment_ids=None, decoder_positions=None,
                                      decoder_causal_attention=None, enable_dropout=True, decode=False,
                                      max_decode_length=None, prefill=False, prefill_lengths=None)

The `cache` collection follows T5X's conventions (`cached_key`, `cached_value`, `cache_index`, batch-first
leaves; a leading `layers` axis when `scan_layers`), so `t5x.decoding.temperature_sample`/`beam_search` work
unchanged. Every parameter carries logical axis names in the `params_axes` collection.
"""

import dataclasses
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import partitioning as nn_partitioning

from gpt_plugin.layers.attention import ATTENTION_IMPLS
from gpt_plugin.layers.block import DecoderBlock
from gpt_plugin.layers.embedding import PositionEmbedding, TokenEmbedding
from gpt_plugin.layers.head_qk import HeadQK
from gpt_plugin.layers.norms import LayerNorm

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
POSITION_EMBEDDINGS = ("alibi", "learned")
BLOCK_TYPES = ("parallel", "sequential")
REMAT_POLICIES = {
  "none": None,
  "full": "recompute everything in the block",
  "dots": jax.checkpoint_policies.checkpoint_dots,
  "dots_with_no_batch_dims": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
  "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
}


@dataclasses.dataclass(frozen=True)
class GPTConfig:
  """Architecture of a GPT decoder. Every field can be bound in gin (`network.GPTConfig.emb_dim = 768`).

  Attributes:
    vocab_size: embedding rows = logits width (pad the tokenizer's size to a multiple of 128).
    emb_dim: model width d_model.
    num_heads: attention heads; head_dim = emb_dim / num_heads (emb_dim / 2 / num_heads with the SGU).
    num_layers: number of blocks.
    mlp_dim: MLP hidden width; None means 4 * emb_dim.
    dropout_rate: residual dropout (attention output and MLP output).
    attention_dropout_rate: dropout on attention probabilities; None means `dropout_rate`.
    position_embedding: 'alibi' (no maximum length) or 'learned' (absolute table of
      `max_position_embeddings` rows).
    max_position_embeddings: learned-position table size (ignored with ALiBi).
    block_type: 'parallel' (GPT-J, one shared LayerNorm) or 'sequential' (pre-LN GPT-2).
    use_static_sgu: channel-split static SGU (half the channels through a fixed causal band kernel).
    sgu_kernel_size: the SGU band width K (taps d = 0..K).
    sgu_legacy_zero_kernel: reproduce the original code's all-zero SGU kernel.
    head_qk_trick: RWKV head-QK copy logits over the final hidden states.
    head_qk_dim: q/k width of the head-QK trick (256).
    gelu_approximate: tanh-approximate GELU (True, default) or exact erf GELU.
    layer_norm_epsilon: 1e-6 (Flax default) or 1e-5 (PyTorch-trained weights).
    embedding_layer_norm: LayerNorm right after the token embedding (Little-GPT 1B* StableEmbedding; BLOOM's
      `word_embeddings_layernorm`).
    use_bias: biases in every projection (q/k/v, attention output, MLP) and LayerNorm. False: none at all (MPT).
    alibi_max_bias: ALiBi slope range B: with n heads (a power of two) the slopes are 2^(-B*i/n), i = 1..n
      (8 in the ALiBi paper, BLOOM and MPT's default; MPT's `attn_config.alibi_bias_max`). Non-powers of two
      take the same interleaving rule as with 8 (see `layers.alibi.alibi_slopes`).
    clip_qkv: clamp the fused q/k/v projection outputs to [-clip_qkv, clip_qkv] (MPT's `attn_config.clip_qkv`);
      None: no clamping.
    init_std: N(0, init_std) init of embeddings and projections; residual projections get
      init_std / sqrt(2 * num_layers).
    dtype: compute dtype, 'float32' | 'bfloat16' | 'float16'. Softmax and loss always run in float32.
    param_dtype: parameter dtype (float32).
    attention_impl: 'xla' | 'cudnn' | 'flash_alibi'.
    scan_layers: `nn.scan` over the blocks (params stacked on a leading 'layers' axis).
    remat_policy: 'none' | 'full' | 'dots' | 'dots_with_no_batch_dims' | 'nothing_saveable'.
  """

  vocab_size: int = 50304
  emb_dim: int = 768
  num_heads: int = 12
  num_layers: int = 12
  mlp_dim: Optional[int] = None
  dropout_rate: float = 0.0
  attention_dropout_rate: Optional[float] = None
  position_embedding: str = "alibi"
  max_position_embeddings: int = 1024
  block_type: str = "parallel"
  use_static_sgu: bool = False
  sgu_kernel_size: int = 128
  sgu_legacy_zero_kernel: bool = False
  head_qk_trick: bool = False
  head_qk_dim: int = 256
  gelu_approximate: bool = True
  layer_norm_epsilon: float = 1e-6
  embedding_layer_norm: bool = False
  use_bias: bool = True
  alibi_max_bias: float = 8.0
  clip_qkv: Optional[float] = None
  init_std: float = 0.02
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention_impl: str = "xla"
  scan_layers: bool = False
  remat_policy: str = "none"

  def __post_init__(self):
    def fail(msg):
      raise ValueError(f"GPTConfig: {msg}")

    for name in ("vocab_size", "emb_dim", "num_heads", "num_layers", "sgu_kernel_size", "head_qk_dim"):
      if int(getattr(self, name)) < 1:
        fail(f"{name}={getattr(self, name)} must be a positive integer")
    if self.mlp_dim is not None and self.mlp_dim < 1:
      fail(f"mlp_dim={self.mlp_dim} must be a positive integer or None")
    for name, choices in (
      ("position_embedding", POSITION_EMBEDDINGS),
      ("block_type", BLOCK_TYPES),
      ("attention_impl", ATTENTION_IMPLS),
      ("dtype", tuple(DTYPES)),
      ("param_dtype", tuple(DTYPES)),
      ("remat_policy", tuple(REMAT_POLICIES)),
    ):
      if getattr(self, name) not in choices:
        fail(f"{name}={getattr(self, name)!r} is not one of {choices}")
    if self.use_static_sgu:
      if self.emb_dim % 2:
        fail(f"use_static_sgu=True needs an even emb_dim, got emb_dim={self.emb_dim}")
      if (self.emb_dim // 2) % self.num_heads:
        fail(
          f"num_heads={self.num_heads} must divide the attention half width emb_dim/2={self.emb_dim // 2} "
          "when use_static_sgu=True"
        )
    elif self.emb_dim % self.num_heads:
      fail(f"num_heads={self.num_heads} must divide emb_dim={self.emb_dim}")
    for name in ("dropout_rate", "attention_dropout_rate"):
      rate = getattr(self, name)
      if rate is not None and not 0.0 <= rate < 1.0:
        fail(f"{name}={rate} must be in [0, 1)")
    if self.attention_impl != "xla" and self.attention_dropout > 0.0:
      fail(
        f"attention_impl={self.attention_impl!r} has no attention-probability dropout; set "
        f"attention_dropout_rate=0.0 (dropout_rate={self.dropout_rate} still applies to residuals)"
      )
    if not (math.isfinite(self.alibi_max_bias) and self.alibi_max_bias > 0):
      fail(f"alibi_max_bias={self.alibi_max_bias} must be a positive number")
    if self.alibi_max_bias != 8.0 and self.position_embedding != "alibi":
      fail(f"alibi_max_bias={self.alibi_max_bias} only applies with position_embedding='alibi'")
    if self.clip_qkv is not None and not (math.isfinite(self.clip_qkv) and self.clip_qkv > 0):
      fail(f"clip_qkv={self.clip_qkv} must be a positive number or None")
    if self.position_embedding == "learned" and self.max_position_embeddings < 1:
      fail(f"max_position_embeddings={self.max_position_embeddings} must be positive")

  @property
  def mlp_width(self) -> int:
    return self.mlp_dim or 4 * self.emb_dim

  @property
  def attention_dropout(self) -> float:
    return self.dropout_rate if self.attention_dropout_rate is None else self.attention_dropout_rate

  @property
  def residual_init_std(self) -> float:
    return self.init_std / math.sqrt(2 * self.num_layers)

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  @property
  def parameter_dtype(self):
    return DTYPES[self.param_dtype]

  @property
  def head_dim(self) -> int:
    width = self.emb_dim // 2 if self.use_static_sgu else self.emb_dim
    return width // self.num_heads

  def num_params(self) -> int:
    """Exact parameter count of the module this config builds."""
    d, layers = self.emb_dim, self.num_layers
    attn_width = d // 2 if self.use_static_sgu else d
    norm = 2 * d if self.use_bias else d  # LayerNorm scale (+ bias)
    per_layer = attn_width * 3 * attn_width + attn_width * attn_width + 2 * d * self.mlp_width
    if self.use_bias:  # q/k/v, attention out, MLP in, MLP out
      per_layer += 3 * attn_width + attn_width + self.mlp_width + d
    per_layer += norm * (2 if self.block_type == "sequential" else 1)
    total = self.vocab_size * d + layers * per_layer + norm
    if self.position_embedding == "learned":
      total += self.max_position_embeddings * d
    if self.embedding_layer_norm:
      total += norm
    if self.head_qk_trick:
      total += 2 * d * self.head_qk_dim
    return total

  def flops_per_token(self, seq_len: int) -> float:
    """Training FLOPs per token of one forward + backward pass at `seq_len` (the MFU numerator).

    Counts the matrix multiplications this config builds, 2 FLOPs per multiply-add, x3 for forward + backward
    (the backward pass runs one matmul for the input gradient and one for the weight gradient):
      * weight matmuls: attention q/k/v/out over the attention width (emb_dim/2 with the SGU), MLP in/out,
        the tied logits matmul `x @ E^T` (the table counts once, as the logits projection), head-QK q/k;
      * attention scores and weighted values: 2 x 2 * seq_len * attention width per layer, over the full
        seq_len x seq_len matrix (causal masking is not subtracted: the PaLM appendix convention, and what the
        XLA path computes);
      * head-QK copy scores q.k^T: 2 * seq_len * head_qk_dim, forward and backward;
      * the static SGU band: forward only (its input is stop-gradient, its kernel fixed), as applied blockwise:
        ceil(seq_len / K) chunks of K rows over a 2K window of emb_dim/2 channels.
    Lookups (token and learned-position embeddings), biases, LayerNorms, softmax and other element-wise work
    add no matmul FLOPs and are not counted; rematerialisation is not counted either (model FLOPs, not
    hardware FLOPs)."""
    d, layers, t = self.emb_dim, self.num_layers, seq_len
    attn_width = d // 2 if self.use_static_sgu else d
    weight_macs = layers * (4 * attn_width * attn_width + 2 * d * self.mlp_width) + self.vocab_size * d
    score_macs = layers * 2 * t * attn_width
    if self.head_qk_trick:
      weight_macs += 2 * d * self.head_qk_dim
      score_macs += t * self.head_qk_dim
    flops = 6.0 * (weight_macs + score_macs)
    if self.use_static_sgu and not self.sgu_legacy_zero_kernel:
      k = self.sgu_kernel_size
      chunk_rows = -(-t // k) * k
      flops += layers * 2.0 * chunk_rows * 2 * k * (d // 2) / t
    return flops


def _block_class(cfg: GPTConfig):
  block = DecoderBlock
  if cfg.remat_policy != "none":
    policy = None if cfg.remat_policy == "full" else REMAT_POLICIES[cfg.remat_policy]
    # Positional args: self=0, x, segment_ids, prefill_lengths, enable_dropout=4, decode=5, prefill=6.
    block = nn.remat(block, policy=policy, prevent_cse=not cfg.scan_layers, static_argnums=(4, 5, 6))
  return block


class GPTDecoder(nn.Module):
  """GPT decoder-only LM with the T5X `DecoderOnlyModel` module call signature. Returns float32 logits."""

  config: GPTConfig

  @property
  def scan_layers(self) -> bool:  # read by t5x.models.DecoderOnlyModel (cache_offset for decoding)
    return self.config.scan_layers

  @nn.compact
  def __call__(
    self,
    decoder_input_tokens,
    decoder_target_tokens=None,
    decoder_segment_ids=None,
    decoder_positions=None,
    decoder_causal_attention=None,
    *,
    enable_dropout: bool = True,
    decode: bool = False,
    max_decode_length: Optional[int] = None,
    prefill: bool = False,
    prefill_lengths: Optional[jax.Array] = None,
  ):
    del decoder_target_tokens, decoder_causal_attention, max_decode_length  # causal LM; lengths come from the cache
    cfg = self.config
    if decode and prefill:
      raise ValueError("decode and prefill cannot both be True")
    if decoder_input_tokens.ndim != 2:
      raise ValueError(f"decoder_input_tokens must be [batch, length], got shape {decoder_input_tokens.shape}")
    tokens = decoder_input_tokens.astype(jnp.int32)
    batch, seq = tokens.shape
    segment_ids = None if (decode or prefill) else decoder_segment_ids
    dtype, param_dtype = cfg.compute_dtype, cfg.parameter_dtype

    embedder = TokenEmbedding(cfg.vocab_size, cfg.emb_dim, cfg.init_std, dtype, param_dtype, name="token_embedder")
    x = embedder(tokens)
    if cfg.position_embedding == "learned":
      if seq > cfg.max_position_embeddings:
        raise ValueError(
          f"sequence length {seq} exceeds GPTConfig.max_position_embeddings="
          f"{cfg.max_position_embeddings} of the learned position table (ALiBi has no such limit)"
        )
      positions = decoder_positions if (decoder_positions is not None and segment_ids is not None) else None
      if positions is None:
        positions = jnp.broadcast_to(jnp.arange(seq)[None], (batch, seq))
      x = x + PositionEmbedding(
        cfg.max_position_embeddings,
        cfg.emb_dim,
        cfg.init_std,
        dtype,
        param_dtype,
        cache_layer_axis=cfg.scan_layers,
        name="position_embedder",
      )(positions, decode=decode, prefill=prefill, prefill_lengths=prefill_lengths, seq_len=seq)
    if cfg.embedding_layer_norm:
      x = LayerNorm(cfg.layer_norm_epsilon, dtype, param_dtype, cfg.use_bias, name="embedding_norm")(x)

    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    block_args = (segment_ids, prefill_lengths, enable_dropout, decode, prefill)
    block_cls = _block_class(cfg)
    if cfg.scan_layers:
      stack = nn_partitioning.scan_with_axes(
        block_cls,
        variable_axes={"params": 0, "cache": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast,) * len(block_args),
        length=cfg.num_layers,
        axis_name="layers",
      )
      x, _ = stack(cfg, scanned=True, name="layers")(x, *block_args)
    else:
      for i in range(cfg.num_layers):
        x = block_cls(cfg, name=f"layers_{i}")(x, *block_args)

    x = LayerNorm(cfg.layer_norm_epsilon, dtype, param_dtype, cfg.use_bias, name="final_norm")(x)
    logits = nn.with_logical_constraint(embedder.attend(x), ("batch", "length", "vocab"))
    if cfg.head_qk_trick:
      logits = HeadQK(cfg.head_qk_dim, dtype, param_dtype, cache_layer_axis=cfg.scan_layers, name="head_qk")(
        x, tokens, logits, segment_ids, decode=decode, prefill=prefill, prefill_lengths=prefill_lengths
      )
    return logits
