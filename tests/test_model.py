"""GPT decoder: layers against float64 NumPy references, causality, packing, cached decoding, presets, errors."""

import itertools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gpt_plugin.layers import alibi, attention, sgu
from gpt_plugin.network import GPTConfig, GPTDecoder

VOCAB = 61
FEATURES = [
  dict(position_embedding=pos, block_type=block, use_static_sgu=use_sgu, head_qk_trick=head_qk)
  for pos, block, use_sgu, head_qk in itertools.product(
    ("alibi", "learned"), ("parallel", "sequential"), (False, True), (False, True)
  )
]


def feature_id(kw):
  return "-".join(
    [kw["position_embedding"], kw["block_type"]] + [k for k in ("use_static_sgu", "head_qk_trick") if kw[k]]
  )


def tiny_config(**overrides):
  base = dict(
    vocab_size=VOCAB,
    emb_dim=32,
    num_heads=4,
    num_layers=2,
    sgu_kernel_size=4,
    head_qk_dim=8,
    max_position_embeddings=64,
  )
  base.update(overrides)
  return GPTConfig(**base)


def init_params(cfg, seq=8, seed=0, randomize_head_q=True):
  module = GPTDecoder(cfg)
  tokens = jnp.ones((2, seq), jnp.int32)
  params = flax.core.unfreeze(module.init(jax.random.PRNGKey(seed), tokens, tokens, enable_dropout=False))["params"]
  if cfg.head_qk_trick and randomize_head_q:
    # q starts at zero; give it values so the copy logits are exercised.
    q = params["head_qk"]["q"]["kernel"]
    params["head_qk"]["q"]["kernel"] = jax.random.normal(jax.random.PRNGKey(seed + 1), q.shape) * 0.5
  return module, params


_JITTED = {}


def forward(module, params, tokens, **kwargs):
  """Jitted full forward pass (compiled once per module and set of keyword arrays)."""
  key = (id(module), tuple(sorted(kwargs)))
  if key not in _JITTED:
    _JITTED[key] = (module, jax.jit(lambda p, t, kw: module.apply({"params": p}, t, t, enable_dropout=False, **kw)))
  return _JITTED[key][1](params, tokens, kwargs)


# ------------------------------------------------------------------------------------------- ALiBi
def test_alibi_slopes_power_of_two_and_twelve_heads():
  np.testing.assert_allclose(alibi.alibi_slopes(8), [2.0 ** -(i + 1) for i in range(8)])
  twelve = alibi.alibi_slopes(12)
  np.testing.assert_allclose(twelve[:8], [2.0 ** -(i + 1) for i in range(8)])
  np.testing.assert_allclose(twelve[8:], [2**-0.5, 2**-1.5, 2**-2.5, 2**-3.5], rtol=1e-6)
  np.testing.assert_allclose(alibi.alibi_slopes(16)[:3], [2**-0.5, 2**-1.0, 2**-1.5], rtol=1e-6)


def test_one_home_for_the_alibi_slopes_and_the_mask_value():
  from gpt_plugin.kernels import blockwise_reference, common, flash_alibi, flash_alibi_tpu, triton_alibi

  assert flash_alibi.alibi_slopes is alibi.alibi_slopes
  for module in (attention, blockwise_reference, triton_alibi, flash_alibi_tpu):
    assert module.MASK_VALUE is common.MASK_VALUE, module.__name__


def numpy_alibi_attention(x, qkv_kernel, qkv_bias, out_kernel, out_bias, num_heads, segment_ids=None):
  """Float64 reference: projections, scores/sqrt(d) - m_h (i - j), causal (+segment) mask, softmax."""
  x = x.astype(np.float64)
  batch, seq, _ = x.shape
  inner = qkv_kernel.shape[-1]
  head_dim = inner // num_heads
  proj = np.einsum("btd,dzf->btzf", x, qkv_kernel.astype(np.float64)) + qkv_bias
  q, k, v = (proj[:, :, i].reshape(batch, seq, num_heads, head_dim) for i in range(3))
  m = np.asarray(alibi.alibi_slopes(num_heads), np.float64)
  scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(head_dim)
  i, j = np.arange(seq)[:, None], np.arange(seq)[None, :]
  scores = scores - m[:, None, None] * (i - j)
  mask = np.broadcast_to(j <= i, scores.shape)
  if segment_ids is not None:
    mask = mask & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
  scores = np.where(mask, scores, -np.inf)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  out = np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(batch, seq, inner)
  return out @ out_kernel.astype(np.float64) + out_bias


@pytest.mark.parametrize("impl", ["xla", "cudnn"])
def test_attention_matches_float64_reference_12_heads(impl):
  heads, width, seq = 12, 48, 37
  layer = attention.CausalSelfAttention(
    num_heads=heads, head_dim=width // heads, out_features=width, attention_impl=impl
  )
  x = jax.random.normal(jax.random.PRNGKey(0), (2, seq, width))
  segments = np.array([[1] * 20 + [2] * 17, [1] * seq])
  params = layer.init(jax.random.PRNGKey(1), x)["params"]
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(2), p.shape), params)
  got = layer.apply({"params": params}, x, jnp.asarray(segments))
  want = numpy_alibi_attention(
    np.asarray(x),
    np.asarray(params["qkv"]["kernel"]),
    np.asarray(params["qkv"]["bias"]),
    np.asarray(params["out"]["kernel"]),
    np.asarray(params["out"]["bias"]),
    heads,
    segments,
  )
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-5)


def test_alibi_runs_beyond_any_training_length():
  cfg = tiny_config()
  module, params = init_params(cfg, seq=8)
  for seq in (8, 16, 64):
    logits = forward(module, params, jnp.zeros((1, seq), jnp.int32))
    assert logits.shape == (1, seq, VOCAB) and bool(jnp.all(jnp.isfinite(logits)))


def test_learned_positions_refuse_lengths_past_the_table():
  module, params = init_params(tiny_config(position_embedding="learned", max_position_embeddings=16))
  with pytest.raises(ValueError, match="max_position_embeddings=16"):
    forward(module, params, jnp.zeros((1, 17), jnp.int32))


def test_learned_positions_use_arange():
  """Each position gets its own row (the original indexed every position with row 1)."""
  cfg = tiny_config(position_embedding="learned", num_layers=1)
  module, params = init_params(cfg)
  tokens = jnp.zeros((1, 6), jnp.int32)
  # Zero every position row, then set row 3: positions before 3 must not change, position 3 must.
  base = jax.tree.map(lambda x: x, params)
  base["position_embedder"]["embedding"] = jnp.zeros_like(params["position_embedder"]["embedding"])
  bumped = jax.tree.map(lambda x: x, base)
  row = jax.random.normal(jax.random.PRNGKey(12), (cfg.emb_dim,))
  bumped["position_embedder"]["embedding"] = base["position_embedder"]["embedding"].at[3].set(row)
  diff = jnp.abs(forward(module, bumped, tokens) - forward(module, base, tokens)).max(-1)[0]
  assert float(diff[3]) > 1e-3
  assert float(diff[:3].max()) == 0.0


# --------------------------------------------------------------------------------------------- SGU
def test_sgu_band_kernel_hand_computed():
  kernel = sgu.dense_band_matrix(6, 4)
  np.testing.assert_allclose(kernel[5], [0, 1 / 6, 1 / 5, 1 / 4, 1 / 3, 1 / 2])
  np.testing.assert_allclose(kernel[0], [1 / 2, 0, 0, 0, 0, 0])
  np.testing.assert_allclose(sgu.band_weights(4), [1 / 2, 1 / 3, 1 / 4, 1 / 5, 1 / 6])


@pytest.mark.parametrize("seq,kernel_size", [(13, 4), (8, 8), (5, 16), (40, 7)])
def test_sgu_blockwise_equals_dense_matrix(seq, kernel_size):
  x = np.random.RandomState(0).randn(2, seq, 3)
  want = np.einsum("nm,bmc->bnc", sgu.dense_band_matrix(seq, kernel_size), x)
  got = sgu.static_sgu_mix(jnp.asarray(x, jnp.float32), None, kernel_size)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def test_sgu_is_causal_and_respects_segments():
  x = np.random.RandomState(1).randn(1, 12, 2).astype(np.float32)
  out = sgu.static_sgu_mix(jnp.asarray(x), None, 4)
  x2 = x.copy()
  x2[:, 7:] += 5.0
  out2 = sgu.static_sgu_mix(jnp.asarray(x2), None, 4)
  np.testing.assert_array_equal(np.asarray(out)[:, :7], np.asarray(out2)[:, :7])
  seg = jnp.asarray([[1] * 5 + [2] * 7])
  packed = sgu.static_sgu_mix(jnp.asarray(x), seg, 4)
  alone = sgu.static_sgu_mix(jnp.asarray(x[:, 5:]), None, 4)
  np.testing.assert_allclose(np.asarray(packed)[:, 5:], np.asarray(alone), rtol=1e-6)


def test_sgu_legacy_zero_kernel_outputs_zero():
  layer = sgu.StaticSGU(kernel_size=4, legacy_zero_kernel=True)
  out = layer.apply({}, jnp.ones((1, 9, 3)))
  assert float(jnp.abs(out).max()) == 0.0


def test_sgu_has_no_gradient_into_its_input():
  x = jnp.ones((1, 6, 2))
  grad = jax.grad(lambda x: sgu.StaticSGU(kernel_size=2).apply({}, x).sum())(x)
  assert float(jnp.abs(grad).max()) == 0.0


# ------------------------------------------------------------------------------ causality, packing
@pytest.mark.parametrize("features", FEATURES, ids=feature_id)
def test_causality_every_feature_combination(features):
  module, params = init_params(tiny_config(**features), seq=12)
  tokens = jax.random.randint(jax.random.PRNGKey(3), (2, 12), 0, VOCAB)
  t = 6
  changed = tokens.at[:, t + 1 :].set((tokens[:, t + 1 :] + 7) % VOCAB)
  a, b = forward(module, params, tokens), forward(module, params, changed)
  np.testing.assert_allclose(np.asarray(a[:, : t + 1]), np.asarray(b[:, : t + 1]), rtol=1e-5, atol=1e-5)
  assert float(jnp.abs(a[:, t + 1 :] - b[:, t + 1 :]).max()) > 1e-4


@pytest.mark.parametrize("features", FEATURES, ids=feature_id)
def test_packing_equals_separate_documents(features):
  module, params = init_params(tiny_config(**features), seq=14)
  doc1 = jax.random.randint(jax.random.PRNGKey(4), (1, 9), 1, VOCAB)
  doc2 = jax.random.randint(jax.random.PRNGKey(5), (1, 5), 1, VOCAB)
  packed = jnp.concatenate([doc1, doc2], axis=1)
  segments = jnp.asarray([[1] * 9 + [2] * 5])
  positions = jnp.asarray([list(range(9)) + list(range(5))])
  got = forward(module, params, packed, decoder_segment_ids=segments, decoder_positions=positions)
  np.testing.assert_allclose(np.asarray(got[:, :9]), np.asarray(forward(module, params, doc1)), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(got[:, 9:]), np.asarray(forward(module, params, doc2)), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------- cached decoding
def decode_all_positions(module, params, tokens, prompt_lengths):
  """Init cache, prefill each row's prompt, then decode one token at a time; logits for every position."""
  batch, length = tokens.shape
  _, variables = module.apply({"params": params}, tokens, tokens, enable_dropout=False, decode=True, mutable=["cache"])
  cache = variables["cache"]
  prompt_mask = jnp.arange(length)[None, :] < prompt_lengths[:, None]
  prompt = jnp.where(prompt_mask, tokens, 0)
  prefill_logits, variables = module.apply(
    {"params": params, "cache": cache},
    prompt,
    prompt,
    enable_dropout=False,
    prefill=True,
    prefill_lengths=prompt_lengths,
    mutable=["cache"],
  )
  cache = variables["cache"]

  @jax.jit
  def step(cache, token):
    logits, variables = module.apply(
      {"params": params, "cache": cache},
      token,
      token,
      enable_dropout=False,
      decode=True,
      max_decode_length=length,
      mutable=["cache"],
    )
    return logits[:, 0], variables["cache"]

  rows = jnp.arange(batch)
  step_logits = []
  for i in range(length - int(prompt_lengths.min())):
    pos = jnp.minimum(prompt_lengths + i, length - 1)
    logits, cache = step(cache, tokens[rows, pos][:, None])
    step_logits.append(logits)
  return prefill_logits, jnp.stack(step_logits, axis=1)


@pytest.mark.parametrize(
  "features",
  FEATURES + [dict(FEATURES[0], scan_layers=True)],
  ids=[feature_id(f) for f in FEATURES] + ["alibi-parallel-scan"],
)
def test_cached_decoding_reproduces_full_forward(features):
  """Beyond the length the model was set up with (8), with prompts of different lengths per row."""
  cfg = tiny_config(**features)
  module, params = init_params(cfg, seq=8)
  length = 20
  tokens = jax.random.randint(jax.random.PRNGKey(6), (2, length), 0, VOCAB)
  full = forward(module, params, tokens)
  prompt_lengths = jnp.asarray([3, 7])
  prefill_logits, steps = decode_all_positions(module, params, tokens, prompt_lengths)
  for b in range(2):
    p = int(prompt_lengths[b])
    np.testing.assert_allclose(np.asarray(prefill_logits[b, :p]), np.asarray(full[b, :p]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(steps[b, : length - p]), np.asarray(full[b, p:]), rtol=1e-4, atol=1e-4)


def test_cached_decoding_without_prefill_from_scalar_index():
  module, params = init_params(tiny_config(use_static_sgu=True, head_qk_trick=True))
  tokens = jax.random.randint(jax.random.PRNGKey(7), (1, 10), 0, VOCAB)
  full = forward(module, params, tokens)
  _, variables = module.apply({"params": params}, tokens, tokens, enable_dropout=False, decode=True, mutable=["cache"])
  cache = variables["cache"]
  for t in range(10):
    logits, variables = module.apply(
      {"params": params, "cache": cache},
      tokens[:, t : t + 1],
      tokens[:, t : t + 1],
      enable_dropout=False,
      decode=True,
      mutable=["cache"],
    )
    cache = variables["cache"]
    np.testing.assert_allclose(np.asarray(logits[:, 0]), np.asarray(full[:, t]), rtol=1e-4, atol=1e-4)


def test_cache_layout_follows_t5x():
  module, params = init_params(tiny_config(use_static_sgu=True))
  tokens = jnp.ones((3, 12), jnp.int32)
  _, variables = module.apply({"params": params}, tokens, tokens, enable_dropout=False, decode=True, mutable=["cache"])
  attn = variables["cache"]["layers_0"]["attention"]
  assert attn["cached_key"].shape == (3, 12, 4, 4) and attn["cached_value"].shape == (3, 12, 4, 4)
  assert attn["cache_index"].shape == ()
  assert variables["cache"]["layers_0"]["sgu"]["cached_sgu_window"].shape == (3, 4, 16)


# ------------------------------------------------------------------------------------------- head-QK
def test_head_qk_is_identity_at_init_and_learns():
  cfg = tiny_config(head_qk_trick=True)
  module, params = init_params(cfg, randomize_head_q=False)
  plain_module = GPTDecoder(tiny_config())
  plain_params = {k: v for k, v in params.items() if k != "head_qk"}
  tokens = jax.random.randint(jax.random.PRNGKey(8), (2, 8), 0, VOCAB)
  np.testing.assert_array_equal(
    np.asarray(forward(module, params, tokens)), np.asarray(forward(plain_module, plain_params, tokens))
  )

  def loss(p):
    logits = forward(module, p, tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  opt = optax.adam(1e-2)
  updates, _ = opt.update(jax.grad(loss)(params), opt.init(params), params)
  stepped = optax.apply_updates(params, updates)
  assert float(jnp.abs(stepped["head_qk"]["q"]["kernel"]).max()) > 0
  stepped_plain = {k: v for k, v in stepped.items() if k != "head_qk"}
  diff = jnp.abs(forward(module, stepped, tokens) - forward(plain_module, stepped_plain, tokens)).max()
  assert float(diff) > 1e-6


def test_head_qk_builds_no_one_hot_over_the_vocabulary():
  vocab = 997  # a size that appears nowhere else in the model
  cfg = tiny_config(head_qk_trick=True, vocab_size=vocab)
  module, params = init_params(cfg)
  tokens = jnp.zeros((2, 8), jnp.int32)
  jaxpr = jax.make_jaxpr(lambda p: module.apply({"params": p}, tokens, tokens, enable_dropout=False))(params).jaxpr

  def eqns(jaxpr):
    for eqn in jaxpr.eqns:
      yield eqn
      for value in eqn.params.values():
        for sub in value if isinstance(value, (tuple, list)) else [value]:
          if hasattr(sub, "eqns"):
            yield from eqns(sub)
          elif hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
            yield from eqns(sub.jaxpr)

  prims = [(e.primitive.name, [tuple(v.aval.shape) for v in e.outvars]) for e in eqns(jaxpr)]
  assert any(name == "scatter-add" for name, _ in prims)
  for name, shapes in prims:
    if name in ("eq", "convert_element_type", "dot_general"):
      produced_vocab_sized = [s for s in shapes if vocab in s]
      if name == "dot_general":  # only the tied-logits matmul may produce [B, T, V]
        assert all(s == (2, 8, vocab) for s in produced_vocab_sized)
      elif name == "eq":
        assert not produced_vocab_sized, f"{name} builds a vocabulary-sized tensor {shapes}"
  dots_to_vocab = [s for name, shapes in prims if name == "dot_general" for s in shapes if vocab in s]
  assert len(dots_to_vocab) == 1  # a one-hot matmul would add a second one


# ----------------------------------------------------------------------------- scan, remat, dtypes
def test_scan_and_remat_match_unrolled_layers():
  cfg = tiny_config(num_layers=3)
  module, params = init_params(cfg)
  tokens = jax.random.randint(jax.random.PRNGKey(9), (2, 8), 0, VOCAB)
  want = forward(module, params, tokens)
  scanned = GPTDecoder(tiny_config(num_layers=3, scan_layers=True, remat_policy="dots"))
  stacked = {k: v for k, v in params.items() if not k.startswith("layers_")}
  stacked["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *[params[f"layers_{i}"] for i in range(3)])
  np.testing.assert_allclose(np.asarray(forward(scanned, stacked, tokens)), np.asarray(want), rtol=1e-5, atol=1e-5)
  remat = GPTDecoder(tiny_config(num_layers=3, remat_policy="full"))
  g1 = jax.grad(lambda p: forward(module, p, tokens).sum())(params)
  g2 = jax.grad(lambda p: forward(remat, p, tokens).sum())(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g1, g2)


def test_scanned_params_axes_have_layers_axis():
  cfg = tiny_config(scan_layers=True)
  variables = GPTDecoder(cfg).init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32), enable_dropout=False)
  axes = flax.linen.partitioning.get_axis_names(variables["params_axes"])
  assert tuple(axes["layers"]["attention"]["qkv"]["kernel"]) == ("layers", "embed", "stack", "joined_kv")
  assert variables["params"]["layers"]["attention"]["qkv"]["kernel"].shape == (2, 32, 3, 32)


def test_every_param_has_logical_axes():
  for features in FEATURES:
    variables = GPTDecoder(tiny_config(**features, embedding_layer_norm=True)).init(
      jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32), enable_dropout=False
    )
    axes = flax.linen.partitioning.get_axis_names(variables["params_axes"])
    params_paths = {k: v.ndim for k, v in flax.traverse_util.flatten_dict(variables["params"]).items()}
    axes_paths = {
      k: len(v)
      for k, v in flax.traverse_util.flatten_dict(
        axes, is_leaf=lambda _, x: isinstance(x, jax.sharding.PartitionSpec)
      ).items()
    }
    assert params_paths == axes_paths


def test_bf16_compute_keeps_fp32_params_and_close_logits():
  module32, params = init_params(tiny_config())
  module16 = GPTDecoder(tiny_config(dtype="bfloat16"))
  assert all(
    p.dtype == jnp.float32
    for p in jax.tree.leaves(
      module16.init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32), enable_dropout=False)["params"]
    )
  )
  tokens = jax.random.randint(jax.random.PRNGKey(10), (2, 8), 0, VOCAB)
  a, b = forward(module32, params, tokens), forward(module16, params, tokens)
  assert b.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=0.05)


def test_dropout_only_when_enabled_and_reproducible():
  module, params = init_params(tiny_config(dropout_rate=0.3))
  tokens = jnp.ones((2, 8), jnp.int32)
  det = forward(module, params, tokens)
  run = lambda seed: module.apply(
    {"params": params}, tokens, tokens, enable_dropout=True, rngs={"dropout": jax.random.PRNGKey(seed)}
  )
  assert float(jnp.abs(run(0) - det).max()) > 1e-4
  np.testing.assert_array_equal(np.asarray(run(0)), np.asarray(run(0)))


def test_gpt2_initialisation_scales():
  cfg = tiny_config(emb_dim=256, num_heads=4, num_layers=8, mlp_dim=1024)
  _, params = init_params(cfg, seed=11)
  std = lambda x: float(np.std(np.asarray(x)))
  assert abs(std(params["token_embedder"]["embedding"]) - 0.02) < 0.003
  assert abs(std(params["layers_0"]["mlp"]["wi"]["kernel"]) - 0.02) < 0.002
  residual = 0.02 / np.sqrt(16)
  assert abs(std(params["layers_0"]["mlp"]["wo"]["kernel"]) - residual) < 0.1 * residual
  assert abs(std(params["layers_0"]["attention"]["out"]["kernel"]) - residual) < 0.1 * residual
  assert float(jnp.abs(params["layers_0"]["mlp"]["wi"]["bias"]).max()) == 0.0


def test_exact_gelu_option_changes_the_mlp():
  module_tanh, params = init_params(tiny_config())
  module_erf = GPTDecoder(tiny_config(gelu_approximate=False))
  tokens = jnp.arange(8)[None] % VOCAB
  diff = jnp.abs(forward(module_tanh, params, tokens) - forward(module_erf, params, tokens)).max()
  assert 0 < float(diff) < 1e-2


# ---------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
  "overrides,name",
  [
    (dict(emb_dim=30, num_heads=4), "num_heads=4"),
    (dict(attention_impl="flash"), "attention_impl='flash'"),
    (dict(use_static_sgu=True, emb_dim=33, num_heads=3), "emb_dim=33"),
    (dict(use_static_sgu=True, emb_dim=36, num_heads=4), "emb_dim/2=18"),
    (dict(position_embedding="rotary"), "position_embedding='rotary'"),
    (dict(block_type="fused"), "block_type='fused'"),
    (dict(dtype="float64"), "dtype='float64'"),
    (dict(remat_policy="some"), "remat_policy='some'"),
    (dict(attention_impl="cudnn", dropout_rate=0.1), "attention_dropout_rate"),
  ],
)
def test_bad_configuration_names_the_setting(overrides, name):
  with pytest.raises(ValueError) as err:
    tiny_config(**overrides)
  assert name in str(err.value)
