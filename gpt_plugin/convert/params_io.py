"""Reading and writing params for the converters.

Written layout (the params-only export format of `gpt_plugin.training.checkpointing.export_params`):
  OUT/params/            orbax `StandardCheckpointer` checkpoint of `{'params': <param tree>}`
  OUT/params.msgpack     optional: flax msgpack of `{'params': ...}` (the original project's export format)
  OUT/convert_info.json  what was converted from what, the GPTConfig fields, the source vocab size

Readable sources (`load_params`):
  - such an OUT directory, or its `params/` folder (any orbax PyTree checkpoint holding `{'params': ...}` or the
    bare param tree);
  - a training MODEL_DIR (`checkpoint_<step>/state/`): the params of the latest (or a given) step;
  - one `checkpoint_<step>` directory;
  - a `.msgpack` file of `{'params': ...}` or of the bare tree.
Arrays are returned as numpy (host memory), whatever sharding they were saved with.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

_STEP_DIR = re.compile(r"checkpoint_(\d+)$")


def _to_plain(tree):
  if hasattr(tree, "items"):
    return {str(k): _to_plain(v) for k, v in tree.items()}
  return tree


def _unwrap(tree) -> Dict[str, Any]:
  tree = _to_plain(tree)
  if set(tree) == {"params"} and hasattr(tree["params"], "items"):
    return tree["params"]
  return tree


def checkpoint_steps(model_dir: str) -> List[int]:
  """Steps of the complete `checkpoint_<step>` directories in a MODEL_DIR, ascending."""
  if not os.path.isdir(model_dir):
    return []
  steps = []
  for name in os.listdir(model_dir):
    m = _STEP_DIR.match(name)
    if m and os.path.isdir(os.path.join(model_dir, name, "state")):
      steps.append(int(m.group(1)))
  return sorted(steps)


def _restore_orbax(path: str, subtree: Optional[str] = None) -> Dict[str, Any]:
  """Restores an orbax PyTree checkpoint as numpy; with `subtree`, only that top-level entry is read."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  path = os.path.abspath(path)
  with ocp.PyTreeCheckpointer() as ckptr:
    meta = ckptr.metadata(path)
    tree = getattr(meta, "item_metadata", None)
    tree = getattr(tree, "tree", tree) if tree is not None else getattr(meta, "tree", meta)
    tree = _to_plain(tree)
    if subtree is not None:
      if subtree not in tree:
        raise KeyError(f"{path}: no {subtree!r} entry (found {sorted(tree)})")
      tree = {subtree: tree[subtree]}
    restore_args = _map_leaves(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    restored = ckptr.restore(path, args=ocp.args.PyTreeRestore(
        item=tree, restore_args=restore_args, partial_restore=subtree is not None))
  restored = _to_plain(restored)
  return restored[subtree] if subtree is not None else restored


def _map_leaves(fn, tree):
  if hasattr(tree, "items"):
    return {k: _map_leaves(fn, v) for k, v in tree.items()}
  return fn(tree)


def load_params(path: str, step: Optional[int] = None) -> Tuple[Dict[str, Any], str]:
  """Params (nested dict of numpy arrays) from any source listed in the module docstring, and a description."""
  path = os.fspath(path)
  if os.path.isfile(path):
    from flax import serialization  # pylint: disable=import-outside-toplevel
    with open(path, "rb") as f:
      tree = serialization.msgpack_restore(f.read())
    return _unwrap(tree), path
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: no such file or directory")
  steps = checkpoint_steps(path)
  if steps:
    if step is None:
      step = steps[-1]
    elif step not in steps:
      raise FileNotFoundError(f"{path}: no checkpoint_{step} (steps: {steps})")
    state_dir = os.path.join(path, f"checkpoint_{step}", "state")
    return _restore_orbax(state_dir, "params"), state_dir
  if _STEP_DIR.search(os.path.basename(os.path.normpath(path))) and os.path.isdir(os.path.join(path, "state")):
    state_dir = os.path.join(path, "state")
    return _restore_orbax(state_dir, "params"), state_dir
  if os.path.isdir(os.path.join(path, "params")):
    path = os.path.join(path, "params")
  return _unwrap(_restore_orbax(path)), path


def save_params(out_dir: str, params: Dict[str, Any], info: Optional[dict] = None, msgpack: bool = False) -> str:
  """Writes OUT/params (orbax), optionally OUT/params.msgpack, and OUT/convert_info.json. Returns OUT."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  out_dir = os.path.abspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  tree = {"params": _map_leaves(np.asarray, params)}
  with ocp.StandardCheckpointer() as saver:
    saver.save(os.path.join(out_dir, "params"), tree, force=True)
    saver.wait_until_finished()
  if msgpack:
    from flax import serialization  # pylint: disable=import-outside-toplevel
    with open(os.path.join(out_dir, "params.msgpack"), "wb") as f:
      f.write(serialization.msgpack_serialize(tree))
  if info is not None:
    with open(os.path.join(out_dir, "convert_info.json"), "w") as f:
      json.dump(info, f, indent=2, sort_keys=True, default=str)
  return out_dir


def read_info(path: str) -> Optional[dict]:
  """convert_info.json of an OUT directory (or of the directory above a `params/` folder), if any."""
  for d in (path, os.path.dirname(os.path.normpath(path))):
    f = os.path.join(d, "convert_info.json")
    if os.path.isfile(f):
      with open(f) as fh:
        return json.load(fh)
  return None
