"""`GPTConfig.flops_per_token` (the MFU numerator) against the FLOPs XLA counts in the compiled train step.

XLA's count also holds the element-wise work (softmax, GELU, LayerNorm, the optimiser update) that the matmul
count leaves out, so the formula must sit a little below it and never above: MFU is never overstated. The
models are sized so that matmuls dominate (the element-wise share is 2-4% here)."""

import jax
import jax.numpy as jnp
import optax
import pytest

from gpt_plugin import models, network
from gpt_plugin.training import train_step

BATCH, SEQ = 2, 128
BASE = dict(vocab_size=512, emb_dim=128, num_heads=2, num_layers=2, mlp_dim=512)


def compiled_flops_per_token(cfg: network.GPTConfig) -> float:
  model = models.DecoderOnlyLM(network.GPTDecoder(cfg))
  tx = optax.sgd(0.1)
  shapes = {"decoder_input_tokens": (1, SEQ)}
  abstract = jax.eval_shape(
    lambda k: train_step.create_train_state(model.get_initial_variables(k, shapes)["params"], tx, k),
    jax.random.key(0),
  )
  step = train_step.make_train_step(model, tx, lambda s: 0.1)
  batch = {
    k: jax.ShapeDtypeStruct((BATCH, SEQ), jnp.int32)
    for k in ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")
  }
  cost = jax.jit(step).lower(abstract, batch).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"]) / (BATCH * SEQ)


@pytest.mark.parametrize(
  "features",
  [
    {},
    {"block_type": "sequential"},
    {"use_static_sgu": True, "sgu_kernel_size": 32},
    {"head_qk_trick": True, "head_qk_dim": 256},
    {"position_embedding": "learned", "max_position_embeddings": 1024, "block_type": "sequential"},
  ],
  ids=["plain_parallel", "sequential", "sgu", "head_qk", "learned_positions"],
)
def test_flops_per_token_matches_the_compiled_train_step(features):
  cfg = network.GPTConfig(**BASE, **features)
  counted = cfg.flops_per_token(SEQ)
  compiled = compiled_flops_per_token(cfg)
  assert 0.95 * compiled <= counted <= compiled, (features, counted, compiled, counted / compiled)


def test_flops_count_no_position_table_and_half_width_attention_with_the_sgu():
  plain = network.GPTConfig(**BASE)
  learned = network.GPTConfig(**BASE, position_embedding="learned", max_position_embeddings=4096)
  assert learned.flops_per_token(SEQ) == plain.flops_per_token(SEQ)  # a lookup table does no matmul
  sgu = network.GPTConfig(**BASE, use_static_sgu=True, sgu_kernel_size=32, sgu_legacy_zero_kernel=True)
  d, w, layers = BASE["emb_dim"], BASE["emb_dim"] // 2, BASE["num_layers"]
  # Attention at half width: 4 w^2 projection weights and 2 * SEQ * w score/value MACs per layer, x 6.
  want = plain.flops_per_token(SEQ) - 6 * layers * (4 * (d * d - w * w) + 2 * SEQ * (d - w))
  assert sgu.flops_per_token(SEQ) == want
