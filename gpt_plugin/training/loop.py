"""The training loop itself: read a batch, run the compiled step, hand the previous step's metrics to the step
logger (one step behind the device, so the host never waits for it), then the periodic actions."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Dict, List, Tuple

from absl import logging
import jax
import numpy as np

from gpt_plugin import partitioning
from gpt_plugin.training import console as console_lib
from gpt_plugin.training import metrics as metrics_lib
from gpt_plugin.training import periodic as periodic_lib
from gpt_plugin.training import step_logger as step_logger_lib


class CompiledStep:
  """The jitted train step, compiled ahead of time once per batch shape (staged warmup adds a second shape) so
  that the compile time can be reported; it runs exactly the program the jitted function would."""

  def __init__(self, jit_step: Any, console: console_lib.Console):
    self.jit_step, self.console = jit_step, console
    self.compiled: Dict[Any, Any] = {}
    self.compile_time_s: float = 0.0

  def __call__(self, state: Any, batch: Dict[str, jax.Array]) -> Tuple[Any, Any]:
    key = tuple(sorted((k, tuple(v.shape)) for k, v in batch.items()))
    fn = self.compiled.get(key)
    if fn is None:
      if not self.compiled:
        self.console.print("compiling the train step...")
      t0 = time.time()
      fn = self.jit_step.lower(state, batch).compile()
      self.compiled[key] = fn
      if len(self.compiled) == 1:
        self.compile_time_s = time.time() - t0
      logging.info("compiled the train step for %s in %.1fs", key, time.time() - t0)
    return fn(state, batch)


class FirstStepReport:
  """After the first step: the compile time, the peak device memory and the time from the start of the run."""

  def __init__(self, compiled_step: CompiledStep, console: console_lib.Console, t_start: float):
    self.compiled_step, self.console, self.t_start = compiled_step, console, t_start
    self.info: Dict[str, Any] = {}

  def __call__(self, dev_metrics: Any) -> None:
    jax.block_until_ready(dev_metrics)
    peak_mem = metrics_lib.peak_memory_bytes()
    seconds = time.time() - self.t_start
    self.info.update(
      compile_time_s=self.compiled_step.compile_time_s, peak_memory_bytes=peak_mem, time_to_first_step_s=seconds
    )
    line = metrics_lib.first_step_line(self.compiled_step.compile_time_s, peak_mem)
    self.console.print(f"{line}; first step finished {seconds:.1f}s after start")


@dataclasses.dataclass
class LoopParts:
  state: Any
  start_step: int
  end_step: int
  train_iter: Any
  step_fn: Callable[[Any, Dict[str, jax.Array]], Tuple[Any, Any]]
  prepare_batch: Callable[[Dict[str, np.ndarray], int], Dict[str, jax.Array]]  # host batch, step -> global batch
  partitioner: partitioning.Partitioner
  logger: step_logger_lib.StepLogger
  periodic: periodic_lib.PeriodicActions
  console: console_lib.Console
  on_first_step: Callable[[Any], None]
  latest_saved: Callable[[], Any]


def train_loop(p: LoopParts) -> Tuple[int, Any]:
  """Runs steps `start_step + 1 .. end_step` (fewer when the data ends); returns (last step, state)."""
  step, state = p.start_step, p.state
  pending: List[tuple] = []  # the last step's (step, device metrics, tokens), not yet logged

  def flush() -> None:
    while pending:
      p.logger.record(*pending.pop())

  p.console.start_progress(p.start_step, p.end_step)
  try:
    with p.partitioner.context():
      while step < p.end_step:
        try:
          batch = next(p.train_iter)
        except StopIteration:
          logging.warning("training data exhausted at step %d", step)
          break
        tokens = float(np.prod(np.shape(batch["decoder_target_tokens"]))) * jax.process_count()
        global_batch = p.prepare_batch(batch, step)
        state, dev_metrics = p.step_fn(state, global_batch)
        step += 1
        if step == p.start_step + 1:
          p.on_first_step(dev_metrics)
        flush()
        pending.append((step, dev_metrics, tokens))
        p.periodic.after_step(step, state, flush)
      flush()
    p.periodic.finish(step, state, p.start_step, p.latest_saved())
  finally:
    p.console.close()
  return step, state
