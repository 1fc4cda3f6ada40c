"""The in-training evaluator: loss and perplexity of the current params on batches spread over the validation split."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from absl import logging
import jax
import numpy as np

from gpt_plugin.training import console as console_lib
from gpt_plugin.training import metrics as metrics_lib
from gpt_plugin.training import train_step as train_step_lib

MAX_SCAN_TOKENS = 1 << 24  # the batches are spread over at most this many leading token positions of the split
MAX_KEPT_BYTES = 256 << 20  # the chosen batches are kept in host memory (read once) when they fit in this


class Evaluator:
  """`run(params, step)` scores `eval_steps` full batches spread evenly over the validation split (one unshuffled
  epoch from `make_iterator()`), writes the scalars at `step` and prints one line. Returns None when it scores
  nothing.

  The first run reads the split once to count its full batches (at most `max_scan_tokens` token positions) and
  chooses evenly spaced ones, so the score covers the whole split rather than its first documents. Every run
  scores the same batches; they are kept in memory when they fit in `max_kept_bytes`, else re-read."""

  def __init__(
    self,
    *,
    make_iterator: Callable[[], Any],
    eval_steps: int,
    global_batch_size: int,
    jit_eval: Callable[..., Any],
    to_global: Callable[[Dict[str, np.ndarray]], Dict[str, jax.Array]],
    context: Callable[[], Any],
    writer: Any,
    console: console_lib.Console,
    max_scan_tokens: int = MAX_SCAN_TOKENS,
    max_kept_bytes: int = MAX_KEPT_BYTES,
  ):
    self.make_iterator, self.eval_steps, self.global_batch_size = make_iterator, eval_steps, global_batch_size
    self.jit_eval, self.to_global, self.context = jit_eval, to_global, context
    self.writer, self.console = writer, console
    self.max_scan_tokens, self.max_kept_bytes = max_scan_tokens, max_kept_bytes
    self.chosen: Optional[List[int]] = None  # indices of the scored batches among the split's full batches
    self.split_batches = 0  # full batches counted in the split (or in its scanned part)
    self.scan_capped = False  # the count stopped at max_scan_tokens: the split has more batches than counted
    self._kept: Optional[List[Dict[str, np.ndarray]]] = None

  def run(self, params: Any, step: int) -> Optional[Dict[str, float]]:
    if self.chosen is None:
      self._choose_batches()
    if not self.chosen:
      return None
    with self.context():  # dispatched batch after batch, fetched once: reading a batch overlaps the last one's eval
      outs = jax.device_get([self.jit_eval(params, self.to_global(batch)) for batch in self._chosen_batches()])
    loss_sum = tok = 0.0
    merged = None
    for out in outs:
      loss_sum += float(out["loss_sum"])
      tok += float(out["num_tokens"])
      mm = out["model_metrics"]
      merged = mm if merged is None else jax.tree.map(np.add, merged, mm)
    res = {"loss": loss_sum / max(tok, 1.0)}
    res["perplexity"] = metrics_lib.safe_exp(res["loss"])
    for k, v in train_step_lib.compute_model_metrics(merged).items():
      if k != "loss":
        res[k] = v
    res["num_tokens"] = tok
    self.writer.write_scalars(step, res)
    self.writer.flush()
    self.console.print(
      f"eval step {step}: loss {res['loss']:.4g} ppl {res['perplexity']:.4g} "
      f"({len(self.chosen)} of {'the first ' if self.scan_capped else ''}{self.split_batches} batches)"
    )
    return res

  def _full_batches(self):
    """The split's full batches in order (every process sees the same count: see `_choose_batches`)."""
    scanned = 0
    for batch in self.make_iterator():
      shape = np.shape(next(iter(batch.values())))
      if shape[0] * jax.process_count() != self.global_batch_size:
        return
      yield batch
      scanned += int(np.prod(shape[:2])) * jax.process_count()
      if scanned >= self.max_scan_tokens:
        self.scan_capped = True
        return

  def _choose_batches(self) -> None:
    count = sum(1 for _ in self._full_batches())
    if jax.process_count() > 1:  # processes read different shards; all must score the same number of batches
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

      count = int(np.min(multihost_utils.process_allgather(np.asarray(count, np.int64))))
    self.split_batches = count
    if count == 0:
      logging.warning(
        "in-training eval scores nothing: the validation split has no full batch of %d rows (the global batch "
        "size); lower BATCH_SIZE or give the split more text",
        self.global_batch_size,
      )
    take = min(self.eval_steps, count)
    self.chosen = [] if take == 0 else [int(i) for i in np.unique(np.linspace(0, count - 1, take).round())]

  def _chosen_batches(self):
    if self._kept is not None:
      yield from self._kept
      return
    wanted, kept, kept_bytes = set(self.chosen), [], 0
    for i, batch in enumerate(self._full_batches()):
      if i > self.chosen[-1]:
        break
      if i in wanted:
        yield batch
        kept_bytes += sum(np.asarray(v).nbytes for v in batch.values())
        if kept_bytes <= self.max_kept_bytes:
          kept.append(batch)
    if kept_bytes <= self.max_kept_bytes:
      self._kept = kept
