"""The bundled task's score metrics (loss, perplexity, bits per byte) through seqio's Evaluator, the path that
`t5x.eval` takes, here without t5x: our model's `score_batch` as the score function. They equal `gpt_plugin.eval`'s
numbers (an independent implementation: its own windows and its own byte count) on the same tokens."""

import math

import flax
import jax
import numpy as np
import seqio

from gpt_plugin import models
from gpt_plugin.data import sample_task
from gpt_plugin.inference import eval_lib
from gpt_plugin.network import GPTConfig, GPTDecoder

LENGTH = 128
EXAMPLES = 16  # the first two validation rows, 1024 tokens each: 8 windows of 128 per row


def assert_eval_runner_agrees(metrics, model, checkpoint_path, length, tokens, output_dir, params=None):
  """`metrics` (pydocs score metrics: num_tokens, num_bytes, loss, perplexity, bits_per_byte) equal gpt_plugin.eval's
  at context `length`, non-overlapping, on the first `tokens` tokens of the validation split."""
  res = eval_lib.evaluate(
    model=model,
    checkpoint_path=str(checkpoint_path),
    params=params,
    train_length=length,
    output_dir=str(output_dir),
    mixture_or_task_name="pydocs",
    context_lengths=[length],
    modes=["nonoverlapping"],
    max_eval_tokens=tokens,
    spread_over_split=False,  # the first examples, as seqio's Evaluator (and t5x.eval) with num_examples
    console=False,
  )
  (rec,) = res["results"]
  assert rec["tokens"] == metrics["num_tokens"] and res["num_bytes"] == metrics["num_bytes"]
  for key in ("loss", "perplexity", "bits_per_byte"):
    np.testing.assert_allclose(metrics[key], rec[key], rtol=1e-5, err_msg=key)


def test_pydocs_score_metrics_equal_the_eval_runner(tmp_path):
  module = GPTDecoder(GPTConfig(vocab_size=sample_task.PYDOCS_VOCAB_SIZE, emb_dim=32, num_heads=4, num_layers=2))
  model = models.DecoderOnlyLM(module, vocabulary=sample_task.pydocs_vocabulary())
  shapes = {"decoder_input_tokens": (1, LENGTH), "decoder_target_tokens": (1, LENGTH)}
  params = flax.core.unfreeze(model.get_initial_variables(jax.random.PRNGKey(0), shapes))["params"]
  score = jax.jit(lambda batch: model.score_batch(params, batch))
  keys = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")

  def score_fn(dataset):
    out = []
    for indices, batch in dataset.batch(8).as_numpy_iterator():
      out += zip(indices.tolist(), np.asarray(score({k: batch[k] for k in keys})).tolist())
    return out

  evaluator = seqio.Evaluator(
    "pydocs",
    seqio.DecoderFeatureConverter(pack=False),
    eval_split="validation",
    sequence_length={"targets": LENGTH},
    num_examples=EXAMPLES,
    async_compute_metrics=False,
  )
  metrics, _ = evaluator.evaluate(compute_metrics=True, score_fn=score_fn)
  got = metrics.result()["pydocs"]
  assert got["num_tokens"] == EXAMPLES * LENGTH
  assert math.isclose(got["perplexity"], math.exp(got["loss"]), rel_tol=1e-12)

  assert_eval_runner_agrees(got, model, tmp_path, LENGTH, EXAMPLES * LENGTH, tmp_path / "eval", params=params)
  # An untrained model is close to uniform over the vocabulary: loss ~ ln(8192).
  assert abs(got["loss"] - math.log(sample_task.PYDOCS_VOCAB_SIZE)) < 1.0
