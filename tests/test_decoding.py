"""KV-cached decoding (gpt_plugin/decoding.py, gpt_plugin/generate.py) against full-forward recomputation."""

import itertools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_plugin import decoding, generate, models
from gpt_plugin.network import GPTConfig, GPTDecoder

VOCAB = 61
NO_EOS = -1  # an id that never occurs, so decoding runs to the length limit
FEATURES = [
  dict(position_embedding=pos, block_type=block, use_static_sgu=use_sgu, head_qk_trick=head_qk)
  for pos, block, use_sgu, head_qk in itertools.product(
    ("alibi", "learned"), ("parallel", "sequential"), (False, True), (False, True)
  )
]


def feature_id(kw):
  flags = [k for k in ("use_static_sgu", "head_qk_trick", "scan_layers") if kw.get(k)]
  return "-".join([kw["position_embedding"], kw["block_type"]] + flags)


def tiny(seed=0, seq=8, **overrides):
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
  cfg = GPTConfig(**base)
  module = GPTDecoder(cfg)
  tokens = jnp.ones((2, seq), jnp.int32)
  params = flax.core.unfreeze(module.init(jax.random.PRNGKey(seed), tokens, tokens, enable_dropout=False))["params"]
  if cfg.head_qk_trick:  # q starts at zero; give it values so the copy logits matter
    q = params["head_qk"]["q"]["kernel"]
    params["head_qk"]["q"]["kernel"] = jax.random.normal(jax.random.PRNGKey(seed + 1), q.shape) * 0.5
  # Sharper logits than at init, so greedy choices are not near-ties.
  params["token_embedder"]["embedding"] = params["token_embedder"]["embedding"] * 20.0
  return models.DecoderOnlyLM(module), params


def greedy_by_recompute(model, params, prompts, max_length):
  """Reference: full forward over the whole (zero-padded, causal) buffer at every step, argmax at the end."""
  fwd = jax.jit(lambda p, x: model.module.apply({"params": p}, x, x, enable_dropout=False))
  out, logps = [], []
  for prompt in prompts:
    seq, lp = list(prompt), 0.0
    while len(seq) < max_length:
      buf = np.zeros((1, max_length), np.int32)
      buf[0, 1 : len(seq) + 1] = seq[: max_length - 1]
      logits = np.asarray(fwd(params, jnp.asarray(buf)))[0, len(seq)]
      tok = int(np.argmax(logits))
      lp += float(jax.nn.log_softmax(logits)[tok])
      seq.append(tok)
    out.append(seq)
    logps.append(lp)
  return np.asarray(out), np.asarray(logps)


PROMPTS = [[5, 7, 9], [3, 4, 5, 6, 7, 8, 9, 10, 11]]


@pytest.mark.parametrize(
  "features",
  FEATURES + [dict(FEATURES[0], scan_layers=True)],
  ids=[feature_id(f) for f in FEATURES + [dict(FEATURES[0], scan_layers=True)]],
)
def test_cached_greedy_equals_recomputed_greedy_beyond_training_length(features):
  """Every feature combination; the model was set up at length 8 and decodes to 24."""
  model, params = tiny(**features)
  max_length = 24
  gen = generate.Generator(model, params)
  out = gen.generate(PROMPTS, max_length=max_length, eos_id=NO_EOS, return_output=True)
  want, want_lp = greedy_by_recompute(model, params, PROMPTS, max_length)
  np.testing.assert_array_equal(out.sequences[:, 0], want)
  np.testing.assert_allclose(out.scores[:, 0], want_lp, rtol=1e-4, atol=1e-3)


@pytest.fixture(scope="module")
def alibi_model():
  return tiny(seed=3)


def test_top_k_1_and_one_beam_equal_greedy(alibi_model):
  model, params = alibi_model
  gen = generate.Generator(model, params)
  greedy = gen.generate(PROMPTS, max_length=20, eos_id=NO_EOS, return_output=True)
  topk1 = gen.generate(
    PROMPTS, max_length=20, eos_id=NO_EOS, sample=True, top_k=1, temperature=1.3, sample_rng=jax.random.PRNGKey(7)
  )
  beam1 = gen.generate(PROMPTS, max_length=20, eos_id=NO_EOS, num_beams=1, alpha=0.0, return_output=True)
  np.testing.assert_array_equal(topk1, greedy.sequences[:, 0])
  np.testing.assert_array_equal(beam1.sequences[:, 0], greedy.sequences[:, 0])
  np.testing.assert_allclose(beam1.scores[:, 0], greedy.scores[:, 0], rtol=1e-5)


def test_sampling_is_reproducible_and_key_dependent(alibi_model):
  model, params = alibi_model
  gen = generate.Generator(model, params)
  kw = dict(max_length=24, eos_id=NO_EOS, sample=True, temperature=2.0, num_samples=3)
  a = gen.generate(PROMPTS, sample_rng=jax.random.PRNGKey(1), **kw)
  b = gen.generate(PROMPTS, sample_rng=jax.random.PRNGKey(1), **kw)
  c = gen.generate(PROMPTS, sample_rng=jax.random.PRNGKey(2), **kw)
  assert a.shape == (2, 3, 24)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  for row, prompt in zip(a, PROMPTS):  # prompts are kept, samples differ from each other
    np.testing.assert_array_equal(row[:, : len(prompt)], np.broadcast_to(prompt, (3, len(prompt))))
  assert len({tuple(s) for s in a[0]}) > 1


def test_top_p_keeps_smallest_set_reaching_p():
  probs = np.array([0.05, 0.5, 0.15, 0.3])
  logits = jnp.log(jnp.asarray([probs], jnp.float32))
  kept = lambda p: set(np.nonzero(np.asarray(decoding.apply_top_p(logits, p))[0] > decoding.NEG_INF / 2)[0])
  assert kept(0.3) == {1}  # 0.5 alone reaches 0.3
  assert kept(0.5) == {1}  # exactly reaching p is enough
  assert kept(0.6) == {1, 3}  # 0.5 + 0.3
  assert kept(0.85) == {1, 3, 2}  # 0.5 + 0.3 + 0.15
  assert kept(0.99) == {0, 1, 2, 3}
  assert kept(1.0) == {0, 1, 2, 3}
  # Per-row p.
  two = jnp.concatenate([logits, logits])
  masked = np.asarray(decoding.apply_top_p(two, jnp.asarray([0.3, 0.6])))
  assert (masked > decoding.NEG_INF / 2).sum(axis=1).tolist() == [1, 2]


def test_top_k_filter_and_sampling_support(alibi_model):
  logits = jnp.asarray([[0.1, 3.0, 2.0, -1.0, 2.5]])
  masked = np.asarray(decoding.apply_top_k(logits, 2))
  assert set(np.nonzero(masked[0] > decoding.NEG_INF / 2)[0]) == {1, 4}
  # Sampled tokens only come from the top-p nucleus of the step's distribution.
  model, params = alibi_model
  gen = generate.Generator(model, params)
  prompt = [[5, 7, 9]]
  out = gen.generate(
    prompt * 1, max_length=4, eos_id=NO_EOS, sample=True, top_p=0.5, num_samples=32, sample_rng=jax.random.PRNGKey(0)
  )
  logits = model.module.apply({"params": params}, jnp.asarray([[0, 5, 7, 9]]), None, enable_dropout=False)[0, 3]
  nucleus = set(np.nonzero(np.asarray(decoding.apply_top_p(logits[None], 0.5))[0] > decoding.NEG_INF / 2)[0])
  assert set(out[0, :, 3].tolist()) <= nucleus


def test_eos_stops_each_row_and_pads(alibi_model):
  model, params = alibi_model
  gen = generate.Generator(model, params)
  free = gen.generate(PROMPTS, max_length=20, eos_id=NO_EOS)
  eos = int(free[0, 6])  # row 0's 4th generated token becomes the stop token
  out = gen.generate(PROMPTS, max_length=20, eos_id=eos, return_output=True)
  row = out.sequences[0, 0]
  first = 3 + free[0, 3:].tolist().index(eos)
  np.testing.assert_array_equal(row[: first + 1], free[0, : first + 1])
  assert (row[first + 1 :] == 0).all() and out.finished[0, 0]
  assert out.continuations[0][0] == free[0, 3:first].tolist()


def test_batched_prompts_of_different_lengths_equal_one_by_one(alibi_model):
  model, params = alibi_model
  gen = generate.Generator(model, params)
  batch = gen.generate(PROMPTS, max_length=18, eos_id=NO_EOS)
  for b, prompt in enumerate(PROMPTS):
    np.testing.assert_array_equal(gen.generate(prompt, max_length=18, eos_id=NO_EOS), batch[b])


def test_beam_search_finds_better_or_equal_sequences_than_greedy(alibi_model):
  model, params = alibi_model
  gen = generate.Generator(model, params)
  greedy = gen.generate(PROMPTS, max_length=14, eos_id=NO_EOS, return_output=True)
  beams = gen.generate(PROMPTS, max_length=14, eos_id=NO_EOS, num_beams=4, num_samples=4, alpha=0.0, return_output=True)
  assert beams.sequences.shape == (2, 4, 14)
  assert (beams.scores[:, 0] >= greedy.scores[:, 0] - 1e-4).all()
  assert (np.diff(beams.scores, axis=1) <= 1e-6).all()  # best first
  # The score is the true log-probability of the returned sequence.
  _, lp = score_sequences(model, params, beams.sequences[:, 0], [len(p) for p in PROMPTS])
  np.testing.assert_allclose(beams.scores[:, 0], lp, rtol=1e-4)


def score_sequences(model, params, seqs, prompt_lens):
  seqs = np.asarray(seqs)
  inputs = np.pad(seqs, ((0, 0), (1, 0)))[:, :-1]
  logits = model.module.apply({"params": params}, jnp.asarray(inputs), None, enable_dropout=False)
  lps = np.asarray(jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.asarray(seqs)[..., None], -1))[..., 0]
  return lps, np.asarray([lps[b, n:].sum() for b, n in enumerate(prompt_lens)])


def test_decode_loop_is_one_traced_program(alibi_model):
  """tokens_to_logits is traced once (inside lax.while_loop), not called per token from Python."""
  model, params = alibi_model
  calls = []
  base = model.make_tokens_to_logits(params, 16)

  def counting(state):
    calls.append(1)
    return base(state)

  inputs = jnp.zeros((2, 16), jnp.int32).at[:, 1:3].set(jnp.asarray([[4, 5], [6, 7]]))
  lengths = jnp.asarray([2, 2])

  @jax.jit
  def run(inputs):
    cache = model.init_cache(params, 2, 16)
    _, cache = model.prefill_cache(params, cache, inputs, lengths)
    return decoding.temperature_sample(
      inputs, cache, counting, eos_id=NO_EOS, topk=0, temperature=0.0, initial_index=lengths
    )

  decodes, _ = run(inputs)
  assert decodes.shape == (2, 1, 16) and len(calls) == 1
  jaxpr = str(jax.make_jaxpr(run)(inputs))
  assert "while" in jaxpr


def test_predict_batch_with_aux_t5x_flow(alibi_model):
  """DecoderOnlyLM.predict_batch_with_aux (T5X's prefix-LM batch layout) with our decode_fn."""
  model, params = alibi_model
  gen = generate.Generator(model, params)
  total = 16
  tokens = np.zeros((2, total), np.int32)
  causal = np.zeros((2, total), np.int32)
  for b, p in enumerate(PROMPTS):
    tokens[b, 1 : len(p) + 1] = p
    causal[b, : len(p) + 1] = 1
  batch = {"decoder_input_tokens": jnp.asarray(tokens), "decoder_causal_attention": jnp.asarray(causal)}
  model_eos = models.DecoderOnlyLM(model.module, decode_fn=decoding.temperature_sample)
  decodes, aux = model_eos.predict_batch_with_aux(params, batch, decoder_params={"temperature": 0.0, "topk": 0})
  want = gen.generate(PROMPTS, max_length=total, eos_id=1)
  for b, p in enumerate(PROMPTS):
    n_new = total - len(p)
    got = np.asarray(decodes[b, :n_new]).tolist()
    ref = want[b, len(p) :].tolist()
    if 1 in ref:
      ref = ref[: ref.index(1) + 1]
      got = got[: len(ref)]
    assert got == ref
  beam_model = models.DecoderOnlyLM(model.module, decode_fn=decoding.beam_search)
  decodes, aux = beam_model.predict_batch_with_aux(
    params, batch, num_decodes=3, return_all_decodes=True, decoder_params={"alpha": 0.0}
  )
  assert decodes.shape == (2, 3, total) and aux["scores"].shape == (2, 3)


# --------------------------------------------------------------------------------------------- bad input
def test_bad_inputs_name_the_value(alibi_model):
  model, params = alibi_model
  gen = generate.Generator(model, params)
  with pytest.raises(ValueError, match="prompt of 9 tokens does not fit max_length=9"):
    gen.generate(PROMPTS, max_length=9)
  with pytest.raises(ValueError, match="prompt 1 is empty"):
    gen.generate([[4, 5], []], max_length=9)
  with pytest.raises(ValueError, match="temperature=0.0"):
    gen.generate(PROMPTS, max_length=20, sample=True, temperature=0.0)
  with pytest.raises(ValueError, match="temperature=-1"):
    gen.generate(PROMPTS, max_length=20, sample=True, temperature=-1)
  for bad in (0.0, 1.5, -0.1):
    with pytest.raises(ValueError, match=f"top_p={bad}"):
      gen.generate(PROMPTS, max_length=20, sample=True, top_p=bad)
  with pytest.raises(ValueError, match="topp=1.5"):
    decoding.temperature_sample(jnp.zeros((1, 4), jnp.int32), {}, None, eos_id=1, topp=1.5, topk=0)
  with pytest.raises(ValueError, match="temperature=-0.5"):
    decoding.temperature_sample(jnp.zeros((1, 4), jnp.int32), {}, None, eos_id=1, temperature=-0.5)
  learned, lparams = tiny(position_embedding="learned", max_position_embeddings=16)
  with pytest.raises(ValueError, match="max_position_embeddings=16"):
    generate.Generator(learned, lparams).generate(PROMPTS, max_length=17)


@pytest.mark.parametrize(
  "features", [dict(head_qk_trick=True), dict(position_embedding="learned")], ids=["head_qk", "learned"]
)
def test_scanned_layers_decode_like_unrolled_ones_with_beams_and_samples(features):
  """Under scan_layers the cache of head-QK and learned positions (outside the layer stack) takes the same batch
  axis as the layers' cache, so beam search and several samples per prompt expand and reorder it correctly."""
  from gpt_plugin.convert import littlegpt

  features = dict(dict(position_embedding="alibi", block_type="parallel"), **features)
  unrolled, params = tiny(seed=5, **features)
  scanned, _ = tiny(seed=5, scan_layers=True, **features)
  stacked = littlegpt.with_layers(params, littlegpt.layer_list(params), scanned=True)
  runs = dict(
    beams=dict(num_beams=3, alpha=0.6, return_output=True),
    samples=dict(sample=True, num_samples=3, temperature=1.5, sample_rng=jax.random.PRNGKey(4), return_output=True),
  )
  for name, kw in runs.items():
    want = generate.Generator(unrolled, params).generate(PROMPTS, max_length=20, eos_id=NO_EOS, **kw)
    got = generate.Generator(scanned, stacked).generate(PROMPTS, max_length=20, eos_id=NO_EOS, **kw)
    np.testing.assert_array_equal(got.sequences, want.sequences, err_msg=name)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-4, atol=1e-4, err_msg=name)
