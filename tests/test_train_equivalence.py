"""Sharded training == single-device training (8 simulated CPU devices), and gradient accumulation, with the
real `DecoderOnlyLM` / `GPTDecoder` (tiny: vocab 256, d 64, 4 heads, 2 layers, parallel blocks, ALiBi)."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from train_helpers import host_params, losses, param_spec, run_train

# The rules of gin/partitioning/fsdp.gin and tensor_parallel.gin.
FSDP = [("embed", "fsdp"), ("vocab", "fsdp"), ("mlp", "fsdp"), ("joined_kv", "fsdp")]
TP = [("vocab", "tensor"), ("mlp", "tensor"), ("joined_kv", "tensor"), ("heads", "tensor")]

# What must really be sharded (param path -> PartitionSpec) for each layout.
EXPECTED_SPECS = {
  "fsdp": {
    "token_embedder/embedding": P(
      None, "fsdp"
    ),  # (vocab, embed): embed's rule comes first "layers_0/mlp/wi/kernel": P("fsdp", None),
    "layers_1/attention/qkv/kernel": P("fsdp", None, None),
  },
  "tensor_parallel_2x4": {
    "token_embedder/embedding": P("tensor", None),
    "layers_0/attention/qkv/kernel": P(None, None, "tensor"),
    "layers_0/attention/qkv/bias": P(None, "tensor"),
    "layers_1/attention/out/kernel": P("tensor", None),
    "layers_0/mlp/wi/kernel": P(None, "tensor"),
    "layers_0/mlp/wo/kernel": P("tensor", None),
  },
}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
  return run_train(tmp_path_factory.mktemp("single"), steps=5)


def _close_params(a, b, rtol=1e-4, atol=1e-4):
  # Adam divides by sqrt(v): an element whose gradient is ~0 can move by a visible fraction of its tiny update
  # when the reduction order changes, so the absolute tolerance is 1 % of one Adam step (lr 1e-2); a wrong
  # gradient moves params by ~lr per step.
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


@pytest.mark.parametrize(
  "name,mesh_shape,rules",
  [
    ("data_parallel", (8, 1, 1), []),
    ("fsdp", (1, 8, 1), FSDP),
    ("tensor_parallel_2x4", (2, 1, 4), TP),
  ],
)
def test_sharded_matches_single_device(single, tmp_path, name, mesh_shape, rules):
  assert jax.device_count() >= 8
  res = run_train(tmp_path, steps=5, mesh_shape=mesh_shape, num_devices=8, param_rules=rules)
  np.testing.assert_allclose(losses(res), losses(single), rtol=1e-5, atol=1e-6, err_msg=name)
  assert losses(res)[-1] < losses(res)[0]
  _close_params(host_params(res), host_params(single))
  for path, spec in EXPECTED_SPECS.get(name, {}).items():
    assert param_spec(res, path) == spec, (name, path, param_spec(res, path))
  if not rules:
    assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(res["state"].params))


def test_gradient_accumulation_4x2_equals_1x8(tmp_path):
  # Unequal token counts per microbatch (some rows padded) -> a mean of means would differ; loss-sum
  # accumulation with one division at the end must not.
  one = run_train(tmp_path / "one", steps=3, batch_size=8, num_microbatches=1)
  four = run_train(tmp_path / "four", steps=3, batch_size=8, num_microbatches=4)
  np.testing.assert_allclose(losses(four), losses(one), rtol=1e-6, atol=1e-6)
  _close_params(host_params(four), host_params(one))


def test_gradient_accumulation_sharded(tmp_path):
  # 2-D: data 2 x fsdp 2 x tensor 2, 2 microbatches of 8 == one batch of 16 on one device.
  one = run_train(tmp_path / "one", steps=2, batch_size=16, num_microbatches=1)
  acc = run_train(
    tmp_path / "acc",
    steps=2,
    batch_size=16,
    num_microbatches=2,
    mesh_shape=(2, 2, 2),
    num_devices=8,
    param_rules=[
      ("embed", "fsdp"),
      ("mlp", "tensor"),
      ("joined_kv", "tensor"),
      ("heads", "tensor"),
      ("vocab", "tensor"),
    ],
  )
  np.testing.assert_allclose(losses(acc), losses(one), rtol=1e-5, atol=1e-6)
  _close_params(host_params(acc), host_params(one))
  assert param_spec(acc, "layers_0/mlp/wi/kernel") == P("fsdp", "tensor")
