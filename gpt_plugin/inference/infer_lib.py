"""The inference runner behind `python -m gpt_plugin.infer` (gin binds `infer_lib.infer` and
`infer_lib.interactive`; see gin/runs/infer.gin).

Prompts come from a seqio task (its `inputs`; for a targets-only LM task the first `inputs`-length tokens of
each `targets` sequence) or from a text / JSONL file. Generation goes through `model.predict_batch_with_aux`
(T5X's prefix-LM flow: prompt prefilled into the KV cache, then `model.decode_fn`), so any decode function
with T5X's signature works, ours or T5X's. Predictions are written as JSONL lines
`{"inputs": ..., "prediction": ..., "score": ...}` to `<output_dir>/<name>-predict.jsonl-00000-of-00001`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gpt_plugin import models
from gpt_plugin import params_io
from gpt_plugin.data import vocab_check


@dataclasses.dataclass
class DatasetConfig:
  """Prompt source (T5X's DatasetConfig fields that matter for inference)."""

  mixture_or_task_name: Optional[str] = None
  task_feature_lengths: Optional[Mapping[str, int]] = None
  split: str = "validation"
  batch_size: int = 8
  shuffle: bool = False
  seed: Optional[int] = 0
  use_cached: bool = False


@dataclasses.dataclass
class Prompt:
  text: str
  ids: List[int]
  reference: Optional[str] = None


def _vocab(model):
  vocab = models.vocabulary_of(model)
  if vocab is None:
    raise ValueError("the model has no vocabulary (bind VOCABULARY in the model gin)")
  return vocab


def _decode(vocab, ids: Sequence[int]) -> str:
  ids = [int(i) for i in ids]
  eos = vocab.eos_id
  if eos is not None and eos in ids:
    ids = ids[: ids.index(eos)]
  while ids and ids[-1] == 0:
    ids.pop()
  return vocab.decode(ids)


def decode_all(vocab, ids: Sequence[int]) -> str:
  """Text of `ids` across document ends (seqio's `decode` stops at the first EOS); EOS shows as a blank line."""
  eos = vocab.eos_id
  docs, doc = [], []
  for i in [int(i) for i in ids if int(i) != 0]:
    if i == eos:
      docs.append(doc)
      doc = []
    else:
      doc.append(i)
  docs.append(doc)
  return "\n\n".join(vocab.decode(d) for d in docs)


def prompts_from_task(
  name: str,
  feature_lengths: Mapping[str, int],
  split: str,
  vocab,
  max_examples: Optional[int] = None,
  use_cached: bool = False,
  seed: Optional[int] = 0,
  shuffle: bool = False,
) -> Iterator[Prompt]:
  """Prompts from a seqio task: its `inputs` feature, or the first `inputs`-length tokens of `targets`."""
  import seqio  # pylint: disable=import-outside-toplevel
  from gpt_plugin.data import sample_task  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import

  provider = seqio.get_mixture_or_task(name)
  in_len = int(feature_lengths.get("inputs", 0) or 0)
  tgt_len = int(feature_lengths.get("targets", 0) or 0)
  if in_len < 1:
    raise ValueError(f"TASK_FEATURE_LENGTHS={dict(feature_lengths)} needs an 'inputs' length (the prompt length)")
  has_inputs = "inputs" in provider.output_features
  lengths = dict(feature_lengths) if has_inputs else {"targets": in_len + tgt_len}
  ds = provider.get_dataset(
    sequence_length=lengths, split=split, shuffle=shuffle, use_cached=use_cached, seed=seed, num_epochs=1
  )
  n = 0
  for ex in ds.as_numpy_iterator():
    if max_examples is not None and n >= max_examples:
      return
    if has_inputs:
      ids = [int(t) for t in ex["inputs"][:in_len]]
      ref = decode_all(vocab, ex["targets"]) if "targets" in ex else None
    else:
      tokens = [int(t) for t in ex["targets"]]
      if len(tokens) <= in_len:
        continue  # nothing left to predict
      ids, ref = tokens[:in_len], decode_all(vocab, tokens[in_len : in_len + tgt_len])
    if not ids:
      continue
    n += 1
    yield Prompt(text=decode_all(vocab, ids), ids=ids, reference=ref)


def prompts_from_file(path: str, vocab, max_prompt_length: int, max_examples: Optional[int] = None) -> Iterator[Prompt]:
  """One prompt per line of a text file, or per JSON object (field `inputs`, `prompt` or `text`) of a .jsonl."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"prompt file {path!r} does not exist")
  n = 0
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if max_examples is not None and n >= max_examples:
        return
      line = line.rstrip("\n")
      if not line.strip():
        continue
      if path.endswith((".jsonl", ".json")):
        obj = json.loads(line)
        text = next((obj[k] for k in ("inputs", "prompt", "text") if k in obj), None)
        if text is None:
          raise ValueError(f"{path}:{lineno}: JSON line has none of the fields 'inputs', 'prompt', 'text'")
        ref = obj.get("targets")
      else:
        text, ref = line.replace("\\n", "\n"), None
      ids = list(vocab.encode(text))
      if not ids:
        raise ValueError(f"{path}:{lineno}: prompt {text!r} is empty after tokenization")
      if len(ids) > max_prompt_length:
        raise ValueError(
          f"{path}:{lineno}: prompt of {len(ids)} tokens is longer than the prompt length "
          f"{max_prompt_length} (TASK_FEATURE_LENGTHS['inputs'])"
        )
      n += 1
      yield Prompt(text=text, ids=ids, reference=ref)


def make_predict_fn(model, num_decodes: int = 1, decoder_params: Optional[Mapping[str, Any]] = None):
  """jit(params, batch, rng) -> (decodes [B, L], scores [B]) through `model.predict_batch_with_aux`."""
  decoder_params = dict(decoder_params or {})

  def predict(params, batch, rng):
    decodes, aux = model.predict_batch_with_aux(
      params, batch, rng=rng, num_decodes=num_decodes, decoder_params=dict(decoder_params)
    )
    return decodes, aux["scores"]

  return jax.jit(predict)


def build_batch(prompts: Sequence[Sequence[int]], batch_size: int, length: int) -> Dict[str, jax.Array]:
  """Prefix-LM batch (seqio.DecoderFeatureConverter layout): BOS 0, prompt, zeros; causal region = prompt + 1."""
  tokens = np.zeros((batch_size, length), np.int32)
  causal = np.zeros((batch_size, length), np.int32)
  for b in range(batch_size):
    p = list(prompts[b]) if b < len(prompts) else [1]
    if len(p) >= length:
      raise ValueError(f"prompt of {len(p)} tokens does not fit the decode length {length}")
    tokens[b, 1 : len(p) + 1] = p
    causal[b, : len(p) + 1] = 1
  return {
    "decoder_input_tokens": jnp.asarray(tokens),
    "decoder_target_tokens": jnp.asarray(tokens),
    "decoder_causal_attention": jnp.asarray(causal),
  }


def infer(
  *,
  model: Any,
  checkpoint_path: str,
  output_dir: str,
  mode: str = "predict",
  dataset_cfg: Optional[DatasetConfig] = None,
  input_file: Optional[str] = None,
  max_examples: Optional[int] = None,
  num_decodes: int = 1,
  decoder_params: Optional[Mapping[str, Any]] = None,
  seed: int = 0,
  output_name: Optional[str] = None,
  console: bool = True,
) -> str:
  """Generates a continuation for every prompt and writes JSONL; returns the output file path.

  The decode length is `inputs + targets` of `dataset_cfg.task_feature_lengths` (prompts at most `inputs`
  tokens, continuations at most `targets` tokens). Decoding settings: bind `model.decode_fn` (e.g.
  `@decoding.beam_search`) and `decoder_params` (e.g. `{'temperature': 0.7, 'topk': 40}`)."""
  if mode != "predict":
    raise ValueError(f"mode={mode!r}: only 'predict' is supported (use gpt_plugin.eval for scores)")
  cfg = dataset_cfg or DatasetConfig()
  lengths = dict(cfg.task_feature_lengths or {})
  if not lengths.get("inputs") or not lengths.get("targets"):
    raise ValueError(
      f"TASK_FEATURE_LENGTHS={lengths} must give both 'inputs' (prompt) and 'targets' (continuation) lengths"
    )
  total = int(lengths["inputs"]) + int(lengths["targets"])
  if not input_file:
    vocab_check.check_model_against_registered_task(model, cfg.mixture_or_task_name)  # before anything is written
  vocab = _vocab(model)
  params = params_io.load_model_params(checkpoint_path, model)
  if input_file:
    prompts = prompts_from_file(input_file, vocab, int(lengths["inputs"]), max_examples)
    name = output_name or os.path.splitext(os.path.basename(input_file))[0]
  else:
    if not cfg.mixture_or_task_name:
      raise ValueError("give MIXTURE_OR_TASK_NAME (a seqio task) or INPUT_FILE (text/JSONL prompts)")
    prompts = prompts_from_task(
      cfg.mixture_or_task_name, lengths, cfg.split, vocab, max_examples, cfg.use_cached, cfg.seed, cfg.shuffle
    )
    name = output_name or cfg.mixture_or_task_name
  predict = make_predict_fn(model, num_decodes, decoder_params)
  os.makedirs(output_dir, exist_ok=True)
  out_path = os.path.join(output_dir, f"{name}-predict.jsonl-00000-of-00001")
  rng = jax.random.PRNGKey(seed)
  start, count = time.time(), 0
  with open(out_path + ".tmp", "w", encoding="utf-8") as out:
    batch: List[Prompt] = []

    def flush(batch):
      nonlocal rng, count
      rng, step_rng = jax.random.split(rng)
      decodes, scores = predict(params, build_batch([p.ids for p in batch], cfg.batch_size, total), step_rng)
      decodes, scores = np.asarray(decodes), np.asarray(scores)
      for b, p in enumerate(batch):
        rec = {"inputs": p.text, "prediction": _decode(vocab, decodes[b]), "score": float(scores[b])}
        if p.reference is not None:
          rec["targets"] = p.reference
        out.write(json.dumps(rec, ensure_ascii=False) + "\n")
      count += len(batch)
      if console:
        print(f"infer: {count} predictions ({time.time() - start:.1f}s)", flush=True)

    for p in prompts:
      batch.append(p)
      if len(batch) == cfg.batch_size:
        flush(batch)
        batch = []
    if batch:
      flush(batch)
  os.replace(out_path + ".tmp", out_path)
  if console:
    print(f"wrote {count} predictions to {out_path}", flush=True)
  return out_path


def interactive(
  prompts: Sequence[str],
  *,
  model: Any,
  checkpoint_path: str,
  max_new_tokens: int = 64,
  temperature: float = 0.8,
  top_k: Optional[int] = None,
  top_p: Optional[float] = None,
  sample: bool = True,
  num_samples: int = 1,
  seed: int = 0,
  print_fn=print,
) -> List[List[str]]:
  """Text in, text out for people: prints each prompt followed by its continuation(s)."""
  from gpt_plugin import generate  # pylint: disable=import-outside-toplevel

  params = params_io.load_model_params(checkpoint_path, model)
  gen = generate.Generator(model, params)
  results = []
  for i, prompt in enumerate(prompts):
    out = gen.generate_text(
      [prompt],
      max_new_tokens=max_new_tokens,
      temperature=temperature,
      top_k=top_k,
      top_p=top_p,
      sample=sample,
      num_samples=num_samples,
      sample_rng=jax.random.fold_in(jax.random.PRNGKey(seed), i),
    )
    texts = list(out[0]) if num_samples > 1 else [out[0]]
    for text in texts:
      print_fn(prompt + text)
      if len(texts) > 1:
        print_fn("-" * 40)
    results.append(list(texts))
  return results
