"""Small clu metrics missing from clu itself, and the seqio score metrics of LM tasks (loss, perplexity, bits
per byte) that `t5x.eval` reports."""

import math

import flax
import jax.numpy as jnp
import numpy as np
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


def text_bytes(vocabulary, ids) -> int:
  """UTF-8 bytes of the text that token `ids` spell, document by document (EOS and padding contribute none).

  seqio's `Vocabulary.decode` stops at the first EOS, so each EOS-separated piece is decoded on its own."""
  eos = vocabulary.eos_id
  total, doc = 0, []
  for i in [int(i) for i in ids if int(i) != 0] + [eos]:
    if i == eos:
      if doc:
        total += len(vocabulary.decode(doc).encode("utf-8"))
      doc = []
    else:
      doc.append(i)
  return total


def lm_target_stats(text, example=None, is_target=False, vocabulary=None):
  """seqio postprocess_fn of an LM task for `lm_score_metrics`: a target becomes {'tokens', 'bytes'} counted from
  its token ids (tokens = the non-padding targets, which are what T5X's `score_batch` sums over)."""
  if not is_target or example is None:
    return text
  ids = [int(i) for i in example["targets"] if int(i) != 0]
  return {"tokens": len(ids), "bytes": text_bytes(vocabulary, ids) if vocabulary is not None else 0}


def lm_score_metrics(targets, scores):
  """seqio score metric (T5X's `t5x.eval`, mode 'score'): token-weighted loss (mean NLL per target token, nats),
  perplexity and bits per byte over the whole split. `scores` are the per-example summed log-likelihoods of
  `model.score_batch`; `targets` come from `lm_target_stats`."""
  nll = -float(np.sum(np.asarray(scores, np.float64)))
  tokens = sum(t["tokens"] for t in targets)
  num_bytes = sum(t["bytes"] for t in targets)
  if tokens == 0:
    raise ValueError("lm_score_metrics: the evaluation split has no target tokens")
  loss = nll / tokens
  out = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "num_tokens": tokens}
  if num_bytes:
    out.update(bits_per_byte=nll / math.log(2) / num_bytes, num_bytes=num_bytes)
  return out
