"""Small clu metrics missing from clu itself."""

import flax
import jax.numpy as jnp
from clu import metrics as clu_metrics


@flax.struct.dataclass
class Sum(clu_metrics.Metric):
  """Sum of a value over steps/microbatches (e.g. tokens seen)."""

  total: jnp.ndarray

  @classmethod
  def from_model_output(cls, values, **_):
    return cls(total=jnp.sum(values))

  def merge(self, other: "Sum") -> "Sum":
    return type(self)(total=self.total + other.total)

  def compute(self):
    return self.total


def weighted_average(values, weights) -> clu_metrics.Average:
  """clu Average of `values` weighted by `weights` (mergeable across microbatches and devices)."""
  weights = jnp.asarray(weights, jnp.float32)
  return clu_metrics.Average(total=jnp.sum(values * weights), count=jnp.sum(weights))
