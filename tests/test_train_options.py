"""Training options: staged sequence-length warmup and dynamic loss scaling (fp16)."""

import jax
import numpy as np
import pytest

from gpt_plugin.training import train_lib
from train_helpers import SyntheticIterator, host_params, losses, run_train, tiny_lm


def test_reshape_for_context_splits_rows_and_keeps_every_token():
  batch = {"decoder_input_tokens": np.arange(32).reshape(2, 16), "decoder_positions": np.tile(np.arange(16), (2, 1))}
  out = train_lib.reshape_for_context(batch, 8)
  assert out["decoder_input_tokens"].shape == (4, 8)
  np.testing.assert_array_equal(out["decoder_input_tokens"].reshape(-1), np.arange(32))
  np.testing.assert_array_equal(out["decoder_positions"], np.tile(np.arange(8), (4, 1)))
  with pytest.raises(ValueError, match="warmup_train_context 5 must divide the sequence length 16"):
    train_lib.reshape_for_context(batch, 5)


def test_staged_warmup_trains_the_first_steps_at_the_short_context(tmp_path):
  # lr 0: params stay at their init, so each step's loss is the init model's loss on that step's batch.
  res = run_train(tmp_path, steps=4, length=16, lr=0.0, staged_warmup_steps=2, warmup_train_context=8)
  model, params = tiny_lm(), host_params(res)
  data = SyntheticIterator(8, 16)
  expected, full_context, tokens = [], [], []
  for step in range(4):
    batch = next(data)
    full_context.append(float(model.loss_fn(params, batch, None)[0]))
    tokens.append(float(batch["decoder_loss_weights"].sum()))
    if step < 2:
      batch = train_lib.reshape_for_context(batch, 8)
    expected.append(float(model.loss_fn(params, batch, None)[0]))
  np.testing.assert_allclose(losses(res), expected, rtol=1e-5)
  assert expected[:2] != pytest.approx(full_context[:2])  # the first two steps really ran at context 8
  assert [h["num_tokens"] for h in res["history"]] == tokens  # tokens per step unchanged


def test_dynamic_loss_scale_grows_and_leaves_updates_unchanged(tmp_path):
  plain = run_train(tmp_path / "plain", steps=5)
  scaled = run_train(
    tmp_path / "scaled", steps=5, dynamic_loss_scale=True, initial_loss_scale=2.0**10, loss_scale_growth_interval=2
  )
  assert [h["loss_scale"] for h in scaled["history"]] == [1024.0, 1024.0, 2048.0, 2048.0, 4096.0]
  np.testing.assert_allclose(losses(scaled), losses(plain), rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), host_params(scaled), host_params(plain))


def test_fp16_compute_with_dynamic_loss_scale_trains(tmp_path):
  """The default initial scale (2^15) overflows fp16 gradients: those steps are skipped and the scale halves until
  the gradients are finite; then the updates apply and the loss falls."""
  res = run_train(tmp_path, steps=14, model=tiny_lm(dtype="float16"), dynamic_loss_scale=True)
  hist = res["history"]
  scales, finite = [h["loss_scale"] for h in hist], [h["finite"] for h in hist]
  assert not finite[0] and sum(finite) >= 8
  for now, nxt, ok in zip(scales, scales[1:], finite):
    assert nxt == (now / 2 if not ok else now)  # growth_interval (2000) is never reached here
  loss = losses(res)
  first_applied = finite.index(True)
  assert np.all(np.isfinite(loss)) and loss[-1] < loss[first_applied] - 0.05
