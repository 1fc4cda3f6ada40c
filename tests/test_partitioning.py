"""Mesh construction, logical axis rules, gin flag parsing and its error messages."""

import os

import gin
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from gpt_plugin import partitioning
from gpt_plugin import gin_utils
from gpt_plugin.training import optimizer

GIN_DIR = gin_utils.GIN_DIR


def _rules(name):
  gin_utils.parse_gin([f"partitioning/{name}.gin"], finalize=False)
  try:
    return gin.get_configurable(partitioning.logical_axis_rules)()
  finally:
    gin.clear_config()


def test_mesh_shapes():
  m = partitioning.create_mesh((-1, 1, 1))
  assert m.axis_names == ("data", "fsdp", "tensor") and m.shape["data"] == jax.device_count()
  m = partitioning.create_mesh((2, 1, 4))
  assert dict(m.shape) == {"data": 2, "fsdp": 1, "tensor": 4}
  with pytest.raises(ValueError, match="needs 12 devices"):
    partitioning.create_mesh((2, 3, 2), devices=jax.devices()[:8])
  assert partitioning.create_mesh((1, 1, 1)).devices.size == 1  # e.g. meshes/1gpu.gin on a bigger host


@pytest.mark.parametrize(
  "name,expected",
  [
    ("data_parallel", {("vocab", "embed"): P(None, None), ("embed", "mlp"): P(None, None)}),
    ("fsdp", {("vocab", "embed"): P(None, "fsdp"), ("embed", "mlp"): P("fsdp", None), ("mlp",): P("fsdp")}),
    (
      "tensor_parallel",
      {
        ("vocab", "embed"): P("tensor", None),
        ("embed", "mlp"): P(None, "tensor"),
        ("embed", "stack", "joined_kv"): P(None, None, "tensor"),
        ("joined_kv", "embed"): P("tensor", None),
      },
    ),
    ("fsdp_tensor_parallel", {("vocab", "embed"): P("tensor", "fsdp"), ("embed", "mlp"): P("fsdp", "tensor")}),
  ],
)
def test_gin_partitioning_rules(name, expected):
  rules = _rules(name)
  import flax.linen as nn

  for logical, spec in expected.items():
    assert nn.logical_to_mesh_axes(logical, rules) == spec, (name, logical)
  # Activations: batch always over (data, fsdp); embed never reuses fsdp within the same spec.
  assert nn.logical_to_mesh_axes(("batch", "length", "embed"), rules) == P(("data", "fsdp"), None, None)


def test_all_gin_files_parse():
  for kind in ("meshes", "partitioning"):
    for f in os.listdir(os.path.join(GIN_DIR, kind)):
      gin_utils.parse_gin(["runs/pretrain.gin", f"{kind}/{f}"], finalize=False)
      gin.clear_config()


def test_rewrite_gin_args():
  assert gin_utils.rewrite_gin_args(["prog", "--gin.MODEL_DIR='/tmp/x'", "--gin.TRAIN_STEPS", "5", "--gin_file=a"]) == [
    "prog",
    "--gin_bindings=MODEL_DIR = '/tmp/x'",
    "--gin_bindings=TRAIN_STEPS = 5",
    "--gin_file=a",
  ]


def test_unknown_macro_is_named():
  with pytest.raises(ValueError, match="TRAIN_STEPZ"):
    gin_utils.parse_gin(["runs/pretrain.gin"], ["TRAIN_STEPZ = 5"], finalize=False)
  gin.clear_config()


def test_unknown_parameter_is_named():
  with pytest.raises(Exception, match="bogus_param"):
    gin_utils.parse_gin(["runs/pretrain.gin"], ["train_lib.train.bogus_param = 5"], finalize=False)
  gin.clear_config()


def test_unknown_preset_is_named():
  with pytest.raises(FileNotFoundError, match="models/nosuch.gin.*Model presets"):
    gin_utils.parse_gin(["models/nosuch.gin", "runs/pretrain.gin"], finalize=False)
  gin.clear_config()


def test_missing_required_macro_is_named():
  from gpt_plugin.training import train_lib

  gin_utils.parse_gin(
    ["runs/pretrain.gin"],
    ["MODEL = None", "TRAIN_STEPS = 3", "MIXTURE_OR_TASK_NAME = 'x'", "TASK_FEATURE_LENGTHS = {'targets': 8}"],
    finalize=False,
    allow_new_macros=("MODEL",),
  )
  try:
    with pytest.raises(Exception, match="MODEL_DIR"):
      gin.get_configurable(train_lib.train)()
  finally:
    gin.clear_config()


def test_weight_decay_mask_and_schedule():
  params = {
    "token_embedder": {"embedding": np.zeros((10, 4))},
    "position_embedder": {"embedding": np.zeros((8, 4))},
    "layers_0": {"mlp": {"wi": {"kernel": np.zeros((4, 8)), "bias": np.zeros(8)}}},
    "final_norm": {"scale": np.zeros(4)},
  }
  mask = optimizer.default_weight_decay_mask(params)
  assert mask["token_embedder"]["embedding"] and mask["layers_0"]["mlp"]["wi"]["kernel"]
  assert not mask["position_embedder"]["embedding"] and not mask["layers_0"]["mlp"]["wi"]["bias"]
  assert not mask["final_norm"]["scale"]
  s = optimizer.warmup_cosine_schedule(1e-3, 10, 100, 1e-4)
  np.testing.assert_allclose([s(0), s(10), s(100), s(200)], [0, 1e-3, 1e-4, 1e-4], rtol=1e-5, atol=1e-9)


def test_run_presets_parse():
  for f in sorted(os.listdir(os.path.join(GIN_DIR, "runs"))):
    if f.startswith(("eval", "infer")):
      continue  # other runners' files
    gin_utils.parse_gin([f"runs/{f}"], finalize=False)
    gin.clear_config()
