"""Perplexity and bits per byte at several context lengths (gin binds `eval_lib.evaluate`; see
gin/runs/eval.gin). Shows ALiBi's length extrapolation at a glance: a JSON file and a PNG plot.

The evaluation text is one token stream: the validation split of a seqio task (documents concatenated in
order, each ending with EOS) or a text file, cut to N tokens, N a multiple of the longest context, so every
context length scores exactly the same tokens:

  * non-overlapping: N / C windows of C tokens, every token scored (early tokens of a window see little
    context; the ALiBi paper's main tables use this);
  * sliding: windows of C tokens every S = C / `sliding_divisor` tokens; the first window scores all its tokens,
    later windows only their last S, so each scored token sees at least C - S tokens of context.

Each window is fed as a decoder row `[0 (BOS), t_0 .. t_{C-2}]` predicting `t_0 .. t_{C-1}`, as the seqio feature
converter lays out training rows. Scores go through `model.score_batch` with `decoder_loss_weights` marking the
scored tokens, so a T5X `DecoderOnlyModel` works too. Bits per byte = total NLL / ln 2 / UTF-8 bytes of the
scored text (needs a text vocabulary).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gpt_plugin import models
from gpt_plugin import params_io
from gpt_plugin.data import vocab_check


def token_stream_from_task(
  name: str,
  split: str = "validation",
  max_tokens: Optional[int] = None,
  max_scan_tokens: int = 1 << 24,
  spread: bool = True,
) -> np.ndarray:
  """The `targets` of the split's examples, in order, as one token stream. With `max_tokens`, about that many
  tokens from examples spread evenly over the whole split (at most its first `max_scan_tokens` tokens are
  read), not its first documents; `spread=False`: its first `max_tokens` tokens."""
  import seqio  # pylint: disable=import-outside-toplevel
  from gpt_plugin.data import sample_task  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import

  provider = seqio.get_mixture_or_task(name)
  ds = provider.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1)
  examples, total = [], 0
  for ex in ds.as_numpy_iterator():
    examples.append(np.asarray(ex["targets"], np.int32))
    total += examples[-1].size
    if total >= (max_scan_tokens if spread or max_tokens is None else max_tokens):
      break
  if not examples:
    raise ValueError(f"task {name!r} split {split!r} yielded no examples")
  if max_tokens is not None and total > max_tokens:
    examples = spread_examples(examples, max_tokens)
  return np.concatenate(examples)


def spread_examples(examples: Sequence[np.ndarray], max_tokens: int) -> List[np.ndarray]:
  """Examples at evenly spaced positions of `examples` (kept in order) holding at least `max_tokens` tokens, or
  all of them."""
  mean = sum(e.size for e in examples) / len(examples)
  count = min(len(examples), max(1, math.ceil(max_tokens / max(mean, 1.0))))
  while True:
    picked = np.unique(np.linspace(0, len(examples) - 1, count).round().astype(int))
    if count == len(examples) or sum(examples[i].size for i in picked) >= max_tokens:
      return [examples[i] for i in picked]
    count = min(len(examples), count + max(1, count // 8))


def token_stream_from_file(path: str, vocab) -> np.ndarray:
  if not os.path.exists(path):
    raise FileNotFoundError(f"eval text file {path!r} does not exist")
  with open(path, encoding="utf-8") as f:
    return np.asarray(vocab.encode(f.read()), np.int32)


def _windows(stream: np.ndarray, context: int, mode: str, stride: int):
  """Yields (tokens [C], weights [C]) per window."""
  n = stream.size
  if mode == "nonoverlapping":
    for s in range(0, n - context + 1, context):
      yield stream[s : s + context], np.ones((context,), np.float32)
  elif mode == "sliding":
    for s in range(0, n - context + 1, stride):
      w = np.zeros((context,), np.float32)
      w[(0 if s == 0 else context - stride) :] = 1.0
      yield stream[s : s + context], w
  else:
    raise ValueError(f"mode={mode!r} is not 'nonoverlapping' or 'sliding'")


def score_stream(
  model,
  params,
  stream: np.ndarray,
  context: int,
  mode: str = "nonoverlapping",
  stride: Optional[int] = None,
  batch_tokens: int = 8192,
  score_fn=None,
) -> Dict[str, float]:
  """Total NLL (nats) and scored-token count of `stream` at one context length."""
  stride = stride or context
  batch = max(1, batch_tokens // context)
  if score_fn is None:
    score_fn = jax.jit(lambda p, b: model.score_batch(p, b))
  nll, count = 0.0, 0.0
  rows, weights = [], []

  def run(rows, weights):
    nonlocal nll, count
    pad = batch - len(rows)
    tok = np.stack(rows + [np.ones((context,), np.int32)] * pad)
    wts = np.stack(weights + [np.zeros((context,), np.float32)] * pad)
    inputs = np.pad(tok, ((0, 0), (1, 0)))[:, :-1]
    out = score_fn(
      params,
      {
        "decoder_input_tokens": jnp.asarray(inputs),
        "decoder_target_tokens": jnp.asarray(tok),
        "decoder_loss_weights": jnp.asarray(wts),
      },
    )
    nll += -float(np.sum(np.asarray(out)))
    count += float(wts.sum())

  for t, w in _windows(stream, context, mode, stride):
    rows.append(np.asarray(t, np.int32))
    weights.append(w)
    if len(rows) == batch:
      run(rows, weights)
      rows, weights = [], []
  if rows:
    run(rows, weights)
  return {"nll": nll, "tokens": count}


def _num_bytes(vocab, ids: np.ndarray) -> Optional[int]:
  try:
    import seqio  # pylint: disable=import-outside-toplevel

    if vocab is None or isinstance(vocab, seqio.PassThroughVocabulary):
      return None
    # seqio's `decode` stops at the first EOS; count the bytes of every document (EOS contributes none).
    eos = vocab.eos_id
    total, doc = 0, []
    for i in [int(i) for i in ids] + [eos]:
      if i == eos:
        if doc:
          text = vocab.decode(doc)
          if not isinstance(text, str):
            return None
          total += len(text.encode("utf-8"))
        doc = []
      else:
        doc.append(i)
    return total
  except Exception:  # pylint: disable=broad-except
    return None


def evaluate(
  *,
  model: Any,
  checkpoint_path: str,
  train_length: int,
  output_dir: Optional[str] = None,
  mixture_or_task_name: Optional[str] = None,
  split: str = "validation",
  input_file: Optional[str] = None,
  context_multipliers: Sequence[float] = (1, 2, 4, 8),
  context_lengths: Optional[Sequence[int]] = None,
  modes: Sequence[str] = ("nonoverlapping", "sliding"),
  sliding_divisor: int = 4,
  max_eval_tokens: int = 32768,
  spread_over_split: bool = True,
  batch_tokens: int = 8192,
  label: Optional[str] = None,
  compare_results: Sequence[str] = (),
  params: Any = None,
  console: bool = True,
) -> Dict[str, Any]:
  """Scores the evaluation stream at each context length and mode; writes `eval_results.json` and
  `eval_perplexity.png` to `output_dir` (default `<checkpoint_path>/eval`). Returns the results dict.

  `spread_over_split`: the `max_eval_tokens` come from examples spread evenly over the whole split (default);
  False: from its first examples, the ones `t5x.eval` scores with `num_examples` (to compare the two).
  `compare_results`: other `eval_results.json` files drawn into the same plot (e.g. a learned-position control).
  A context the model cannot run (learned positions past their table) is recorded with its error."""
  if train_length is None or int(train_length) < 1:
    raise ValueError(f"train_length={train_length} must be the training sequence length (TRAIN_LENGTH)")
  train_length = int(train_length)
  contexts = _context_lengths(train_length, context_multipliers, context_lengths)
  if not input_file:
    vocab_check.check_model_against_registered_task(model, mixture_or_task_name)  # before anything is written
  vocab = models.vocabulary_of(model)
  if params is None:
    params = params_io.load_model_params(checkpoint_path, model)
  stream, source = _evaluation_stream(
    vocab, input_file, mixture_or_task_name, split, max_eval_tokens, max(contexts), spread_over_split
  )
  num_bytes = _num_bytes(vocab, stream)
  results = _score_contexts(
    model, params, stream, contexts, modes, train_length, sliding_divisor, batch_tokens, num_bytes, console
  )
  cfg = getattr(model, "config", None) or getattr(getattr(model, "module", None), "config", None)
  out = {
    "checkpoint": str(checkpoint_path),
    "label": label or _default_label(cfg, checkpoint_path),
    "source": source,
    "train_length": train_length,
    "num_tokens": int(stream.size),
    "num_bytes": num_bytes,
    "position_embedding": getattr(cfg, "position_embedding", None),
    "results": results,
  }
  return _write_results(out, output_dir or os.path.join(os.fspath(checkpoint_path), "eval"), compare_results, console)


def _context_lengths(train_length: int, context_multipliers, context_lengths) -> List[int]:
  """The sorted distinct context lengths: `context_lengths`, else `train_length` times each multiplier."""
  contexts = sorted({int(c) for c in (context_lengths or [round(m * train_length) for m in context_multipliers])})
  if any(c < 2 for c in contexts):
    raise ValueError(f"context lengths {contexts} must be >= 2")
  return contexts


def _evaluation_stream(vocab, input_file, mixture_or_task_name, split, max_eval_tokens, longest, spread=True):
  """`(tokens, source)`: the text file's or the task split's tokens, cut to a whole number of `longest` windows
  (at most `max_eval_tokens`)."""
  if input_file:
    if vocab is None:
      raise ValueError("input_file needs a vocabulary on the model to tokenize the text")
    stream = token_stream_from_file(input_file, vocab)
    source = input_file
  else:
    if not mixture_or_task_name:
      raise ValueError("give MIXTURE_OR_TASK_NAME (a seqio task) or EVAL_INPUT_FILE (a text file)")
    stream = token_stream_from_task(mixture_or_task_name, split, max_eval_tokens + longest, spread=spread)
    source = f"{mixture_or_task_name}:{split}"
  n = (min(stream.size, max_eval_tokens) // longest) * longest
  if n == 0:
    raise ValueError(f"evaluation text has {stream.size} tokens, fewer than the longest context {longest}")
  return stream[:n], source


def _score_contexts(
  model, params, stream, contexts, modes, train_length, sliding_divisor, batch_tokens, num_bytes, console
) -> List[Dict[str, Any]]:
  """One result record per (mode, context): loss, perplexity, bits per byte, or the error that stopped it."""
  results: List[Dict[str, Any]] = []
  score_fn = jax.jit(lambda p, b: model.score_batch(p, b))
  for mode in modes:
    for c in contexts:
      stride = max(1, c // sliding_divisor) if mode == "sliding" else c
      t0 = time.time()
      rec: Dict[str, Any] = {"context": c, "context_over_train": c / train_length, "mode": mode}
      if mode == "sliding":
        rec["stride"] = stride
      try:
        s = score_stream(model, params, stream, c, mode, stride, batch_tokens, score_fn)
      except ValueError as e:  # e.g. learned positions past their table
        rec["error"] = str(e).splitlines()[0]
        results.append(rec)
        if console:
          print(f"eval {mode:>14} C={c:>6}: cannot run: {rec['error']}", flush=True)
        continue
      loss = s["nll"] / s["tokens"]
      rec.update(
        tokens=s["tokens"], loss=loss, perplexity=math.exp(min(loss, 700.0)), seconds=round(time.time() - t0, 2)
      )
      if num_bytes:
        rec["bits_per_byte"] = s["nll"] / math.log(2) / num_bytes
      results.append(rec)
      if console:
        bpb = f" bpb {rec['bits_per_byte']:.4f}" if "bits_per_byte" in rec else ""
        print(f"eval {mode:>14} C={c:>6}: loss {loss:.4f} ppl {rec['perplexity']:.3f}{bpb}", flush=True)
  return results


def _write_results(out: Dict[str, Any], output_dir: str, compare_results, console: bool) -> Dict[str, Any]:
  """Writes `out` as `eval_results.json` and plots it with the `compare_results` files to `eval_perplexity.png`;
  returns `out` with `json_path` and `png_path` added."""
  os.makedirs(output_dir, exist_ok=True)
  json_path = os.path.join(output_dir, "eval_results.json")
  with open(json_path, "w") as f:
    json.dump(out, f, indent=2)
  others = []
  for p in compare_results or ():
    with open(p) as f:
      others.append(json.load(f))
  png = os.path.join(output_dir, "eval_perplexity.png")
  plot_results([out] + others, png)
  out["json_path"], out["png_path"] = json_path, png
  if console:
    print(f"wrote {json_path} and {png}", flush=True)
  return out


def _default_label(cfg, path) -> str:
  pos = getattr(cfg, "position_embedding", None)
  return f"{pos} ({os.path.basename(os.path.normpath(os.fspath(path)))})" if pos else os.path.basename(str(path))


def plot_results(all_results: Sequence[Mapping[str, Any]], path: str) -> str:
  """Perplexity vs context length (log2 axis, one line per model and mode); the training length is marked."""
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, ax = plt.subplots(figsize=(7, 4.5))
  styles = {"nonoverlapping": "-", "sliding": "--"}
  markers = "osd^v<>"
  for i, res in enumerate(all_results):
    for mode in sorted({r["mode"] for r in res["results"]}):
      rows = [r for r in res["results"] if r["mode"] == mode]
      ok = [r for r in rows if "perplexity" in r]
      if ok:
        ax.plot(
          [r["context"] for r in ok],
          [r["perplexity"] for r in ok],
          styles.get(mode, ":"),
          marker=markers[i % len(markers)],
          label=f"{res.get('label', i)} [{mode}]",
        )
      for r in rows:
        if "error" in r:
          ax.annotate("x", (r["context"], ax.get_ylim()[1] if ok else 1.0), color="red", ha="center")
  lengths = {res["train_length"] for res in all_results}
  for length in lengths:
    ax.axvline(length, color="gray", lw=0.8, ls=":")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("evaluation context length (tokens); dotted line = training length")
  ax.set_ylabel("perplexity")
  ax.set_title("Perplexity vs context length (x = cannot run)")
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
