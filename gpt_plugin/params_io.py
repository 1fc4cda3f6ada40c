"""Params in and out of every checkpoint format, and the one check of a param tree against a model.

Readable sources (`load_params`; arrays come back as numpy in host memory, whatever sharding they were saved with):
  - a training MODEL_DIR: the params of its latest (or a given) `checkpoint_<step>/state`, written by
    `gpt_plugin.train` (params under `params`) or by `t5x.train` (params under `target`);
  - one `checkpoint_<step>` directory, or its `state/` folder;
  - an export / `python -m gpt_plugin.convert` OUT directory (`OUT/params/`, else `OUT/params.msgpack`), or its
    `params/` folder: any orbax PyTree checkpoint of `{'params': ...}` or of the bare param tree;
  - a flax `.msgpack` file of `{'params': ...}`, of a state with `params` / `target`, or of the bare tree.
From a train state only the params subtree is read (orbax partial restore): optimizer slots are never loaded.

Written layout (`save_params`, the params-only export format of `gpt_plugin.training.checkpointing.export_params`):
  OUT/params/            orbax `StandardCheckpointer` checkpoint of `{'params': <param tree>}`
  OUT/params.msgpack     optional: flax msgpack of `{'params': ...}` (the original project's export format)
  OUT/convert_info.json  what was converted from what, the GPTConfig fields, the source vocab size

Checking (`compare_param_shapes`, `check_params_against`): names are '/'-joined paths
(`layers_0/attention/out/kernel`); every missing, unexpected and mis-shaped param is listed.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Type

import numpy as np

from gpt_plugin.training import checkpoint_layout as layout

_PARAMS_KEYS = ("params", "target")  # ours and exports / T5X's FlaxOptimTrainState


class ParamsMismatchError(ValueError):
  """Params do not match the model (or each other): the message lists every missing, unexpected or mis-shaped
  param."""


# ------------------------------------------------------------------------------------------ trees and shapes
def flatten(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
  """{'a': {'b': x}} -> {'a/b': x}."""
  out = {}
  for k, v in tree.items():
    name = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(flatten(v, name + "/"))
    else:
      out[name] = v
  return out


def unflatten(flat: Mapping[str, Any]) -> Dict[str, Any]:
  out: Dict[str, Any] = {}
  for name, v in flat.items():
    node = out
    *parents, leaf = name.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return out


def param_shapes(tree: Mapping[str, Any]) -> Dict[str, Tuple[int, ...]]:
  """'/'-joined name -> shape of every leaf (arrays, ShapeDtypeStructs, orbax metadata)."""
  return {k: tuple(v.shape) if hasattr(v, "shape") else tuple(np.shape(v)) for k, v in flatten(tree).items()}


def compare_param_shapes(
  expected: Mapping[str, Sequence[int]], found: Mapping[str, Sequence[int]], reference: str = "model"
) -> List[str]:
  """Every difference between two name -> shape maps, sorted by name: 'missing: NAME (model shape S)',
  'unexpected: NAME (shape S)', 'wrong shape: NAME: S, model expects S2' (`reference` replaces 'model')."""
  expected = {k: tuple(int(d) for d in s) for k, s in expected.items()}
  found = {k: tuple(int(d) for d in s) for k, s in found.items()}
  problems = []
  for k in sorted(set(expected) | set(found)):
    if k not in found:
      problems.append(f"missing: {k} ({reference} shape {expected[k]})")
    elif k not in expected:
      problems.append(f"unexpected: {k} (shape {found[k]})")
    elif expected[k] != found[k]:
      problems.append(f"wrong shape: {k}: {found[k]}, {reference} expects {expected[k]}")
  return problems


def mismatch_message(title: str, problems: Sequence[str]) -> str:
  """'TITLE (N problems):' and one indented line per problem."""
  shown = "\n  ".join(problems)
  return f"{title} ({len(problems)} problem{'s' if len(problems) != 1 else ''}):\n  {shown}"


def abstract_params(config: Any) -> Dict[str, Any]:
  """The param tree of `GPTDecoder(config)` as ShapeDtypeStructs (nothing allocated)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from gpt_plugin.network import GPTDecoder  # pylint: disable=import-outside-toplevel

  module = GPTDecoder(config)
  tokens = jnp.ones((1, 4), jnp.int32)
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), tokens, enable_dropout=False))
  return shapes["params"]


def _model_abstract_params(model: Any, sequence_length: int = 8) -> Any:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  shapes = {"decoder_input_tokens": (1, sequence_length), "decoder_target_tokens": (1, sequence_length)}
  types = {k: jnp.int32 for k in shapes}
  variables = jax.eval_shape(lambda k: model.get_initial_variables(k, shapes, types), jax.random.PRNGKey(0))
  return variables["params"]


def expected_param_shapes(model_or_config: Any) -> Dict[str, Tuple[int, ...]]:
  """Name -> shape of the params of a GPTConfig, of a model (`get_initial_variables`, e.g. `DecoderOnlyLM`), or of
  a param tree (arrays or ShapeDtypeStructs) standing for the model."""
  from gpt_plugin.network import GPTConfig  # pylint: disable=import-outside-toplevel

  if isinstance(model_or_config, GPTConfig):
    return param_shapes(abstract_params(model_or_config))
  if hasattr(model_or_config, "get_initial_variables"):
    return param_shapes(_model_abstract_params(model_or_config))
  if isinstance(model_or_config, Mapping):
    return param_shapes(model_or_config)
  raise TypeError(f"expected a GPTConfig, a model or a param tree, got {type(model_or_config).__name__}")


def _describe(model_or_config: Any) -> str:
  from gpt_plugin.network import GPTConfig  # pylint: disable=import-outside-toplevel

  config = model_or_config if isinstance(model_or_config, GPTConfig) else getattr(model_or_config, "config", None)
  if not isinstance(config, GPTConfig):
    return "the model"
  return (
    f"the model (num_layers={config.num_layers}, emb_dim={config.emb_dim}, num_heads={config.num_heads}, "
    f"vocab_size={config.vocab_size}, scan_layers={config.scan_layers})"
  )


def check_params_against(
  model_or_config: Any,
  params: Mapping[str, Any],
  what: str = "params",
  hint: Optional[str] = None,
  error: Type[ParamsMismatchError] = ParamsMismatchError,
) -> None:
  """Raises `error` (a ParamsMismatchError) listing every param of `params` missing from, unexpected in or
  mis-shaped for the model (a GPTConfig, a model or an abstract param tree, see `expected_param_shapes`).
  `what` names the params (e.g. a path) at the start of the message; `hint` is appended to its title."""
  problems = compare_param_shapes(expected_param_shapes(model_or_config), param_shapes(params))
  if problems:
    title = f"{what} do not match {_describe(model_or_config)}" + (f"; {hint}" if hint else "")
    raise error(mismatch_message(title, problems))


# ------------------------------------------------------------------------------------------ reading
def _to_plain(tree):
  if hasattr(tree, "items"):
    return {str(k): _to_plain(v) for k, v in tree.items()}
  return tree


def _map_leaves(fn, tree):
  if hasattr(tree, "items"):
    return {k: _map_leaves(fn, v) for k, v in tree.items()}
  return fn(tree)


def _params_key(tree: Mapping[str, Any]) -> Optional[str]:
  """The entry of a state / export holding the params: 'params' (ours, exports), 'target' (T5X) or None (bare)."""
  for key in _PARAMS_KEYS:
    if key in tree and isinstance(tree[key], Mapping):
      return key
  return None


def _unwrap(tree: Mapping[str, Any]) -> Dict[str, Any]:
  while set(tree) == {"params"} and isinstance(tree["params"], Mapping):  # {'params': variables['params']}
    tree = tree["params"]
  return tree


def checkpoint_steps(model_dir: str) -> List[int]:
  """Steps of the complete `checkpoint_<step>` directories (with a `state/` item) in a MODEL_DIR, ascending
  (the layout is `gpt_plugin.training.checkpoint_layout`'s)."""
  return layout.checkpoint_steps(model_dir)


def resolve_checkpoint(path: str, step: Optional[int] = None) -> Tuple[str, str]:
  """(kind, concrete path) for any source in the module docstring, kind in {'msgpack', 'orbax'}.

  `step` picks a `checkpoint_<step>` of a MODEL_DIR (default: the latest). Raises FileNotFoundError naming the
  path when it does not exist or holds no checkpoint."""
  if path is None:
    raise ValueError("no checkpoint path given")
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint path {path!r} does not exist")
  if os.path.isfile(path):
    return "msgpack", path
  steps = checkpoint_steps(path)
  if steps:
    if step is None:
      step = steps[-1]
    elif step not in steps:
      raise FileNotFoundError(f"{path}: no {layout.step_dir_name(step)} (steps: {steps})")
    return "orbax", layout.state_dir(path, step)
  for sub in (layout.STATE_ITEM, "params"):
    if os.path.isdir(os.path.join(path, sub)):
      return "orbax", os.path.join(path, sub)
  if os.path.isfile(os.path.join(path, "params.msgpack")):
    return "msgpack", os.path.join(path, "params.msgpack")
  if any(os.path.exists(os.path.join(path, m)) for m in layout.ORBAX_MARKERS):
    return "orbax", path
  raise FileNotFoundError(
    f"no checkpoint found at {path!r} (expected checkpoint_<step>/state, an exported "
    f"params/ directory or params.msgpack)"
  )


def _read_msgpack(path: str) -> Dict[str, Any]:
  from flax import serialization  # pylint: disable=import-outside-toplevel

  with open(path, "rb") as f:
    data = f.read()
  try:
    tree = serialization.msgpack_restore(data)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"checkpoint path {path!r} is a file but not a flax .msgpack params file ({e})") from e
  if not isinstance(tree, Mapping):
    raise ValueError(f"checkpoint path {path!r} is a file but not a flax .msgpack params file")
  tree = _to_plain(tree)
  key = _params_key(tree)
  return _unwrap(tree[key] if key else tree)


def _read_orbax(path: str) -> Dict[str, Any]:
  """The params of an orbax PyTree checkpoint as numpy: only the `params` / `target` entry when there is one."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  path = os.path.abspath(path)
  with ocp.PyTreeCheckpointer() as ckptr:
    meta = ckptr.metadata(path)
    tree = getattr(meta, "item_metadata", None)
    tree = getattr(tree, "tree", tree) if tree is not None else getattr(meta, "tree", meta)
    tree = _to_plain(tree)
    key = _params_key(tree)
    if key is not None:
      tree = {key: tree[key]}
    restore_args = _map_leaves(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    restored = _to_plain(
      ckptr.restore(
        path, args=ocp.args.PyTreeRestore(item=tree, restore_args=restore_args, partial_restore=key is not None)
      )
    )
  return _unwrap(restored[key] if key else restored)


def load_params(path: str, step: Optional[int] = None) -> Tuple[Dict[str, Any], str]:
  """Params (nested dict of numpy arrays) from any source in the module docstring, and the concrete path read."""
  kind, where = resolve_checkpoint(path, step)
  return (_read_msgpack(where) if kind == "msgpack" else _read_orbax(where)), where


def load_model_params(path: str, model: Any, dtype: Optional[Any] = None, step: Optional[int] = None) -> Any:
  """`load_params` checked against `model` (see `check_params_against`) and placed on device as jax arrays
  (cast to `dtype` when given). Raises FileNotFoundError / ParamsMismatchError naming `path`."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  if path is None:
    raise ValueError("CHECKPOINT_PATH is not set (give --gin.CHECKPOINT_PATH=\\\"/path/to/model_dir\\\")")
  params, where = load_params(path, step)
  check_params_against(
    model,
    params,
    what=f"params of checkpoint {path!r} ({where})",
    hint="it holds another model than the one configured (check the model gin files)",
  )
  cast = (lambda x: jnp.asarray(x, dtype)) if dtype else jnp.asarray
  return jax.tree.map(cast, params)


# ------------------------------------------------------------------------------------------ writing
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
