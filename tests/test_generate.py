"""Python generation API (gpt_plugin/generate.py): the original `generate(params, tokens, max_length=...,
temperature=..., sample=..., sample_rng=...)` call, batches, samples, text in / text out."""

import flax
import jax
import numpy as np
import pytest

from gpt_plugin import generate, models
from gpt_plugin.network import GPTConfig, GPTDecoder


@pytest.fixture(scope="module")
def lm():
  import tasks  # pylint: disable=import-outside-toplevel

  vocab = tasks.pydocs_vocabulary()
  module = GPTDecoder(GPTConfig(vocab_size=8192, emb_dim=32, num_heads=4, num_layers=2))
  model = models.DecoderOnlyLM(module, vocabulary=vocab)
  params = flax.core.unfreeze(
    model.get_initial_variables(
      jax.random.PRNGKey(0), {"decoder_input_tokens": (1, 8), "decoder_target_tokens": (1, 8)}
    )
  )["params"]
  params["token_embedder"]["embedding"] = params["token_embedder"]["embedding"] * 20.0
  return model, params


def test_original_call_signature(lm):
  model, params = lm
  context = [464, 318, 257]
  out = generate.generate(
    model, params, context, max_length=12, temperature=0.7, sample=True, sample_rng=jax.random.PRNGKey(23)
  )
  assert out.shape == (12,) and out.dtype == np.int32
  assert out[:3].tolist() == context
  again = generate.generate(
    model, params, context, max_length=12, temperature=0.7, sample=True, sample_rng=jax.random.PRNGKey(23)
  )
  np.testing.assert_array_equal(out, again)
  greedy = generate.generate(model, params, np.asarray(context), max_length=12)  # sample=False: greedy
  assert greedy.shape == (12,) and greedy[:3].tolist() == context


def test_batches_samples_and_output_record(lm):
  model, params = lm
  gen = generate.Generator(model, params)
  out = gen.generate(
    [[11, 12], [13, 14, 15, 16]],
    max_new_tokens=5,
    sample=True,
    num_samples=3,
    sample_rng=jax.random.PRNGKey(1),
    return_output=True,
  )
  assert out.sequences.shape == (2, 3, 9)
  assert out.prompt_lengths.tolist() == [2, 4]
  assert (np.diff(out.scores, axis=1) <= 1e-6).all()  # best first
  for b in range(2):
    for s in range(3):
      cont = out.continuations[b][s]
      n = int(out.prompt_lengths[b])
      assert out.sequences[b, s, n : n + len(cont)].tolist() == cont
  arr = gen.generate([[11, 12], [13, 14, 15, 16]], max_new_tokens=5, num_samples=2, sample=True)
  assert arr.shape == (2, 2, 9)
  with pytest.raises(ValueError, match="exactly one of max_length"):
    gen.generate([1, 2], max_length=8, max_new_tokens=3)
  with pytest.raises(ValueError, match="give at most one of top_k=5 and top_p=0.5"):
    gen.generate([1, 2], max_length=8, sample=True, top_k=5, top_p=0.5)


def test_text_in_text_out(lm):
  model, params = lm
  gen = generate.Generator(model, params)
  one = gen.generate_text("def main(", max_new_tokens=6)
  assert isinstance(one, str)
  ids = model.vocabulary.encode("def main(")
  want = gen.generate(list(ids), max_new_tokens=6, return_output=True).continuations[0][0]
  assert one == model.vocabulary.decode(want)
  many = gen.generate_text(["import os", "class A:"], max_new_tokens=4, sample=True, top_p=0.9, num_samples=2)
  assert len(many) == 2 and all(len(m) == 2 and all(isinstance(t, str) for t in m) for m in many)
  assert generate.generate_text(model, params, ["x = 1"], max_new_tokens=3)[0] == gen.generate_text(
    "x = 1", max_new_tokens=3
  )
  with pytest.raises(ValueError, match="prompt 0 is empty"):
    gen.generate_text("", max_new_tokens=3)


def test_scan_layers_model_generates(lm):
  """The cache_offset for scanned layers is picked up from the module."""
  module = GPTDecoder(GPTConfig(vocab_size=64, emb_dim=32, num_heads=4, num_layers=2, scan_layers=True))
  model = models.DecoderOnlyLM(module)
  params = model.get_initial_variables(
    jax.random.PRNGKey(0), {"decoder_input_tokens": (1, 8), "decoder_target_tokens": (1, 8)}
  )["params"]
  out = generate.Generator(model, params).generate([[3, 4], [5]], max_length=10, num_beams=2, eos_id=-1)
  assert out.shape == (2, 10)
  sampled = generate.Generator(model, params).generate([[3, 4], [5]], max_length=10, sample=True, num_samples=2)
  assert sampled.shape == (2, 2, 10)
