"""Train state and the jitted train / eval steps.

One jitted train step (in/out shardings, donated state):
  * the global batch is split into `num_microbatches` microbatches (`lax.scan`); each microbatch contributes its
    token-weighted loss *sum*, its token weight and the gradient of that sum (`model.loss_sum_fn`); after the
    loop there is exactly one division, by `model.loss_denominator(total token weight)` (the total weight, or a
    fixed `loss_normalizing_factor`), so 4 x 2 == 1 x 8 up to float rounding, also with unequal token counts
    per microbatch and with a fixed normalising factor;
  * single gradient reduction: with several microbatches on a data-parallel mesh the loop runs inside
    `jax.shard_map`, manual over the batch mesh axes `(data, fsdp)` (`tensor` stays automatic, so tensor
    parallelism inside the model is unchanged): every device accumulates the gradient of its own rows locally,
    and after the loop one `psum` (params replicated over that axis) or `psum_scatter` (params sharded over it,
    FSDP) per gradient leaf reduces across devices. Left to the SPMD partitioner, XLA would all-reduce every
    microbatch's gradient inside the loop. Cost: under FSDP the params are all-gathered once per step and the
    local accumulator is a full-size (tensor-sharded) copy, i.e. ZeRO-2-like memory during the step;
    `single_reduction=False` keeps the ZeRO-3 layout (then the reduction sits in the loop). With one
    microbatch there is no loop and the partitioner's reduction already happens once;
  * a non-finite loss or gradient norm leaves params and optimiser state untouched (the step counter and the
    data position still advance) and increments `bad_steps` (consecutive count; reset by a good step);
  * optional dynamic loss scaling (fp16): scale halves on overflow, doubles after `growth_interval` good steps.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import flax
import flax.linen as nn
from flax.linen import partitioning as flax_partitioning
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from gpt_plugin import partitioning


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: train steps taken (== batches consumed)
  params: Any  # fp32
  opt_state: Any  # fp32
  rng: jax.Array  # uint32 raw key data of the base training key
  loss_scale: jax.Array  # float32 scalar (1.0 unless dynamic loss scaling)
  good_steps: jax.Array  # int32: finite steps since the last loss-scale change
  bad_steps: jax.Array  # int32: consecutive non-finite steps


def create_train_state(
  params: Any, tx: optax.GradientTransformation, rng: jax.Array, initial_loss_scale: float = 1.0
) -> TrainState:
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=tx.init(params),
    rng=jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng,
    loss_scale=jnp.asarray(initial_loss_scale, jnp.float32),
    good_steps=jnp.zeros((), jnp.int32),
    bad_steps=jnp.zeros((), jnp.int32),
  )


def state_shardings(
  abstract_state: TrainState, params_shardings: Any, tx: optax.GradientTransformation, replicated: Any
) -> TrainState:
  """Shardings for the whole state: optimiser slots that mirror params get the param sharding."""
  opt_shardings = optax.tree_map_params(
    tx, lambda _, s: s, abstract_state.opt_state, params_shardings, transform_non_params=lambda _: replicated
  )
  return TrainState(
    step=replicated,
    params=params_shardings,
    opt_state=opt_shardings,
    rng=replicated,
    loss_scale=replicated,
    good_steps=replicated,
    bad_steps=replicated,
  )


def _tree_add(a, b):
  return jax.tree.map(jnp.add, a, b)


def _zeros_like_shapes(tree):
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)


def split_microbatches(batch: Mapping[str, jax.Array], num_microbatches: int) -> Dict[str, jax.Array]:
  """[B, ...] -> [M, B/M, ...]; microbatch m takes rows m, M+m, 2M+m, ... so every data shard feeds every
  microbatch equally (no cross-device data movement)."""

  def split(x):
    b = x.shape[0]
    if b % num_microbatches:
      raise ValueError(f"batch size {b} is not divisible by num_microbatches={num_microbatches}")
    x = x.reshape((b // num_microbatches, num_microbatches) + x.shape[1:])
    x = jnp.swapaxes(x, 0, 1)
    return jax.lax.with_sharding_constraint(x, P(None, partitioning.BATCH_AXES, *([None] * (x.ndim - 2))))

  return {k: split(v) for k, v in batch.items()}


def _strip_axes(rules: Sequence[Tuple[str, Any]], drop: Sequence[str]) -> Tuple[Tuple[str, Any], ...]:
  """Logical axis rules with the mesh axes in `drop` removed (inside a region that is manual over them)."""
  out = []
  for name, axes in rules:
    if axes is None:
      out.append((name, None))
      continue
    kept = tuple(a for a in ((axes,) if isinstance(axes, str) else tuple(axes)) if a not in drop)
    out.append((name, None if not kept else (kept[0] if len(kept) == 1 else kept)))
  return tuple(out)


def _manual_axes_of(spec: P, manual: Sequence[str]) -> list:
  """Per dimension of `spec`: the tuple of `manual` mesh axes it is sharded over (possibly empty)."""
  dims = []
  for entry in tuple(spec):
    axes = () if entry is None else ((entry,) if isinstance(entry, str) else tuple(entry))
    dims.append(tuple(a for a in axes if a in manual))
  return dims


def _reduce_grad(g: jax.Array, spec: P, manual: Sequence[str]) -> jax.Array:
  """The one cross-device reduction of a locally accumulated gradient: reduce-scatter over the manual axes the
  param is sharded over (FSDP), all-reduce over the others."""
  dims = _manual_axes_of(spec, manual)
  sharded = {a for d in dims for a in d}
  rest = tuple(a for a in manual if a not in sharded)
  if rest:
    g = jax.lax.psum(g, rest)
  for k, axes in enumerate(dims):
    if axes:
      g = jax.lax.psum_scatter(g, axes if len(axes) > 1 else axes[0], scatter_dimension=k, tiled=True)
  return g


def _out_spec(spec: P, manual: Sequence[str]) -> P:
  return P(*[(d if len(d) > 1 else d[0]) if d else None for d in _manual_axes_of(spec, manual)])


def _loss_sum_and_denominator(model: Any, weight_key: str):
  """`(loss_sum_fn(params, batch, rng) -> (loss_sum, num_tokens, metrics), loss_denominator(num_tokens))`: the
  model's own (`DecoderOnlyLM.loss_sum_fn` / `loss_denominator`), or for a model with only T5X's `loss_fn`
  (e.g. `t5x.models.DecoderOnlyModel`) the reading that `loss_fn` is the mean over the `weight_key` tokens."""
  if hasattr(model, "loss_sum_fn") and hasattr(model, "loss_denominator"):
    return model.loss_sum_fn, model.loss_denominator

  def mean_loss_sum_fn(params, batch, rng):
    loss, metrics = model.loss_fn(params, batch, rng)
    w = jnp.sum(batch[weight_key]).astype(jnp.float32)
    return jnp.where(w > 0, loss.astype(jnp.float32) * w, 0.0), w, metrics

  return mean_loss_sum_fn, lambda w: jnp.maximum(w, 1.0)


def _mesh_of(params_shardings: Any):
  if params_shardings is None:
    return None
  leaves = [s for s in jax.tree.leaves(params_shardings, is_leaf=lambda x: hasattr(x, "mesh")) if hasattr(s, "mesh")]
  return leaves[0].mesh if leaves else None


def _accumulate_in_loop(value_and_grad, params, batch, step_key, scale, num_microbatches, params_shardings):
  """Microbatch loop left to the SPMD partitioner: (summed grads, summed aux)."""
  mbs = split_microbatches(batch, num_microbatches)
  first = jax.tree.map(lambda x: x[0], mbs)
  g_shape, aux_shape = jax.eval_shape(value_and_grad, params, first, step_key, scale)
  g0 = _zeros_like_shapes(g_shape)
  if params_shardings is not None:
    g0 = jax.lax.with_sharding_constraint(g0, params_shardings)
  carry0 = (g0, _zeros_like_shapes(aux_shape))

  def body(carry, xs):
    mb, i = xs
    g, aux = value_and_grad(params, mb, jax.random.fold_in(step_key, i), scale)
    g_acc = _tree_add(carry[0], g)
    if params_shardings is not None:
      g_acc = jax.lax.with_sharding_constraint(g_acc, params_shardings)
    return (g_acc, _tree_add(carry[1], aux)), None

  (grads, aux), _ = jax.lax.scan(body, carry0, (mbs, jnp.arange(num_microbatches)))
  return grads, aux


def _accumulate_single_reduction(
  value_and_grad, params, batch, step_key, scale, num_microbatches, params_shardings, mesh, manual, rules
):
  """Microbatch loop under `shard_map`, manual over the batch axes `manual`; one gradient reduction after it."""
  inner_rules = _strip_axes(rules, manual)
  specs = jax.tree.map(lambda s: s.spec, params_shardings, is_leaf=lambda x: hasattr(x, "spec"))
  is_spec = lambda x: isinstance(x, P)

  def local(params, batch, key_data, scale):
    # Per device: its own rows [b_local, ...] -> microbatches [M, b_local / M, ...]; nothing leaves the device
    # until the loop is done.
    key = jax.random.fold_in(jax.random.wrap_key_data(key_data), jax.lax.axis_index(manual))
    mbs = jax.tree.map(
      lambda x: jnp.swapaxes(x.reshape((x.shape[0] // num_microbatches, num_microbatches) + x.shape[1:]), 0, 1),
      dict(batch),
    )
    with nn.logical_axis_rules(inner_rules), flax_partitioning.axis_rules(inner_rules):
      first = jax.tree.map(lambda x: x[0], mbs)
      g_shape, aux_shape = jax.eval_shape(value_and_grad, params, first, key, scale)

      def body(carry, xs):
        mb, i = xs
        g, aux = value_and_grad(params, mb, jax.random.fold_in(key, i), scale)
        return (_tree_add(carry[0], g), _tree_add(carry[1], aux)), None

      carry0 = (_zeros_like_shapes(g_shape), _zeros_like_shapes(aux_shape))
      (g, aux), _ = jax.lax.scan(body, carry0, (mbs, jnp.arange(num_microbatches)))
    # The single reduction.
    g = jax.tree.map(lambda x, sp: _reduce_grad(x, sp, manual), g, specs, is_leaf=None)
    aux = jax.tree.map(lambda x: jax.lax.psum(x, manual), aux)
    return g, aux

  grad_out_specs = jax.tree.map(lambda sp: _out_spec(sp, manual), specs, is_leaf=is_spec)
  batch_specs = jax.tree.map(lambda x: P(manual, *([None] * (x.ndim - 1))), dict(batch))
  fn = jax.shard_map(
    local,
    mesh=mesh,
    axis_names=frozenset(manual),
    check_vma=False,
    in_specs=(jax.tree.map(lambda _: P(), specs, is_leaf=is_spec), batch_specs, P(), P()),
    out_specs=(grad_out_specs, P()),
  )
  return fn(params, dict(batch), jax.random.key_data(step_key), scale)


def _next_loss_scale(state: TrainState, ok, dynamic_loss_scale: bool, growth_interval: int):
  """(loss scale, good-step count) after this step: halve on overflow, double after `growth_interval` good steps."""
  scale = state.loss_scale
  if not dynamic_loss_scale:
    return scale, state.good_steps
  good = jnp.where(ok, state.good_steps + 1, 0)
  grow = good >= growth_interval
  new_scale = jnp.where(ok, jnp.where(grow, scale * 2.0, scale), jnp.maximum(scale / 2.0, 1.0))
  return new_scale, jnp.where(grow, 0, good)


def _loop_under_shard_map(num_microbatches: int, mesh, manual: Sequence[str]) -> bool:
  """Whether the microbatch loop can run under `shard_map`: several microbatches on a mesh whose batch axes
  `manual` exist and span more than one device."""
  return bool(
    num_microbatches > 1
    and mesh is not None
    and all(a in mesh.shape for a in manual)
    and int(np.prod([mesh.shape[a] for a in manual])) > 1
  )


def _apply_if_finite(
  state: TrainState, tx: optax.GradientTransformation, grads, ok, dynamic_loss_scale: bool, growth_interval: int
) -> TrainState:
  """The next state: the optimiser update where `ok` (finite loss and gradient norm), else the old params and
  optimiser state with `bad_steps` counted up; the step always advances and the loss scale follows `ok`."""
  updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
  new_scale, good = _next_loss_scale(state, ok, dynamic_loss_scale, growth_interval)
  return state.replace(
    step=state.step + 1,
    params=keep(new_params, state.params),
    opt_state=keep(new_opt_state, state.opt_state),
    loss_scale=new_scale,
    good_steps=good.astype(jnp.int32),
    bad_steps=jnp.where(ok, 0, state.bad_steps + 1).astype(jnp.int32),
  )


def make_train_step(
  model: Any,
  tx: optax.GradientTransformation,
  learning_rate_fn: Callable[[Any], Any],
  num_microbatches: int = 1,
  dynamic_loss_scale: bool = False,
  growth_interval: int = 2000,
  params_shardings: Any = None,
  weight_key: str = "decoder_loss_weights",
  logical_axis_rules: Optional[Sequence[Tuple[str, Any]]] = None,
  single_reduction: bool = True,
):
  """Returns `train_step(state, batch) -> (new_state, metrics)` (not yet jitted).

  `single_reduction` (with `num_microbatches > 1`, `params_shardings` given and a data-parallel mesh): run the
  microbatch loop under `shard_map` over the batch axes and reduce the gradients once after it (see the
  module docstring). `logical_axis_rules` are the rules the step is traced under (default: flax's current).
  """
  mesh = _mesh_of(params_shardings)
  manual = tuple(partitioning.BATCH_AXES)
  use_shard_map = single_reduction and _loop_under_shard_map(num_microbatches, mesh, manual)
  loss_sum_fn, loss_denominator = _loss_sum_and_denominator(model, weight_key)

  def microbatch_value_and_grad(params, mb, rng, scale):
    def scaled_sum(p):
      loss_sum, w, metrics = loss_sum_fn(p, mb, rng)
      return loss_sum * scale, (loss_sum, w, metrics)

    (_, aux), grads = jax.value_and_grad(scaled_sum, has_aux=True)(params)
    return grads, aux

  def accumulate(params, batch, step_key, scale):
    if num_microbatches <= 1:
      return microbatch_value_and_grad(params, batch, step_key, scale)
    args = (microbatch_value_and_grad, params, batch, step_key, scale, num_microbatches, params_shardings)
    if use_shard_map:
      rules = logical_axis_rules if logical_axis_rules is not None else nn.spmd.get_logical_axis_rules()
      return _accumulate_single_reduction(*args, mesh, manual, rules)
    return _accumulate_in_loop(*args)

  def train_step(state: TrainState, batch: Mapping[str, jax.Array]):
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    scale = state.loss_scale
    grads, (loss_sum, w, metrics) = accumulate(state.params, batch, step_key, scale)
    denom = loss_denominator(w)
    # The single division: unscale and normalise (by the total token weight, or the fixed normalising factor).
    grads = jax.tree.map(lambda g: (g / (denom * scale)).astype(jnp.float32), grads)
    loss = loss_sum / denom
    grad_norm = optax.tree.norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_state = _apply_if_finite(state, tx, grads, ok, dynamic_loss_scale, growth_interval)
    out = {
      "loss": loss,
      "loss_sum": loss_sum,
      "num_tokens": w,
      "grad_norm": grad_norm,
      "learning_rate": jnp.asarray(learning_rate_fn(state.step), jnp.float32),
      "finite": ok,
      "bad_steps": new_state.bad_steps,
      "loss_scale": scale,
      "model_metrics": metrics,
    }
    return new_state, out

  return train_step


def make_eval_step(model: Any, weight_key: str = "decoder_loss_weights"):
  """`eval_step(params, batch) -> {'loss_sum', 'num_tokens', 'model_metrics'}`."""

  loss_sum_fn, _ = _loss_sum_and_denominator(model, weight_key)

  def eval_step(params, batch):
    loss_sum, w, metrics = loss_sum_fn(params, batch, None)
    return {"loss_sum": loss_sum, "num_tokens": w, "model_metrics": metrics}

  return eval_step


def compute_model_metrics(metrics: Mapping[str, Any]) -> Dict[str, float]:
  """clu Metric objects (already merged) -> floats; silently skips anything that fails to compute."""
  out = {}
  for k, m in (metrics or {}).items():
    try:
      v = m.compute() if hasattr(m, "compute") else m
      out[k] = float(np.asarray(v))
    except Exception:  # pylint: disable=broad-except
      pass
  return out
