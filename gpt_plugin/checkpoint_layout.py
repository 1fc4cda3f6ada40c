"""The one owner of the training checkpoint layout: folder names, the step pattern, the metadata files, the
params-only export.

  MODEL_DIR/
    checkpoint_<step>/                 one orbax CheckpointManager step (T5X-style name; orbax `step_prefix`)
      state/                           the train state (orbax PyTree: params, opt_state, step, rng, loss scale)
      data/process_<i>.json            process i's data-iterator position
      meta/metadata                    JSON: param names -> [shape, dtype], num_params, mesh, LR schedule probe
    checkpoint_<step>.corrupt/         a checkpoint that failed to restore, moved aside (never deleted)
    export_<step>/ or OUT/             `export_params`: params/ (orbax) + params.msgpack

Everything else that reads or writes this layout (`checkpointing.Checkpointer`, `params_io.resolve_checkpoint`,
`params_io.checkpoint_steps`, `convert.averaging`) asks this module.
"""

from __future__ import annotations

import json
import logging as py_logging
import os
import re
from typing import Any, Dict, List, Optional, Tuple

STEP_PREFIX = "checkpoint"
STEP_DIR_RE = re.compile(rf"^{STEP_PREFIX}_(\d+)$")
STATE_ITEM = "state"
DATA_ITEM = "data"
META_ITEM = "meta"
META_FILE = "metadata"  # the file orbax's JsonCheckpointHandler writes inside meta/
CORRUPT_SUFFIX = ".corrupt"
ORBAX_MARKERS = ("_METADATA", "_CHECKPOINT_METADATA", "manifest.ocdbt")
PARAMS_KEY = "params"  # the train-state entry holding the params


class _NoMissingMetadataWarning(py_logging.Filter):
  """Orbax warns "Metadata file does not exist" on every restore of a checkpoint without its optional
  `_CHECKPOINT_METADATA` (params exports, converted checkpoints); that is expected, so it is not shown."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Metadata file does not exist")


py_logging.getLogger("absl").addFilter(_NoMissingMetadataWarning())


def step_dir_name(step: int) -> str:
  return f"{STEP_PREFIX}_{int(step)}"


def step_dir(model_dir: str, step: int) -> str:
  return os.path.join(os.fspath(model_dir), step_dir_name(step))


def parse_step(name: str) -> Optional[int]:
  """The step of a `checkpoint_<step>` folder name, else None (temporary and `.corrupt` folders give None)."""
  m = STEP_DIR_RE.match(os.path.basename(os.path.normpath(name)))
  return int(m.group(1)) if m else None


def state_dir(model_dir: str, step: int) -> str:
  return os.path.join(step_dir(model_dir, step), STATE_ITEM)


def meta_path(model_dir: str, step: int) -> str:
  return os.path.join(step_dir(model_dir, step), META_ITEM, META_FILE)


def data_file_name(process_index: int) -> str:
  return f"process_{int(process_index)}.json"


def checkpoint_steps(model_dir: str) -> List[int]:
  """Steps of the complete `checkpoint_<step>` folders (with a `state/` item) in a MODEL_DIR, ascending."""
  model_dir = os.fspath(model_dir)
  if not os.path.isdir(model_dir):
    return []
  steps = [parse_step(name) for name in os.listdir(model_dir)]
  return sorted(s for s in steps if s is not None and os.path.isdir(state_dir(model_dir, s)))


def read_meta(model_dir: str, step: int) -> Optional[dict]:
  """`meta/metadata` of a checkpoint, or None when it is missing or unreadable."""
  try:
    with open(meta_path(model_dir, step)) as f:
      meta = json.load(f)
  except (OSError, ValueError):
    return None
  return meta if isinstance(meta, dict) else None


def _names_and_shapes(tree: Any, prefix: str = "") -> Dict[str, Tuple[int, ...]]:
  out = {}
  for k, v in tree.items():
    name = f"{prefix}{k}"
    if hasattr(v, "items"):
      out.update(_names_and_shapes(v, name + "/"))
    else:
      out[name] = tuple(int(d) for d in getattr(v, "shape", ()) or ())
  return out


def array_param_shapes(model_dir: str, step: int) -> Optional[Dict[str, Tuple[int, ...]]]:
  """Param name -> shape from the checkpoint's own array metadata (orbax `state/`), without `meta/`; None when
  that metadata cannot be read."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  try:
    with ocp.PyTreeCheckpointer() as ckptr:
      meta = ckptr.metadata(os.path.abspath(state_dir(model_dir, step)))
    tree = getattr(meta, "item_metadata", None)
    tree = getattr(tree, "tree", tree) if tree is not None else getattr(meta, "tree", meta)
    return _names_and_shapes(tree[PARAMS_KEY])
  except Exception:  # pylint: disable=broad-except  (any unreadable metadata: the caller tries the next source)
    return None


def stored_param_shapes(model_dir: str, step: int) -> Tuple[Optional[Dict[str, Tuple[int, ...]]], str]:
  """(param name -> shape, where it was read) for a checkpoint: `meta/metadata`, else the array metadata."""
  meta = read_meta(model_dir, step)
  if meta is not None and isinstance(meta.get("params"), dict):
    return {k: tuple(int(d) for d in v[0]) for k, v in meta["params"].items()}, meta_path(model_dir, step)
  return array_param_shapes(model_dir, step), state_dir(model_dir, step)


def aside_path(model_dir: str, step: int) -> str:
  """Where `move_aside` would put `checkpoint_<step>` now: `checkpoint_<step>.corrupt` (`.corrupt.1`, ... if taken)."""
  src = step_dir(model_dir, step)
  dst = src + CORRUPT_SUFFIX
  n = 0
  while os.path.exists(dst):
    n += 1
    dst = f"{src}{CORRUPT_SUFFIX}.{n}"
  return dst


def move_aside(model_dir: str, step: int, dst: Optional[str] = None) -> str:
  """Renames `checkpoint_<step>` to `dst` (default `aside_path`); returns the new path. Nothing inside is changed
  or deleted."""
  dst = dst or aside_path(model_dir, step)
  os.rename(step_dir(model_dir, step), dst)
  return dst


def export_params(model_dir: str, output_dir: Optional[str] = None, step: Optional[int] = None) -> str:
  """Writes the params alone (as `{'params': ...}`) of `checkpoint_<step>` (default: the latest) of a MODEL_DIR.

  Output: `<output_dir>/params/` (orbax, restorable with `ocp.StandardCheckpointer().restore`) and
  `<output_dir>/params.msgpack` (flax serialization, the original project's export format); default
  `output_dir` is `MODEL_DIR/export_<step>`. Only the params are read (orbax partial restore through
  `params_io.load_params`): the optimizer state is never loaded. One process, no mesh needed.
  """
  from gpt_plugin import params_io  # pylint: disable=import-outside-toplevel

  steps = checkpoint_steps(model_dir)
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {model_dir}")
  step = steps[-1] if step is None else int(step)
  params, _ = params_io.load_params(os.fspath(model_dir), step)
  out = os.fspath(output_dir) if output_dir else os.path.join(os.fspath(model_dir), f"export_{step}")
  return params_io.save_params(out, params, msgpack=True)
