"""Gradient accumulation is exact with every loss normalisation: the train step adds the microbatches' loss sums
and token weights and divides once by `loss_denominator(total weight)`, so 4 microbatches of 2 rows give the
gradient of 1 batch of 8, also with a fixed `loss_normalizing_factor` and unequal tokens per microbatch."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gpt_plugin import partitioning
from gpt_plugin.training import train_step
from train_helpers import VOCAB, tiny_lm

BATCH, SEQ = 8, 8


def capture_grads() -> optax.GradientTransformation:
  """An 'optimiser' whose state after one update is the gradient it was given (params stay unchanged)."""
  return optax.GradientTransformation(
    lambda params: jax.tree.map(jnp.zeros_like, params),
    lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads),
  )


def uneven_batch():
  rng = np.random.RandomState(0)
  tokens = rng.randint(2, VOCAB, size=(BATCH, SEQ + 1)).astype(np.int32)
  weights = np.ones((BATCH, SEQ), np.int32)
  for row, real in enumerate([8, 3, 8, 1, 6, 8, 0, 5]):  # unequal token counts; microbatch rows m, m+4
    weights[row, real:] = 0
  return {
    "decoder_input_tokens": jnp.asarray(tokens[:, :-1]),
    "decoder_target_tokens": jnp.asarray(tokens[:, 1:]),
    "decoder_loss_weights": jnp.asarray(weights),
  }


def step_grads_and_loss(model, num_microbatches):
  tx = capture_grads()
  params = model.get_initial_variables(jax.random.key(0), {"decoder_input_tokens": (1, SEQ)})["params"]
  state = train_step.create_train_state(params, tx, jax.random.key(1))
  step = jax.jit(train_step.make_train_step(model, tx, lambda s: 0.0, num_microbatches=num_microbatches))
  part = partitioning.Partitioner(
    partitioning.create_mesh((1, 1, 1), devices=jax.devices()[:1]), partitioning.logical_axis_rules()
  )
  with part.context():
    new_state, out = step(state, uneven_batch())
  return new_state.opt_state, float(out["loss"]), params


def test_four_microbatches_of_two_equal_one_batch_of_eight_with_a_fixed_normalizing_factor():
  # (Without a factor, tests/test_train_equivalence.py checks 4 x 2 == 1 x 8 through the whole trainer.)
  model = tiny_lm(num_layers=1)
  model.loss_normalizing_factor = 37.0
  grads_1x8, loss_1x8, params = step_grads_and_loss(model, 1)
  grads_4x2, loss_4x2, _ = step_grads_and_loss(model, 4)
  # Both equal the gradient of the model's own loss on the whole batch.
  want = jax.jit(jax.grad(lambda p: model.loss_fn(p, uneven_batch(), None)[0]))(params)
  for got in (grads_1x8, grads_4x2):
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=2e-4, atol=1e-7), got, want)
  np.testing.assert_allclose(loss_4x2, loss_1x8, rtol=1e-5)
  np.testing.assert_allclose(loss_1x8, float(model.loss_fn(params, uneven_batch(), None)[0]), rtol=1e-5)


def test_eval_step_sums_token_losses_with_a_fixed_factor():
  mean_model, fixed_model = tiny_lm(), tiny_lm()
  fixed_model.loss_normalizing_factor = 37.0
  params = mean_model.get_initial_variables(jax.random.key(0), {"decoder_input_tokens": (1, SEQ)})["params"]
  batch = uneven_batch()
  mean_out = train_step.make_eval_step(mean_model)(params, batch)
  fixed_out = train_step.make_eval_step(fixed_model)(params, batch)
  num_tokens = float(np.sum(batch["decoder_loss_weights"]))
  mean_loss = float(mean_model.loss_fn(params, batch, None)[0])
  assert float(fixed_out["num_tokens"]) == float(mean_out["num_tokens"]) == num_tokens
  np.testing.assert_allclose(float(fixed_out["loss_sum"]), mean_loss * num_tokens, rtol=1e-5)
  np.testing.assert_allclose(float(mean_out["loss_sum"]), mean_loss * num_tokens, rtol=1e-5)
