"""The step logger: host-side handling of each finished train step's metrics (one step behind the device).

It keeps the per-step history, counts skipped (non-finite) and applied steps, stops the run after too many
non-finite steps in a row, and every `log_period` steps writes the interval's scalars (loss, rate, MFU, ...) to
TensorBoard and a progress line to the console."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Dict, List, Optional

from absl import logging
import jax

from gpt_plugin.training import console as console_lib
from gpt_plugin.training import metrics as metrics_lib
from gpt_plugin.training import train_errors
from gpt_plugin.training import train_step as train_step_lib


def flops_per_token(model: Any, seq_len: int) -> float:
  """Training FLOPs per token of `model` on rows of `seq_len` tokens: the one source of the MFU numerator
  (`GPTConfig.flops_per_token`); 0.0 for a model without a GPTConfig (MFU is then reported as 0)."""
  config = getattr(getattr(model, "module", None), "config", None)
  if config is None or not hasattr(config, "flops_per_token"):
    return 0.0
  return float(config.flops_per_token(seq_len))


@dataclasses.dataclass
class _Interval:
  """Sums over the steps since the last log line."""

  t0: float
  loss_sum: float = 0.0
  tok: float = 0.0
  proc_tok: float = 0.0
  steps: int = 0

  def reset(self, now: float) -> None:
    self.t0, self.loss_sum, self.tok, self.proc_tok, self.steps = now, 0.0, 0.0, 0.0, 0


def step_record(step_no: int, m: Dict[str, Any]) -> Dict[str, float]:
  """The history entry of one step from its (host) metrics."""
  rec = {
    "step": step_no,
    "loss": float(m["loss"]),
    "grad_norm": float(m["grad_norm"]),
    "learning_rate": float(m["learning_rate"]),
    "num_tokens": float(m["num_tokens"]),
    # the token-summed loss: `loss` is divided by the model's loss denominator (a fixed loss_normalizing_factor
    # when one is set), so only this sum gives the per-token mean the log lines show
    "loss_sum": float(m["loss_sum"]) if "loss_sum" in m else float(m["loss"]) * float(m["num_tokens"]),
    "finite": bool(m["finite"]),
    "loss_scale": float(m["loss_scale"]),
  }
  rec.update({f"model/{k}": v for k, v in train_step_lib.compute_model_metrics(m["model_metrics"]).items()})
  return rec


class StepLogger:
  """`record(step, device_metrics, tokens)` once per step, in order; see the module docstring."""

  def __init__(
    self,
    *,
    writer: Any,
    console: console_lib.Console,
    total_steps: int,
    end_step: int,
    log_period: int,
    max_consecutive_bad_steps: int,
    dynamic_loss_scale: bool,
    flops_per_token: float,
    peak_flops: float,
    data_stats: Optional[Callable[[], Dict[str, Any]]] = None,
    stop_message: Callable[[], str] = lambda: "",
    vocab_size: Optional[int] = None,
  ):
    self.writer, self.console = writer, console
    self.total_steps, self.end_step, self.log_period = total_steps, end_step, log_period
    self.max_bad = max_consecutive_bad_steps
    self.dynamic_loss_scale = dynamic_loss_scale
    self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
    self.data_stats = data_stats
    self.stop_message = stop_message
    self.vocab_size = vocab_size
    self.history: List[Dict[str, float]] = []
    self.tokens_seen = 0.0
    self.skipped = 0  # non-finite steps (not applied)
    self.applied = 0  # steps whose update was applied
    self.skipped_samples = 0
    self.interval = _Interval(t0=time.time())

  def check_some_step_applied(self) -> None:
    """Raises NoStepAppliedError when steps ran but none was applied (all non-finite)."""
    if self.history and self.applied == 0:
      raise train_errors.NoStepAppliedError(
        train_errors.no_step_applied_message(len(self.history), self.stop_message(), self.vocab_size)
      )

  def restart_clock_if_idle(self) -> None:
    """After a checkpoint or an eval: the next interval's rate does not count their time when it is empty."""
    if self.interval.steps == 0:
      self.interval.t0 = time.time()

  def record(self, step_no: int, dev_metrics: Any, proc_tok: float) -> None:
    m = jax.device_get(dev_metrics)
    rec = step_record(step_no, m)
    self.history.append(rec)
    if rec["finite"]:
      self.applied += 1
      self.tokens_seen += rec["num_tokens"]
      self.interval.loss_sum += rec["loss_sum"]
      self.interval.tok += rec["num_tokens"]
    else:
      self._non_finite(step_no, rec, int(m["bad_steps"]))
    self.interval.proc_tok += proc_tok
    self.interval.steps += 1
    self.console.step_done(rec["loss"])
    if step_no % self.log_period == 0 or step_no == self.end_step:
      self._log(step_no, rec)

  def _non_finite(self, step_no: int, rec: Dict[str, float], bad_in_a_row: int) -> None:
    self.skipped += 1
    logging.warning(
      "step %d: non-finite loss/grad (loss=%s gnorm=%s); update skipped (%d in a row)",
      step_no,
      rec["loss"],
      rec["grad_norm"],
      bad_in_a_row,
    )
    if bad_in_a_row < self.max_bad:
      return
    if self.applied == 0:
      raise train_errors.NoStepAppliedError(
        train_errors.no_step_applied_message(self.skipped, self.stop_message(), self.vocab_size)
      )
    raise train_errors.NonFiniteLossError(
      f"loss/gradients were NaN/Inf for {bad_in_a_row} consecutive steps (last at step {step_no}); "
      f"stopping. No update was applied on those steps; {self.stop_message()}"
    )

  def _log(self, step_no: int, rec: Dict[str, float]) -> None:
    now = time.time()
    iv = self.interval
    dt = max(now - iv.t0, 1e-9)
    loss = iv.loss_sum / iv.tok if iv.tok else rec["loss"]
    tps = iv.proc_tok / dt
    if self.data_stats is not None:
      try:
        self.skipped_samples = int(self.data_stats().get("skipped_samples", 0))
      except Exception:  # pylint: disable=broad-except
        pass
    scal = {
      "loss": loss,
      "perplexity": metrics_lib.safe_exp(loss),
      "learning_rate": rec["learning_rate"],
      "grad_norm": rec["grad_norm"],
      "tokens_seen": self.tokens_seen,
      "tokens_per_sec": tps,
      "mfu": (self.flops_per_token * tps / self.peak_flops) if self.peak_flops else 0.0,
      "step_time": dt / iv.steps,
      "skipped_steps": float(self.skipped),
      "data/skipped_samples": float(self.skipped_samples),  # bad-sample policy 'skip', corrupt shards
    }
    if self.dynamic_loss_scale:
      scal["loss_scale"] = rec["loss_scale"]
    for k, v in rec.items():
      if k.startswith("model/") and k != "model/loss":
        scal[k[len("model/") :]] = v
    self.writer.write_scalars(step_no, scal)
    self.console.print(metrics_lib.progress_line(step_no, self.total_steps, scal))
    iv.reset(now)
