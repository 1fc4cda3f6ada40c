"""`python -m gpt_plugin.train` end to end (stand-in model via tests/train_test.gin), kill -9. User errors (exit 2,
one ERROR line, MODEL_DIR untouched) are in test_runner_errors.py."""

import os
import re
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _env():
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([HERE, ROOT, env.get("PYTHONPATH", "")])
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  return env


def _cmd(model_dir, *extra):
  return [
    sys.executable,
    "-m",
    "gpt_plugin.train",
    "--gin_file=train_test.gin",
    f'--gin.MODEL_DIR="{model_dir}"',
    *extra,
  ]


def test_cli_trains_logs_and_resumes(tmp_path):
  md = tmp_path / "run"
  r = subprocess.run(
    _cmd(md, "--gin_file=partitioning/fsdp.gin"), cwd=HERE, env=_env(), capture_output=True, text=True, timeout=300
  )
  assert r.returncode == 0, r.stderr[-3000:]
  lines = [l for l in r.stdout.splitlines() if l.startswith("step ")]
  assert re.match(
    r"step 3/12 loss [\d.]+ ppl [\d.]+ lr [\d.e+-]+ gnorm [\d.]+ tok/s \S+ mfu [\d.]+% step [\d.]+s", lines[0]
  ), lines[0]
  assert any(l.startswith("eval step 6") for l in r.stdout.splitlines())
  assert sorted(p for p in os.listdir(md) if p.startswith("checkpoint_")) == [
    "checkpoint_10",
    "checkpoint_12",
    "checkpoint_5",
  ]
  assert os.listdir(md / "train") and os.listdir(md / "training_eval")  # TensorBoard event files
  assert (md / "config.gin").exists()
  # Same command with more steps resumes at 12.
  r = subprocess.run(
    _cmd(md, "--gin.TRAIN_STEPS=14"), cwd=HERE, env=_env(), capture_output=True, text=True, timeout=300
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert "restored" in r.stdout and "checkpoint_12" in r.stdout


def test_kill_9_then_same_command_resumes(tmp_path):
  md = tmp_path / "run"
  cmd = _cmd(md, "--gin.TRAIN_STEPS=400", "--gin.CHECKPOINT_PERIOD=2", "--gin.EVAL_PERIOD=0", "--gin.LOG_PERIOD=1")
  p = subprocess.Popen(cmd, cwd=HERE, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  try:
    deadline = time.time() + 240
    while time.time() < deadline:  # kill as soon as a few checkpoints exist (likely mid-save)
      if md.exists() and len([d for d in os.listdir(md) if d.startswith("checkpoint_")]) >= 2:
        break
      time.sleep(0.05)
    time.sleep(0.3)
    p.send_signal(signal.SIGKILL)
  finally:
    p.wait()
  complete = sorted(int(d.split("_")[1]) for d in os.listdir(md) if re.fullmatch(r"checkpoint_\d+", d))
  assert complete, os.listdir(md)
  r = subprocess.run(
    cmd[:-3]
    + [
      "--gin.TRAIN_STEPS=%d" % (complete[-1] + 4),
      "--gin.CHECKPOINT_PERIOD=2",
      "--gin.EVAL_PERIOD=0",
      "--gin.LOG_PERIOD=1",
    ],
    cwd=HERE,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  m = re.search(r"restored \S+/checkpoint_(\d+)", r.stdout)
  assert m and int(m.group(1)) >= complete[-1] - 2, r.stdout  # at most one save interval lost
  assert not [d for d in os.listdir(md) if "tmp" in d]  # the interrupted save was cleaned up
