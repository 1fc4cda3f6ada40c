"""attention_impl choices give the same model; the fused kernel runs per shard under a mesh (shard_map)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from gpt_plugin.network import GPTConfig, GPTDecoder


def _model(impl):
  return GPTDecoder(
    GPTConfig(vocab_size=64, emb_dim=32, num_heads=4, num_layers=1, attention_impl=impl, attention_dropout_rate=0.0)
  )


def _setup():
  tokens = jax.random.randint(jax.random.PRNGKey(0), (4, 40), 0, 64)
  segments = jnp.asarray([[1] * 23 + [2] * 17] * 4)
  params = _model("xla").init(jax.random.PRNGKey(1), tokens, enable_dropout=False)["params"]
  return tokens, segments, params


def _logits_and_grads(module, params, tokens, segments):
  fn = lambda p: module.apply({"params": p}, tokens, decoder_segment_ids=segments, enable_dropout=False)
  return jax.jit(fn)(params), jax.jit(jax.grad(lambda p: jnp.sum(fn(p) ** 2)))(params)


def _assert_close(a, b, rtol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    scale = float(jnp.abs(y).max()) + 1e-9
    assert float(jnp.abs(x - y).max()) / scale < rtol


def test_all_attention_impls_agree_with_packing():
  tokens, segments, params = _setup()
  want = _logits_and_grads(_model("xla"), params, tokens, segments)
  for impl in ("cudnn", "flash_alibi"):
    _assert_close(_logits_and_grads(_model(impl), params, tokens, segments), want, 1e-5)


def test_flash_alibi_runs_per_shard_under_a_tensor_parallel_mesh():
  tokens, segments, params = _setup()
  module = _model("flash_alibi")
  want = _logits_and_grads(module, params, tokens, segments)
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 1, 4), ("data", "fsdp", "tensor"))
  rules = (
    ("batch", ("data", "fsdp")),
    ("heads", "tensor"),
    ("joined_kv", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
  )
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    got = _logits_and_grads(module, params, tokens, segments)
  assert got[0].sharding.spec[0] == "data"
  _assert_close(got, want, 1e-5)
