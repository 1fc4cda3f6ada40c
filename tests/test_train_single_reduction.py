"""Gradient accumulation with a single reduction: in the compiled train step (8 simulated CPU devices, 4
microbatches) no all-reduce / reduce-scatter across the batch mesh axes sits inside the microbatch loop."""

import jax
import jax.numpy as jnp
import pytest

from gpt_plugin import partitioning
from gpt_plugin.training import hlo_inspect, optimizer, train_step
from train_helpers import tiny_lm

TP_FSDP = [("embed", "fsdp"), ("vocab", "tensor"), ("mlp", "tensor"), ("joined_kv", "tensor"), ("heads", "tensor")]


def compiled_step_hlo(mesh_shape, param_rules, num_microbatches=4, single_reduction=True, batch=32, length=16):
  mesh = partitioning.create_mesh(mesh_shape, devices=jax.devices()[:8])
  part = partitioning.Partitioner(mesh, partitioning.logical_axis_rules(param_rules))
  model, tx = tiny_lm(), optimizer.adamw(1e-3)
  shapes = {"decoder_input_tokens": (1, length), "decoder_target_tokens": (1, length)}
  with part.context():
    av = jax.eval_shape(lambda k: model.get_initial_variables(k, shapes), jax.random.key(0))
  params_sh = part.logical_to_mesh(partitioning.params_logical_specs(av, av["params"]))
  abstract = jax.eval_shape(
    lambda k: train_step.create_train_state(model.get_initial_variables(k, shapes)["params"], tx, k), jax.random.key(0)
  )
  state_sh = train_step.state_shardings(abstract, params_sh, tx, part.replicated)
  fn = train_step.make_train_step(
    model,
    tx,
    optimizer.constant_schedule(1e-3),
    num_microbatches=num_microbatches,
    params_shardings=params_sh,
    logical_axis_rules=part.rules,
    single_reduction=single_reduction,
  )
  b = {
    k: jax.ShapeDtypeStruct((batch, length), jnp.int32)
    for k in ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")
  }
  with part.context():
    compiled = (
      jax.jit(fn, in_shardings=(state_sh, part.batch_sharding(2)), out_shardings=(state_sh, part.replicated))
      .lower(abstract, b)
      .compile()
    )
  return compiled.as_text(), mesh


@pytest.mark.parametrize(
  "name,mesh_shape,rules",
  [
    ("data_parallel_8", (8, 1, 1), []),
    ("data2_fsdp2_tensor2", (2, 2, 2), TP_FSDP),
  ],
)
def test_gradient_reduction_is_outside_the_microbatch_loop(name, mesh_shape, rules):
  hlo, mesh = compiled_step_hlo(mesh_shape, rules)
  counts = hlo_inspect.batch_axis_reductions(hlo, mesh)
  assert counts["in_loop"] == 0, (name, counts)
  assert counts["outside"] >= 1, (name, counts)
  if rules:  # tensor-parallel all-reduces of activations stay inside the loop, as they must
    in_loop = [c for c in hlo_inspect.collectives(hlo) if c.in_loop and c.op == "all-reduce"]
    assert in_loop, "expected the tensor-parallel activation all-reduces inside the loop"


def test_detector_sees_the_per_microbatch_reduction_of_the_plain_spmd_loop():
  # single_reduction=False leaves the reduction to the SPMD partitioner, which all-reduces each microbatch's
  # gradient inside the loop: the check above would fail on it.
  hlo, mesh = compiled_step_hlo((8, 1, 1), [], single_reduction=False)
  assert hlo_inspect.batch_axis_reductions(hlo, mesh)["in_loop"] >= 1
