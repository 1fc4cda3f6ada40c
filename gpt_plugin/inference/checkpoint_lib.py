"""Load model params for inference from any checkpoint our runners or T5X write.

Accepted `checkpoint_path`s:
  * a training directory (`MODEL_DIR`, latest `checkpoint_<step>` is used) or one `checkpoint_<step>` directory,
    written by `gpt_plugin.train` (orbax item `state`, params under `params`) or by `t5x.train` (orbax item
    `state`, params under `target`);
  * an exported params directory (`.../export/params`, orbax `{'params': ...}`) or `params.msgpack`.
The restored tree is checked against the model's own parameter shapes, so a checkpoint of another model fails
with an error naming the path and the first mismatching parameters.
"""
from __future__ import annotations

import os
import re
from typing import Any, Dict, Mapping, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

_STEP_RE = re.compile(r"^checkpoint_(\d+)$")


class CheckpointMismatchError(ValueError):
  """The checkpoint holds parameters of a different model."""


def _latest_step_dir(directory: str) -> Optional[str]:
  steps = []
  for name in os.listdir(directory):
    m = _STEP_RE.match(name)
    if m and os.path.isdir(os.path.join(directory, name)):
      steps.append((int(m.group(1)), name))
  return os.path.join(directory, max(steps)[1]) if steps else None


def resolve_checkpoint(path: str) -> Tuple[str, str]:
  """Returns (kind, concrete path) with kind in {'msgpack', 'pytree'}; raises FileNotFoundError naming `path`."""
  if path is None:
    raise ValueError("CHECKPOINT_PATH is not set (give --gin.CHECKPOINT_PATH=\\\"/path/to/model_dir\\\")")
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint path {path!r} does not exist")
  if os.path.isfile(path):
    if path.endswith(".msgpack"):
      return "msgpack", path
    raise ValueError(f"checkpoint path {path!r} is a file but not a .msgpack params file")
  if _STEP_RE.match(os.path.basename(os.path.normpath(path))) is None:
    step_dir = _latest_step_dir(path)
    if step_dir is not None:
      path = step_dir
  for sub in ("state", "params"):
    if os.path.isdir(os.path.join(path, sub)):
      return "pytree", os.path.join(path, sub)
  if os.path.exists(os.path.join(path, "params.msgpack")):
    return "msgpack", os.path.join(path, "params.msgpack")
  if os.path.exists(os.path.join(path, "_METADATA")) or os.path.exists(os.path.join(path, "manifest.ocdbt")):
    return "pytree", path
  raise FileNotFoundError(f"no checkpoint found at {path!r} (expected checkpoint_<step>/state, an exported "
                          f"params/ directory or params.msgpack)")


def _restore_pytree(path: str) -> Dict[str, Any]:
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  ckptr = ocp.PyTreeCheckpointer()
  meta = ckptr.metadata(path)
  tree = getattr(meta, "item_metadata", None) or getattr(meta, "tree", None) or meta
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return ckptr.restore(path, args=ocp.args.PyTreeRestore(item=None, restore_args=restore_args))


def _params_from_tree(tree: Mapping[str, Any]) -> Any:
  """Finds the params inside a restored state: ours ('params'), T5X ('target'), an export ({'params': ...})."""
  tree = flax.core.unfreeze(tree) if isinstance(tree, flax.core.FrozenDict) else tree
  if "target" in tree and isinstance(tree["target"], Mapping):  # T5X FlaxOptimTrainState
    return tree["target"]
  if "params" in tree and isinstance(tree["params"], Mapping):
    inner = tree["params"]
    if set(inner) == {"params"}:
      inner = inner["params"]
    return inner
  return tree


def _flat_shapes(tree) -> Dict[str, tuple]:
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(tree) if isinstance(tree, flax.core.FrozenDict)
                                         else tree)
  return {"/".join(map(str, k)): tuple(np.shape(v)) for k, v in flat.items()}


def model_param_shapes(model: Any, sequence_length: int = 8) -> Any:
  shapes = {"decoder_input_tokens": (1, sequence_length), "decoder_target_tokens": (1, sequence_length)}
  types = {k: jnp.int32 for k in shapes}
  variables = jax.eval_shape(lambda k: model.get_initial_variables(k, shapes, types), jax.random.PRNGKey(0))
  return variables["params"]


def load_params(checkpoint_path: str, model: Any, dtype: Optional[str] = None) -> Any:
  """Restores params for `model` from `checkpoint_path` (see the module docstring), checked against the model."""
  kind, path = resolve_checkpoint(checkpoint_path)
  if kind == "msgpack":
    from flax import serialization  # pylint: disable=import-outside-toplevel
    with open(path, "rb") as f:
      tree = serialization.msgpack_restore(f.read())
  else:
    tree = _restore_pytree(path)
  params = _params_from_tree(tree)
  expected = _flat_shapes(model_param_shapes(model))
  found = _flat_shapes(params)
  problems = []
  for name in sorted(set(expected) | set(found)):
    if name not in found:
      problems.append(f"{name}: missing in the checkpoint (model shape {expected[name]})")
    elif name not in expected:
      problems.append(f"{name}: in the checkpoint {found[name]} but not in the model")
    elif expected[name] != found[name]:
      problems.append(f"{name}: checkpoint shape {found[name]} != model shape {expected[name]}")
  if problems:
    shown = "\n  ".join(problems[:8]) + ("\n  ..." if len(problems) > 8 else "")
    raise CheckpointMismatchError(
        f"checkpoint {checkpoint_path!r} ({path}) holds another model than the one the gin files configure "
        f"({len(problems)} parameter mismatches):\n  {shown}")
  cast = (lambda x: jnp.asarray(x, dtype)) if dtype else jnp.asarray
  return jax.tree.map(cast, flax.core.unfreeze(params) if isinstance(params, flax.core.FrozenDict) else params)
