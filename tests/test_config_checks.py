"""The configuration checks (gpt_plugin/config_checks.py) and gin error messages (gpt_plugin/gin_utils.py), in process.

The device count is passed in, so the mesh cases need no simulated devices; tests/test_runner_errors.py runs the
same checks through the real runner on 8 simulated devices.
"""

import os

import gin
import pytest

from gpt_plugin import config_checks, gin_utils
from gpt_plugin.errors import ConfigError

BASE = ["MODEL = None", "MODEL_DIR = '/tmp/unused'", "TRAIN_STEPS = 100", "MIXTURE_OR_TASK_NAME = 'x'"]
BASE += ["TASK_FEATURE_LENGTHS = {'targets': 8}", "BATCH_SIZE = 8", "WARMUP_STEPS = 10"]


def _check(*bindings, files=("runs/pretrain.gin",), devices=(8, "cpu")):
  gin_utils.parse_gin(list(files), BASE + list(bindings), finalize=False, allow_new_macros=("MODEL",))
  try:
    return config_checks.check_train(devices=devices)
  finally:
    gin.clear_config()


def test_valid_config_resolves_the_mesh():
  plan = _check()
  assert plan.shape == (1, 8, 1) and plan.data_parallel == 8
  assert _check("MESH_SHAPE = (2, -1, 2)").shape == (2, 2, 2)


@pytest.mark.parametrize(
  "binding, expected",
  [
    ("BATCH_SIZE = 6", r"BATCH_SIZE = 6 is not divisible by the data-parallel size 8 .* use a multiple of 8"),
    ("NUM_MICROBATCHES = 2", r"BATCH_SIZE = 8 .* NUM_MICROBATCHES = 2: use a multiple of 16, e.g. 16"),
    ("TRAIN_STEPS = 'abc'", r"TRAIN_STEPS = 'abc' \(a string\) is not allowed: it must be a positive integer"),
    ("TRAIN_STEPS = 0", r"TRAIN_STEPS = 0 is not allowed: it must be a positive integer"),
    ("BATCH_SIZE = 8.0", r"BATCH_SIZE = 8.0 \(a float\) .* positive integer"),
    ("CHECKPOINT_PERIOD = 0", r"CHECKPOINT_PERIOD = 0 .* positive integer"),
    ("EVAL_PERIOD = -1", r"EVAL_PERIOD = -1 .* an integer >= 0"),
    ("TASK_FEATURE_LENGTHS = {'targets': 0}", r"TASK_FEATURE_LENGTHS = \{'targets': 0\}: the length of 'targets' is 0"),
    ("WARMUP_STEPS = 200", r"WARMUP_STEPS = 200 is more than TRAIN_STEPS = 100"),
    ("MESH_SHAPE = (1, 16, 1)", r"MESH_SHAPE = \(1, 16, 1\) fixes 16 device\(s\), but there are 8 cpu device"),
    ("MESH_SHAPE = (1, -1, 3)", r"MESH_SHAPE = \(1, -1, 3\): the fixed axes need a multiple of 3 devices"),
    ("MESH_SHAPE = (1, 'a', 1)", r"MESH_SHAPE = \(1, 'a', 1\) is not allowed"),
    ("MODEL_DIR = %gin.REQUIRED", r"MODEL_DIR is required"),
    ("train_lib.train.total_steps = -3", r"train_lib.train.total_steps = -3 is not allowed"),
  ],
)
def test_each_check_names_the_macro_value_and_what_is_allowed(binding, expected):
  with pytest.raises(ConfigError, match=expected):
    _check(binding)


def test_mesh_file_that_fixes_a_device_count_is_refused_elsewhere():
  with pytest.raises(ConfigError, match=r"MESH_DEVICES = 8 .* this host has 1 cpu device.*--gin.MESH_DEVICES=None"):
    _check(files=("runs/pretrain.gin", "meshes/8gpu.gin"), devices=(1, "cpu"))
  assert _check(files=("runs/pretrain.gin", "meshes/8gpu.gin")).shape == (1, 8, 1)
  assert _check("MESH_DEVICES = None", files=("runs/pretrain.gin", "meshes/8gpu.gin"), devices=(1, "cpu")).shape == (
    1,
    1,
    1,
  )


def test_eval_batch_is_checked_only_when_evaluating():
  _check("EVAL_PERIOD = 0", "train_eval/train_lib.DatasetConfig.batch_size = 3")
  with pytest.raises(ConfigError, match=r"train_eval/train_lib.DatasetConfig.batch_size = 3 is not divisible"):
    _check("train_eval/train_lib.DatasetConfig.batch_size = 3")


@pytest.mark.parametrize(
  "binding, expected",
  [
    ("TRAIN_STEP = 5", r"unknown gin macro 'TRAIN_STEP' .*\(did you mean TRAIN_STEPS"),
    ("train_lib.train.total_step = 5", r"has no parameter 'total_step' \(did you mean total_steps"),
    ("train_lib.trian.total_steps = 5", r"no configurable named 'train_lib.trian' \(did you mean .*train_lib.train"),
    ("MODEL_DIR = /tmp/x", r"""strings need quotes: write --gin.MODEL_DIR=\\"/tmp/x\\" """.strip()),
    ("DECAY_STEPS = %TRAIN_STEP", r"macro %TRAIN_STEP is used but never defined \(did you mean TRAIN_STEPS"),
    ("TRAIN_STEPS = (", r"gin binding 'TRAIN_STEPS = \('"),
    ("TRAIN_STEPS = 5", r"required gin macros not set: MIXTURE_OR_TASK_NAME, MODEL_DIR, TASK_FEATURE_LENGTHS;"),
  ],
)
def test_gin_mistakes_are_config_errors_with_suggestions(binding, expected):
  try:
    with pytest.raises(ConfigError, match=expected) as e:
      gin_utils.parse_gin(["runs/pretrain.gin"], ["MODEL = None", binding], allow_new_macros=("MODEL",))
    assert "Macros:" not in str(e.value)  # gin's whole-config dump is dropped
  finally:
    gin.clear_config()


def test_gin_dir_prefers_package_data_then_the_checkout(tmp_path):
  pkg = tmp_path / "site" / "gpt_plugin"
  (pkg / "gin" / "runs").mkdir(parents=True)  # a wheel: gin/ inside the package
  assert gin_utils.find_gin_dir(str(pkg)) == str(pkg / "gin")
  checkout = tmp_path / "repo"
  (checkout / "gpt_plugin").mkdir(parents=True)
  (checkout / "gin").mkdir()  # a checkout / editable install: gin/ next to the package
  assert gin_utils.find_gin_dir(str(checkout / "gpt_plugin")) == str(checkout / "gin")
  assert os.path.isfile(os.path.join(gin_utils.GIN_DIR, "runs", "quickstart.gin"))


def test_help_macros_are_read_as_text():
  macros = {name: (value, comment) for name, value, comment in gin_utils.file_macros("runs/pretrain.gin")}
  assert macros["TRAIN_STEPS"][0] == "(required)" and macros["BATCH_SIZE"][0] == "128"
  assert macros["LEARNING_RATE"] == ("6e-4", "peak")
