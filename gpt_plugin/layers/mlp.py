"""Position-wise MLP: Dense(mlp_dim) -> GELU -> Dense(out) -> dropout."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt_plugin.layers.dense import Dense


class MLP(nn.Module):
  """GPT MLP. `wo` uses the residual-projection init std (0.02/sqrt(2*layers)); GELU tanh-approximate by default."""

  mlp_dim: int
  out_dim: int
  init_std: float = 0.02
  out_init_std: float = 0.02
  gelu_approximate: bool = True
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  use_bias: bool = True

  @nn.compact
  def __call__(self, x, *, enable_dropout: bool = False):
    h = Dense(
      self.mlp_dim,
      ("embed", "mlp"),
      nn.initializers.normal(self.init_std),
      use_bias=self.use_bias,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="wi",
    )(x)
    h = nn.with_logical_constraint(jax.nn.gelu(h, approximate=self.gelu_approximate), ("batch", "length", "mlp"))
    y = Dense(
      self.out_dim,
      ("mlp", "embed"),
      nn.initializers.normal(self.out_init_std),
      use_bias=self.use_bias,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="wo",
    )(h)
    return nn.Dropout(rate=self.dropout_rate)(y, deterministic=not enable_dropout)
