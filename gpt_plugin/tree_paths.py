"""Parameter names: the '/'-joined key path of a pytree leaf, e.g. `layers_0/attention/qkv/kernel`.

The one spelling that checkpoints, converters, the optimiser's weight-decay mask, shape checks and the trainer's
reports use for a leaf. Dict keys, dataclass fields and sequence indices each give one path component.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import jax


def key_name(key: Any) -> str:
  """One path component: a dict key, an attribute (dataclass / flax struct field) name or a sequence index."""
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def leaf_name(path: Sequence[Any]) -> str:
  """A `jax.tree_util` key path -> 'a/b/c'."""
  return "/".join(key_name(k) for k in path)


def named_leaves(tree: Any, is_leaf: Optional[Callable[[Any], bool]] = None) -> List[Tuple[str, Any]]:
  """[(name, leaf)] in `jax.tree.leaves` order."""
  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
  return [(leaf_name(path), leaf) for path, leaf in flat]


def flatten(tree: Any, is_leaf: Optional[Callable[[Any], bool]] = None) -> Dict[str, Any]:
  """{'a': {'b': x}} -> {'a/b': x}."""
  return dict(named_leaves(tree, is_leaf))


def unflatten(flat: Mapping[str, Any]) -> Dict[str, Any]:
  """{'a/b': x} -> {'a': {'b': x}} (nested plain dicts)."""
  out: Dict[str, Any] = {}
  for name, value in flat.items():
    node = out
    *parents, leaf = name.split("/")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return out
