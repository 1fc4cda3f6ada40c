"""Orbax checkpoints of a training run: train state + per-process data-iterator position (JSON) + model info, async,
keep-N, restored with a fallback to the newest checkpoint that restores.

The folder layout (names, step pattern, metadata files, the params-only export) is owned by
`gpt_plugin.checkpoint_layout`. Orbax writes into a temporary directory and renames it when every item is
committed, so a save interrupted by `kill -9` never looks complete (the leftover temporary directory is ignored and
cleaned up on the next start).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from absl import logging
from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from gpt_plugin import cli
from gpt_plugin import errors
from gpt_plugin import params_io
from gpt_plugin import stderr_capture
from gpt_plugin import tree_paths
from gpt_plugin import checkpoint_layout as layout

export_params = layout.export_params  # the params-only export lives with the layout


class ShapeMismatchError(params_io.ParamsMismatchError, errors.UserError):
  """MODEL_DIR holds a checkpoint of a model with different parameter shapes."""


class NoRestorableCheckpointError(errors.UserError):
  """Every checkpoint in MODEL_DIR failed to restore (the message names each one and why)."""


class ProcessJsonHandler(ocp.JsonCheckpointHandler):
  """Like JsonCheckpointHandler but every process writes (and reads back) its own file.

  The data-iterator position differs per process (each reads its own shards), so it can't be a single file.
  A file that is not valid JSON makes `Checkpointer.restore` raise (the checkpoint then counts as broken and an
  older one is restored). The handler itself returns the error instead of raising it, so that a process with a
  garbled file still takes part in orbax's end-of-restore barrier with the others.
  """

  def __init__(self):
    super().__init__(filename=layout.data_file_name(0))

  async def _save_fn(self, x, directory):
    directory = epath.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / layout.data_file_name(jax.process_index())).write_text(json.dumps(x))

  def restore(self, directory, item=None, args=None):
    path = epath.Path(directory) / layout.data_file_name(jax.process_index())
    if not path.exists():
      logging.warning("No data-iterator state for process %d in %s", jax.process_index(), directory)
      return None
    try:
      return json.loads(path.read_text())
    except ValueError as e:  # json.JSONDecodeError, UnicodeDecodeError
      return _UnreadableDataState(f"{path}: {type(e).__name__}: {e}")


@dataclasses.dataclass(frozen=True)
class _UnreadableDataState:
  """What `ProcessJsonHandler.restore` returns for a data-position file it cannot parse."""

  error: str


@ocp.args.register_with_handler(ProcessJsonHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
  item: Any


@ocp.args.register_with_handler(ProcessJsonHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
  item: Any = None


def params_shape_info(params: Any) -> Dict[str, list]:
  return {name: [list(np.shape(leaf)), str(np.dtype(leaf.dtype))] for name, leaf in tree_paths.named_leaves(params)}


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
      step_prefix=layout.STEP_PREFIX,
    )
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=options,
      item_handlers={
        layout.STATE_ITEM: ocp.StandardCheckpointHandler(),
        layout.DATA_ITEM: ProcessJsonHandler(),
        layout.META_ITEM: ocp.JsonCheckpointHandler(),
      },
    )
    self._closed = False

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self):
    return list(self.manager.all_steps())

  def read_meta(self, step: Optional[int] = None) -> Optional[dict]:
    step = self.latest_step() if step is None else step
    return None if step is None else layout.read_meta(str(self.directory), step)

  def check_compatible(self, params_info: Mapping[str, list]) -> None:
    """Raises ShapeMismatchError (before anything is written) if the newest checkpoint whose param shapes can be
    read (`meta/metadata`, else the arrays' own metadata) has other shapes."""
    for step in sorted(self.all_steps(), reverse=True):
      found, where = layout.stored_param_shapes(str(self.directory), step)
      if found is None:
        continue
      problems = params_io.compare_param_shapes({k: v[0] for k, v in params_info.items()}, found)
      if problems:
        raise ShapeMismatchError(
          params_io.mismatch_message(
            f"{self.directory} holds a checkpoint (step {step}, shapes read from {where}) of a model with "
            f"different parameter shapes; refusing to overwrite it. Use another MODEL_DIR or the matching model gin",
            problems,
          )
        )
      return

  def save(self, step: int, state: Any, data_state: Optional[dict], meta: dict, force: bool = False) -> bool:
    args = ocp.args.Composite(
      **{
        layout.STATE_ITEM: ocp.args.StandardSave(state),
        layout.DATA_ITEM: DataStateSave(data_state if data_state is not None else {}),
        layout.META_ITEM: ocp.args.JsonSave(meta),
      }
    )
    return self.manager.save(int(step), args=args, force=force)

  def restore(self, step: Optional[int], abstract_state: Any) -> tuple:
    """Restores onto the shardings in `abstract_state` (ShapeDtypeStructs with `.sharding`), any mesh."""
    step = self.latest_step() if step is None else step
    restored = self.manager.restore(
      step,
      args=ocp.args.Composite(
        **{layout.STATE_ITEM: ocp.args.StandardRestore(abstract_state), layout.DATA_ITEM: DataStateRestore()}
      ),
    )
    data = restored.get(layout.DATA_ITEM) if hasattr(restored, "get") else restored.data
    if isinstance(data, _UnreadableDataState):
      raise ValueError(f"data-position file {data.error}")
    return restored[layout.STATE_ITEM], (data or None)

  def restore_newest_good(
    self, abstract_state: Any, warn: Callable[[str], None] = logging.warning
  ) -> Optional[Tuple[int, Any, Optional[dict]]]:
    """(step, state, data position) of the newest checkpoint that restores, None when there is none.

    Newer checkpoints that fail (truncated array file, missing `_METADATA`, garbled data-position file, ...) are
    moved aside as `checkpoint_<step>.corrupt` (nothing is deleted; the rename lets training write that step
    again) and `warn` is called once, naming them, why, and the checkpoint used instead. Raises
    NoRestorableCheckpointError, changing nothing, when checkpoints exist but none restores."""
    failures: List[Tuple[int, str]] = []  # (step, reason)
    # A failed restore makes orbax/TensorStore threads print pages of traces ("Event loop is closed", specs), some
    # of them only when its coroutines are collected or its callbacks fire, after the restore has returned. The
    # warning below says what failed, so all restore output is held back when anything failed (--verbose shows it).
    with stderr_capture.captured_stderr() as native_output:
      try:
        found = self._restore_newest(abstract_state, failures)
      finally:
        if failures:
          gc.collect()
          native_output.wait_until_quiet()
    if not failures or cli.verbose_requested(sys.argv[1:]):
      sys.stderr.write("".join(native_output))
    if found is None and failures:
      raise NoRestorableCheckpointError(
        f"no checkpoint in {self.directory} restores ({_describe_failures(failures)}); nothing was changed. "
        f"Use another MODEL_DIR, or move the broken checkpoints away to start from scratch"
      )
    if found is not None and failures:
      moved_to = self._set_aside([bad for bad, _ in failures])
      warn(
        f"restoring {layout.step_dir_name(failures[0][0])} in {self.directory} failed, so the newest checkpoint "
        f"that restores, {layout.step_dir_name(found[0])}, is used instead ({_describe_failures(failures, moved_to)})"
      )
    return found

  def _restore_newest(self, abstract_state: Any, failures: List[Tuple[int, str]]):
    """Tries each checkpoint, newest first; appends (step, reason) to `failures` for each that fails. With several
    processes a checkpoint counts as restored only when it restored in every process (a garbled data-position file
    of one process fails it for all), so that all of them continue from the same step."""
    for step in sorted(self.all_steps(), reverse=True):
      try:
        state, data = self.restore(step, abstract_state)
        reason = None
      except Exception as e:  # pylint: disable=broad-except  (any failure: try the next older checkpoint)
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        _finalize_failed_restore(e)
      failed_on = _processes_where(reason is not None)
      if not failed_on:
        return step, state, data
      if reason is None:
        state = data = None
        reason = f"it did not restore in process(es) {', '.join(map(str, failed_on))}"
      failures.append((step, reason))
    return None

  def _set_aside(self, steps: List[int]) -> Dict[int, str]:
    """Moves broken checkpoints aside (process 0; the others wait) and makes the manager forget them. Returns each
    step's new folder name, the same in every process (agreed on before anything moves)."""
    moved_to = {step: os.path.basename(layout.aside_path(str(self.directory), step)) for step in steps}
    _sync_processes("checkpoint_set_aside_names")
    if jax.process_index() == 0:
      for step in steps:
        layout.move_aside(str(self.directory), step, os.path.join(str(self.directory), moved_to[step]))
    _sync_processes("checkpoint_set_aside_done")
    self.manager.reload()
    return moved_to

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    """Waits for pending saves and stops orbax's background threads (idempotent)."""
    if self._closed:
      return
    self._closed = True
    try:
      self.manager.wait_until_finished()
    finally:
      self.manager.close()


def _finalize_failed_restore(error: BaseException) -> None:
  """Drops what a failed restore still holds and keeps orbax's abandoned read coroutines quiet from now on.

  Each coroutine that read a broken array re-raises its error when the garbage collector finalises it, and Python
  prints that as "Exception ignored in: <coroutine ...>" with a page of TensorStore spec, at whatever moment the
  collection happens (often well after the restore). The warning of `restore_newest_good` already names the
  failure, so those reports go to the debug log (shown with --verbose) instead."""
  error.__traceback__ = None
  error.__context__ = error.__cause__ = None
  global _previous_unraisablehook
  if _previous_unraisablehook is None:
    _previous_unraisablehook = sys.unraisablehook
    sys.unraisablehook = _quiet_orbax_coroutine_reports


_previous_unraisablehook: Optional[Callable[[Any], None]] = None


def _quiet_orbax_coroutine_reports(unraisable: Any) -> None:
  code = getattr(unraisable.object, "cr_code", None)
  if code is not None and "orbax" in code.co_filename:
    if cli.verbose_requested(sys.argv[1:]):
      logging.warning("ignored in %s: %s", unraisable.object, unraisable.exc_value)
    return
  _previous_unraisablehook(unraisable)


def _describe_failures(failures: List[Tuple[int, str]], moved_to: Optional[Dict[int, str]] = None) -> str:
  parts = []
  for step, reason in failures:
    where = f"; moved aside to {moved_to[step]}" if moved_to else ""
    parts.append(f"{layout.step_dir_name(step)}: {reason}{where}")
  return "; ".join(parts)


def _processes_where(flag: bool) -> List[int]:
  """The indices of the processes whose `flag` is true (every process calls this at the same point)."""
  if jax.process_count() == 1:
    return [0] if flag else []
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  flags = np.asarray(multihost_utils.process_allgather(np.asarray(flag, np.int32))).reshape(-1)
  return [int(i) for i in np.flatnonzero(flags)]


def _sync_processes(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    multihost_utils.sync_global_devices(name)
