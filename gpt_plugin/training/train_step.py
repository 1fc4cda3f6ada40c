"""Train state and the jitted train / eval steps.

One jitted train step (in/out shardings, donated state):
  * the global batch is split into `num_microbatches` microbatches (`lax.scan`); each microbatch contributes its
    token-weighted loss *sum* and gradient of that sum; after the loop there is exactly one division by the
    total token weight, so 4 x 2 == 1 x 8 up to float rounding, also with unequal token counts per microbatch;
  * the gradient is reduced across data-parallel devices by the SPMD partitioner on the accumulated sum;
  * a non-finite loss or gradient norm leaves params and optimiser state untouched (the step counter and the
    data position still advance) and increments `bad_steps` (consecutive count; reset by a good step);
  * optional dynamic loss scaling (fp16): scale halves on overflow, doubles after `growth_interval` good steps.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from gpt_plugin import partitioning


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # int32 scalar: train steps taken (== batches consumed)
  params: Any              # fp32
  opt_state: Any           # fp32
  rng: jax.Array           # uint32 raw key data of the base training key
  loss_scale: jax.Array    # float32 scalar (1.0 unless dynamic loss scaling)
  good_steps: jax.Array    # int32: finite steps since the last loss-scale change
  bad_steps: jax.Array     # int32: consecutive non-finite steps


def create_train_state(params: Any, tx: optax.GradientTransformation, rng: jax.Array,
                       initial_loss_scale: float = 1.0) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng,
                    loss_scale=jnp.asarray(initial_loss_scale, jnp.float32),
                    good_steps=jnp.zeros((), jnp.int32), bad_steps=jnp.zeros((), jnp.int32))


def state_shardings(abstract_state: TrainState, params_shardings: Any, tx: optax.GradientTransformation,
                    replicated: Any) -> TrainState:
  """Shardings for the whole state: optimiser slots that mirror params get the param sharding."""
  opt_shardings = optax.tree_map_params(tx, lambda _, s: s, abstract_state.opt_state, params_shardings,
                                        transform_non_params=lambda _: replicated)
  return TrainState(step=replicated, params=params_shardings, opt_state=opt_shardings, rng=replicated,
                    loss_scale=replicated, good_steps=replicated, bad_steps=replicated)


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


def make_train_step(model: Any, tx: optax.GradientTransformation, learning_rate_fn: Callable[[Any], Any],
                    num_microbatches: int = 1, dynamic_loss_scale: bool = False, growth_interval: int = 2000,
                    params_shardings: Any = None, weight_key: str = "decoder_loss_weights"):
  """Returns `train_step(state, batch) -> (new_state, metrics)` (not yet jitted)."""

  def microbatch_value_and_grad(params, mb, rng, scale):
    def scaled_sum(p):
      loss, metrics = model.loss_fn(p, mb, rng)
      w = jnp.sum(mb[weight_key]).astype(jnp.float32)
      loss_sum = jnp.where(w > 0, loss.astype(jnp.float32) * w, 0.0)
      return loss_sum * scale, (loss_sum, w, metrics)
    (_, aux), grads = jax.value_and_grad(scaled_sum, has_aux=True)(params)
    return grads, aux

  def train_step(state: TrainState, batch: Mapping[str, jax.Array]):
    base_key = jax.random.wrap_key_data(state.rng)
    step_key = jax.random.fold_in(base_key, state.step)
    scale = state.loss_scale
    if num_microbatches <= 1:
      grads, (loss_sum, w, metrics) = microbatch_value_and_grad(state.params, batch, step_key, scale)
    else:
      mbs = split_microbatches(batch, num_microbatches)
      first = jax.tree.map(lambda x: x[0], mbs)
      g_shape, aux_shape = jax.eval_shape(microbatch_value_and_grad, state.params, first, step_key, scale)
      g0 = _zeros_like_shapes(g_shape)
      if params_shardings is not None:
        g0 = jax.lax.with_sharding_constraint(g0, params_shardings)
      carry0 = (g0, _zeros_like_shapes(aux_shape))

      def body(carry, xs):
        mb, i = xs
        g, aux = microbatch_value_and_grad(state.params, mb, jax.random.fold_in(step_key, i), scale)
        g_acc = _tree_add(carry[0], g)
        if params_shardings is not None:
          g_acc = jax.lax.with_sharding_constraint(g_acc, params_shardings)
        return (g_acc, _tree_add(carry[1], aux)), None

      (grads, (loss_sum, w, metrics)), _ = jax.lax.scan(body, carry0, (mbs, jnp.arange(num_microbatches)))

    denom = jnp.maximum(w, 1.0)
    # The single division: unscale and normalise by the total token weight.
    grads = jax.tree.map(lambda g: (g / (denom * scale)).astype(jnp.float32), grads)
    loss = loss_sum / denom
    grad_norm = optax.tree.norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    new_params = keep(new_params, state.params)
    new_opt_state = keep(new_opt_state, state.opt_state)

    if dynamic_loss_scale:
      good = jnp.where(ok, state.good_steps + 1, 0)
      grow = good >= growth_interval
      new_scale = jnp.where(ok, jnp.where(grow, scale * 2.0, scale), jnp.maximum(scale / 2.0, 1.0))
      good = jnp.where(grow, 0, good)
    else:
      new_scale, good = scale, state.good_steps
    new_state = state.replace(step=state.step + 1, params=new_params, opt_state=new_opt_state,
                              loss_scale=new_scale, good_steps=good.astype(jnp.int32),
                              bad_steps=jnp.where(ok, 0, state.bad_steps + 1).astype(jnp.int32))
    out = {
        "loss": loss, "loss_sum": loss_sum, "num_tokens": w, "grad_norm": grad_norm,
        "learning_rate": jnp.asarray(learning_rate_fn(state.step), jnp.float32),
        "finite": ok, "bad_steps": new_state.bad_steps, "loss_scale": scale,
        "model_metrics": metrics,
    }
    return new_state, out

  return train_step


def make_eval_step(model: Any, weight_key: str = "decoder_loss_weights"):
  """`eval_step(params, batch) -> {'loss_sum', 'num_tokens', 'model_metrics'}`."""
  def eval_step(params, batch):
    loss, metrics = model.eval_fn(params, batch)
    w = jnp.sum(batch[weight_key]).astype(jnp.float32)
    return {"loss_sum": jnp.where(w > 0, loss.astype(jnp.float32) * w, 0.0), "num_tokens": w,
            "model_metrics": metrics}
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
