"""Crafted checkpoint faults and run-state edge cases (issue 12 section 1, issue 13's no-step-applied run).

Each case copies one small trained MODEL_DIR (tiny real model, checkpoints at steps 5 and 10), breaks it, runs
the trainer and asserts the result or the exit code, the one message and that no file already in MODEL_DIR
changed (content hashes of the whole tree before and after; a checkpoint moved aside keeps its files)."""

import collections
import glob
import hashlib
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from gpt_plugin import errors
from gpt_plugin import checkpoint_layout
from gpt_plugin.training import checkpointing, optimizer, train_lib
from train_helpers import PoisonLM, losses, poison_dataset_fn, run_train, tiny_lm

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _hashes(root):
  out = {}
  for dirpath, _, files in os.walk(root):
    for name in files:
      path = os.path.join(dirpath, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _assert_kept(before, root, moved=None):
  """Every file of `before` is unchanged in `root`; files of the folder `moved` are under `moved`.corrupt."""
  after = _hashes(root)
  for rel, digest in before.items():
    if moved and rel.startswith(moved + os.sep):
      rel = moved + checkpoint_layout.CORRUPT_SUFFIX + rel[len(moved) :]
    assert after.get(rel) == digest, rel


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("trained") / "run"
  res = run_train(root, steps=10, checkpoint_period=5)
  assert checkpoint_layout.checkpoint_steps(str(root)) == [5, 10]
  return root, losses(res)


def _copy(trained, tmp_path):
  md = tmp_path / "run"
  shutil.copytree(trained[0], md)
  return md


def _truncate_largest_array_file(md):
  files = glob.glob(str(md / "checkpoint_10" / "state" / "ocdbt.process_0" / "d" / "*"))
  path = max(files, key=os.path.getsize)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _delete_metadata(md):
  os.remove(md / "checkpoint_10" / "state" / "_METADATA")


def _garble_data_position(md):
  (md / "checkpoint_10" / "data" / checkpoint_layout.data_file_name(0)).write_text('{"step": 1')


@pytest.mark.parametrize("fault", [_truncate_largest_array_file, _delete_metadata, _garble_data_position])
def test_broken_latest_checkpoint_falls_back_to_the_previous_one(trained, tmp_path, caplog, fault):
  md = _copy(trained, tmp_path)
  fault(md)
  before = _hashes(md)
  with caplog.at_level(logging.WARNING):
    res = run_train(md, steps=10, checkpoint_period=5)
  # Resumed from step 5, exactly: steps 6..10 give the losses of the uninterrupted run.
  assert [h["step"] for h in res["history"]] == [6, 7, 8, 9, 10]
  np.testing.assert_array_equal(losses(res), trained[1][5:])
  warnings = [r.getMessage() for r in caplog.records if "newest checkpoint that restores" in r.getMessage()]
  assert len(warnings) == 1, warnings
  assert warnings[0].startswith(f"restoring checkpoint_10 in {md} failed, so the newest checkpoint that restores, ")
  assert "checkpoint_5, is used instead" in warnings[0] and "moved aside to checkpoint_10.corrupt" in warnings[0]
  _assert_kept(before, md, moved="checkpoint_10")
  assert checkpoint_layout.checkpoint_steps(str(md)) == [5, 10]  # step 10 written again


def test_fallback_names_the_folder_it_really_moved_the_checkpoint_to(trained, tmp_path, caplog):
  """An earlier fallback left checkpoint_10.corrupt: the new broken checkpoint_10 goes to .corrupt.1, and the
  warning says so."""
  md = _copy(trained, tmp_path)
  os.makedirs(md / "checkpoint_10.corrupt" / "earlier")
  _garble_data_position(md)
  with caplog.at_level(logging.WARNING):
    run_train(md, steps=10, checkpoint_period=5)
  warnings = [r.getMessage() for r in caplog.records if "newest checkpoint that restores" in r.getMessage()]
  assert len(warnings) == 1 and warnings[0].endswith("moved aside to checkpoint_10.corrupt.1)"), warnings
  assert os.path.isdir(md / "checkpoint_10.corrupt" / "earlier") and os.path.isdir(md / "checkpoint_10.corrupt.1")


def test_shape_check_without_meta_uses_the_array_metadata(trained, tmp_path):
  md = _copy(trained, tmp_path)
  for step in (5, 10):
    os.remove(checkpoint_layout.meta_path(str(md), step))
  before = _hashes(md)
  with pytest.raises(checkpointing.ShapeMismatchError) as e:
    run_train(md, steps=12, model=tiny_lm(vocab_size=384))
  assert isinstance(e.value, errors.UserError)
  assert f"shapes read from {md}/checkpoint_10/state" in str(e.value)
  assert str(e.value).endswith("wrong shape: token_embedder/embedding: (256, 64), model expects (384, 64)")
  assert _hashes(md) == before


def test_rerun_of_a_finished_run_trains_and_writes_nothing(trained, tmp_path, capsys):
  md = _copy(trained, tmp_path)
  before = _hashes(md)
  res = run_train(md, steps=10, checkpoint_period=5, console=True)
  assert res["step"] == 10 and res["history"] == []
  assert capsys.readouterr().out == (f"MODEL_DIR {md} already holds step 10 of 10; raise TRAIN_STEPS to continue\n")
  assert _hashes(md) == before


def test_no_checkpoint_restores(trained, tmp_path):
  md = _copy(trained, tmp_path)
  for step in (5, 10):
    os.remove(md / f"checkpoint_{step}" / "state" / "_METADATA")
  before = _hashes(md)
  with pytest.raises(checkpointing.NoRestorableCheckpointError, match="no checkpoint in .* restores") as e:
    run_train(md, steps=12)
  assert (
    isinstance(e.value, errors.UserError) and "checkpoint_10: " in str(e.value) and "checkpoint_5: " in str(e.value)
  )
  assert _hashes(md) == before


def test_changed_schedule_on_resume_warns_and_names_decay_steps(trained, tmp_path, caplog):
  md = _copy(trained, tmp_path)
  # Trained with decay over 40 steps (train_helpers); now decaying over 20 changes the LR at steps 11..20.
  stretched = optimizer.warmup_cosine_schedule(1e-2, 2, 20)
  with caplog.at_level(logging.WARNING):
    run_train(md, steps=12, learning_rate_fn=stretched)
  found = [r.getMessage() for r in caplog.records if "learning-rate schedule differs" in r.getMessage()]
  assert len(found) == 1, found
  assert (
    "checkpoint_10 was trained with (TRAIN_STEPS=10, now 12): learning rate at step 11: 0.00881 -> 0.0055" in found[0]
  )
  assert "--gin.DECAY_STEPS=10" in found[0]
  caplog.clear()
  with caplog.at_level(logging.WARNING):  # the schedule checkpoint_12 was trained with: no warning
    run_train(md, steps=14, learning_rate_fn=stretched)
  assert not [r for r in caplog.records if "learning-rate schedule differs" in r.getMessage()]


def test_final_step_is_always_evaluated_and_checkpointed(tmp_path):
  res = run_train(tmp_path, steps=7, eval_period=3, checkpoint_period=5)
  assert [e["step"] for e in res["evals"]] == [3, 6, 7]
  assert checkpoint_layout.checkpoint_steps(str(tmp_path)) == [5, 7]


def _scalar_steps(logdir, tag="loss"):
  from tensorboard.backend.event_processing import event_file_loader

  counts = collections.Counter()
  for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
    for event in event_file_loader.EventFileLoader(path).Load():
      if any(v.tag == tag for v in event.summary.value):
        counts[event.step] += 1
  return counts


def test_resume_writes_one_tensorboard_point_per_step(tmp_path):
  kw = dict(checkpoint_period=3, eval_period=2, log_period=1, write_summaries=True)
  run_train(tmp_path, steps=6, **kw)
  shutil.rmtree(tmp_path / "checkpoint_6")  # as if killed after logging step 6, before its checkpoint
  run_train(tmp_path, steps=8, **kw)  # re-runs steps 4..6
  assert _scalar_steps(str(tmp_path / "train")) == {s: 1 for s in range(1, 9)}
  assert _scalar_steps(str(tmp_path / "training_eval")) == {2: 1, 4: 1, 6: 1, 8: 1}


def test_export_reads_the_params_only(trained, tmp_path, monkeypatch):
  """Orbax partial restore: while the state is restored no optimizer-state array is opened."""
  import orbax.checkpoint as ocp
  import tensorstore as ts

  opened, in_restore = [], []
  ts_open, restore = ts.open, ocp.PyTreeCheckpointer.restore

  def spy_open(spec, *a, **k):
    if in_restore:
      opened.append(str(spec if isinstance(spec, dict) else spec.to_json()))
    return ts_open(spec, *a, **k)

  def spy_restore(self, *a, **k):
    in_restore.append(1)
    try:
      return restore(self, *a, **k)
    finally:
      in_restore.pop()

  monkeypatch.setattr(ts, "open", spy_open)
  monkeypatch.setattr(ocp.PyTreeCheckpointer, "restore", spy_restore)
  out = checkpointing.export_params(str(trained[0]), str(tmp_path / "export"))
  assert any("'params." in s for s in opened) and not any("opt_state" in s for s in opened), opened[:3]
  assert os.path.isdir(os.path.join(out, "params")) and os.path.getsize(os.path.join(out, "params.msgpack")) > 0


def test_no_step_applied_raises(tmp_path):
  with pytest.raises(train_lib.NoStepAppliedError) as e:
    run_train(tmp_path, steps=3, model=PoisonLM(), dataset_fn=poison_dataset_fn(0))
  assert isinstance(e.value, errors.UserError)
  msg = str(e.value)
  assert msg.startswith("no training step was applied: all 3 step(s) of this run had a non-finite loss")
  assert "token ids >= the model's embedding rows (the model has 256 embedding rows)" in msg
  assert "LEARNING_RATE" in msg and "bad data" in msg
  assert checkpoint_layout.checkpoint_steps(str(tmp_path)) == []  # untrained params are not checkpointed


def _cli(model_dir, *extra, gin_file="train_test.gin"):
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([HERE, ROOT, env.get("PYTHONPATH", "")])
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  cmd = [sys.executable, "-m", "gpt_plugin.train", f"--gin_file={gin_file}", f'--gin.MODEL_DIR="{model_dir}"']
  return subprocess.run(cmd + list(extra), cwd=HERE, env=env, capture_output=True, text=True, timeout=600)


def test_cli_refusal_and_no_step_applied_exit_2_with_one_message(trained, tmp_path):
  md = _copy(trained, tmp_path)
  os.remove(checkpoint_layout.meta_path(str(md), 10))
  before = _hashes(md)
  r = _cli(md, "--gin.train_helpers.TinyLM.vocab_size=384")
  assert r.returncode == 2, r.stderr[-3000:]
  assert r.stderr.count("ERROR:") == 1 and "wrong shape: token_embedder/embedding" in r.stderr, r.stderr[-3000:]
  for noise in ("Traceback", "Event loop is closed", "cannot schedule new futures"):
    assert noise not in r.stderr + r.stdout, r.stderr[-3000:]
  assert _hashes(md) == before

  nan_gin = tmp_path / "nan.gin"  # every batch gives a NaN loss
  nan_gin.write_text(
    "from __gin__ import dynamic_registration\nimport train_helpers\nfrom gpt_plugin.training import train_lib\n"
    "include 'train_test.gin'\nMODEL = @train_helpers.PoisonLM()\nTRAIN_STEPS = 3\n"
    "train_lib.train.dataset_fn = @train_helpers.poison_dataset_fn()\ntrain_helpers.poison_dataset_fn.poison_from = 0\n"
  )
  r = _cli(tmp_path / "nan", gin_file=str(nan_gin))
  assert r.returncode == 2, r.stderr[-3000:]
  assert r.stderr.count("ERROR:") == 1 and "no training step was applied" in r.stderr, r.stderr[-3000:]
  assert "Traceback" not in r.stderr


def test_cli_fallback_prints_one_warning_and_no_orbax_thread_traces(trained, tmp_path):
  """The failed restore of a truncated array file makes orbax/TensorStore threads print pages of traces; the
  runner shows the one warning instead."""
  md = _copy(trained, tmp_path)
  _truncate_largest_array_file(md)
  r = _cli(md, "--gin.TRAIN_STEPS=10")
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stderr.count("is used instead") == 1, r.stderr[-3000:]
  for noise in ("Traceback", "Event loop is closed"):
    assert noise not in r.stderr + r.stdout, r.stderr[-3000:]
