"""`tree_paths`: one '/'-joined name per pytree leaf, for dicts, flax FrozenDicts, dataclass fields and lists."""

import flax
import jax.numpy as jnp
import numpy as np

from gpt_plugin import tree_paths
from gpt_plugin.training import optimizer, train_step


def test_names_of_nested_params_and_train_state_fields():
  params = flax.core.freeze({"layers_0": {"mlp": {"wi": {"kernel": jnp.ones((2, 3))}}}, "final_norm": {"scale": 1.0}})
  assert tree_paths.named_leaves(params) == [
    ("final_norm/scale", 1.0),
    ("layers_0/mlp/wi/kernel", params["layers_0"]["mlp"]["wi"]["kernel"]),
  ]
  assert list(tree_paths.flatten({"a": [np.zeros(1), {"b": 2}]})) == ["a/0", "a/1/b"]
  nested = {"x": {"y": {"z": 1}, "w": 2}}
  assert tree_paths.unflatten(tree_paths.flatten(nested)) == nested
  state = train_step.TrainState(*(jnp.zeros(()),) * 7)
  assert [n for n, _ in tree_paths.named_leaves(state)] == [
    "step",
    "params",
    "opt_state",
    "rng",
    "loss_scale",
    "good_steps",
    "bad_steps",
  ]


def test_weight_decay_mask_reads_the_names():
  params = {"position_embedder": {"embedding": jnp.ones((4, 2))}, "mlp": {"wi": {"kernel": jnp.ones((2, 2))}}}
  mask = optimizer.default_weight_decay_mask(params)
  assert mask == {"position_embedder": {"embedding": False}, "mlp": {"wi": {"kernel": True}}}
