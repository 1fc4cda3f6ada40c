"""Resume exactness, restore onto another mesh, params export, shape-mismatch and NaN handling (the real tiny
`DecoderOnlyLM`; the resume test reads real tar shards through `gpt_plugin.data.pipeline.get_dataset`)."""

import json
import os

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from gpt_plugin.training import checkpointing, train_lib
from train_helpers import (
  PoisonLM,
  host_params,
  losses,
  poison_dataset_fn,
  register_shard_task,
  run_train,
  tiny_lm,
  write_token_shards,
)


def _tree_equal(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), a, b)


@pytest.fixture(scope="module")
def shard_task(tmp_path_factory):
  return register_shard_task("train_ckpt_test_shards", write_token_shards(tmp_path_factory.mktemp("shards"), 4))


def test_resume_is_exact(tmp_path, shard_task):
  kw = dict(steps=20, checkpoint_period=10, task=shard_task, dataset_fn=train_lib.default_dataset_fn)
  full = run_train(tmp_path / "full", **kw)
  first = run_train(tmp_path / "split", stop_at_step=10, **kw)
  assert first["step"] == 10
  second = run_train(tmp_path / "split", **kw)
  assert [h["step"] for h in second["history"]] == list(range(11, 21))
  np.testing.assert_array_equal(np.concatenate([losses(first), losses(second)]), losses(full))
  _tree_equal(host_params(second), host_params(full))
  s_full, s_second = jax.device_get(full["state"]), jax.device_get(second["state"])
  _tree_equal(s_second.opt_state, s_full.opt_state)
  assert int(s_second.step) == 20
  np.testing.assert_array_equal(s_second.rng, s_full.rng)
  # data position is part of the checkpoint
  with open(tmp_path / "split" / "checkpoint_10" / "data" / "process_0.json") as f:
    data_state = json.load(f)
  assert data_state["task"] == shard_task and data_state["batches"] == 10, data_state


def test_restore_on_different_mesh_and_export(tmp_path):
  rules = [("embed", "fsdp"), ("mlp", "fsdp"), ("vocab", "fsdp")]
  eight = run_train(tmp_path, steps=4, mesh_shape=(1, 8, 1), num_devices=8, param_rules=rules)
  # Same dir, 1 device: restores (resharding 8 -> 1) and continues to step 6.
  one = run_train(tmp_path, steps=6, mesh_shape=(1, 1, 1), num_devices=1)
  assert [h["step"] for h in one["history"]] == [5, 6]
  ref = run_train(tmp_path / "ref", steps=6)
  np.testing.assert_allclose(losses(one), losses(ref)[4:], rtol=1e-5)
  out = checkpointing.export_params(str(tmp_path), str(tmp_path / "export"))
  restored = ocp.StandardCheckpointer().restore(os.path.join(out, "params"))
  _tree_equal(flax.core.unfreeze(jax.tree.map(np.asarray, restored["params"])), flax.core.unfreeze(host_params(one)))
  assert os.path.getsize(os.path.join(out, "params.msgpack")) > 0
  assert eight["step"] == 4


def test_different_model_shape_is_refused(tmp_path):
  run_train(tmp_path, steps=2)
  before = sorted(os.listdir(tmp_path))
  mtimes = {p: os.path.getmtime(tmp_path / p) for p in before}
  with pytest.raises(
    checkpointing.ShapeMismatchError,
    match=r"wrong shape: token_embedder/embedding: \(256, 64\), "
    r"model expects \(384, 64\)$",
  ):
    run_train(tmp_path, steps=4, model=tiny_lm(vocab_size=384))
  assert sorted(os.listdir(tmp_path)) == before
  assert {p: os.path.getmtime(tmp_path / p) for p in before} == mtimes


def test_nan_steps_are_skipped_then_run_stops(tmp_path):
  # Batches from index 6 on produce a NaN loss: steps 7.. are not applied; after 3 in a row the run stops.
  with pytest.raises(train_lib.NonFiniteLossError, match="3 consecutive steps"):
    run_train(
      tmp_path,
      steps=20,
      checkpoint_period=5,
      model=PoisonLM(),
      dataset_fn=poison_dataset_fn(6),
      max_consecutive_bad_steps=3,
    )
  mgr = checkpointing.Checkpointer(str(tmp_path), read_only=True)
  assert mgr.latest_step() == 5
  # The checkpoint is intact and finite; resuming with clean data works.
  res = run_train(tmp_path, steps=7)
  assert [h["step"] for h in res["history"]] == [6, 7]
  assert all(np.isfinite(losses(res)))


def test_single_nan_step_is_not_applied(tmp_path):
  from train_helpers import PoisonIterator

  class OneBad(PoisonIterator):
    def __next__(self):
      b = super().__next__()
      b["poison"][:] = int(self.pos == 3)  # the 3rd batch only
      return b

  def ds(name, fl, split, bs, **kw):
    kw.pop("feature_converter_cls", None)
    return OneBad(
      bs, fl["targets"], 256, kw["seed"], split, kw["process_index"], kw["process_count"], kw["state"], kw["num_epochs"]
    )

  res = run_train(tmp_path, steps=5, model=PoisonLM(), dataset_fn=ds)
  finite = [h["finite"] for h in res["history"]]
  assert finite == [True, True, False, True, True]
  assert all(np.isfinite(jax.tree.leaves(host_params(res))[0]))


def test_warm_start_from_exported_params(tmp_path):
  import jax.numpy as jnp
  from gpt_plugin.convert import load_params
  from train_helpers import SyntheticIterator

  src = run_train(tmp_path / "src", steps=3)
  out = checkpointing.export_params(str(tmp_path / "src"), str(tmp_path / "export"))
  # A new run from the exported params: step 1's loss (computed before its update) is the exported model's loss
  # on the same first batch; optimiser state and step start fresh.
  warm = run_train(tmp_path / "warm", steps=2, init_params_from=out)
  model = tiny_lm()
  params, _ = load_params(out)
  batch = {k: jnp.asarray(v) for k, v in next(SyntheticIterator(8, 16)).items()}
  expected, _ = model.loss_fn(params, batch, None)
  np.testing.assert_allclose(warm["history"][0]["loss"], float(expected), rtol=1e-5)
  assert warm["history"][0]["loss"] < src["history"][0]["loss"] - 0.05  # trained params, not a random init
  assert warm["step"] == 2 and [h["step"] for h in warm["history"]] == [1, 2]

  # Wrong model: the error names the mismatching params; nothing is trained.
  with pytest.raises(
    train_lib.InitParamsMismatchError,
    match=r"wrong shape: token_embedder/embedding: \(256, 64\), "
    r"model expects \(384, 64\)",
  ):
    run_train(tmp_path / "bad", steps=1, model=tiny_lm(vocab_size=384), init_params_from=out)
  assert not checkpointing.Checkpointer(str(tmp_path / "bad"), read_only=True).latest_step()
