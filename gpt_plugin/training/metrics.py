"""Metric writers (clu -> TensorBoard in MODEL_DIR), the console progress line, peak FLOP/s for MFU (the
FLOPs per token come from `network.GPTConfig.flops_per_token`)."""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import jax
import numpy as np

# Dense bf16 peak FLOP/s per device, matched as substrings of `device.device_kind` (lower-case).
PEAK_FLOPS = (
  ("h200", 989e12),
  ("h100", 989e12),
  ("gh200", 989e12),
  ("a100", 312e12),
  ("a6000", 155e12),
  ("l40", 181e12),
  ("v100", 125e12),
  ("a10", 125e12),
  ("4090", 165e12),
  ("3090", 71e12),
  ("tpu v3", 123e12),
  ("tpu v4", 275e12),
  ("tpu v5 lite", 197e12),
  ("tpu v5e", 197e12),
  ("tpu v5", 459e12),
  ("tpu v6", 918e12),
)


def peak_flops_per_device(device: Any = None, override: Optional[float] = None) -> float:
  """Peak FLOP/s of one device (0.0 when unknown, e.g. CPU: MFU is then reported as 0)."""
  if override:
    return float(override)
  device = device or jax.devices()[0]
  kind = str(getattr(device, "device_kind", "")).lower()
  for key, flops in PEAK_FLOPS:
    if key in kind:
      return flops
  return 0.0


def count_params(params: Any) -> int:
  return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))


def create_writer(model_dir: Optional[str], collection: str = "train", enabled: bool = True):
  """clu writer: TensorBoard summaries under MODEL_DIR/<collection> on process 0; nothing on others."""
  if not enabled or model_dir is None or jax.process_index() != 0:
    return NullWriter()
  from clu import metric_writers  # pylint: disable=g-import-not-at-top  (imports TensorFlow)

  return metric_writers.SummaryWriter(f"{model_dir}/{collection}")


class NullWriter:
  """Writer for non-zero processes and summary-less runs (avoids importing TensorFlow)."""

  def write_scalars(self, step, scalars):
    pass

  def flush(self):
    pass

  def close(self):
    pass


def _si(x: float) -> str:
  for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if abs(x) >= div:
      return f"{x / div:.3g}{unit}"
  return f"{x:.3g}"


def progress_line(step: int, total: int, m: Mapping[str, float]) -> str:
  """`step 120/400 loss 3.21 ppl 24.8 lr 3.0e-4 gnorm 0.9 tok/s 41k mfu 0.0% step 0.21s`."""
  parts = [
    f"step {step}/{total}",
    f"loss {m['loss']:.4g}",
    f"ppl {m.get('perplexity', math.nan):.4g}",
    f"lr {m.get('learning_rate', 0.0):.2e}",
    f"gnorm {m.get('grad_norm', math.nan):.3g}",
    f"tok/s {_si(m.get('tokens_per_sec', 0.0))}",
    f"mfu {100 * m.get('mfu', 0.0):.1f}%",
    f"step {m.get('step_time', 0.0):.3g}s",
  ]
  if m.get("skipped_steps"):
    parts.append(f"skipped {int(m['skipped_steps'])}")
  return " ".join(parts)


def peak_memory_bytes(devices: Any = None) -> Optional[int]:
  """Largest `peak_bytes_in_use` over this process's devices (`device.memory_stats()`; None where a backend has
  no memory statistics, e.g. CPU)."""
  peaks = []
  for d in devices or jax.local_devices():
    try:
      stats = d.memory_stats()
    except Exception:  # pylint: disable=broad-except
      stats = None
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(int(stats["peak_bytes_in_use"]))
  return max(peaks) if peaks else None


def first_step_line(compile_time_s: float, peak_bytes: Optional[int]) -> str:
  mem = (
    f"peak device memory {peak_bytes / 2**30:.2f} GiB"
    if peak_bytes is not None
    else "peak device memory n/a (no memory_stats on this backend)"
  )
  return f"compiled train step in {compile_time_s:.1f}s; after step 1: {mem}"


def safe_exp(x: float) -> float:
  try:
    return math.exp(min(x, 50.0))
  except (OverflowError, ValueError):
    return math.inf
