"""What the trainer prints for the person at the terminal: the start banner, a tqdm progress bar with rate and ETA
when stdout is a terminal (plain log lines otherwise), and one-off lines. Only process 0 prints."""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping, Optional, Sequence

import jax


class Console:
  """`enabled=False` (or a process other than 0) prints nothing. `bar=None` picks the tqdm bar when stdout is a
  terminal; log lines then go above the bar (`tqdm.write`) so nothing is lost."""

  def __init__(self, enabled: bool = True, bar: Optional[bool] = None):
    self.enabled = bool(enabled) and jax.process_index() == 0
    self.use_bar = self.enabled and (sys.stdout.isatty() if bar is None else bool(bar))
    self._bar = None

  def print(self, line: str) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(line)
    else:
      print(line, flush=True)

  def start_progress(self, start_step: int, end_step: int) -> None:
    if not self.use_bar:
      return
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top

    sized = _terminal_columns() > 0  # a pty that reports 0 columns (script, some CI shells): a fixed width
    self._bar = tqdm(
      total=end_step,
      initial=start_step,
      unit="step",
      dynamic_ncols=sized,
      ncols=None if sized else 100,
      file=sys.stdout,
    )

  def step_done(self, loss: float) -> None:
    if self._bar is not None:
      self._bar.set_postfix_str(f"loss {loss:.4g}", refresh=False)
      self._bar.update(1)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None


def model_summary(model: Any, num_params: int) -> str:
  """'GPT 4 layers, d 128, 4 heads, vocab 8192, alibi, 1.23M params' (the param count alone for other models)."""
  cfg = getattr(getattr(model, "module", None), "config", None)
  count = f"{num_params / 1e6:.2f}M params" if num_params >= 1e5 else f"{num_params:,} params"
  if cfg is None:
    return f"{type(model).__name__}, {count}"
  fields = [
    f"{getattr(cfg, 'num_layers', '?')} layers",
    f"d {getattr(cfg, 'emb_dim', '?')}",
    f"{getattr(cfg, 'num_heads', '?')} heads",
    f"vocab {getattr(cfg, 'vocab_size', '?')}",
    str(getattr(cfg, "position_embedding", "")),
  ]
  return f"GPT {', '.join(f for f in fields if f)}; {count}"


def banner(
  *,
  model_line: str,
  gin_files: Sequence[str],
  batch_size: int,
  seq_len: int,
  num_microbatches: int,
  mesh_shape: Mapping[str, int],
  model_dir: str,
  resume_step: Optional[int],
  total_steps: int,
) -> str:
  """The start block: model, gin files, tokens per step, mesh and devices, MODEL_DIR, the TensorBoard command."""
  devices = jax.devices()
  kind = devices[0].device_kind if devices else "?"
  micro = f" in {num_microbatches} microbatches" if num_microbatches > 1 else ""
  start = f"resuming at step {resume_step}" if resume_step else "from scratch"
  lines = [
    f"model      {model_line}",
    f"gin        {' '.join(gin_files)}" if gin_files else None,
    f"batch      {batch_size} x {seq_len} = {batch_size * seq_len:,} tokens per step{micro}",
    f"mesh       {dict(mesh_shape)} on {len(devices)} x {kind} ({jax.process_count()} process(es))",
    f"MODEL_DIR  {model_dir} ({start}, {total_steps} steps)",
    f"watch      tensorboard --logdir {model_dir}",
  ]
  return "\n".join(line for line in lines if line)


def gin_files_from_flags() -> Sequence[str]:
  """The `--gin_file` values of the running command, if it has absl flags (empty in-process)."""
  try:
    from absl import flags  # pylint: disable=g-import-not-at-top

    return list(flags.FLAGS.gin_file or []) if flags.FLAGS.is_parsed() and "gin_file" in flags.FLAGS else []
  except Exception:  # pylint: disable=broad-except
    return []


def _terminal_columns() -> int:
  try:
    return os.get_terminal_size(sys.stdout.fileno()).columns
  except (OSError, ValueError):
    return 0
