"""Orbax checkpoints: train state + per-process data-iterator position (JSON) + model info, async, keep-N.

Layout: `MODEL_DIR/checkpoint_<step>/{state/, data/process_<i>.json, meta/}` (T5X-style names). Orbax writes into a temporary
directory and renames it when every item is committed, so a save interrupted by `kill -9` never looks complete
(the leftover temporary directory is ignored and cleaned up on the next start).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, Mapping, Optional

from absl import logging
from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from gpt_plugin import params_io


class ShapeMismatchError(params_io.ParamsMismatchError):
  """MODEL_DIR holds a checkpoint of a model with different parameter shapes."""


class ProcessJsonHandler(ocp.JsonCheckpointHandler):
  """Like JsonCheckpointHandler but every process writes (and reads back) its own file.

  The data-iterator position differs per process (each reads its own shards), so it can't be a single file.
  """

  def __init__(self):
    super().__init__(filename="process_0.json")

  @staticmethod
  def _name(index: int) -> str:
    return f"process_{index}.json"

  async def _save_fn(self, x, directory):
    directory = epath.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / self._name(jax.process_index())).write_text(json.dumps(x))

  def restore(self, directory, item=None, args=None):
    path = epath.Path(directory) / self._name(jax.process_index())
    if not path.exists():
      logging.warning("No data-iterator state for process %d in %s", jax.process_index(), directory)
      return None
    return json.loads(path.read_text())


@ocp.args.register_with_handler(ProcessJsonHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
  item: Any


@ocp.args.register_with_handler(ProcessJsonHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
  item: Any = None


def params_shape_info(params: Any) -> Dict[str, list]:
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  out = {}
  for path, leaf in flat:
    name = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
    out[name] = [list(np.shape(leaf)), str(np.dtype(leaf.dtype))]
  return out


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` with the items `state`, `data` and `meta`."""

  def __init__(self, directory: str, keep: Optional[int] = 3, async_save: bool = True, read_only: bool = False):
    self.directory = epath.Path(directory)
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      create=not read_only,
      read_only=read_only,
      enable_async_checkpointing=async_save,
      cleanup_tmp_directories=True,
      save_interval_steps=1,
      step_prefix="checkpoint",
    )
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=options,
      item_handlers={
        "state": ocp.StandardCheckpointHandler(),
        "data": ProcessJsonHandler(),
        "meta": ocp.JsonCheckpointHandler(),
      },
    )

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self):
    return list(self.manager.all_steps())

  def read_meta(self, step: Optional[int] = None) -> Optional[dict]:
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    path = self.directory / f"checkpoint_{step}" / "meta" / "metadata"
    if not path.exists():
      return None
    return json.loads(path.read_text())

  def check_compatible(self, params_info: Mapping[str, list]) -> None:
    """Raises ShapeMismatchError (before anything is written) if the latest checkpoint has other shapes."""
    meta = self.read_meta()
    if meta is None:
      return
    problems = params_io.compare_param_shapes(
      {k: v[0] for k, v in params_info.items()}, {k: v[0] for k, v in meta.get("params", {}).items()}
    )
    if problems:
      raise ShapeMismatchError(
        params_io.mismatch_message(
          f"{self.directory} holds a checkpoint (step {self.latest_step()}) of a model with different parameter "
          f"shapes; refusing to overwrite it. Use another MODEL_DIR or the matching model gin",
          problems,
        )
      )

  def save(self, step: int, state: Any, data_state: Optional[dict], meta: dict, force: bool = False) -> bool:
    args = ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=DataStateSave(data_state if data_state is not None else {}),
      meta=ocp.args.JsonSave(meta),
    )
    return self.manager.save(int(step), args=args, force=force)

  def restore(self, step: Optional[int], abstract_state: Any) -> tuple:
    """Restores onto the shardings in `abstract_state` (ShapeDtypeStructs with `.sharding`), any mesh."""
    step = self.latest_step() if step is None else step
    restored = self.manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=DataStateRestore())
    )
    data = restored.get("data") if hasattr(restored, "get") else restored.data
    return restored.state, (data or None)

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def export_params(model_dir: str, output_dir: Optional[str] = None, step: Optional[int] = None) -> str:
  """Writes the params alone (as `{'params': ...}`) from a training checkpoint.

  Output: `<output_dir>/params/` (orbax, restorable with `ocp.StandardCheckpointer().restore`) and
  `<output_dir>/params.msgpack` (flax serialization, the original project's export format). Runs on one
  process, no mesh needed; arrays are restored as numpy.
  """
  from flax import serialization  # pylint: disable=g-import-not-at-top

  ckpt_dir = epath.Path(model_dir)
  mgr = ocp.CheckpointManager(
    ckpt_dir,
    options=ocp.CheckpointManagerOptions(read_only=True, step_prefix="checkpoint"),
    item_handlers={"state": ocp.PyTreeCheckpointHandler()},
  )
  step = mgr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {ckpt_dir}")
  meta = mgr.item_metadata(step)["state"]
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
  state = mgr.restore(
    step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(item=None, restore_args=restore_args))
  )["state"]
  params = state["params"]
  out = epath.Path(output_dir or (epath.Path(model_dir) / f"export_{step}"))
  out.mkdir(parents=True, exist_ok=True)
  saver = ocp.StandardCheckpointer()
  saver.save(out / "params", {"params": params}, force=True)
  saver.wait_until_finished()
  saver.close()
  (out / "params.msgpack").write_bytes(serialization.msgpack_serialize({"params": params}))
  mgr.close()
  return str(out)
