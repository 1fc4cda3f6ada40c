"""The quickstart run (real model, bundled pydocs corpus) for a few steps, through gin, in-process."""

import os

import gin
import numpy as np

from gpt_plugin import gin_utils
from gpt_plugin.training import train_lib


def test_quickstart_runs_a_few_steps(tmp_path):
  md = tmp_path / "qs"
  gin_utils.parse_gin(
    ["runs/quickstart.gin"],
    [
      f"MODEL_DIR = '{md}'",
      "TRAIN_STEPS = 4",
      "BATCH_SIZE = 8",
      "EVAL_PERIOD = 4",
      "EVAL_STEPS = 1",
      "LOG_PERIOD = 2",
      "CHECKPOINT_PERIOD = 2",
      "MESH_SHAPE = (1, 1, 1)",
      "train_lib.train.sample_length = 6",
    ],
  )
  try:
    res = train_lib.run_from_gin()
  finally:
    gin.clear_config()
  losses = [h["loss"] for h in res["history"]]
  assert len(losses) == 4 and np.all(np.isfinite(losses))
  assert res["evals"] and np.isfinite(res["evals"][0]["loss"])
  assert os.path.exists(md / "checkpoint_4") and os.path.exists(md / "config.gin")
  # The quickstart prints a sample of the final params for each prompt (prompt + continuation).
  samples = res["samples"]
  prompts = ["The for statement", "A list is"]
  assert samples and len(samples) == 2, samples
  assert all(t.startswith(p) and len(t) > len(p) for t, p in zip(samples, prompts)), samples
