r"""The T5X-specific parts in one place: the prefix-LM decoding contract and checkpoints across the two runners.

Decoding: `predict_batch_with_aux` maps T5X's `DecoderOnlyModel.predict_batch_with_aux` contract (a
`decoder_causal_attention` prompt region, `num_decodes`, `decoder_params`, `return_all_decodes`, the prompt
removed from the result, `decode_fn` called with T5X's keyword names) onto `decode_loop.CachedDecoder`, which
owns the cache, the prefill and the step function. `DecoderOnlyLM.predict_batch_with_aux` is this function.

Checkpoints:

* T5X -> ours: nothing to do. `gpt_plugin.params_io.load_params` reads T5X's orbax `checkpoint_<step>/state` (params
  under `target`), so `python -m gpt_plugin.infer/eval --gin.CHECKPOINT_PATH=\"<t5x MODEL_DIR>\"` works.
* ours -> T5X: `to_t5x_checkpoint` writes the params of a gpt_plugin checkpoint (training dir, step dir or
  export) in T5X's layout, `<output_dir>/checkpoint_<step>/state` = {'target': params, 'state': {'step': step}}
  (orbax, OCDBT), which `t5x.infer` / `t5x.eval` restore (optimizer slots are absent: T5X logs "Not restoring
  ... param_states" and serves the params) and `t5x.train` can fine-tune from
  (`utils.RestoreCheckpointConfig.mode = 'specific'`, `restore_dataset = False`, `strict = False`).

  python -m gpt_plugin.inference.t5x_compat --checkpoint_path=/tmp/gpt_plugin_quickstart \
    --output_dir=/tmp/gpt_plugin_quickstart_t5x
No t5x import is needed for either direction.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gpt_plugin import params_io


def prompt_region(batch: Mapping[str, jax.Array]):
  """(inputs [B, L], prompt_lengths [B]) of a prefix-LM batch (seqio.DecoderFeatureConverter with `inputs`):
  `decoder_input_tokens` inside the `decoder_causal_attention` region (BOS + prompt), zeros after it."""
  if "decoder_causal_attention" not in batch:
    raise ValueError(
      "predict_batch_with_aux needs `decoder_causal_attention` in the batch (the prompt region), "
      "as produced by seqio.DecoderFeatureConverter for a task with `inputs` and `targets`"
    )
  causal = batch["decoder_causal_attention"]
  inputs = batch["decoder_input_tokens"] * causal
  prompt_lengths = jnp.maximum(jnp.sum(causal, axis=1).astype(jnp.int32) - 1, 0)
  return inputs, prompt_lengths


def predict_batch_with_aux(
  decoder,
  params: Any,
  batch: Mapping[str, jax.Array],
  rng: Optional[jax.Array] = None,
  *,
  decode_fn: Callable,
  eos_id: int,
  return_all_decodes: bool = False,
  num_decodes: int = 1,
  decoder_params: Optional[Mapping[str, Any]] = None,
):
  """T5X's `DecoderOnlyModel.predict_batch_with_aux` over `decoder` (a `decode_loop.CachedDecoder`).

  The prompt lengths are only known inside jit here, so the prefill picks its bucket at run time.
  Returns (decodes [B, L] or [B, num_decodes, L] with the prompt removed, {'scores': [B] or [B, num_decodes]})."""
  inputs, prompt_lengths = prompt_region(batch)
  decoder_params = dict(decoder_params or {})
  if rng is not None:
    decoder_params["decode_rng"] = rng
  decodes, scores = decoder.decode(
    params, inputs, prompt_lengths, decode_fn, eos_id=eos_id, num_decodes=num_decodes, **decoder_params
  )
  decodes = remove_prefix(decodes, prompt_lengths)
  if return_all_decodes:
    return decodes, {"scores": scores}
  return decodes[:, -1, :], {"scores": scores[:, -1]}


def remove_prefix(sequences: jax.Array, lengths: jax.Array) -> jax.Array:
  """Shift each row left by its prompt length: [B, n, L] with lengths [B]."""
  length = sequences.shape[-1]

  def shift(row, n):
    idx = jnp.arange(length) + n
    return jnp.where(idx < length, jnp.take(row, jnp.clip(idx, 0, length - 1), axis=-1), 0)

  return jax.vmap(lambda rows, n: jax.vmap(functools.partial(shift, n=n))(rows))(sequences, lengths)


def _step_of(path: str) -> int:
  m = re.search(r"checkpoint_(\d+)", path)
  return int(m.group(1)) if m else 0


def to_t5x_checkpoint(checkpoint_path: str, output_dir: str, step: Optional[int] = None) -> str:
  """Writes a T5X-layout checkpoint with the params of `checkpoint_path`; returns the step directory."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  params, path = params_io.load_params(checkpoint_path)  # numpy; only the params of a train state are read
  if step is None:
    step = _step_of(path)
  step_dir = os.path.join(os.path.abspath(output_dir), f"checkpoint_{step}")
  state = {"target": params, "state": {"step": np.asarray(step, np.int32)}}
  ckptr = ocp.PyTreeCheckpointer(use_ocdbt=True)
  ckptr.save(os.path.join(step_dir, "state"), state, force=True)
  ckptr.wait_until_finished() if hasattr(ckptr, "wait_until_finished") else None
  with open(os.path.join(step_dir, "commit_success.txt"), "w") as f:
    f.write("Checkpoint commit was successful.\n")
  return step_dir


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--checkpoint_path", required=True)
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--step", type=int, default=None)
  args = parser.parse_args(argv)
  print(to_t5x_checkpoint(args.checkpoint_path, args.output_dir, args.step))


if __name__ == "__main__":
  main()
