"""Checkpoint averaging (the original project's `lawa.py`; its 580M model averaged 4 checkpoints from the last
20% of training): the element-wise mean of the params of several checkpoints, by default the last k of a
MODEL_DIR. The mean is accumulated in float64 and cast back to each leaf's dtype."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from gpt_plugin.convert import params_io
from gpt_plugin.convert.littlegpt import flatten, unflatten


def average_trees(trees: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
  """Element-wise mean of param trees with identical structure and shapes (ValueError naming differences)."""
  if not trees:
    raise ValueError("average_trees: nothing to average")
  flats = [flatten(t) for t in trees]
  keys = set(flats[0])
  for i, f in enumerate(flats[1:], 1):
    if set(f) != keys:
      diff = sorted(keys ^ set(f))
      raise ValueError(f"checkpoint {i} has a different param tree; differing entries: {diff[:10]}")
    bad = [k for k in keys if np.shape(f[k]) != np.shape(flats[0][k])]
    if bad:
      raise ValueError(f"checkpoint {i} has different shapes for: {sorted(bad)[:10]}")
  out = {}
  for k in flats[0]:
    acc = np.zeros(np.shape(flats[0][k]), np.float64)
    for f in flats:
      acc += np.asarray(f[k], np.float64)
    out[k] = (acc / len(flats)).astype(np.asarray(flats[0][k]).dtype)
  return unflatten(out)


def select_steps(model_dir: str, last: int, steps: Optional[Sequence[int]] = None) -> List[int]:
  available = params_io.checkpoint_steps(model_dir)
  if not available:
    raise FileNotFoundError(f"{model_dir}: no checkpoint_<step>/state directories")
  if steps:
    missing = sorted(set(steps) - set(available))
    if missing:
      raise FileNotFoundError(f"{model_dir}: no checkpoints for steps {missing} (available: {available})")
    return sorted(set(steps))
  if last < 1:
    raise ValueError(f"--last must be >= 1, got {last}")
  if last > len(available):
    raise ValueError(f"{model_dir} has {len(available)} checkpoints {available}; cannot average the last {last}")
  return available[-last:]


def average_checkpoints(model_dir: str, last: int = 4, steps: Optional[Sequence[int]] = None
                        ) -> Tuple[Dict[str, Any], List[int]]:
  """Mean params of the last `last` checkpoints (or of `steps`) in `model_dir`; returns (params, steps).
  Reads one checkpoint at a time (peak host memory: two param trees plus the float64 accumulator)."""
  chosen = select_steps(model_dir, last, steps)
  acc: Optional[Dict[str, np.ndarray]] = None
  dtypes: Dict[str, Any] = {}
  for s in chosen:
    flat = flatten(params_io.load_params(model_dir, step=s)[0])
    if acc is None:
      acc = {k: np.asarray(v, np.float64).copy() for k, v in flat.items()}
      dtypes = {k: np.asarray(v).dtype for k, v in flat.items()}
      continue
    if set(flat) != set(acc) or any(np.shape(flat[k]) != acc[k].shape for k in acc):
      raise ValueError(f"checkpoint_{s} in {model_dir} has a different param tree or shapes than checkpoint_"
                       f"{chosen[0]}")
    for k in acc:
      acc[k] += np.asarray(flat[k], np.float64)
  return unflatten({k: (v / len(chosen)).astype(dtypes[k]) for k, v in acc.items()}), chosen
