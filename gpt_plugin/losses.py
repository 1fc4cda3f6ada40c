"""Weighted token cross-entropy in float32 with optional z-loss and label smoothing; no one-hot tensors."""

import jax
import jax.numpy as jnp


def weighted_cross_entropy(logits, targets, weights=None, *, label_smoothing: float = 0.0, z_loss: float = 0.0):
  """Per-token losses.

  Args:
    logits: [..., V] (cast to float32 if needed; the model already returns float32).
    targets: [...] int token ids.
    weights: [...] loss weights (e.g. `decoder_loss_weights`); None means all ones.
    label_smoothing: mix ε of the uniform distribution into the target.
    z_loss: coefficient of the `log(Z)^2` auxiliary loss (PaLM).

  Returns:
    (loss [...], cross_entropy [...], z_loss_term [...], weights [...]): unreduced, unweighted per-token
    float32 values (loss = smoothed cross-entropy + z-loss term) and the float32 weights.
  """
  logits = logits.astype(jnp.float32)
  if weights is None:
    weights = jnp.ones(targets.shape, jnp.float32)
  weights = weights.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  nll = log_z - target_logit
  if label_smoothing:
    smooth = log_z - jnp.mean(logits, axis=-1)
    loss = (1.0 - label_smoothing) * nll + label_smoothing * smooth
  else:
    loss = nll
  z_term = z_loss * jnp.square(log_z)
  return loss + z_term, nll, z_term, weights


def token_accuracy(logits, targets):
  """1.0 where the argmax prediction equals the target, per token."""
  return (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
