"""Jitted autoregressive decoding over a model's `cache`: temperature / top-k / top-p sampling and beam search.

The two entry points take the same arguments and return the same shapes as `t5x.decoding.temperature_sample`
and `t5x.decoding.beam_search`, so one gin binding (`models.DecoderOnlyLM.decode_fn = @decoding.beam_search`,
`...predict_batch_with_aux.decoder_params = {'temperature': 0.7, 'topk': 40}`) drives ours or T5X's.

Conventions (those of T5X):
  * `inputs` [B, L] is a decoder-input row: position 0 is the BOS token 0 and non-zero entries are prompt tokens
    that are teacher-forced (never overwritten). Output position j is the token that follows input position j,
    i.e. the result is the (prompt + continuation) sequence shifted left by one, [B, num_decodes, L].
  * With `initial_index` [B] (the prompt lengths) the cache must already hold positions `< initial_index`
    (`DecoderOnlyLM.prefill_cache`); decoding starts by feeding `inputs[b, initial_index[b]]`.
  * `tokens_to_logits(state)` maps a `DecodingState` (`cur_index`, `sequences`, `cur_token` [B*n, 1], `cache`)
    to `(logits [B*n, V], new_cache)`.
  * Results come sorted by score, best LAST, with `log_prob`/`scores` [B, num_decodes].
  * Once a row emits `eos_id` it is finished; later positions are 0.

The loops are `lax.while_loop`s: one compiled program per shape, no per-token host round trips. Every cache
leaf except `cache_index` (and the names T5X also skips) must have the batch dimension at axis `cache_offset`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Optional, Tuple, Union

import flax
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax import lax

Array = jax.Array
PyTree = Any

NEG_INF = np.array(-1.0e7, np.float32)  # finite, so that sums of masked log-probs stay ordered
MIN_TEMPERATURE = np.array(1e-4, np.float32)
_UNINDEXED_CACHE_LEAVES = ("cached_bias", "position_embedder_index")


@flax.struct.dataclass
class DecodingState:
  """What `tokens_to_logits` sees each step (field names as in T5X)."""

  cur_index: Array  # [B*n] position of `cur_token`
  sequences: Array  # [B*n, L] the decoder-input row so far
  cur_token: Array  # [B*n, 1]
  cache: PyTree


@flax.struct.dataclass
class SamplingLoopState:
  """Loop carry of `temperature_sample` (field names as in T5X, for `state_callback_fn`)."""

  step: Array
  cur_index: Array
  sequences: Array
  cache: PyTree
  cur_token: Array
  ended: Array
  rng: Array
  log_prob: Array


# ----------------------------------------------------------------------------------------------- cache utils
def cache_map(fn: Callable[[Array], Array], cache: PyTree, apply_to_index: bool = False) -> PyTree:
  """Applies `fn` to every batch-carrying cache leaf (not `cache_index` unless `apply_to_index`)."""
  frozen = isinstance(cache, flax.core.FrozenDict)
  flat = traverse_util.flatten_dict(flax.core.unfreeze(cache) if frozen else dict(cache))
  out = {}
  for path, leaf in flat.items():
    name = path[-1]
    skip = name in _UNINDEXED_CACHE_LEAVES or (name == "cache_index" and not apply_to_index)
    # A scalar cache_index (no prefill) has no batch axis even when apply_to_index is set.
    if name == "cache_index" and np.ndim(leaf) == 0:
      skip = True
    out[path] = leaf if skip else fn(leaf)
  new = traverse_util.unflatten_dict(out)
  return flax.core.freeze(new) if frozen else new


def _repeat_rows(x: Array, n: int, axis: int = 0) -> Array:
  """[.., B, ..] -> [.., B*n, ..] with each row repeated n times consecutively."""
  return jnp.repeat(x, n, axis=axis) if n > 1 else x


# -------------------------------------------------------------------------------------------- logit filters
def apply_top_k(logits: Array, k: int) -> Array:
  """Keeps the k largest logits per row (ties at the k-th value are kept); others become NEG_INF."""
  if k <= 0 or k >= logits.shape[-1]:
    return logits
  kth = lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits < kth, NEG_INF, logits)


def apply_top_p(logits: Array, p: Union[float, Array]) -> Array:
  """Nucleus filter: keeps the smallest set of most likely tokens whose probability mass reaches `p`.

  A token is kept when the mass of the tokens strictly more likely than it is below `p`, so the token that
  crosses `p` is included. Ties with the last kept token are kept too."""
  sorted_logits = -jnp.sort(-logits, axis=-1)
  probs = jax.nn.softmax(sorted_logits.astype(jnp.float32), axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  p = jnp.asarray(p, jnp.float32)
  if p.ndim == 1:
    p = p[:, None]
  keep = mass_before < p
  # The smallest kept logit is the threshold (the most likely token is always kept).
  threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits < threshold, NEG_INF, logits)


def _check_static(name: str, value, check: Callable[[float], bool], msg: str):
  if isinstance(value, (int, float, np.number)) or (isinstance(value, np.ndarray)):
    arr = np.asarray(value, np.float64)
    if not np.all([check(v) for v in arr.reshape(-1)]):
      raise ValueError(f"{name}={value!r}: {msg}")


# ---------------------------------------------------------------------------------------- temperature sample
def _check_sampling_args(temperature, topk, topp, num_decodes) -> bool:
  """Rejects bad static sampling settings with one message naming the value; returns whether top-p is on."""
  _check_static("temperature", temperature, lambda t: t >= 0.0, "temperature must be >= 0 (0 means greedy)")
  _check_static("topp", topp, lambda p: p == 0.0 or 0.0 < p <= 1.0, "top-p must be 0 (disabled) or lie in (0, 1]")
  if not isinstance(topk, (int, np.integer)):
    raise TypeError(f"topk={topk!r} must be a Python int (it fixes the compiled program)")
  if topk < 0:
    raise ValueError(f"topk={topk} must be >= 0")
  topp_on = not (isinstance(topp, (int, float)) and topp == 0.0)
  if topk and topp_on:
    raise ValueError(f"at most one of topk={topk} and topp={topp} may be non-zero")
  if num_decodes < 1:
    raise ValueError(f"num_decodes={num_decodes} must be >= 1")
  return topp_on


def _filter_logits(logits: Array, temperature: Array, topk: int, topp, topp_on: bool) -> Array:
  """Temperature scaling, then the top-k or top-p cut (rows with temperature <= MIN_TEMPERATURE are clamped)."""
  t = temperature if temperature.ndim == 0 else temperature[:, None]
  scaled = logits / jnp.maximum(t, MIN_TEMPERATURE)
  if topk:
    scaled = apply_top_k(scaled, int(topk))
  if topp_on:
    scaled = apply_top_p(scaled, topp)
  return scaled


@dataclasses.dataclass(frozen=True)
class _Chooser:
  """Picks the next token per row: argmax where the temperature is (about) 0, else a draw from the filtered
  distribution. Returns (token [B*n], its log-prob [B*n]) under the filtered or the raw distribution."""

  temperature: Array
  topk: int
  topp: Any
  topp_on: bool
  static_greedy: bool
  rescale_log_probs: bool

  def __call__(self, logits: Array, rng: Array) -> Tuple[Array, Array]:
    rows = jnp.arange(logits.shape[0])
    logits = logits.astype(jnp.float32)
    greedy_tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    raw_lp = jax.nn.log_softmax(logits, axis=-1)
    greedy_lp = raw_lp[rows, greedy_tok] if not self.rescale_log_probs else jnp.zeros(rows.shape, jnp.float32)
    if self.static_greedy:
      return greedy_tok, greedy_lp
    scaled = _filter_logits(logits, self.temperature, self.topk, self.topp, self.topp_on)
    sampled = jax.random.categorical(rng, scaled, axis=-1).astype(jnp.int32)
    lp = jax.nn.log_softmax(scaled, axis=-1) if self.rescale_log_probs else raw_lp
    sampled_lp = lp[rows, sampled]
    use_greedy = jnp.broadcast_to(self.temperature <= MIN_TEMPERATURE, rows.shape)
    return jnp.where(use_greedy, greedy_tok, sampled), jnp.where(use_greedy, greedy_lp, sampled_lp)


def _ensure_frozen_like(old_cache: PyTree, new_cache: PyTree) -> PyTree:
  if isinstance(old_cache, flax.core.FrozenDict) and not isinstance(new_cache, flax.core.FrozenDict):
    return flax.core.freeze(new_cache)
  return new_cache


def _sampling_step(
  state: SamplingLoopState,
  *,
  tokens_to_logits: Callable,
  choose: _Chooser,
  length: int,
  limit: Array,
  eos_id: int,
  state_callback_fn: Optional[Callable],
  logit_callback_fn: Optional[Callable],
) -> SamplingLoopState:
  """One `temperature_sample` step: feed `cur_token`, choose (or teacher-force) the next token, write it."""
  if state_callback_fn is not None:
    state = state_callback_fn(state)
  rows = jnp.arange(state.sequences.shape[0])
  rng_step, rng_next = jax.random.split(state.rng)
  decoding_state = DecodingState(
    cur_index=state.cur_index, sequences=state.sequences[:, :-2], cur_token=state.cur_token, cache=state.cache
  )
  logits, new_cache = tokens_to_logits(decoding_state)
  new_cache = _ensure_frozen_like(state.cache, new_cache)
  if logit_callback_fn is not None:
    logits = logit_callback_fn(logits, state)
  token, token_lp = choose(logits, rng_step)
  i = jnp.minimum(state.cur_index, length)
  forced = state.sequences[rows, i + 1]
  in_prompt = forced != 0
  token = jnp.where(in_prompt, forced, token)
  ended = state.ended
  token_lp = jnp.where(in_prompt | ended, 0.0, token_lp)
  written = jnp.where(ended, 0, token)
  sequences = state.sequences.at[rows, i + 1].set(written)
  ended = ended | ((token == eos_id) & ~in_prompt) | (i + 1 >= limit)
  return SamplingLoopState(
    step=state.step + 1,
    cur_index=i + 1,
    sequences=sequences,
    cache=new_cache,
    cur_token=written[:, None],
    ended=ended,
    rng=rng_next,
    log_prob=state.log_prob + token_lp,
  )


def _sampling_init(inputs: Array, cache: PyTree, initial_index, limit: Array, decode_rng: Array) -> SamplingLoopState:
  """The loop carry before the first step; `sequences` gets two spare slots so writes at i + 1 never fall off."""
  flat_batch = inputs.shape[0]
  sequences0 = jnp.pad(inputs, ((0, 0), (0, 2)))
  if initial_index is None:
    index0 = jnp.zeros((flat_batch,), jnp.int32)
  else:
    index0 = jnp.asarray(initial_index, jnp.int32).reshape((flat_batch,))
  token0 = jnp.take_along_axis(sequences0, index0[:, None], axis=1)
  if initial_index is None:
    token0 = jnp.zeros_like(token0)
  return SamplingLoopState(
    step=jnp.zeros((), jnp.int32),
    cur_index=index0,
    sequences=sequences0,
    cache=cache,
    cur_token=token0.astype(jnp.int32),
    ended=index0 >= limit,
    rng=decode_rng,
    log_prob=jnp.zeros((flat_batch,), jnp.float32),
  )


def _repeat_for_decodes(n: int, cache_offset: int, inputs, cache, initial_index, temperature, topp):
  """Repeats every per-row argument n times ([B, ...] -> [B*n, ...]) for n decodes per prompt."""
  inputs = _repeat_rows(inputs, n)
  cache = cache_map(
    functools.partial(_repeat_rows, n=n, axis=cache_offset), cache, apply_to_index=initial_index is not None
  )
  if initial_index is not None:
    initial_index = _repeat_rows(jnp.asarray(initial_index), n)
  if jnp.ndim(temperature) == 1:
    temperature = _repeat_rows(jnp.asarray(temperature), n)
  if not isinstance(topp, (int, float)) and jnp.ndim(topp) == 1:
    topp = _repeat_rows(jnp.asarray(topp), n)
  return inputs, cache, initial_index, temperature, topp


def _sort_best_last(decodes: Array, scores: Array) -> Tuple[Array, Array]:
  """decodes [B, n, L], scores [B, n] -> both ordered by ascending score."""
  order = jnp.argsort(scores, axis=-1)
  return jnp.take_along_axis(decodes, order[:, :, None], axis=1), jnp.take_along_axis(scores, order, axis=1)


def temperature_sample(
  inputs: Array,
  cache: Mapping[str, Array],
  tokens_to_logits: Callable[[DecodingState], Tuple[Array, Mapping[str, Array]]],
  eos_id: int,
  decode_rng: Optional[Array] = None,
  num_decodes: int = 1,
  temperature: Union[float, Array] = 1.0,
  topk: int = 1,
  topp: Union[float, Array] = 0.0,
  cache_offset: int = 0,
  initial_index: Optional[Array] = None,
  max_decode_steps: Optional[Union[int, Array]] = None,
  max_decode_steps_hard_limit: Optional[int] = None,
  rescale_log_probs: bool = True,
  state_callback_fn: Optional[Callable[[SamplingLoopState], SamplingLoopState]] = None,
  logit_callback_fn: Optional[Callable[[Array, SamplingLoopState], Array]] = None,
) -> Tuple[Array, Array]:
  """Samples `num_decodes` continuations per row of `inputs` (see the module docstring for conventions).

  Args (T5X names and meanings):
    temperature: scalar or [B]; values <= 1e-4 decode greedily (argmax) for that row. Must be >= 0.
    topk: keep only the `topk` most likely tokens before sampling (0 = no cut; 1 = greedy).
    topp: nucleus sampling: 0 disables it, otherwise it must lie in (0, 1]. At most one of topk/topp non-zero.
    max_decode_steps: at most this many new tokens after the prompt (the non-zero tokens of `inputs`).
    rescale_log_probs: the returned log-probs use the filtered, temperature-scaled distribution (T5X default);
      False returns the model's own log-probs of the chosen tokens.
  Returns:
    (decodes [B, num_decodes, L], log_prob [B, num_decodes]) sorted by log_prob, best last.
  """
  topp_on = _check_sampling_args(temperature, topk, topp, num_decodes)
  if decode_rng is None:
    decode_rng = jax.random.PRNGKey(0)
  if max_decode_steps is not None and max_decode_steps_hard_limit:
    max_decode_steps = jnp.minimum(max_decode_steps, max_decode_steps_hard_limit)
  if isinstance(max_decode_steps, int) and max_decode_steps > inputs.shape[1]:
    raise ValueError(f"max_decode_steps={max_decode_steps} exceeds the sequence length {inputs.shape[1]}")

  batch, length = inputs.shape
  flat_batch = batch * num_decodes
  inputs = inputs.astype(jnp.int32)
  if num_decodes > 1:
    inputs, cache, initial_index, temperature, topp = _repeat_for_decodes(
      num_decodes, cache_offset, inputs, cache, initial_index, temperature, topp
    )

  # Per-row last writable position (output coordinates: a token is written at input index i + 1 <= limit).
  limit = jnp.full((flat_batch,), length, jnp.int32)
  if max_decode_steps is not None:
    prompt_tokens = jnp.sum(inputs != 0, axis=1).astype(jnp.int32)
    limit = jnp.minimum(limit, prompt_tokens + max_decode_steps)

  static_greedy = isinstance(temperature, (int, float)) and temperature <= float(MIN_TEMPERATURE)
  choose = _Chooser(jnp.asarray(temperature, jnp.float32), topk, topp, topp_on, static_greedy, rescale_log_probs)
  body = functools.partial(
    _sampling_step,
    tokens_to_logits=tokens_to_logits,
    choose=choose,
    length=length,
    limit=limit,
    eos_id=eos_id,
    state_callback_fn=state_callback_fn,
    logit_callback_fn=logit_callback_fn,
  )
  init = _sampling_init(inputs, cache, initial_index, limit, decode_rng)
  final = lax.while_loop(lambda s: jnp.logical_not(jnp.all(s.ended)) & (s.step <= length), body, init)
  if state_callback_fn is not None:
    final = state_callback_fn(final)
  decodes = final.sequences[:, 1:-1].reshape((batch, num_decodes, length))
  return _sort_best_last(decodes, final.log_prob.reshape((batch, num_decodes)))


# ----------------------------------------------------------------------------------------------- beam search
def brevity_penalty(alpha: float, length) -> Array:
  """GNMT length normalisation ((5 + length) / 6) ** alpha."""
  return jnp.power((5.0 + jnp.asarray(length, jnp.float32)) / 6.0, alpha)


@flax.struct.dataclass
class _BeamState:
  step: Array  # scalar: steps taken
  cur_index: Array  # [B] position of the token fed next (output written at cur_index + 1)
  live_seqs: Array  # [B, K, L + 2] decoder-input rows of the live beams
  live_logprobs: Array  # [B, K]
  finished_seqs: Array  # [B, K, L + 2]
  finished_scores: Array  # [B, K] length-normalised
  finished_flags: Array  # [B, K]
  cache: PyTree  # flat [B*K, ...] on the batch axis


@dataclasses.dataclass(frozen=True)
class _BeamConfig:
  """The static settings a beam-search step needs."""

  batch: int
  k: int
  length: int
  limit: int  # last output position that may be written
  alpha: float
  eos_id: int
  min_log_prob: float
  cache_offset: int
  index_in_cache: bool  # the cache carries a per-row cache_index (prefilled cache)


def _beam_init(inputs: Array, cache: PyTree, initial_index, cfg: _BeamConfig) -> _BeamState:
  """One live beam per row (the others at NEG_INF), no finished beams, the cache repeated K times."""
  batch, k, length = cfg.batch, cfg.k, cfg.length
  if initial_index is None:
    index0 = jnp.zeros((batch,), jnp.int32)
  else:
    index0 = jnp.asarray(initial_index, jnp.int32).reshape((batch,))
  seqs0 = jnp.broadcast_to(jnp.pad(inputs, ((0, 0), (0, 2)))[:, None, :], (batch, k, length + 2))
  live_lp0 = jnp.tile(jnp.asarray([0.0] + [float(NEG_INF)] * (k - 1), jnp.float32)[None], (batch, 1))
  flat_cache0 = cache_map(
    functools.partial(_repeat_rows, n=k, axis=cfg.cache_offset), cache, apply_to_index=cfg.index_in_cache
  )
  return _BeamState(
    step=jnp.zeros((), jnp.int32),
    cur_index=index0,
    live_seqs=seqs0,
    live_logprobs=live_lp0,
    finished_seqs=jnp.zeros_like(seqs0),
    finished_scores=jnp.full((batch, k), -jnp.inf),
    finished_flags=jnp.zeros((batch, k), bool),
    cache=flat_cache0,
  )


def _beam_row_done(state: _BeamState, cfg: _BeamConfig) -> Array:
  """[B]: the row hit the length limit, cannot improve on its K finished beams, or fell below min_log_prob."""
  at_end = state.cur_index + 1 > cfg.limit
  # Best possible future score of a live beam: its log-prob can only fall, and the penalty is largest at `limit`.
  best_live = jnp.max(state.live_logprobs, axis=1) / brevity_penalty(cfg.alpha, cfg.limit)
  worst_finished = jnp.min(jnp.where(state.finished_flags, state.finished_scores, -jnp.inf), axis=1)
  settled = jnp.all(state.finished_flags, axis=1) & (worst_finished >= best_live)
  hopeless = jnp.max(state.live_logprobs, axis=1) < cfg.min_log_prob
  return at_end | settled | (hopeless & (state.step > 0))


def _beam_log_probs(state: _BeamState, i: Array, tokens_to_logits: Callable, cfg: _BeamConfig):
  """Feeds every live beam's token at `i`; returns (log-probs [B, K, V], new flat cache, in_prompt [B]).

  Inside the prompt the teacher-forced token gets log-prob 0 and every other token NEG_INF."""
  batch, k, length = cfg.batch, cfg.k, cfg.length
  brow = jnp.arange(batch)
  cur = jnp.take_along_axis(state.live_seqs, jnp.broadcast_to(i[:, None, None], (batch, k, 1)), axis=2)
  logits, new_cache = tokens_to_logits(
    DecodingState(
      cur_index=jnp.repeat(i, k),
      sequences=state.live_seqs[:, :, :-2].reshape(batch * k, length),
      cur_token=cur.reshape(batch * k, 1),
      cache=state.cache,
    )
  )
  vocab = logits.shape[-1]
  lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(batch, k, vocab)
  forced = state.live_seqs[brow, 0, i + 1]  # [B] teacher-forced prompt token or 0
  in_prompt = forced != 0
  forced_lp = jnp.where(jnp.arange(vocab)[None, None, :] == forced[:, None, None], 0.0, NEG_INF)
  return jnp.where(in_prompt[:, None, None], forced_lp, lp), new_cache, in_prompt


def _merge_finished(state: _BeamState, top_seqs, top_lp, is_eos, lengths, cfg: _BeamConfig):
  """The best K of (the finished beams so far, the candidates that just emitted EOS): (seqs, scores, flags)."""
  new_scores = jnp.where(is_eos, top_lp / brevity_penalty(cfg.alpha, lengths), -jnp.inf)
  all_scores = jnp.concatenate([jnp.where(state.finished_flags, state.finished_scores, -jnp.inf), new_scores], axis=1)
  all_seqs = jnp.concatenate([state.finished_seqs, top_seqs], axis=1)
  all_flags = jnp.concatenate([state.finished_flags, is_eos], axis=1)
  fin_scores, fin_pos = lax.top_k(all_scores, cfg.k)
  fin_seqs = jnp.take_along_axis(all_seqs, fin_pos[:, :, None], axis=1)
  fin_flags = jnp.take_along_axis(all_flags, fin_pos, axis=1)
  return fin_seqs, fin_scores, fin_flags


def _gather_beams_cache(flat_cache: PyTree, beam_idx: Array, cfg: _BeamConfig) -> PyTree:
  """Reorders the flat [B*K] cache rows: new beam j of row b takes old beam beam_idx[b, j]."""
  flat_idx = (jnp.arange(cfg.batch)[:, None] * cfg.k + beam_idx).reshape(-1)
  return cache_map(
    lambda x: jnp.take(x, flat_idx, axis=cfg.cache_offset), flat_cache, apply_to_index=cfg.index_in_cache
  )


def _beam_step(state: _BeamState, *, tokens_to_logits: Callable, cfg: _BeamConfig) -> _BeamState:
  """Extends every live beam by one token: the best 2K candidates, of which the best K non-EOS stay live and
  the EOS ones merge into the finished set. Rows already done keep their state."""
  batch, k = cfg.batch, cfg.k
  brow = jnp.arange(batch)
  done = _beam_row_done(state, cfg)  # [B]
  i = jnp.minimum(state.cur_index, cfg.length)  # [B]
  lp, new_cache, in_prompt = _beam_log_probs(state, i, tokens_to_logits, cfg)
  vocab = lp.shape[-1]
  cand = (state.live_logprobs[:, :, None] + lp).reshape(batch, k * vocab)
  top_lp, top_idx = lax.top_k(cand, 2 * k)  # [B, 2K]
  top_beam, top_tok = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
  top_seqs = jnp.take_along_axis(state.live_seqs, top_beam[:, :, None], axis=1)
  pos = jnp.broadcast_to((i + 1)[:, None], (batch, 2 * k))
  top_seqs = top_seqs.at[brow[:, None], jnp.arange(2 * k)[None, :], pos].set(top_tok)
  is_eos = (top_tok == cfg.eos_id) & ~in_prompt[:, None]
  # Live: best K candidates that did not just end.
  alive_lp = jnp.where(is_eos, NEG_INF + top_lp, top_lp)
  alive_lp_k, alive_pos = lax.top_k(alive_lp, k)
  new_live_seqs = jnp.take_along_axis(top_seqs, alive_pos[:, :, None], axis=1)
  new_live_beam = jnp.take_along_axis(top_beam, alive_pos, axis=1)
  lengths = (i + 1).astype(jnp.float32)[:, None]
  fin_seqs, fin_scores, fin_flags = _merge_finished(state, top_seqs, top_lp, is_eos, lengths, cfg)
  new_cache = _gather_beams_cache(new_cache, new_live_beam, cfg)
  # Rows already done keep their state (their cache rows do harmless busy work).
  keep = done[:, None]
  return _BeamState(
    step=state.step + 1,
    cur_index=jnp.where(done, state.cur_index, i + 1),
    live_seqs=jnp.where(keep[:, :, None], state.live_seqs, new_live_seqs),
    live_logprobs=jnp.where(keep, state.live_logprobs, alive_lp_k),
    finished_seqs=jnp.where(keep[:, :, None], state.finished_seqs, fin_seqs),
    finished_scores=jnp.where(keep, state.finished_scores, jnp.where(fin_flags, fin_scores, -jnp.inf)),
    finished_flags=jnp.where(keep, state.finished_flags, fin_flags),
    cache=new_cache,
  )


def _beam_results(final: _BeamState, cfg: _BeamConfig) -> Tuple[Array, Array]:
  """The best K of finished + live beams, best last; beams cut off by the length limit count after every
  finished beam of their row."""
  live_scores = final.live_logprobs / brevity_penalty(cfg.alpha, jnp.minimum(final.cur_index, cfg.limit))[:, None]
  live_valid = final.live_logprobs > NEG_INF / 2
  fin_rank = jnp.where(final.finished_flags, final.finished_scores, -jnp.inf)
  live_rank = jnp.where(live_valid, live_scores - 1e9, -jnp.inf)
  rank = jnp.concatenate([fin_rank, live_rank], axis=1)
  scores = jnp.concatenate(
    [jnp.where(final.finished_flags, final.finished_scores, NEG_INF), jnp.where(live_valid, live_scores, NEG_INF)],
    axis=1,
  )
  seqs = jnp.concatenate([final.finished_seqs, final.live_seqs], axis=1)
  _, best = lax.top_k(rank, cfg.k)
  best = best[:, ::-1]  # ascending: best last
  decodes = jnp.take_along_axis(seqs, best[:, :, None], axis=1)[:, :, 1:-1]
  return decodes, jnp.take_along_axis(scores, best, axis=1)


def beam_search(
  inputs: Array,
  cache: Mapping[str, Array],
  tokens_to_logits: Callable[[DecodingState], Tuple[Array, Mapping[str, Array]]],
  eos_id: int,
  num_decodes: int = 4,
  alpha: float = 0.6,
  max_decode_len: Optional[int] = None,
  max_decode_step: int = -1,
  min_log_prob: float = float(NEG_INF),
  decode_rng: Optional[Array] = None,
  cache_offset: int = 0,
  initial_index: Optional[Array] = None,
) -> Tuple[Array, Array]:
  """Beam search with `num_decodes` beams (see the module docstring for conventions).

  Scores are sum of log-probs / brevity_penalty(alpha, length), where length counts prompt plus generated tokens
  (as in T5X). Finished beams (ended by EOS) rank above beams cut off by the length limit.

  Args (T5X names):
    max_decode_len: last output position that may be written (default `inputs.shape[1]`).
    max_decode_step: if > 0, a hard limit on the number of steps.
    min_log_prob: stop when no live beam's raw log-prob is above this.
    decode_rng: unused (beam search is deterministic).
  Returns:
    (decodes [B, num_decodes, L], scores [B, num_decodes]) sorted by score, best last.
  """
  del decode_rng
  if num_decodes < 1:
    raise ValueError(f"num_decodes={num_decodes} must be >= 1")
  batch, length = inputs.shape
  cfg = _BeamConfig(
    batch=batch,
    k=num_decodes,
    length=length,
    limit=length if max_decode_len is None else min(int(max_decode_len), length),
    alpha=alpha,
    eos_id=eos_id,
    min_log_prob=min_log_prob,
    cache_offset=cache_offset,
    index_in_cache=initial_index is not None,
  )

  def cond(state: _BeamState):
    go = ~jnp.all(_beam_row_done(state, cfg))
    if max_decode_step is not None and max_decode_step > 0:
      go = go & (state.step < max_decode_step)
    return go

  init = _beam_init(inputs.astype(jnp.int32), cache, initial_index, cfg)
  final = lax.while_loop(cond, functools.partial(_beam_step, tokens_to_logits=tokens_to_logits, cfg=cfg), init)
  return _beam_results(final, cfg)
