"""The train state, initialised or restored: abstract shapes and shardings first (no device memory), then the
newest checkpoint that restores, else a warm start (`init_params_from`), else the random init."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from gpt_plugin import errors
from gpt_plugin import params_io
from gpt_plugin import partitioning
from gpt_plugin.training import checkpointing
from gpt_plugin.training import console as console_lib
from gpt_plugin.training import metrics as metrics_lib
from gpt_plugin.training import train_step as train_step_lib


class InitParamsMismatchError(params_io.ParamsMismatchError, errors.UserError):
  """`init_params_from` holds params whose names or shapes differ from the model's."""


def named_leaves(tree):
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [
    ("/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path), leaf)
    for path, leaf in flat
  ]


def load_init_params(path: str, abstract_params: Any, params_shardings: Any) -> Any:
  """Params for a warm start: read with `gpt_plugin.params_io.load_params` (a `convert` / `export_params` output
  directory, its `params/` folder, a `.msgpack` file, a MODEL_DIR or one `checkpoint_<step>`), checked name by
  name and shape by shape against the model, cast to the model's param dtypes and placed on `params_shardings`
  (each process reads the file and keeps its own shards)."""
  loaded, where = params_io.load_params(path)
  params_io.check_params_against(
    abstract_params,
    loaded,
    what=f"init_params_from={path} ({where})",
    error=InitParamsMismatchError,
    hint="use the model gin the params were trained with, or convert them first (python -m gpt_plugin.convert)",
  )
  by_name = dict(named_leaves(loaded))
  names = [n for n, _ in named_leaves(abstract_params)]
  treedef = jax.tree.structure(abstract_params)
  out = []
  for name, a, sh in zip(names, jax.tree.leaves(abstract_params), jax.tree.leaves(params_shardings)):
    arr = np.asarray(by_name[name]).astype(a.dtype)
    out.append(jax.make_array_from_callback(a.shape, sh, lambda idx, arr=arr: arr[idx]))
  return jax.tree.unflatten(treedef, out)


@dataclasses.dataclass
class StateSpec:
  """What the train state looks like (shapes, dtypes, shardings) and how to make a fresh one."""

  tx: Any
  abstract_state: Any
  state_sh: Any
  params_sh: Any
  init_fn: Callable[[Any, Any], Any]  # (init_key, train_key) -> TrainState
  init_key: Any
  train_key: Any

  @property
  def num_params(self) -> int:
    return metrics_lib.count_params(self.abstract_state.params)

  @property
  def params_info(self) -> Dict[str, list]:
    return checkpointing.params_shape_info(self.abstract_state.params)


def build_state_spec(
  model: Any,
  tx: Any,
  partitioner: partitioning.Partitioner,
  input_shapes: Dict[str, tuple],
  random_seed: int,
  initial_loss_scale: float,
) -> StateSpec:
  """Abstract train state and its shardings; nothing is allocated on the devices."""
  key = jax.random.key(random_seed)
  init_key, train_key = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
  input_types = {k: jnp.int32 for k in input_shapes}
  with partitioner.context():
    abstract_vars = jax.eval_shape(lambda k: model.get_initial_variables(k, input_shapes, input_types), init_key)
  logical_specs = partitioning.params_logical_specs(abstract_vars, abstract_vars["params"])
  params_sh = partitioner.logical_to_mesh(logical_specs)

  def init_state(k_init, k_train):
    variables = model.get_initial_variables(k_init, input_shapes, input_types)
    return train_step_lib.create_train_state(variables["params"], tx, k_train, initial_loss_scale)

  abstract_state = jax.eval_shape(init_state, init_key, train_key)
  state_sh = train_step_lib.state_shardings(abstract_state, params_sh, tx, partitioner.replicated)
  return StateSpec(tx, abstract_state, state_sh, params_sh, init_state, init_key, train_key)


def fresh_state(
  spec: StateSpec, partitioner: partitioning.Partitioner, init_params_from: Optional[str], console: console_lib.Console
) -> Any:
  """The random init, with the params of `init_params_from` (and a fresh optimiser state for them) when given."""
  with partitioner.context():
    state = jax.jit(spec.init_fn, out_shardings=spec.state_sh)(spec.init_key, spec.train_key)
  if init_params_from:
    params = load_init_params(init_params_from, spec.abstract_state.params, spec.params_sh)
    with partitioner.context():
      opt_state = jax.jit(spec.tx.init, out_shardings=spec.state_sh.opt_state)(params)
    state = state.replace(params=params, opt_state=opt_state)
    logging.info("Initialised params from %s", init_params_from)
    console.print(f"initialised params from {init_params_from}")
  return state


def init_or_restore(
  spec: StateSpec,
  ckpt: checkpointing.Checkpointer,
  partitioner: partitioning.Partitioner,
  *,
  resume: bool,
  init_params_from: Optional[str],
  console: console_lib.Console,
) -> Tuple[Any, Optional[dict], Optional[int]]:
  """(state, data-iterator position, restored step or None). Restores the newest checkpoint that restores
  (see `Checkpointer.restore_newest_good`) when `resume`, else builds a fresh state."""
  if resume:
    abstract_with_sh = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), spec.abstract_state, spec.state_sh
    )
    restored = ckpt.restore_newest_good(abstract_with_sh)
    if restored is not None:
      step, state, data_state = restored
      logging.info("Restored checkpoint step %d from %s", step, ckpt.directory)
      return state, data_state, step
  return fresh_state(spec, partitioner, init_params_from, console), None, None
