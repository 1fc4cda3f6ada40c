"""Sharded training == single-device training (8 simulated CPU devices), and gradient accumulation."""
import jax
import numpy as np
import pytest

from train_helpers import host_params, losses, run_train

FSDP = [("embed", "fsdp"), ("vocab", "fsdp"), ("mlp", "fsdp")]
TP = [("vocab", "tensor"), ("mlp", "tensor"), ("joined_kv", "tensor"), ("heads", "tensor")]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
  return run_train(tmp_path_factory.mktemp("single"), steps=5)


@pytest.mark.parametrize("name,mesh_shape,rules", [
    ("data_parallel", (8, 1, 1), []),
    ("fsdp", (1, 8, 1), FSDP),
    ("tensor_parallel_2x4", (2, 1, 4), TP),
])
def test_sharded_matches_single_device(single, tmp_path, name, mesh_shape, rules):
  assert jax.device_count() >= 8
  res = run_train(tmp_path, steps=5, mesh_shape=mesh_shape, num_devices=8, param_rules=rules)
  np.testing.assert_allclose(losses(res), losses(single), rtol=1e-5, atol=1e-6, err_msg=name)
  assert losses(res)[-1] < losses(res)[0]
  ref = host_params(single)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), host_params(res), ref)
  if rules:  # params really are sharded
    shardings = [x.sharding for x in jax.tree.leaves(res["state"].params)]
    assert any(not s.is_fully_replicated for s in shardings), name


def test_gradient_accumulation_4x2_equals_1x8(tmp_path):
  # Unequal token counts per microbatch (some rows padded) -> a mean of means would differ; loss-sum
  # accumulation with one division at the end must not.
  one = run_train(tmp_path / "one", steps=3, batch_size=8, num_microbatches=1)
  four = run_train(tmp_path / "four", steps=3, batch_size=8, num_microbatches=4)
  np.testing.assert_allclose(losses(four), losses(one), rtol=1e-6, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), host_params(four),
               host_params(one))


def test_gradient_accumulation_sharded(tmp_path):
  one = run_train(tmp_path / "one", steps=2, batch_size=16, num_microbatches=1)
  acc = run_train(tmp_path / "acc", steps=2, batch_size=16, num_microbatches=2, mesh_shape=(2, 2, 2),
                  num_devices=8, param_rules=[("embed", "fsdp"), ("mlp", "tensor")])
  np.testing.assert_allclose(losses(acc), losses(one), rtol=1e-5, atol=1e-6)
