"""What the Triton (GPU) and Mosaic (TPU) flash-ALiBi kernels share: input checks, the masking constant (also the
XLA attention's in `layers/attention.py`), the score scale, warn-once, and the packed-segment block ranges that let
both skip tiles with no same-document pair."""

from __future__ import annotations

import math
import warnings

import jax.numpy as jnp
import numpy as np
from jax import lax

# Finite "minus infinity": masked scores become exactly 0 after exp/exp2 without ever producing inf - inf = NaN in
# the online-softmax rescaling.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


WARNED_KEYS: set = set()  # keys `warn_once` has warned about in this process


def warn_once(key: str, msg: str, stacklevel: int = 4):
  """`warnings.warn(msg)` the first time `key` is seen (stacklevel 4: the caller of the public function that
  called the helper that called this)."""
  if key not in WARNED_KEYS:
    WARNED_KEYS.add(key)
    warnings.warn(msg, stacklevel=stacklevel)


def round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def resolve_sm_scale(sm_scale, head_dim: int) -> float:
  return float(1.0 / math.sqrt(head_dim)) if sm_scale is None else float(sm_scale)


def check_inputs(q, k, v, slopes, segment_ids, *, name: str):
  """Shapes shared by both kernels: self-attention q/k/v `[batch, seq, heads, head_dim]`, `[heads]` slopes and
  `[batch, seq]` segment ids. `name` is the public function reported in the error."""
  if q.ndim != 4:
    raise ValueError(f"{name}: q must be [batch, seq, heads, head_dim], got {q.shape}")
  if k.shape != q.shape or v.shape != q.shape:
    raise NotImplementedError(
      f"{name} supports self-attention with identical q/k/v shapes only (no GQA/MQA, no kv cache); got "
      f"q{q.shape} k{k.shape} v{v.shape}."
    )
  if tuple(jnp.shape(slopes)) != (q.shape[2],):
    raise ValueError(f"{name}: slopes must have shape [heads]=({q.shape[2]},), got {jnp.shape(slopes)}")
  if segment_ids is not None and tuple(segment_ids.shape) != q.shape[:2]:
    raise ValueError(f"{name}: segment_ids must be [batch, seq]={q.shape[:2]}, got {segment_ids.shape}")


def segment_extent(seg):
  """first[b, t], last[b, t]: the first and last position of row b holding the segment id seg[b, t].

  Works for any id layout (a segment need not be one contiguous run): a stable sort groups equal ids with their
  positions in order, so a group's first/last sorted element is the segment's first/last position.
  """
  bsz, t = seg.shape
  order = jnp.argsort(seg, axis=1, stable=True).astype(jnp.int32)
  ids = jnp.take_along_axis(seg, order, axis=1)
  idx = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (bsz, t))
  edge = ids[:, 1:] != ids[:, :-1]
  true = jnp.ones((bsz, 1), bool)
  group_start = lax.cummax(jnp.where(jnp.concatenate([true, edge], 1), idx, 0), axis=1)
  group_end = lax.cummin(jnp.where(jnp.concatenate([edge, true], 1), idx, t - 1), axis=1, reverse=True)
  rows = jnp.arange(bsz)[:, None]
  # Sorted slot r belongs to position order[r]: scatter the group's first/last position back to positions.
  first = jnp.zeros_like(order).at[rows, order].set(jnp.take_along_axis(order, group_start, 1))
  last = jnp.zeros_like(order).at[rows, order].set(jnp.take_along_axis(order, group_end, 1))
  return first, last


def segment_block_ranges(extent, rows: int, cols: int):
  """For each block of `rows` positions: [lo, hi), the blocks of `cols` positions on the other axis that hold a
  segment present in the block (attention only pairs equal segment ids, in both directions). Two [B, T/rows]."""
  first, last = extent
  bsz, tp = first.shape
  lo = jnp.min(first.reshape(bsz, tp // rows, rows), axis=-1) // cols
  hi = jnp.max(last.reshape(bsz, tp // rows, rows), axis=-1) // cols + 1
  return lo, hi
