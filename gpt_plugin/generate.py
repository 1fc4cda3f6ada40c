"""Python generation API, in the spirit of the original `model.generate(params, tokens, max_length=...,
temperature=..., sample=..., sample_rng=...)`, on top of the jitted KV-cached decoders in `decoding.py`.

    from gpt_plugin import generate
    gen = generate.Generator(model, params)                    # model: DecoderOnlyLM (or T5X DecoderOnlyModel)
    out = gen.generate([464, 318], max_length=40, temperature=0.7, sample=True, sample_rng=jax.random.key(23))
    texts = gen.generate_text(["def main(", "import "], max_new_tokens=32, top_p=0.9, sample=True)

`generate(...)` (module level) is the one-call form. Token results are NumPy arrays holding prompt +
continuation (0 after the end), like the original `generate`; `GenerateOutput` carries the continuations, their
log-probabilities and the end reason per sample.

One compiled program per (batch size, cache length, prefill bucket, decoding settings): the prefill of the
prompt positions (prompts of different lengths in one batch; `decode_loop.prefill_bucket` rounds the longest up
to a power of two) and the whole decoding `lax.while_loop` run inside one `jax.jit` (`decode_loop.CachedDecoder`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from gpt_plugin import decode_loop, decoding, models

Tokens = Union[Sequence[int], Sequence[Sequence[int]], np.ndarray]


@dataclasses.dataclass
class GenerateOutput:
  """Results for B prompts x N samples (best sample first).

  Attributes:
    sequences: [B, N, max_length] int32, prompt followed by the continuation, 0-padded.
    continuations: per prompt, per sample, the generated ids (EOS excluded).
    scores: [B, N] sum of the log-probabilities of the generated tokens (raw model probabilities unless
      `rescale_log_probs=True`; length-normalised beam scores for beam search).
    finished: [B, N] True where the sample ended with EOS (False: cut off by the length limit).
    prompt_lengths: [B].
  """

  sequences: np.ndarray
  continuations: List[List[List[int]]]
  scores: np.ndarray
  finished: np.ndarray
  prompt_lengths: np.ndarray


def _model_cache_limit(model) -> Optional[int]:
  cfg = getattr(getattr(model, "module", None), "config", None)
  if cfg is not None and getattr(cfg, "position_embedding", "alibi") == "learned":
    return int(cfg.max_position_embeddings)
  return None


def _eos_of(model, eos_id):
  if eos_id is not None:
    return int(eos_id)
  vocab = models.vocabulary_of(model)
  if vocab is not None and getattr(vocab, "eos_id", None) is not None:
    return int(vocab.eos_id)
  return 1


def _resolve_max_length(model, rows: List[List[int]], max_length, max_new_tokens, eos_id) -> int:
  """Checks the prompts against the length arguments and returns the total length (also the KV-cache length)."""
  for i, p in enumerate(rows):
    if not p:
      raise ValueError(
        f"prompt {i} is empty: give at least one token (e.g. the EOS id "
        f"{_eos_of(model, eos_id)} to start a new document)"
      )
  longest = max(len(p) for p in rows)
  if (max_length is None) == (max_new_tokens is None):
    raise ValueError("give exactly one of max_length (prompt + new tokens) and max_new_tokens")
  if max_length is None:
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    max_length = longest + int(max_new_tokens)
  max_length = int(max_length)
  if longest >= max_length:
    raise ValueError(
      f"prompt of {longest} tokens does not fit max_length={max_length} (the KV-cache length); "
      f"max_length must exceed the prompt length to leave room for new tokens"
    )
  table = _model_cache_limit(model)
  if table is not None and max_length > table:
    raise ValueError(
      f"max_length={max_length} exceeds the learned position table "
      f"(max_position_embeddings={table}); ALiBi models have no such limit"
    )
  return max_length


def _decoder_inputs(rows: List[List[int]], max_length: int) -> Tuple[np.ndarray, np.ndarray]:
  """Decoder-input convention: BOS 0 at position 0, the prompt at 1..n (prefill positions < n, start at n)."""
  inputs = np.zeros((len(rows), max_length), np.int32)
  lengths = np.zeros((len(rows),), np.int32)
  for b, p in enumerate(rows):
    inputs[b, 1 : len(p) + 1] = p[: max_length - 1]
    lengths[b] = len(p)
  return inputs, lengths


@dataclasses.dataclass(frozen=True)
class _DecodeSettings:
  """What `Generator.generate`'s keyword arguments mean for the compiled program."""

  method: str  # "beam" or "sample"
  kwargs: Dict[str, Any]  # static keyword arguments of the decoding function
  temperature: float  # 0: greedy
  topp: float  # 0: no nucleus cut
  n_out: int  # decodes returned per prompt


def _decode_settings(
  eos: int, sample, temperature, top_k, top_p, num_samples, num_beams, alpha, rescale_log_probs
) -> _DecodeSettings:
  """Validates the sampling / beam arguments (one message naming the value) and maps them to decoder settings."""
  if num_beams is not None:
    if num_samples > num_beams:
      raise ValueError(f"num_samples={num_samples} exceeds num_beams={num_beams}")
    kwargs = dict(eos_id=eos, num_decodes=int(num_beams), alpha=float(alpha))
    return _DecodeSettings("beam", kwargs, 0.0, 0.0, int(num_samples))
  if sample:
    if temperature is None or temperature <= 0:
      raise ValueError(f"temperature={temperature} must be > 0 when sample=True (use sample=False for greedy)")
    if top_p is not None and not 0.0 < top_p <= 1.0:
      raise ValueError(f"top_p={top_p} must lie in (0, 1]")
    if top_k is not None and top_k < 1:
      raise ValueError(f"top_k={top_k} must be >= 1")
    if top_k and top_p is not None:
      raise ValueError(f"give at most one of top_k={top_k} and top_p={top_p}")
    temp, topk, topp = float(temperature), int(top_k or 0), float(top_p or 0.0)
  else:
    temp, topk, topp = 0.0, 0, 0.0
  kwargs = dict(eos_id=eos, num_decodes=int(num_samples), topk=topk, rescale_log_probs=rescale_log_probs)
  return _DecodeSettings("sample", kwargs, temp, topp, int(num_samples))


def _pack_output(
  decodes: np.ndarray, scores: np.ndarray, rows: List[List[int]], lengths: np.ndarray, eos: int, max_length: int
) -> GenerateOutput:
  """Decoder outputs [B, N, L] (output coordinates, best first) -> prompt + continuation rows, cut at EOS."""
  batch, n_out = scores.shape
  sequences = np.zeros((batch, n_out, max_length), np.int32)
  continuations, finished = [], np.zeros((batch, n_out), bool)
  for b in range(batch):
    n = int(lengths[b])
    per = []
    for s in range(n_out):
      row = decodes[b, s]  # output coordinates: [x1..xn, y1, ...]
      new = row[n:].tolist()
      if eos in new:
        new = new[: new.index(eos)]
        finished[b, s] = True
      else:
        while new and new[-1] == 0:  # padding after the limit
          new.pop()
      per.append(new)
      full = list(rows[b]) + new + ([eos] if finished[b, s] else [])
      full = full[:max_length]
      sequences[b, s, : len(full)] = full
    continuations.append(per)
  return GenerateOutput(
    sequences=sequences, continuations=continuations, scores=scores, finished=finished, prompt_lengths=lengths
  )


class Generator:
  """Holds a model and its params; compiles one decoding program per shape and setting and reuses it."""

  def __init__(self, model: Any, params: Any, vocabulary: Any = None):
    self.model = model
    self.params = params
    self.vocabulary = vocabulary or models.vocabulary_of(model)
    self._decoder = decode_loop.CachedDecoder(model.module)
    self._compiled: Dict[Tuple, Any] = {}

  # ------------------------------------------------------------------------------------------- internals
  def _program(self, key, method: str, decode_kwargs: Dict[str, Any], use_topp: bool, greedy: bool, prefill: int):
    """One jitted program: cache, prefill of the first `prefill` positions, the decoding while_loop."""
    if key in self._compiled:
      return self._compiled[key]

    def run(params, inputs, prompt_lengths, rng, temperature, topp):
      if method == "beam":
        return self._decoder.decode(
          params, inputs, prompt_lengths, decoding.beam_search, prefill_length=prefill, **decode_kwargs
        )
      return self._decoder.decode(
        params,
        inputs,
        prompt_lengths,
        decoding.temperature_sample,
        prefill_length=prefill,
        decode_rng=rng,
        temperature=0.0 if greedy else temperature,
        topp=topp if use_topp else 0.0,
        **decode_kwargs,
      )

    self._compiled[key] = jax.jit(run)
    return self._compiled[key]

  def _prefill_length(self, longest: int, max_length: int) -> int:
    """Positions run through the model before decoding: the bucket holding the longest prompt."""
    return decode_loop.prefill_bucket(longest, max_length)

  def _encode_prompts(self, prompts: Tokens) -> Tuple[List[List[int]], bool]:
    if isinstance(prompts, np.ndarray) or hasattr(prompts, "shape"):
      arr = np.asarray(prompts)
      if arr.ndim == 1:
        return [arr.astype(int).tolist()], True
      if arr.ndim == 2:
        return [row.astype(int).tolist() for row in arr], False
      raise ValueError(f"prompt array must be 1-D or 2-D, got shape {arr.shape}")
    prompts = list(prompts)
    if not prompts or all(isinstance(t, (int, np.integer)) for t in prompts):
      return [[int(t) for t in prompts]], True
    return [[int(t) for t in p] for p in prompts], False

  # ---------------------------------------------------------------------------------------------- public
  def generate(
    self,
    prompts: Tokens,
    max_length: Optional[int] = None,
    *,
    max_new_tokens: Optional[int] = None,
    temperature: float = 1.0,
    sample: bool = False,
    sample_rng: Optional[jax.Array] = None,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    num_samples: int = 1,
    num_beams: Optional[int] = None,
    alpha: float = 0.0,
    eos_id: Optional[int] = None,
    rescale_log_probs: bool = False,
    return_output: bool = False,
  ):
    """Continues one prompt (a list of ids) or a batch of prompts of different lengths.

    Args:
      prompts: list of token ids, or a list of such lists, or an int array [L] / [B, L] (no padding).
      max_length: total length, prompt + new tokens (the original's meaning). Also the KV-cache length.
      max_new_tokens: alternative to `max_length`: new tokens after the longest prompt.
      temperature, sample: `sample=False` is greedy decoding; with `sample=True` tokens are drawn from
        softmax(logits / temperature), optionally restricted by `top_k` or `top_p` (nucleus, in (0, 1]).
      sample_rng: PRNG key for sampling (default key 0, so results are reproducible).
      num_samples: samples per prompt (returned best first); with beam search, the number of best beams returned.
      num_beams: beam search with this many beams instead of sampling (`alpha`: length penalty).
      eos_id: stop token (default: the vocabulary's EOS).
      return_output: return a `GenerateOutput` instead of the token array.
    Returns:
      int32 array prompt + continuation, 0-padded: [max_length] for a single prompt and sample, [B, max_length]
      for a batch, with an extra sample axis when num_samples > 1; or a `GenerateOutput`.
    """
    rows, single = self._encode_prompts(prompts)
    max_length = _resolve_max_length(self.model, rows, max_length, max_new_tokens, eos_id)
    if num_beams is not None and num_beams < 1:
      raise ValueError(f"num_beams={num_beams} must be >= 1")
    if num_samples < 1:
      raise ValueError(f"num_samples={num_samples} must be >= 1")
    eos = _eos_of(self.model, eos_id)
    inputs, lengths = _decoder_inputs(rows, max_length)
    rng = sample_rng if sample_rng is not None else jax.random.PRNGKey(0)
    settings = _decode_settings(
      eos, sample, temperature, top_k, top_p, num_samples, num_beams, alpha, rescale_log_probs
    )
    prefill = self._prefill_length(max(len(p) for p in rows), max_length)
    use_topp, greedy = settings.topp > 0.0, settings.temperature <= 0.0
    kwargs = settings.kwargs
    key = (settings.method, len(rows), max_length, prefill, tuple(sorted(kwargs.items())), use_topp, greedy)
    program = self._program(key, settings.method, kwargs, use_topp=use_topp, greedy=greedy, prefill=prefill)
    decodes, scores = program(
      self.params,
      jnp.asarray(inputs),
      jnp.asarray(lengths),
      rng,
      jnp.float32(settings.temperature),
      jnp.float32(settings.topp),
    )
    n_out = settings.n_out
    decodes, scores = np.asarray(decodes)[:, ::-1][:, :n_out], np.asarray(scores)[:, ::-1][:, :n_out]  # best first
    out = _pack_output(decodes, scores, rows, lengths, eos, max_length)
    if return_output:
      return out
    result = out.sequences[:, 0] if n_out == 1 else out.sequences
    return result[0] if single else result

  def generate_text(
    self, prompts: Union[str, Sequence[str]], max_new_tokens: int = 64, *, return_output: bool = False, **kwargs
  ):
    """Text in, text out through the vocabulary (the continuation only, up to EOS).

    Takes the same keyword arguments as `generate` (temperature, sample, top_k, top_p, num_samples, ...).
    Returns a string for one prompt, a list for several (a list of lists with num_samples > 1)."""
    if self.vocabulary is None:
      raise ValueError("generate_text needs a vocabulary (model.vocabulary or Generator(vocabulary=...))")
    single = isinstance(prompts, str)
    texts = [prompts] if single else list(prompts)
    for i, t in enumerate(texts):
      if not t:
        raise ValueError(f"prompt {i} is empty (an empty string has no tokens to continue)")
    ids = [list(self.vocabulary.encode(t)) for t in texts]
    for i, t in enumerate(ids):
      if not t:
        raise ValueError(f"prompt {i} ({texts[i]!r}) encodes to no tokens")
    out = self.generate(ids, max_new_tokens=max_new_tokens, return_output=True, **kwargs)
    decoded = [[self.vocabulary.decode(c) for c in per] for per in out.continuations]
    n = kwargs.get("num_samples", 1)
    result = [d[0] for d in decoded] if n == 1 else decoded
    if return_output:
      return (result[0] if single else result), out
    return result[0] if single else result


def generate(model: Any, params: Any, prompts: Tokens, max_length: Optional[int] = None, **kwargs):
  """One-call form of `Generator(model, params).generate(...)` (compiles on every call; keep a Generator
  around to reuse the compiled program)."""
  return Generator(model, params).generate(prompts, max_length, **kwargs)


def generate_text(model: Any, params: Any, prompts: Union[str, Sequence[str]], vocabulary: Any = None, **kwargs):
  """One-call text in / text out."""
  return Generator(model, params, vocabulary).generate_text(prompts, **kwargs)
