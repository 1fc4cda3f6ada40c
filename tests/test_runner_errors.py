"""User errors through the real runners: exit status 2, one `ERROR:` line, no traceback, MODEL_DIR untouched.

Each subprocess pays the Python + TensorFlow start-up, so there are few of them; the checks themselves are
covered case by case in process by tests/test_config_checks.py.
"""

import os
import subprocess
import sys

import pytest

from gpt_plugin.cli import RUNNER_MODULES

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _env(devices=1, **extra):
  env = dict(os.environ, **extra)
  env["PYTHONPATH"] = os.pathsep.join([HERE, ROOT, env.get("PYTHONPATH", "")])
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env.pop("GPT_PLUGIN_VERBOSE", None)
  return env


def _train(model_dir, *flags, devices=1, verbose=False):
  cmd = [sys.executable, "-m", "gpt_plugin.train", "--gin_file=train_test.gin", *flags]
  if model_dir is not None:
    cmd.append(f'--gin.MODEL_DIR="{model_dir}"')
  if verbose:
    cmd.append("--verbose")
  return subprocess.run(cmd, cwd=HERE, env=_env(devices), capture_output=True, text=True, timeout=300)


def _snapshot(d):
  if not os.path.exists(d):
    return None
  return {
    os.path.relpath(os.path.join(r, f), d): open(os.path.join(r, f), "rb").read() for r, _, fs in os.walk(d) for f in fs
  }


def _assert_one_error_line(r, *fragments):
  assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
  errors = [line for line in r.stderr.splitlines() if line.startswith("ERROR:")]
  assert len(errors) == 1, r.stderr
  assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
  for fragment in fragments:
    assert fragment in errors[0], errors[0]
  # Quiet start-up: no absl pre-init warning, no TensorFlow CUDA probe / oneDNN lines.
  assert "absl::InitializeLog" not in r.stderr and "cudart_stub" not in r.stderr and "Logging before" not in r.stderr


def test_indivisible_batch_on_8_devices_is_refused_before_model_dir(tmp_path):
  md = tmp_path / "run"
  r = _train(md, "--gin.BATCH_SIZE=6", devices=8)
  _assert_one_error_line(r, "BATCH_SIZE = 6", "data-parallel size 8", "use a multiple of 8")
  assert not md.exists()


def test_wrong_macro_type_names_the_macro_and_keeps_an_existing_model_dir(tmp_path):
  md = tmp_path / "run"
  md.mkdir()
  (md / "config.gin").write_text("TRAIN_STEPS = 12\n")
  before = _snapshot(md)
  r = _train(md, "--gin.TRAIN_STEPS='abc'")
  _assert_one_error_line(r, "TRAIN_STEPS = 'abc' (a string)", "positive integer")
  assert _snapshot(md) == before


def test_mesh_file_for_more_devices_than_the_host_is_refused(tmp_path):
  md = tmp_path / "run"
  r = _train(md, "--gin_file=meshes/8gpu.gin", devices=2)
  _assert_one_error_line(r, "MESH_DEVICES = 8", "this host has 2 cpu device(s)", "--gin.MESH_DEVICES=None")
  assert not md.exists()


def test_unquoted_string_shows_the_corrected_flag(tmp_path):
  md = tmp_path / "run"
  r = _train(None, f"--gin.MODEL_DIR={md}")
  _assert_one_error_line(r, "strings need quotes", f'--gin.MODEL_DIR=\\"{md}\\"')
  assert not md.exists()


def test_did_you_mean(tmp_path):
  md = tmp_path / "run"
  r = _train(md, "--gin.TRAIN_STEP=3")
  _assert_one_error_line(r, "unknown gin macro 'TRAIN_STEP'", "did you mean TRAIN_STEPS")
  assert not md.exists()


def test_verbose_adds_the_trace_and_program_bugs_keep_theirs(capsys, monkeypatch):
  from gpt_plugin import cli
  from gpt_plugin.errors import ConfigError

  def bad_config(argv):
    raise ConfigError(f"BATCH_SIZE = 6 is wrong ({argv})")

  monkeypatch.delenv(cli.VERBOSE_ENV, raising=False)
  assert cli.run_argparse(bad_config, ["--x"]) == 2
  err = capsys.readouterr().err
  assert err == "ERROR: BATCH_SIZE = 6 is wrong (['--x'])\n"
  assert cli.run_argparse(bad_config, ["--x", "--verbose"]) == 2
  err = capsys.readouterr().err
  assert "Traceback" in err and err.count("ERROR:") == 1 and err.endswith("ERROR: BATCH_SIZE = 6 is wrong (['--x'])\n")

  def gin_wrapped(argv):  # gin adds the configurable it was calling; the one line keeps only the message
    raise FileNotFoundError("checkpoint path '/x' does not exist\n  In call to configurable 'evaluate' (<function>)")

  assert cli.run_argparse(gin_wrapped, []) == 2
  assert capsys.readouterr().err == "ERROR: checkpoint path '/x' does not exist\n"

  def bug(argv):
    return {}["missing"]

  with pytest.raises(KeyError):
    cli.run_argparse(bug, [])
  assert not cli.is_user_error(ValueError("raised outside gpt_plugin"))


_HELP = """
import runpy, sys
sys.argv = [sys.argv[1], "--help"]
try:
  runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
  code = 0
except SystemExit as e:
  code = e.code
heavy = [m for m in ("jax", "flax", "tensorflow", "seqio", "torch") if m in sys.modules]
print("HEAVY", heavy, file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.parametrize("runner", RUNNER_MODULES)
def test_help_exits_0_lists_the_gin_flags_and_imports_nothing_heavy(runner):
  r = subprocess.run(
    [sys.executable, "-c", _HELP, runner], cwd=HERE, env=_env(), capture_output=True, text=True, timeout=120
  )
  assert r.returncode == 0, r.stderr
  if runner != "gpt_plugin.data.build_corpus":  # the corpus builder takes no gin
    assert "--gin_file" in r.stdout and "runs/" in r.stdout and "models/" in r.stdout, r.stdout
  if runner == "gpt_plugin.train":
    assert "TRAIN_STEPS                (required)" in r.stdout and "BATCH_SIZE                 128" in r.stdout
  assert r.stderr.strip() == "HEAVY []", r.stderr  # quiet, and fast: no jax / TF / seqio before they are needed


def test_user_errors_of_argparse_runners_exit_2(tmp_path):
  from gpt_plugin.convert import __main__ as convert

  missing = tmp_path / "nope.pth"
  r = subprocess.run(
    [sys.executable, "-m", "gpt_plugin.convert", "from-torch", f"--input={missing}", f"--output={tmp_path / 'o'}"],
    cwd=HERE,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=120,
  )
  _assert_one_error_line(r, str(missing))
  assert not (tmp_path / "o").exists()
  assert convert.main(["average", f"--model_dir={tmp_path}", "--last=2", f"--output={tmp_path / 'o'}"]) == 2
