"""Checkpoint averaging (the original project's `lawa.py`; its 580M model averaged 4 checkpoints from the last
20% of training): the element-wise mean of the params of several checkpoints, by default the last k of a
MODEL_DIR. The mean is accumulated in float64 and cast back to each leaf's dtype."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from gpt_plugin import params_io
from gpt_plugin.params_io import flatten, unflatten


def average_trees(trees: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
  """Element-wise mean of param trees with identical structure and shapes (ParamsMismatchError, a ValueError,
  listing the differences)."""
  if not trees:
    raise ValueError("average_trees: nothing to average")
  flats = [flatten(t) for t in trees]
  for i, f in enumerate(flats[1:], 1):
    _check_same(flats[0], f, f"tree {i}", "tree 0")
  out = {}
  for k in flats[0]:
    acc = np.zeros(np.shape(flats[0][k]), np.float64)
    for f in flats:
      acc += np.asarray(f[k], np.float64)
    out[k] = (acc / len(flats)).astype(np.asarray(flats[0][k]).dtype)
  return unflatten(out)


def _check_same(reference: Mapping[str, Any], flat: Mapping[str, Any], what: str, reference_name: str) -> None:
  problems = params_io.compare_param_shapes(
    params_io.param_shapes(reference), params_io.param_shapes(flat), reference=reference_name
  )
  if problems:
    raise params_io.ParamsMismatchError(
      params_io.mismatch_message(f"{what} has a different param tree or shapes than {reference_name}", problems)
    )


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


def average_checkpoints(
  model_dir: str, last: int = 4, steps: Optional[Sequence[int]] = None
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
    _check_same(acc, flat, f"checkpoint_{s} in {model_dir}", f"checkpoint_{chosen[0]}")
    for k in acc:
      acc[k] += np.asarray(flat[k], np.float64)
  return unflatten({k: (v / len(chosen)).astype(dtypes[k]) for k, v in acc.items()}), chosen
