"""ALiBi (Press et al., 2022): per-head linear distance biases, built per call from the actual lengths."""

import math

import jax.numpy as jnp
import numpy as np


def alibi_slopes(num_heads: int, max_bias: float = 8.0) -> np.ndarray:
  """Slopes m_h for `num_heads` heads, including the non-power-of-two rule.

  For n a power of two the slopes are the geometric sequence starting at 2^(-max_bias/n) with the same ratio
  (max_bias = 8 in the paper; MPT's `alibi_bias_max`). Otherwise, with c = 2^floor(log2 n): the c slopes of the
  power-of-two rule, followed by every other slope of the 2c rule (the even-indexed ones), the first n - c of them.
  """
  if num_heads < 1:
    raise ValueError(f"alibi_slopes: num_heads must be >= 1, got {num_heads}")

  def power_of_two(n):
    start = 2.0 ** (-max_bias / n)
    return [start ** (i + 1) for i in range(n)]

  if math.log2(num_heads).is_integer():
    slopes = power_of_two(num_heads)
  else:
    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = power_of_two(closest) + list(alibi_slopes(2 * closest, max_bias)[0::2][: num_heads - closest])
  return np.asarray(slopes, dtype=np.float32)


def alibi_bias(slopes, query_positions, key_positions):
  """Additive bias `slope_h * (k - q)` of shape [..., heads, q_len, k_len] in float32.

  Positions are raw indices (`arange`), so any length works; within a packed segment raw differences equal
  in-segment distances. Entries with k > q are positive but always removed by the causal mask.
  """
  slopes = jnp.asarray(slopes, jnp.float32)
  q = jnp.asarray(query_positions, jnp.float32)[..., None, :, None]
  k = jnp.asarray(key_positions, jnp.float32)[..., None, None, :]
  return slopes[:, None, None] * (k - q)
