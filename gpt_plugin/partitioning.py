"""Device mesh, logical axis rules and multi-host start-up (all chosen from gin).

The mesh always has the three axes ``(data, fsdp, tensor)``:

* ``data``   – pure data parallelism (params replicated along it),
* ``fsdp``   – data parallelism whose params/optimiser state are sharded along it (ZeRO-3 / FSDP),
* ``tensor`` – Megatron-style tensor parallelism (heads / mlp / vocab split).

The batch is always split over ``('data', 'fsdp')``. Which *parameter* dimensions land on which mesh axis is
decided by the logical axis rules (``gin/partitioning/*.gin``), which map the model's logical names
(``vocab, embed, mlp, joined_kv, heads, ...``) to mesh axes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Optional, Sequence, Tuple, Union

from absl import logging
import flax.linen as nn
from flax.linen import partitioning as flax_partitioning
import jax
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from gpt_plugin import tree_paths

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

LogicalRules = Sequence[Tuple[str, Union[None, str, Tuple[str, ...]]]]

# Logical names that are never sharded (always appended, like T5X does).
_ALWAYS_REPLICATED = (
  "length",
  "kv",
  "stack",
  "layers",
  "abspos_buckets",
  "head_qk",
  "relpos_buckets",
  "mlp_activations",
)


def logical_axis_rules(
  param_rules: LogicalRules = (),
  activation_rules: LogicalRules = (),
  batch: Union[str, Tuple[str, ...], None] = BATCH_AXES,
) -> Tuple[Tuple[str, Any], ...]:
  """Builds the full rule list: batch rule, then parameter rules, then activation rules, then replicated names.

  flax resolves rules in order and never uses one mesh axis twice in a spec, so e.g. with FSDP
  (`embed -> fsdp`) an activation `('batch', 'length', 'embed')` keeps `embed` replicated because `fsdp` is
  already taken by `batch`.
  """
  rules = [("batch", batch)]
  rules += [(k, tuple(v) if isinstance(v, list) else v) for k, v in param_rules]
  rules += [(k, tuple(v) if isinstance(v, list) else v) for k, v in activation_rules]
  known = {k for k, _ in rules}
  rules += [(name, None) for name in _ALWAYS_REPLICATED if name not in known]
  return tuple(rules)


def maybe_initialize_distributed(
  coordinator_address: Optional[str] = None,
  num_processes: Optional[int] = None,
  process_id: Optional[int] = None,
  local_device_ids: Optional[Sequence[int]] = None,
  cpu_collectives: Optional[str] = None,
  auto: bool = False,
  initialization_timeout: int = 300,
) -> bool:
  """Calls `jax.distributed.initialize` when configured (coordinator given, or `auto` on TPU/SLURM).

  Returns True when a multi-process run was started. Must run before anything touches the devices.
  """
  if not coordinator_address and not auto:
    return False
  import gin  # pylint: disable=g-import-not-at-top

  if num_processes is gin.REQUIRED:
    raise ValueError("missing required gin macro NUM_HOSTS (number of processes) for the multi-host mesh")
  if cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  kwargs = {}
  if coordinator_address:
    kwargs.update(coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)
  if local_device_ids is not None:
    kwargs["local_device_ids"] = list(local_device_ids)
  jax.distributed.initialize(initialization_timeout=initialization_timeout, **kwargs)
  logging.info(
    "jax.distributed initialised: process %d of %d, %d local / %d global devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return True


def _resolve_shape(shape: Sequence[int], total: int, what: str) -> Tuple[int, ...]:
  shape = list(shape)
  if shape.count(-1) > 1:
    raise ValueError(f"{what}: at most one -1 allowed, got {shape}")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if total % known:
      raise ValueError(f"{what} {shape} does not divide {total} devices")
    shape[shape.index(-1)] = total // known
  if -1 not in list(shape) and math.prod(shape) < total and what == "mesh_shape":
    return tuple(shape)  # caller uses the first prod(shape) devices
  if math.prod(shape) != total:
    raise ValueError(f"{what} {tuple(shape)} needs {math.prod(shape)} devices but {total} are available")
  return tuple(shape)


def create_mesh(
  mesh_shape: Sequence[int] = (-1, 1, 1),
  dcn_mesh_shape: Optional[Sequence[int]] = None,
  axis_names: Sequence[str] = MESH_AXES,
  devices: Optional[Sequence[Any]] = None,
) -> Mesh:
  """Creates the `(data, fsdp, tensor)` mesh.

  Args:
    mesh_shape: per-slice (ICI / NVLink) shape; one entry may be -1. Without `dcn_mesh_shape` it spans all
      devices.
    dcn_mesh_shape: shape across slices/hosts (DCN / InfiniBand), e.g. `(num_hosts, 1, 1)` for a GPU cluster.
      The full mesh is the elementwise product.
    axis_names: must be the three names in MESH_AXES order.
  """
  if tuple(axis_names) != MESH_AXES:
    raise ValueError(f"mesh axis names must be {MESH_AXES}, got {tuple(axis_names)}")
  devices = list(devices) if devices is not None else jax.devices()
  if dcn_mesh_shape:
    n_slices = math.prod(dcn_mesh_shape)
    ici = _resolve_shape(mesh_shape, len(devices) // n_slices, "mesh_shape")
    dev_array = mesh_utils.create_hybrid_device_mesh(
      ici, tuple(dcn_mesh_shape), devices=devices, process_is_granule=devices[0].platform != "tpu"
    )
  else:
    shape = _resolve_shape(mesh_shape, len(devices), "mesh_shape")
    if math.prod(shape) < len(devices):
      logging.warning("mesh_shape %s uses %d of %d devices", shape, math.prod(shape), len(devices))
      devices = sorted(devices, key=lambda d: (d.process_index, d.id))[: math.prod(shape)]
    if devices[0].platform in ("cpu",) or len(devices) == 1:
      # Keep process order: processes are contiguous along the leading (data) axis.
      dev_array = np.asarray(sorted(devices, key=lambda d: (d.process_index, d.id)), dtype=object).reshape(shape)
    else:
      dev_array = mesh_utils.create_device_mesh(shape, devices=devices, allow_split_physical_axes=True)
  return Mesh(dev_array, tuple(axis_names))


@dataclasses.dataclass
class Partitioner:
  """A mesh plus logical-axis rules; turns logical PartitionSpecs into NamedShardings."""

  mesh: Mesh
  rules: Tuple[Tuple[str, Any], ...]

  @property
  def data_parallel_size(self) -> int:
    return int(np.prod([self.mesh.shape[a] for a in BATCH_AXES]))

  def sharding(self, spec: P = P()) -> NamedSharding:
    return NamedSharding(self.mesh, spec)

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  def logical_to_mesh(self, logical_specs: Any) -> Any:
    """Maps a tree of logical PartitionSpecs (or None) to NamedShardings."""

    def one(spec):
      if spec is None:
        return self.replicated
      return NamedSharding(self.mesh, nn.logical_to_mesh_axes(tuple(spec), self.rules))

    return jax.tree.map(one, logical_specs, is_leaf=lambda x: x is None or isinstance(x, P))

  def batch_sharding(self, ndim: int = 2) -> NamedSharding:
    return NamedSharding(self.mesh, P(BATCH_AXES, *([None] * (ndim - 1))))

  @contextlib.contextmanager
  def context(self):
    """Mesh + axis-rules context for tracing (activation `with_sharding_constraint`s resolve against it)."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules), flax_partitioning.axis_rules(self.rules):
      yield


def params_logical_specs(variables: Any, params: Any) -> Any:
  """Logical PartitionSpec tree for `params` from the model's `params_axes` collection (None where missing)."""
  axes = variables.get("params_axes") if hasattr(variables, "get") else None
  if axes is None:
    return jax.tree.map(lambda _: None, params)
  names = flax_partitioning.get_axis_names(axes)
  names = jax.tree.map(lambda x: x, names, is_leaf=lambda x: isinstance(x, P))
  flat_names = {k: v for k, v in _flatten(names)}

  def spec_for(path, leaf):
    key = tuple(tree_paths.key_name(p) for p in path)
    spec = flat_names.get(key)
    if spec is not None and len(spec) != np.ndim(leaf):
      raise ValueError(f"param {'/'.join(key)} has rank {np.ndim(leaf)} but axes {spec}")
    return spec

  return jax.tree_util.tree_map_with_path(spec_for, params)


def _flatten(tree):
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, P))[0]
  return [(tuple(tree_paths.key_name(p) for p in path), leaf) for path, leaf in leaves]
