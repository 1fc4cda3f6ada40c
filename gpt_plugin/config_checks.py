"""One validation pass over the parsed gin config, run by the runners before anything is written.

`check_train()` runs after gin is parsed and before MODEL_DIR is touched (gpt_plugin/train.py); `check_eval()` and
`check_infer()` do the same for the other runners. Each problem raises `gpt_plugin.errors.ConfigError` naming the
macro or binding that set the value (`TRAIN_STEPS`, or `train_lib.train.total_steps` when bound directly), the
value, and what is allowed. The checks read bound values with `gin.query_parameter`; values not bound in gin keep
the function's default and are not checked here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence, Tuple

import gin

from gpt_plugin.errors import ConfigError

_UNBOUND = object()


@dataclasses.dataclass(frozen=True)
class Bound:
  """A gin value and the name the user set it with (the macro, else the binding's selector)."""

  value: Any
  label: str

  @property
  def unbound(self) -> bool:
    return self.value is _UNBOUND


def _reference(v: Any) -> Tuple[Optional[str], Optional[str]]:
  """('gin.macro' | 'gin.constant', name) for `%NAME`, else (None, None)."""
  if isinstance(v, gin.config.ConfigurableReference) and v.selector in ("gin.macro", "gin.constant"):
    return v.selector, v.scoped_selector.rsplit("/", 1)[0]
  return None, None


def _value_of(v: Any, label: str, depth: int = 0) -> Any:
  """`v` with every `%MACRO` / `%CONSTANT` inside it (also inside tuples, lists, dicts) replaced by its value."""
  if depth > 32:
    raise ConfigError(f"{label}: the macros refer to each other in a cycle")
  kind, name = _reference(v)
  if name == "gin.REQUIRED":
    raise ConfigError(f"{label} is required: set it, e.g. --gin.{label}=... (see --help)")
  if kind == "gin.macro":
    return _value_of(gin.query_parameter(f"%{name}"), name, depth + 1)
  if kind == "gin.constant":
    return gin.config._CONSTANTS.get(name, v)  # pylint: disable=protected-access
  if isinstance(v, (tuple, list)):
    return type(v)(_value_of(x, label, depth + 1) for x in v)
  if isinstance(v, dict):
    return {k: _value_of(x, label, depth + 1) for k, x in v.items()}
  return v


def bound(selector: str) -> Bound:
  """The value bound to `selector` (`train_lib.train.total_steps`, `%TRAIN_STEPS`), macros resolved; its label is
  the macro the binding names (TRAIN_STEPS), else the selector."""
  label = selector[1:] if selector.startswith("%") else selector
  try:
    v = gin.query_parameter(selector)
  except ValueError:
    return Bound(_UNBOUND, label)
  kind, name = _reference(v)
  if kind == "gin.macro":
    label = name
  return Bound(_value_of(v, label), label)


def _kind(v: Any) -> str:
  return {str: "a string", float: "a float", bool: "a boolean", type(None): "None"}.get(type(v), type(v).__name__)


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def require_int(b: Bound, minimum: int = 1, allow_none: bool = False) -> Optional[int]:
  """The bound int (>= minimum), None when unbound (or None and `allow_none`); else ConfigError."""
  if b.unbound or (allow_none and b.value is None):
    return None
  if not _is_int(b.value) or b.value < minimum:
    allowed = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    got = "" if _is_int(b.value) else f" ({_kind(b.value)})"
    raise ConfigError(
      f"{b.label} = {b.value!r}{got} is not allowed: it must be {allowed}" + (" or None" if allow_none else "")
    )
  return b.value


def require_lengths(b: Bound) -> None:
  """TASK_FEATURE_LENGTHS-style {feature: positive int}."""
  if b.unbound or b.value is None:
    return
  if not isinstance(b.value, dict) or not b.value:
    raise ConfigError(f"{b.label} = {b.value!r} is not allowed: it must be a dict like {{'targets': 1024}}")
  for k, v in b.value.items():
    if not _is_int(v) or v < 1:
      raise ConfigError(
        f"{b.label} = {b.value!r}: the length of {k!r} is {v!r}; every length must be a positive integer"
      )


@dataclasses.dataclass(frozen=True)
class MeshPlan:
  shape: Tuple[int, int, int]  # (data, fsdp, tensor), resolved
  num_devices: int
  platform: str

  @property
  def data_parallel(self) -> int:
    return self.shape[0] * self.shape[1]

  def describe(self) -> str:
    return f"mesh (data, fsdp, tensor) = {self.shape} on {self.num_devices} {self.platform} device(s)"


def _require_shape(b: Bound) -> Optional[Tuple[int, ...]]:
  if b.unbound or b.value is None:
    return None
  v = b.value
  ok = isinstance(v, (tuple, list)) and len(v) == 3 and all(_is_int(s) and (s >= 1 or s == -1) for s in v)
  if not ok or list(v).count(-1) > 1:
    raise ConfigError(
      f"{b.label} = {v!r} is not allowed: it must be 3 positive integers (data, fsdp, tensor), one of them "
      "may be -1 (all the remaining devices)"
    )
  return tuple(v)


def resolve_mesh(mesh: Bound, dcn: Bound, declared: Bound, num_devices: int, platform: str) -> MeshPlan:
  """Checks the mesh gin against the devices present and resolves its -1. `declared` is MESH_DEVICES, the device
  count a mesh file is written for (gin/meshes/8gpu.gin: 8); None or unbound spans whatever is present."""
  want = require_int(declared, allow_none=True)
  if want is not None and want != num_devices:
    raise ConfigError(
      f"{declared.label} = {want} (the mesh gin file is written for {want} devices) but this host has "
      f"{num_devices} {platform} device(s): pick the mesh file for this machine (gin/meshes/), or add "
      f"--gin.{declared.label}=None to span the {num_devices} device(s) present"
    )
  ici = _require_shape(mesh) or (1, -1, 1)
  dcn_shape = _require_shape(dcn) or (1, 1, 1)
  if -1 in dcn_shape:
    raise ConfigError(f"{dcn.label} = {dcn.value!r} is not allowed: the cross-host shape takes no -1")
  slices = math.prod(dcn_shape)
  if num_devices % slices:
    raise ConfigError(f"{dcn.label} = {dcn.value!r} needs a multiple of {slices} devices; there are {num_devices}")
  per_slice = num_devices // slices
  fixed = math.prod(s for s in ici if s != -1)
  if -1 in ici:
    if per_slice % fixed:
      raise ConfigError(
        f"{mesh.label} = {mesh.value!r}: the fixed axes need a multiple of {fixed} devices, but there are "
        f"{per_slice} {platform} device(s)" + (" per slice" if slices > 1 else "")
      )
    ici = tuple(per_slice // fixed if s == -1 else s for s in ici)
  elif fixed != per_slice:
    raise ConfigError(
      f"{mesh.label} = {mesh.value!r} fixes {fixed} device(s), but there are {per_slice} {platform} device(s)"
      + (" per slice" if slices > 1 else "")
      + f": use a -1 axis (e.g. --gin.{mesh.label}=\"(1, -1, 1)\") to span the devices present, or limit them "
      "(CUDA_VISIBLE_DEVICES)"
    )
  return MeshPlan(tuple(a * b for a, b in zip(ici, dcn_shape)), num_devices, platform)


def require_divisible_batch(batch: Bound, data_parallel: int, microbatches: int, mesh: MeshPlan, micro_label: str):
  size = batch.value
  step = data_parallel * microbatches
  if size % step:
    near = sorted({v for v in (size - size % step, size - size % step + step) if v > 0})
    raise ConfigError(
      f"{batch.label} = {size} is not divisible by the data-parallel size {data_parallel} ({mesh.describe()}) x "
      f"{micro_label} = {microbatches}: use a multiple of {step}, e.g. {' or '.join(map(str, near))}"
    )


def _devices() -> Tuple[int, str]:
  import jax  # pylint: disable=g-import-not-at-top

  return jax.device_count(), jax.devices()[0].platform


def check_train(devices: Optional[Tuple[int, str]] = None) -> MeshPlan:
  """Checks the train_lib.train config (lengths, steps, periods, batch sizes, mesh); returns the resolved mesh.
  `devices`: (count, platform), default the JAX devices (call after jax.distributed is started)."""
  for name in ("model_dir", "model"):
    bound(f"train_lib.train.{name}")  # raises for a %gin.REQUIRED macro
  bound("train/train_lib.DatasetConfig.mixture_or_task_name")
  steps = require_int(bound("train_lib.train.total_steps"))
  require_lengths(bound("train/train_lib.DatasetConfig.task_feature_lengths"))
  batch = bound("train/train_lib.DatasetConfig.batch_size")
  require_int(batch)
  micro = bound("train_lib.train.num_microbatches")
  microbatches = require_int(micro) or 1
  for name in ("checkpoint_period", "log_period"):
    require_int(bound(f"train_lib.train.{name}"))
  eval_period = require_int(bound("train_lib.train.eval_period"), minimum=0)
  for name in ("eval_steps", "staged_warmup_steps", "max_consecutive_bad_steps"):
    require_int(bound(f"train_lib.train.{name}"), minimum=0)
  require_int(bound("train_lib.train.keep_checkpoints"), allow_none=True)
  require_int(bound("train_lib.train.warmup_train_context"), allow_none=True)
  warmup = bound("optimizer.warmup_cosine_schedule.warmup_steps")
  if require_int(warmup, minimum=0) is not None and steps is not None and warmup.value > steps:
    raise ConfigError(
      f"{warmup.label} = {warmup.value} is more than TRAIN_STEPS = {steps}: the learning rate would never reach "
      f"its peak; allowed: 0..{steps} (e.g. --gin.{warmup.label}={max(steps // 10, 0)})"
    )
  count, platform = devices or _devices()
  plan = resolve_mesh(
    bound("partitioning.create_mesh.mesh_shape"),
    bound("partitioning.create_mesh.dcn_mesh_shape"),
    bound("%MESH_DEVICES"),
    count,
    platform,
  )
  if not batch.unbound:
    require_divisible_batch(batch, plan.data_parallel, microbatches, plan, micro.label)
  eval_batch = bound("train_eval/train_lib.DatasetConfig.batch_size")
  if eval_period and require_int(eval_batch) is not None:
    require_divisible_batch(eval_batch, plan.data_parallel, 1, plan, "1 (no microbatches in eval)")
  return plan


def check_eval() -> None:
  """Checks the eval_lib.evaluate config (checkpoint, lengths, token budgets)."""
  bound("eval_lib.evaluate.checkpoint_path")
  require_int(bound("eval_lib.evaluate.train_length"))
  for name in ("max_eval_tokens", "batch_tokens", "sliding_divisor"):
    require_int(bound(f"eval_lib.evaluate.{name}"))
  _require_positive_list(bound("eval_lib.evaluate.context_multipliers"))
  _require_positive_list(bound("eval_lib.evaluate.context_lengths"))


def check_infer(interactive: bool = False) -> None:
  """Checks the infer_lib config: the interactive path needs only the checkpoint, the batch path its dataset."""
  if interactive:
    bound("infer_lib.interactive.checkpoint_path")
    return
  for name in ("checkpoint_path", "output_dir"):
    bound(f"infer_lib.infer.{name}")
  require_int(bound("infer_lib.infer.num_decodes"))
  require_int(bound("infer_lib.infer.max_examples"), allow_none=True)
  require_int(bound("infer_lib.DatasetConfig.batch_size"))
  require_lengths(bound("infer_lib.DatasetConfig.task_feature_lengths"))


def _require_positive_list(b: Bound) -> None:
  if b.unbound or b.value is None:
    return
  values: Sequence[Any] = b.value if isinstance(b.value, (list, tuple)) else [b.value]
  if not values or not all(_is_int(v) and v >= 1 for v in values):
    raise ConfigError(f"{b.label} = {b.value!r} is not allowed: it must be a list of positive integers")
