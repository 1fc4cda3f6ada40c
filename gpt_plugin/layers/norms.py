"""LayerNorm with logical axis names; statistics in float32 whatever the compute dtype."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from flax.linen import partitioning as nn_partitioning


class LayerNorm(nn.Module):
  """LayerNorm with learnable scale (init 1) and bias (init 0; none with use_bias=False, as in MPT); epsilon
  configurable (1e-6 Flax, 1e-5 PyTorch)."""

  epsilon: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    scale = nn_partitioning.param_with_axes(
      "scale", nn.initializers.ones, (features,), self.param_dtype, axes=("embed",)
    )
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jnp.reciprocal(jnp.sqrt(var + self.epsilon))
    y = y * scale.astype(jnp.float32)
    if self.use_bias:
      bias = nn_partitioning.param_with_axes(
        "bias", nn.initializers.zeros, (features,), self.param_dtype, axes=("embed",)
      )
      y = y + bias.astype(jnp.float32)
    return y.astype(self.dtype)
