"""Periodic actions of the training loop: checkpoint every `checkpoint_period` steps, evaluate every
`eval_period` steps, and always evaluate and checkpoint the last step of the run."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from absl import logging

from gpt_plugin.training import evaluator as evaluator_lib
from gpt_plugin.training import step_logger as step_logger_lib


class PeriodicActions:
  """`after_step(step, state, flush)` after each step (`flush()` first hands the logger the pending metrics);
  `finish(step, state, flush)` at the end. `save(step, state, force)` writes a checkpoint."""

  def __init__(
    self,
    *,
    checkpoint_period: int,
    eval_period: int,
    end_step: int,
    save: Callable[[int, Any, bool], None],
    evaluator: Optional[evaluator_lib.Evaluator],
    logger: step_logger_lib.StepLogger,
  ):
    self.checkpoint_period, self.eval_period, self.end_step = checkpoint_period, eval_period, end_step
    self.save, self.evaluator, self.logger = save, evaluator, logger
    self.evals: List[Dict[str, Any]] = []
    self.saved_step: Optional[int] = None

  @property
  def eval_enabled(self) -> bool:
    return bool(self.eval_period) and self.evaluator is not None

  def after_step(self, step: int, state: Any, flush: Callable[[], None]) -> None:
    if self.checkpoint_period and step % self.checkpoint_period == 0 and step < self.end_step:
      flush()
      self._checkpoint(step, state)
      self.logger.restart_clock_if_idle()
    if self.eval_enabled and step % self.eval_period == 0:
      flush()
      self._evaluate(step, state)

  def finish(self, step: int, state: Any, start_step: int, latest_saved: Optional[int]) -> None:
    """Final eval (unless this step was just evaluated) and final checkpoint (unless it exists)."""
    self.logger.check_some_step_applied()
    if self.eval_enabled and step > start_step and not (self.evals and self.evals[-1]["step"] == step):
      self._evaluate(step, state)
    if step > start_step or latest_saved != step:
      self.save(step, state, True)
      self.saved_step = step

  def _checkpoint(self, step: int, state: Any) -> None:
    if self.logger.applied == 0:
      logging.warning("step %d: no update applied yet in this run (all non-finite); not checkpointing", step)
      return
    self.save(step, state, False)
    self.saved_step = step

  def _evaluate(self, step: int, state: Any) -> None:
    self.evals.append({"step": step, **(self.evaluator.run(state.params, step) or {})})
    self.logger.restart_clock_if_idle()
