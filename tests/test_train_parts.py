"""The trainer's parts on their own (no model, no compile): step logger, LR-schedule check, TensorBoard dedup,
checkpoint layout, banner."""

import os

import numpy as np
import pytest

from gpt_plugin import errors
from gpt_plugin import checkpoint_layout
from gpt_plugin.training import console, optimizer, schedule_check, step_logger, summary_steps
from train_helpers import tiny_lm


class RecordingWriter:
  def __init__(self):
    self.points = []

  def write_scalars(self, step, scalars):
    self.points.append((step, dict(scalars)))

  def flush(self):
    pass

  def close(self):
    pass


def _metrics(loss, tokens, finite=True, bad=0):
  return {
    "loss": np.float32(loss),
    "grad_norm": np.float32(1.0),
    "learning_rate": np.float32(1e-3),
    "num_tokens": np.float32(tokens),
    "finite": np.bool_(finite),
    "loss_scale": np.float32(1.0),
    "bad_steps": np.int32(bad),
    "model_metrics": {},
  }


def _logger(writer, **kw):
  args = dict(
    writer=writer,
    console=console.Console(enabled=False),
    total_steps=6,
    end_step=6,
    log_period=2,
    max_consecutive_bad_steps=3,
    dynamic_loss_scale=False,
    flops_per_token=100.0,
    peak_flops=1e6,
  )
  args.update(kw)
  return step_logger.StepLogger(**args)


def test_step_logger_writes_token_weighted_interval_loss_and_mfu():
  w = RecordingWriter()
  log = _logger(w)
  log.record(1, _metrics(2.0, 10), 16)
  log.record(2, _metrics(4.0, 30), 16)
  log.record(3, _metrics(np.nan, 5, finite=False, bad=1), 16)
  assert [s for s, _ in w.points] == [2]
  scal = w.points[0][1]
  assert scal["loss"] == pytest.approx((2.0 * 10 + 4.0 * 30) / 40)
  assert scal["tokens_seen"] == 40 and scal["skipped_steps"] == 0
  assert scal["mfu"] == pytest.approx(100.0 * scal["tokens_per_sec"] / 1e6)
  assert (log.applied, log.skipped) == (2, 1)
  assert [h["step"] for h in log.history] == [1, 2, 3]


def test_step_logger_writes_the_data_pipelines_skipped_samples():
  w = RecordingWriter()
  log = _logger(w, data_stats=lambda: {"skipped_samples": 7})
  log.record(1, _metrics(2.0, 10), 16)
  log.record(2, _metrics(2.0, 10), 16)
  assert w.points[0][1]["data/skipped_samples"] == 7


def test_step_logger_stops_after_too_many_bad_steps_and_names_no_step_applied():
  log = _logger(RecordingWriter(), stop_message=lambda: "checkpoint intact.", vocab_size=256)
  log.record(1, _metrics(np.nan, 5, finite=False, bad=1), 16)
  log.record(2, _metrics(np.nan, 5, finite=False, bad=2), 16)
  with pytest.raises(step_logger.train_errors.NoStepAppliedError) as e:
    log.record(3, _metrics(np.nan, 5, finite=False, bad=3), 16)
  assert isinstance(e.value, errors.UserError) and "(the model has 256 embedding rows)" in str(e.value)
  log = _logger(RecordingWriter())
  log.record(1, _metrics(1.0, 5), 16)
  for s in (2, 3):
    log.record(s, _metrics(np.nan, 5, finite=False, bad=s - 1), 16)
  with pytest.raises(step_logger.train_errors.NonFiniteLossError, match="for 3 consecutive steps"):
    log.record(4, _metrics(np.nan, 5, finite=False, bad=3), 16)


def test_flops_per_token_is_the_model_configs():
  model = tiny_lm()
  assert step_logger.flops_per_token(model, 16) == model.module.config.flops_per_token(16) > 0
  assert step_logger.flops_per_token(object(), 16) == 0.0


def test_schedule_check_warns_only_when_the_schedule_changes():
  old = optimizer.warmup_cosine_schedule(1e-2, 2, 10)
  record = schedule_check.schedule_record(old, 10, 10)
  assert sorted(int(s) for s in record["learning_rate_at"]) == [11]
  assert schedule_check.schedule_change_warning(record, old, 10, 20) is None  # constant after DECAY_STEPS
  msg = schedule_check.schedule_change_warning(record, optimizer.warmup_cosine_schedule(1e-2, 2, 20), 10, 20)
  assert "TRAIN_STEPS=10, now 20" in msg and "--gin.DECAY_STEPS=10" in msg
  assert schedule_check.schedule_change_warning(None, old, 10, 20) is None  # older checkpoints: no record


def test_skip_written_steps_drops_only_logged_steps():
  w = RecordingWriter()
  dedup = summary_steps.SkipWrittenSteps(w, last_step=4)
  for s in (3, 4, 5):
    dedup.write_scalars(s, {"loss": 1.0})
  assert [s for s, _ in w.points] == [5]
  assert summary_steps.last_written_step("/nonexistent") is None


def test_checkpoint_layout_names_and_move_aside(tmp_path):
  assert checkpoint_layout.parse_step("checkpoint_12") == 12
  for name in ("checkpoint_12.corrupt", "checkpoint_3.orbax-checkpoint-tmp-1", "export_4"):
    assert checkpoint_layout.parse_step(name) is None
  for step in (5, 10):
    os.makedirs(checkpoint_layout.state_dir(str(tmp_path), step))
  (tmp_path / "checkpoint_10" / "state" / "x").write_text("kept")
  assert checkpoint_layout.checkpoint_steps(str(tmp_path)) == [5, 10]
  assert checkpoint_layout.move_aside(str(tmp_path), 10).endswith("checkpoint_10.corrupt")
  os.makedirs(checkpoint_layout.state_dir(str(tmp_path), 10))
  assert checkpoint_layout.move_aside(str(tmp_path), 10).endswith("checkpoint_10.corrupt.1")
  assert (tmp_path / "checkpoint_10.corrupt" / "state" / "x").read_text() == "kept"
  assert checkpoint_layout.checkpoint_steps(str(tmp_path)) == [5]


def test_banner_names_model_tokens_mesh_model_dir_and_tensorboard():
  text = console.banner(
    model_line=console.model_summary(tiny_lm(), 83200),
    gin_files=["runs/quickstart.gin"],
    batch_size=8,
    seq_len=16,
    num_microbatches=2,
    mesh_shape={"data": 1, "fsdp": 2, "tensor": 1},
    model_dir="/tmp/run",
    resume_step=None,
    total_steps=12,
  )
  lines = text.splitlines()
  assert lines[0] == "model      GPT 2 layers, d 64, 4 heads, vocab 256, alibi; 83,200 params"
  assert lines[2] == "batch      8 x 16 = 128 tokens per step in 2 microbatches"
  assert lines[3].startswith("mesh       {'data': 1, 'fsdp': 2, 'tensor': 1} on ")
  assert lines[4] == "MODEL_DIR  /tmp/run (from scratch, 12 steps)"
  assert lines[5] == "watch      tensorboard --logdir /tmp/run"


def _evaluator(num_batches, eval_steps, reads, **kw):
  """An Evaluator over `num_batches` full batches of 4 x 8 tokens (batch i holds the value i) and a last partial
  one; its eval step reports each batch's value as its loss sum, so the scalars say which batches were scored."""
  from gpt_plugin.training import evaluator

  def make_iterator():
    reads.append(1)
    for i in range(num_batches):
      yield {"targets": np.full((4, 8), i, np.int32)}
    yield {"targets": np.zeros((2, 8), np.int32)}

  def jit_eval(params, batch):
    return {"loss_sum": float(batch["targets"][0, 0]), "num_tokens": 1.0, "model_metrics": {}}

  return evaluator.Evaluator(
    make_iterator=make_iterator,
    eval_steps=eval_steps,
    global_batch_size=4,
    jit_eval=jit_eval,
    to_global=lambda b: b,
    context=lambda: __import__("contextlib").nullcontext(),
    writer=RecordingWriter(),
    console=console.Console(enabled=False),
    **kw,
  )


def test_evaluator_spreads_its_batches_over_the_whole_split_and_reads_them_once():
  reads = []
  ev = _evaluator(20, 4, reads)
  first = ev.run(None, 10)
  assert ev.chosen == [0, 6, 13, 19] and ev.split_batches == 20
  assert first["loss"] == pytest.approx((0 + 6 + 13 + 19) / 4) and first["num_tokens"] == 4
  assert ev.run(None, 20) == first and len(reads) == 2  # one count, one read; the kept batches are reused


def test_evaluator_rereads_when_the_batches_do_not_fit_in_memory_and_scans_a_bounded_prefix():
  reads = []
  ev = _evaluator(20, 3, reads, max_kept_bytes=0, max_scan_tokens=10 * 32)
  first = ev.run(None, 1)
  assert ev.split_batches == 10 and ev.chosen == [0, 4, 9]  # 10 batches of 32 token positions scanned
  uncapped = _evaluator(20, 3, [])
  uncapped.run(None, 1)
  assert ev.scan_capped and not uncapped.scan_capped
  assert first["loss"] == pytest.approx((0 + 4 + 9) / 3)
  assert ev.run(None, 2) == first and len(reads) == 3


def test_evaluator_scores_every_batch_of_a_short_split_and_says_when_it_scores_nothing(caplog):
  ev = _evaluator(2, 10, [])
  assert ev.run(None, 1)["num_tokens"] == 2 and ev.chosen == [0, 1]
  with caplog.at_level("WARNING"):
    assert _evaluator(0, 10, []).run(None, 1) is None
  said = [r.getMessage() for r in caplog.records if "scores nothing" in r.getMessage()]
  assert said == [
    "in-training eval scores nothing: the validation split has no full batch of 4 rows (the global batch size); "
    "lower BATCH_SIZE or give the split more text"
  ]
