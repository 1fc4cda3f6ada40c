"""One TensorBoard point per step across resumes.

A run that stops after logging step 13 but checkpointing step 10 re-runs steps 11..13 when resumed; those points
already sit in the old event files (exact resume makes them the same numbers), so `SkipWrittenSteps` drops the
re-run ones instead of writing a second point per step. Old event files are never rewritten."""

from __future__ import annotations

import glob
import os
from typing import Any, Optional


def last_written_step(logdir: str) -> Optional[int]:
  """The largest step with a scalar in the TensorBoard event files under `logdir` (None when there is none)."""
  files = sorted(glob.glob(os.path.join(os.fspath(logdir), "events.out.tfevents.*")))
  if not files:
    return None
  from tensorboard.backend.event_processing import event_file_loader  # pylint: disable=g-import-not-at-top

  last = None
  for path in files:
    try:
      for event in event_file_loader.EventFileLoader(path).Load():
        if event.HasField("summary") and event.summary.value:
          last = event.step if last is None else max(last, event.step)
    except Exception:  # pylint: disable=broad-except  (a truncated last record: keep what was read)
      continue
  return last


class SkipWrittenSteps:
  """A metric writer that passes on only the steps after `last_step` (the last step already in the logs)."""

  def __init__(self, writer: Any, last_step: Optional[int]):
    self.writer = writer
    self.last_step = last_step

  def write_scalars(self, step: int, scalars: Any) -> None:
    if self.last_step is None or int(step) > self.last_step:
      self.writer.write_scalars(step, scalars)

  def flush(self) -> None:
    self.writer.flush()

  def close(self) -> None:
    self.writer.close()


def dedup_writer(writer: Any, logdir: Optional[str], resumed: bool) -> Any:
  """`writer` wrapped so that a resumed run does not write steps the event files in `logdir` already hold."""
  if not resumed or logdir is None:
    return writer
  return SkipWrittenSteps(writer, last_written_step(logdir))
