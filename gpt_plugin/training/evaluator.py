"""The in-training evaluator: loss and perplexity of the current params on the validation split."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import jax
import numpy as np

from gpt_plugin.training import console as console_lib
from gpt_plugin.training import metrics as metrics_lib
from gpt_plugin.training import train_step as train_step_lib


class Evaluator:
  """`run(params, step)` reads up to `eval_steps` full batches from a fresh `make_iterator()` (one epoch,
  unshuffled), writes the scalars at `step` and prints one line. Returns None when it evaluates nothing."""

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
  ):
    self.make_iterator, self.eval_steps, self.global_batch_size = make_iterator, eval_steps, global_batch_size
    self.jit_eval, self.to_global, self.context = jit_eval, to_global, context
    self.writer, self.console = writer, console

  def run(self, params: Any, step: int) -> Optional[Dict[str, float]]:
    loss_sum = tok = 0.0
    merged = None
    n = 0
    it = self.make_iterator()
    with self.context():
      for batch in it:
        if n >= self.eval_steps:
          break
        if np.shape(next(iter(batch.values())))[0] * jax.process_count() != self.global_batch_size:
          break
        out = jax.device_get(self.jit_eval(params, self.to_global(batch)))
        loss_sum += float(out["loss_sum"])
        tok += float(out["num_tokens"])
        mm = out["model_metrics"]
        merged = mm if merged is None else jax.tree.map(np.add, merged, mm)
        n += 1
    if n == 0:
      return None
    res = {"loss": loss_sum / max(tok, 1.0)}
    res["perplexity"] = metrics_lib.safe_exp(res["loss"])
    for k, v in train_step_lib.compute_model_metrics(merged).items():
      if k != "loss":
        res[k] = v
    res["num_tokens"] = tok
    self.writer.write_scalars(step, res)
    self.writer.flush()
    self.console.print(f"eval step {step}: loss {res['loss']:.4g} ppl {res['perplexity']:.4g} ({n} batches)")
    return res
