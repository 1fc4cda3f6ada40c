"""Dense projection with logical axis names (the `params_axes` collection T5X's partitioner reads)."""

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
from flax.linen import partitioning as nn_partitioning


class Dense(nn.Module):
  """`y = x @ kernel (+ bias)`; params in `param_dtype`, matmul in `dtype`."""

  features: int
  kernel_axes: tuple = ("embed", "mlp")
  kernel_init: Callable = nn.initializers.normal(stddev=0.02)
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = nn_partitioning.param_with_axes(
      "kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype, axes=self.kernel_axes
    )
    y = jnp.einsum("...d,df->...f", x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      bias = nn_partitioning.param_with_axes(
        "bias", nn.initializers.zeros, (self.features,), self.param_dtype, axes=self.kernel_axes[-1:]
      )
      y = y + bias.astype(self.dtype)
    return y
