"""Errors that stop a training run; each is a `gpt_plugin.errors.UserError` (one ERROR line, exit 2)."""

from __future__ import annotations

from gpt_plugin import errors


class NonFiniteLossError(errors.UserError, RuntimeError):
  """Raised after `max_consecutive_bad_steps` non-finite steps in a row."""


class NoStepAppliedError(NonFiniteLossError):
  """A run in which every step had a non-finite loss or gradient, so no update was applied."""


def no_step_applied_message(num_steps: int, where: str, vocab_size=None) -> str:
  vocab = f" (the model has {vocab_size} embedding rows)" if vocab_size else ""
  return (
    f"no training step was applied: all {num_steps} step(s) of this run had a non-finite loss or gradient and were "
    f"skipped. Likely causes: token ids >= the model's embedding rows{vocab} (check VOCAB_SIZE against the task's "
    f"vocabulary), a learning rate too high (LEARNING_RATE), or bad data (NaN/Inf or out-of-range inputs). "
    f"{where}"
  )
