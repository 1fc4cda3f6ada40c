"""Prefill of the prompt positions only (gpt_plugin/decode_loop.py): bucket lengths, one compiled program per
bucket, and decoded tokens identical to the prefill over the whole cache and to full-forward recomputation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_decoding import NO_EOS, feature_id, greedy_by_recompute, tiny

from gpt_plugin import decode_loop, decoding, generate

# Prompts in two buckets (16 and 32 positions) inside one batch.
PROMPTS = [[5, 7, 9], list(range(3, 23)), [12]]
CONFIGS = [
  dict(position_embedding="alibi", block_type="sequential", use_static_sgu=True, head_qk_trick=True),
  dict(position_embedding="learned", block_type="parallel", use_static_sgu=True, head_qk_trick=True),
  dict(position_embedding="alibi", block_type="parallel", scan_layers=True, use_static_sgu=True, head_qk_trick=True),
]


def test_buckets_are_powers_of_two_capped_at_the_cache_length():
  assert decode_loop.prefill_buckets(160) == (16, 32, 64, 128, 160)
  assert decode_loop.prefill_buckets(2048) == (16, 32, 64, 128, 256, 512, 1024, 2048)
  assert decode_loop.prefill_buckets(10) == (10,)
  assert decode_loop.prefill_bucket(32, 160) == 32
  assert decode_loop.prefill_bucket(33, 160) == 64
  assert decode_loop.prefill_bucket(1, 160) == 16
  assert decode_loop.prefill_bucket(150, 160) == 160
  with pytest.raises(ValueError, match="a prompt of 161 positions does not fit the cache length 160"):
    decode_loop.prefill_bucket(161, 160)


class RecordingDecoder(decode_loop.CachedDecoder):
  """Records the length of every prefill the model runs."""

  def __init__(self, module):
    super().__init__(module)
    self.prefill_lengths = []

  def prefill(self, params, cache, inputs, lengths):
    self.prefill_lengths.append(inputs.shape[1])
    return super().prefill(params, cache, inputs, lengths)


def greedy(decoder, params, prompts, max_length, prefill_length):
  """Greedy decode of `prompts` through `decoder` with a given prefill length (None: bucket chosen in jit)."""
  inputs = np.zeros((len(prompts), max_length), np.int32)
  for b, p in enumerate(prompts):
    inputs[b, 1 : len(p) + 1] = p
  lengths = jnp.asarray([len(p) for p in prompts], jnp.int32)
  run = jax.jit(
    lambda params, inputs: decoder.decode(
      params,
      inputs,
      lengths,
      decoding.temperature_sample,
      prefill_length=prefill_length,
      eos_id=NO_EOS,
      temperature=0.0,
      topk=0,
      rescale_log_probs=False,
    )
  )
  decodes, scores = run(params, jnp.asarray(inputs))
  return np.asarray(decodes[:, -1]), np.asarray(scores[:, -1])


@pytest.mark.parametrize("features", CONFIGS, ids=[feature_id(f) for f in CONFIGS])
def test_prompt_prefill_decodes_what_the_whole_cache_prefill_did(features):
  """Bit-equal tokens and log-probs: bucket 32 of a 40-position cache against the whole cache (the previous
  behaviour); the tokens also equal full-forward recomputation."""
  model, params = tiny(**features)
  decoder = RecordingDecoder(model.module)
  max_length = 40
  bucketed = greedy(decoder, params, PROMPTS, max_length, prefill_length=32)
  whole = greedy(decoder, params, PROMPTS, max_length, prefill_length=max_length)
  assert decoder.prefill_lengths == [32, 40]
  np.testing.assert_array_equal(bucketed[0], whole[0])
  np.testing.assert_array_equal(bucketed[1], whole[1])
  want, _ = greedy_by_recompute(model, params, PROMPTS, max_length)
  np.testing.assert_array_equal(bucketed[0], want)  # output coordinates: prompt + continuation


def test_bucket_picked_inside_jit_for_the_t5x_path():
  """Lengths known only inside jit (T5X's predict_batch_with_aux): every bucket is traced, one runs."""
  model, params = tiny(**CONFIGS[0])
  decoder = RecordingDecoder(model.module)
  static = greedy(decoder, params, PROMPTS, 40, prefill_length=32)
  in_jit = greedy(decoder, params, PROMPTS, 40, prefill_length=None)
  assert decoder.prefill_lengths[0] == 32 and sorted(decoder.prefill_lengths[1:]) == [16, 32, 40]
  np.testing.assert_array_equal(in_jit[0], static[0])
  np.testing.assert_array_equal(in_jit[1], static[1])
  short = greedy(decoder, params, [[5, 7, 9], [12]], 40, prefill_length=None)  # runs the 16 branch
  np.testing.assert_array_equal(short[0], static[0][[0, 2]])


def test_generator_compiles_one_program_per_bucket():
  model, params = tiny(seed=4)
  gen = generate.Generator(model, params)
  recorder = RecordingDecoder(model.module)
  gen._decoder = recorder  # pylint: disable=protected-access
  a = gen.generate([[4, 5, 6]], max_length=64, eos_id=NO_EOS)
  b = gen.generate([list(range(2, 15))], max_length=64, eos_id=NO_EOS)  # 13 tokens: same bucket, no new trace
  assert recorder.prefill_lengths == [16]
  gen.generate([list(range(2, 22))], max_length=64, eos_id=NO_EOS)  # 20 tokens: bucket 32
  assert recorder.prefill_lengths == [16, 32] and len(gen._compiled) == 2  # pylint: disable=protected-access
  want, _ = greedy_by_recompute(model, params, [[4, 5, 6], list(range(2, 15))], 64)
  np.testing.assert_array_equal(np.concatenate([a, b]), want)
