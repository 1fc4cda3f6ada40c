"""`DecoderOnlyLM`: T5X's `BaseModel` interface for a decoder-only LM, without importing t5x.

Our runners (train, eval, infer) talk to models only through this interface, so a gin file can swap in
`t5x.models.DecoderOnlyModel` with the same `GPTDecoder` module.
"""

from typing import Any, Callable, Mapping, MutableMapping, Optional, Tuple

import flax
import flax.core
import jax
import jax.numpy as jnp

try:  # seqio (and tensorflow) are only needed for data; the model runs without them (e.g. on a bare GPU host).
  import seqio
except ImportError:  # pragma: no cover
  seqio = None

from gpt_plugin import decode_loop, losses
from gpt_plugin.metrics_lib import Sum, weighted_average

Array = jax.Array
PyTree = Any


def _default_decode_fn():
  from gpt_plugin import decoding  # pylint: disable=import-outside-toplevel

  return decoding.temperature_sample


def vocabulary_of(model: Any) -> Any:
  """The vocabulary a model's text goes through: `model.vocabulary` (ours), else `model.output_vocabulary` (T5X
  models); None when the model has neither. The one lookup the generator, the infer and eval runners share."""
  return getattr(model, "vocabulary", None) or getattr(model, "output_vocabulary", None)


class DecoderOnlyLM:
  """Causal language model around a `GPTDecoder`-style module.

  Args:
    module: Flax module with the T5X decoder-only call signature (e.g. `network.GPTDecoder`).
    vocabulary: seqio vocabulary of the task (used for EOS in decoding and by infer/eval for text).
    optimizer_def: kept for T5X compatibility (our runners configure the optimizer in gin separately).
    decode_fn: `temperature_sample`/`beam_search`-compatible function; default `decoding.temperature_sample`.
    label_smoothing, z_loss: loss options.
    loss_normalizing_factor: None -> mean over weighted target tokens of the batch; a number -> sum / number
      (for the whole batch, also when a train step splits it into microbatches: see `loss_sum_fn`).
  """

  FEATURE_CONVERTER_CLS = seqio.DecoderFeatureConverter if seqio is not None else None

  def __init__(
    self,
    module,
    vocabulary: Optional["seqio.Vocabulary"] = None,
    optimizer_def: Any = None,
    decode_fn: Optional[Callable] = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    loss_normalizing_factor: Optional[float] = None,
    feature_converter_cls: Optional[Callable[..., "seqio.FeatureConverter"]] = None,
  ):
    self.module = module
    self.vocabulary = vocabulary
    self.optimizer_def = optimizer_def
    self._decode_fn = decode_fn
    self.label_smoothing = label_smoothing
    self.z_loss = z_loss
    self.loss_normalizing_factor = loss_normalizing_factor
    if feature_converter_cls is not None:
      self.FEATURE_CONVERTER_CLS = feature_converter_cls  # pylint: disable=invalid-name

  # T5X names both vocabularies.
  @property
  def input_vocabulary(self):
    return self.vocabulary

  @property
  def output_vocabulary(self):
    return self.vocabulary

  @property
  def config(self):
    return getattr(self.module, "config", None)

  @property
  def decode_fn(self) -> Callable:
    return self._decode_fn or _default_decode_fn()

  # ---------------------------------------------------------------------------------------------- init
  def get_initial_variables(
    self, rng: Array, input_shapes: Mapping[str, Tuple[int, ...]], input_types: Optional[Mapping[str, Any]] = None
  ) -> flax.core.FrozenDict:
    """Initial `params` and `params_axes` (a FrozenDict, as T5X's train state requires)."""
    input_types = input_types or {}
    shape = input_shapes["decoder_input_tokens"]
    dtype = input_types.get("decoder_input_tokens", jnp.int32)
    tokens = jnp.ones(shape, dtype)
    variables = self.module.init({"params": rng, "dropout": rng}, tokens, tokens, enable_dropout=False)
    return flax.core.freeze(flax.core.unfreeze(variables))

  # ---------------------------------------------------------------------------------------- forward
  def _compute_logits(
    self,
    params: PyTree,
    batch: Mapping[str, Array],
    dropout_rng: Optional[Array] = None,
    mutable: Any = False,
    other_variables: Optional[Mapping[str, Any]] = None,
  ):
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
    return self.module.apply(
      {"params": params, **(other_variables or {})},
      batch["decoder_input_tokens"],
      batch["decoder_target_tokens"],
      decoder_segment_ids=batch.get("decoder_segment_ids"),
      decoder_positions=batch.get("decoder_positions"),
      decoder_causal_attention=batch.get("decoder_causal_attention"),
      rngs=rngs,
      decode=False,
      enable_dropout=rngs is not None,
      mutable=mutable,
    )

  def loss_fn(self, params: PyTree, batch: Mapping[str, Array], dropout_rng: Optional[Array]):
    """T5X contract: (loss, metrics). `loss` is the weighted token cross-entropy (+ z-loss) sum, in float32,
    divided by `loss_denominator(num_tokens)`: the mean over the weighted target tokens, or the sum over
    `loss_normalizing_factor`.

    Metrics: `loss`, `cross_ent_loss`, `z_loss`, `accuracy` (token-weighted Averages), `num_tokens` (Sum of
    loss weights), `num_examples` (Sum). Our train and eval steps use `loss_sum_fn` instead (microbatching).
    """
    logits = self._compute_logits(params, batch, dropout_rng)
    weights = batch.get("decoder_loss_weights")
    if weights is None:
      weights = jnp.ones(batch["decoder_target_tokens"].shape, jnp.float32)
    targets = batch["decoder_target_tokens"]
    per_token, nll, z_term, weights = losses.weighted_cross_entropy(
      logits, targets, weights, label_smoothing=self.label_smoothing, z_loss=self.z_loss
    )
    num_tokens = jnp.sum(weights)
    loss = jnp.sum(per_token * weights) / self.loss_denominator(num_tokens)
    metrics = {
      "loss": weighted_average(per_token, weights),
      "cross_ent_loss": weighted_average(nll, weights),
      "z_loss": weighted_average(z_term, weights),
      "accuracy": weighted_average(losses.token_accuracy(logits, targets), weights),
      "num_tokens": Sum(total=num_tokens),
      "num_examples": Sum(total=jnp.asarray(targets.shape[0], jnp.float32)),
    }
    return loss, metrics

  def loss_denominator(self, num_tokens: Array) -> Array:
    """What a batch with total loss weight `num_tokens` divides its loss sum by: `loss_normalizing_factor`
    when set, else the token weight itself (at least 1). Not additive over microbatches, so a step that
    accumulates adds the sums and the weights, and calls this once on the total."""
    if self.loss_normalizing_factor:
      return jnp.asarray(self.loss_normalizing_factor, jnp.float32)
    return jnp.maximum(num_tokens, 1.0)

  def loss_sum_fn(self, params: PyTree, batch: Mapping[str, Array], dropout_rng: Optional[Array]):
    """(loss_sum, num_tokens, metrics) for gradient accumulation: the weighted loss sum of this batch (0 when it
    has no weighted token), its total loss weight (float32) and `loss_fn`'s metrics. Summed over microbatches
    and divided once by `loss_denominator(total num_tokens)`, it gives the whole batch's `loss_fn`, also with a
    fixed `loss_normalizing_factor`. Computed through `loss_fn`, so a subclass that overrides it is honoured."""
    loss, metrics = self.loss_fn(params, batch, dropout_rng)
    weights = batch.get("decoder_loss_weights")
    if weights is None:
      num_tokens = jnp.asarray(batch["decoder_target_tokens"].size, jnp.float32)
    else:
      num_tokens = jnp.sum(weights).astype(jnp.float32)
    loss_sum = loss.astype(jnp.float32) * self.loss_denominator(num_tokens)
    return jnp.where(num_tokens > 0, loss_sum, 0.0), num_tokens, metrics

  def eval_fn(self, params: PyTree, batch: Mapping[str, Array]):
    return self.loss_fn(params, batch, dropout_rng=None)

  def score_batch(self, params: PyTree, batch: Mapping[str, Array], return_intermediates: bool = False):
    """Sum of target-token log-likelihoods per example, weighted by `decoder_loss_weights`. [batch]"""
    if return_intermediates:
      logits, state = self._compute_logits(params, batch, mutable=["intermediates"])
    else:
      logits = self._compute_logits(params, batch)
    weights = batch.get("decoder_loss_weights")
    _, nll, _, weights = losses.weighted_cross_entropy(logits, batch["decoder_target_tokens"], weights)
    token_scores = -nll * weights
    scores = jnp.sum(token_scores, axis=-1)
    if return_intermediates:
      intermediates = flax.core.unfreeze(state).get("intermediates", {})
      intermediates["decoder"] = {
        "target_tokens": (batch["decoder_target_tokens"],),
        "loss_weights": (weights,),
        "token_scores": (token_scores,),
      }
      return scores, intermediates
    return scores

  # ------------------------------------------------------------------------------------ generation
  @property
  def cached_decoder(self):
    """Cache, prefill and decode step of `module` (`decode_loop.CachedDecoder`, the one decoding owner)."""
    return decode_loop.CachedDecoder(self.module)

  def init_cache(self, params: PyTree, batch_size: int, max_length: int) -> PyTree:
    """An empty decode cache for `batch_size` rows of up to `max_length` positions."""
    return self.cached_decoder.init_cache(params, batch_size, max_length)

  def prefill_cache(self, params: PyTree, cache: PyTree, inputs: Array, lengths: Array):
    """Run `inputs` [B, P] through the model once, filling the cache up to `lengths` [B].

    Returns (logits [B, P, V], cache)."""
    return self.cached_decoder.prefill(params, cache, inputs, lengths)

  def make_tokens_to_logits(self, params: PyTree, max_decode_length: int) -> Callable:
    """`tokens_to_logits(decoding_state) -> (logits [B, V], new_cache)` for one decode step."""
    return self.cached_decoder.tokens_to_logits_fn(params, max_decode_length)

  def predict_batch(self, params: PyTree, batch: Mapping[str, Array], rng: Optional[Array] = None, **kwargs):
    return self.predict_batch_with_aux(params, batch, rng=rng, **kwargs)[0]

  def predict_batch_with_aux(
    self,
    params: PyTree,
    batch: Mapping[str, Array],
    rng: Optional[Array] = None,
    *,
    return_all_decodes: bool = False,
    num_decodes: int = 1,
    decoder_params: Optional[MutableMapping[str, Any]] = None,
  ):
    """Continue each prompt (the `decoder_causal_attention` region of `decoder_input_tokens`).

    Follows T5X's DecoderOnlyModel (`inference.t5x_compat.predict_batch_with_aux`): the prompt is prefilled into
    the cache, `decode_fn` runs the jitted decoding loop from `initial_index` = prompt length, and the prompt is
    removed from the result. Returns (decodes [B, L] or [B, num_decodes, L], {'scores': [B] or [B, num_decodes]}).
    """
    from gpt_plugin.inference import t5x_compat  # pylint: disable=import-outside-toplevel

    return t5x_compat.predict_batch_with_aux(
      self.cached_decoder,
      params,
      batch,
      rng,
      decode_fn=self.decode_fn,
      eos_id=self.vocabulary.eos_id if self.vocabulary is not None else 1,
      return_all_decodes=return_all_decodes,
      num_decodes=num_decodes,
      decoder_params=decoder_params,
    )
