"""Cached decoding, one owner: the empty cache, the prefill of the prompt positions only, the one-token step
function, and the call of a decode function over them.

`generate.Generator` (the Python API) and `DecoderOnlyLM.predict_batch_with_aux` (through the T5X adapter in
`inference/t5x_compat.py`) both decode through `CachedDecoder.decode`. It works on any Flax module with T5X's
decoder-only call contract: our `GPTDecoder`, alone or inside `t5x.models.DecoderOnlyModel`. The decode function
is `decoding.temperature_sample` / `decoding.beam_search` or T5X's own (same arguments).

Prefill covers only the prompt: the model runs over the first `prefill_length` positions of `inputs`, where
`prefill_length` is the smallest bucket holding the longest prompt. Buckets are powers of two from
`MIN_PREFILL_BUCKET`, capped at the cache length, so a 32-token prompt with a 2048-position cache runs 32
positions, and batches whose longest prompts differ share one compiled program per bucket. Positions from a
row's prompt length on are overwritten by the decode steps before any query can see them, so the decoded tokens
do not depend on the bucket.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
PyTree = Any

MIN_PREFILL_BUCKET = 16


def prefill_buckets(cache_length: int) -> Tuple[int, ...]:
  """The prefill lengths compiled for a cache of `cache_length` positions: 16, 32, 64, ... and the length itself."""
  if cache_length < 1:
    raise ValueError(f"cache length {cache_length} must be >= 1")
  buckets, size = [], MIN_PREFILL_BUCKET
  while size < cache_length:
    buckets.append(size)
    size *= 2
  return tuple(buckets) + (int(cache_length),)


def prefill_bucket(longest_prompt: int, cache_length: int) -> int:
  """The smallest bucket of `prefill_buckets(cache_length)` that holds `longest_prompt` positions."""
  if longest_prompt > cache_length:
    raise ValueError(f"a prompt of {longest_prompt} positions does not fit the cache length {cache_length}")
  return next(b for b in prefill_buckets(cache_length) if b >= longest_prompt)


class CachedDecoder:
  """Cache, prefill and step function of one module (T5X decoder-only call contract)."""

  def __init__(self, module):
    self.module = module

  @property
  def cache_offset(self) -> int:
    """Axis of the batch in cache leaves: 1 when scanned layers put the layer axis first (as T5X reads it)."""
    return 1 if getattr(self.module, "scan_layers", False) else 0

  def init_cache(self, params: PyTree, batch_size: int, length: int) -> PyTree:
    """An empty cache for `batch_size` rows of up to `length` positions. Under jit only the zeros remain (the
    forward pass that shapes them is dead code)."""
    tokens = jnp.ones((batch_size, length), jnp.int32)
    _, variables = self.module.apply(
      {"params": params}, tokens, tokens, enable_dropout=False, decode=True, mutable=["cache"]
    )
    return variables["cache"]

  def prefill(self, params: PyTree, cache: PyTree, inputs: Array, lengths: Array) -> Tuple[Array, PyTree]:
    """Runs all of `inputs` [B, P] (P <= cache length) through the model, caching positions < `lengths` [B].
    Returns (logits [B, P, V], cache)."""
    logits, variables = self.module.apply(
      {"params": params, "cache": cache},
      inputs,
      inputs,
      enable_dropout=False,
      prefill=True,
      prefill_lengths=lengths,
      mutable=["cache"],
    )
    return logits, variables["cache"]

  def prefill_prompt(
    self, params: PyTree, cache: PyTree, inputs: Array, lengths: Array, prefill_length: Optional[int] = None
  ) -> PyTree:
    """Prefills only the first `prefill_length` positions of `inputs` [B, L] (a bucket >= max(lengths)).

    `prefill_length=None` (lengths known only inside jit, as in T5X's `predict_batch_with_aux`) compiles every
    bucket of the cache length and picks one at run time with `lax.switch` on max(lengths)."""
    if prefill_length is not None:
      return self.prefill(params, cache, inputs[:, :prefill_length], lengths)[1]
    buckets = prefill_buckets(inputs.shape[1])
    branches = [lambda c, x, n, b=b: self.prefill(params, c, x[:, :b], n)[1] for b in buckets]
    index = jnp.searchsorted(jnp.asarray(buckets), jnp.max(lengths), side="left")
    return lax.switch(jnp.minimum(index, len(buckets) - 1), branches, cache, inputs, lengths)

  def tokens_to_logits_fn(self, params: PyTree, max_decode_length: int) -> Callable:
    """`tokens_to_logits(decoding_state) -> (logits [B, V], new_cache)` for one decode step."""

    def tokens_to_logits(state):
      logits, variables = self.module.apply(
        {"params": params, "cache": state.cache},
        state.cur_token,
        state.cur_token,
        enable_dropout=False,
        decode=True,
        max_decode_length=max_decode_length,
        mutable=["cache"],
      )
      return logits[:, 0, :], variables["cache"]

    return tokens_to_logits

  def decode(
    self,
    params: PyTree,
    inputs: Array,
    prompt_lengths: Array,
    decode_fn: Callable,
    *,
    prefill_length: Optional[int] = None,
    **decode_kwargs,
  ) -> Tuple[Array, Array]:
    """Cache of `inputs.shape[1]` positions, prefill of the prompts, then `decode_fn` from `prompt_lengths`.

    `inputs` [B, L] is the decoder-input row (BOS 0 at position 0, prompt at 1..n); `prompt_lengths` [B] = n.
    `decode_kwargs` go to `decode_fn` (eos_id, num_decodes, decode_rng, temperature, ...).
    Returns `decode_fn`'s (decodes [B, num_decodes, L], scores [B, num_decodes]), best last."""
    batch, length = inputs.shape
    cache = self.init_cache(params, batch, length)
    cache = self.prefill_prompt(params, cache, inputs, prompt_lengths, prefill_length)
    return decode_fn(
      inputs=inputs,
      cache=cache,
      tokens_to_logits=self.tokens_to_logits_fn(params, length),
      initial_index=prompt_lengths,
      cache_offset=self.cache_offset,
      **decode_kwargs,
    )
