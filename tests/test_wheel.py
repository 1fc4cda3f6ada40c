"""The package works wherever it is installed: build the wheel, install it (not editable) into a fresh virtual
environment and, from an empty folder, train 5 quickstart steps, evaluate and sample with the console scripts.

The venv uses `--system-site-packages` and `pip install --no-deps --no-index`, so nothing is downloaded: the
dependencies come from the surrounding environment, the project's code and gin files only from the wheel
(checked: `gpt_plugin.__file__` and the gin directory lie inside the venv, and PYTHONPATH is unset).
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ("gpt_plugin", "gin", "tasks", "setup.py", "pyproject.toml", "README.md")

pytestmark = pytest.mark.slow


def _env():
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="", TF_CPP_MIN_LOG_LEVEL="3", PIP_DISABLE_PIP_VERSION_CHECK="1")
  return env


def _run(cmd, cwd, timeout=300):
  res = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
  assert res.returncode == 0, f"{cmd}\nstdout:\n{res.stdout[-3000:]}\nstderr:\n{res.stderr[-3000:]}"
  return res


def _build_wheel(tmp_path):
  """Builds from a copy of the sources, so that build/ and *.egg-info never touch the checkout."""
  src = tmp_path / "src"
  src.mkdir()
  ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
  for name in SOURCES:
    path = os.path.join(REPO, name)
    if os.path.isdir(path):
      shutil.copytree(path, src / name, ignore=ignore)
    else:
      shutil.copy(path, src / name)
  dist = tmp_path / "dist"
  _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), "."], src)
  (wheel,) = dist.glob("gpt_plugin-*.whl")
  return wheel


def test_wheel_installs_and_runs_the_quickstart_from_an_empty_folder(tmp_path):
  wheel = _build_wheel(tmp_path)
  venv = tmp_path / "venv"
  _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], tmp_path)
  bin_dir = venv / "bin"
  py = str(bin_dir / "python")
  _run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--force-reinstall", str(wheel)], tmp_path)

  work = tmp_path / "empty"
  work.mkdir()
  where = _run(
    [
      py,
      "-c",
      "import gpt_plugin, tasks; from gpt_plugin import gin_utils; "
      "print(gpt_plugin.__file__); print(tasks.__file__); print(gin_utils.GIN_DIR)",
    ],
    work,
  ).stdout.split()
  for path in where:
    assert path.startswith(str(venv)), f"{path} is not inside the venv {venv} (the checkout leaked in)"
  assert os.path.isfile(os.path.join(where[2], "runs", "quickstart.gin"))

  model_dir = tmp_path / "gpt_plugin_quickstart"
  _run(
    [
      str(bin_dir / "gpt-plugin-train"),
      "--gin_file=runs/quickstart.gin",
      f'--gin.MODEL_DIR="{model_dir}"',
      "--gin.TRAIN_STEPS=5",
      "--gin.WARMUP_STEPS=1",
      "--gin.BATCH_SIZE=4",
      "--gin.EVAL_PERIOD=5",
      "--gin.EVAL_STEPS=1",
      "--gin.CHECKPOINT_PERIOD=5",
      "--gin.LOG_PERIOD=1",
      "--gin.train_lib.train.sample_length=4",
    ],
    work,
  )
  assert (model_dir / "checkpoint_5").is_dir()

  _run(
    [
      str(bin_dir / "gpt-plugin-eval"),
      "--gin_file=runs/eval_quickstart.gin",
      f'--gin.CHECKPOINT_PATH="{model_dir}"',
      "--gin.CONTEXT_MULTIPLIERS=[1]",
      "--gin.EVAL_MODES=['nonoverlapping']",
      "--gin.MAX_EVAL_TOKENS=1024",
    ],
    work,
  )
  results = json.loads((model_dir / "eval" / "eval_results.json").read_text())
  assert "128" in json.dumps(results)

  out = _run(
    [
      str(bin_dir / "gpt-plugin-infer"),
      "--gin_file=runs/infer_quickstart.gin",
      f'--gin.CHECKPOINT_PATH="{model_dir}"',
      "--prompt=The for statement",
      "--max_new_tokens=4",
    ],
    work,
  ).stdout
  assert "The for statement" in out

  for script in ("gpt-plugin-convert", "gpt-plugin-build-corpus"):
    assert "usage" in _run([str(bin_dir / script), "--help"], work).stdout.lower()
  assert os.listdir(work) == [], "the runners wrote into the working folder"
