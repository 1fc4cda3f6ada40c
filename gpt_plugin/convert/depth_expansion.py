"""Warm start by depth expansion (Gopher, Rae et al. 2021, §G.3.3): a deeper model initialised from a shallower
trained one by copying its blocks, each old block feeding a run of consecutive new blocks.

Map: new block i (0 <= i < new) takes old block floor(i * old / new). For old=18, new=24 this is the original
project's `extend_params.py` table (old -> new): 0->[0,1], 1->[2], 2->[3], 3->[4,5], 4->[6], 5->[7], 6->[8,9], ...,
15->[20,21], 16->[22], 17->[23] (every third old block duplicated, 1.5x), i.e. its `floor(i/24*18)` comment.
For new = k * old every block is repeated k times; for new < old the map keeps an evenly spaced subset of blocks
(depth reduction). Everything outside the blocks (embedding, embedding/final LayerNorms, positions, head-QK)
is copied unchanged. The optimizer state is not carried over: train the result from step 0 (e.g. with a fresh
learning-rate warmup), as the original did.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from gpt_plugin.convert.littlegpt import is_scanned, layer_list, with_layers


def depth_map(old_layers: int, new_layers: int) -> List[int]:
  """`m[i]` = the old block that new block i is copied from: floor(i * old / new) (exact integer arithmetic)."""
  if old_layers < 1 or new_layers < 1:
    raise ValueError(f"depth_map: layer counts must be positive, got {old_layers} -> {new_layers}")
  return [(i * old_layers) // new_layers for i in range(new_layers)]


def inverse_map(old_layers: int, new_layers: int) -> Dict[int, List[int]]:
  """old block -> the new blocks it initialises (the original project's table format)."""
  table: Dict[int, List[int]] = {k: [] for k in range(old_layers)}
  for i, k in enumerate(depth_map(old_layers, new_layers)):
    table[k].append(i)
  return table


def expand_depth(params: Mapping[str, Any], new_layers: int, scan_layers: Optional[bool] = None) -> Dict[str, Any]:
  """Params of a `new_layers`-deep model built from `params` (either layer layout; output layout =
  `scan_layers`, default: the input's). Arrays are copied, so duplicated blocks are independent."""
  layers = layer_list(params)
  mapping = depth_map(len(layers), new_layers)
  new = [_copy(layers[k]) for k in mapping]
  scanned = is_scanned(params) if scan_layers is None else scan_layers
  out = with_layers(params, new, scanned)
  return {k: (v if k == "layers" or k.startswith("layers_") else _copy(v)) for k, v in out.items()}


def _copy(tree):
  if isinstance(tree, Mapping):
    return {k: _copy(v) for k, v in tree.items()}
  return np.array(tree, copy=True)
