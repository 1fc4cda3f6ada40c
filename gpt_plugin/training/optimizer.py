"""Optimiser and learning-rate schedule (optax), gin-configurable.

Default = the original project's setup: AdamW(b1=0.9, b2=0.95, eps=1e-8), decoupled weight decay masked off
1-D params and position tables, warmup-cosine schedule to a final learning rate. Clipping is global-norm by
default; the original's element-wise clip to [-1, 1] is available with `clip_value`.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import optax

from gpt_plugin import tree_paths

Schedule = Callable[[Any], Any]

# Substrings of a param path that mark a position table (no weight decay).
POSITION_TABLE_NAMES = ("position_embedder", "pos_embedding", "wpe")


def warmup_cosine_schedule(
  peak_learning_rate: float = 3e-4,
  warmup_steps: int = 1000,
  decay_steps: int = 10000,
  end_learning_rate: Optional[float] = None,
  init_learning_rate: float = 0.0,
) -> Schedule:
  """Linear warmup 0 -> peak over `warmup_steps`, cosine to `end_learning_rate` at `decay_steps` (total, incl.
  warmup, like the original's optax call), then constant. `end_learning_rate` defaults to 0.1 x peak."""
  end = 0.1 * peak_learning_rate if end_learning_rate is None else end_learning_rate
  decay_steps = max(int(decay_steps), int(warmup_steps) + 1)
  return optax.warmup_cosine_decay_schedule(
    init_value=init_learning_rate,
    peak_value=peak_learning_rate,
    warmup_steps=int(warmup_steps),
    decay_steps=decay_steps,
    end_value=end,
  )


def constant_schedule(learning_rate: float = 1e-3) -> Schedule:
  return optax.constant_schedule(learning_rate)


def default_weight_decay_mask(params: Any, no_decay_names: Sequence[str] = POSITION_TABLE_NAMES) -> Any:
  """True = decay. Off for 1-D params (biases, norm scales) and position tables (matched by name)."""

  def decide(path, leaf):
    if getattr(leaf, "ndim", 0) <= 1:
      return False
    p = tree_paths.leaf_name(path)
    return not any(n in p for n in no_decay_names)

  return jax.tree_util.tree_map_with_path(decide, params)


def adamw(
  learning_rate: Schedule | float = 3e-4,
  b1: float = 0.9,
  b2: float = 0.95,
  eps: float = 1e-8,
  weight_decay: float = 0.1,
  clip_norm: Optional[float] = 1.0,
  clip_value: Optional[float] = None,
  mask_fn: Callable[[Any], Any] = default_weight_decay_mask,
) -> optax.GradientTransformation:
  """AdamW with optional global-norm (`clip_norm`) and/or element-wise (`clip_value`) clipping."""
  chain = []
  if clip_value is not None:
    chain.append(optax.clip(clip_value))
  if clip_norm is not None:
    chain.append(optax.clip_by_global_norm(clip_norm))
  chain.append(optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask_fn))
  return optax.chain(*chain)
