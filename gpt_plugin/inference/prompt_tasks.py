"""Prefix-LM ("prompt -> continuation") seqio tasks over an LM corpus, for T5X's predict mode.

`t5x.models.DecoderOnlyModel.predict_batch_with_aux` needs `decoder_causal_attention`, i.e. a task with both
`inputs` and `targets`. `register_prompt_task('pydocs_prompts', 'pydocs')` makes one from a targets-only LM
task: each sample's first `inputs`-length tokens become `inputs`, the next `targets`-length tokens `targets`.
Importing this module registers `pydocs_prompts` (gin: `import gpt_plugin.inference.prompt_tasks`).
"""

from __future__ import annotations

from typing import Mapping, Optional

import seqio
import tensorflow as tf


def split_prompt_continuation(
  dataset: tf.data.Dataset, sequence_length: Optional[Mapping[str, int]] = None, output_features=None
) -> tf.data.Dataset:
  """{'targets': t} -> {'inputs': t[:Li], 'targets': t[Li:Li+Lt]}; samples with nothing after the prompt drop."""
  del output_features
  if not sequence_length or not sequence_length.get("inputs"):
    raise ValueError(f"prompt tasks need an 'inputs' length in TASK_FEATURE_LENGTHS, got {sequence_length}")
  in_len = int(sequence_length["inputs"])
  tgt_len = sequence_length.get("targets")

  def split(ex):
    t = ex["targets"]
    out = {"inputs": t[:in_len], "targets": t[in_len:] if tgt_len is None else t[in_len : in_len + int(tgt_len)]}
    return out

  return dataset.filter(lambda ex: tf.size(ex["targets"]) > in_len).map(split, num_parallel_calls=tf.data.AUTOTUNE)


def register_prompt_task(name: str, lm_task: str, overwrite: bool = True) -> seqio.Task:
  base = seqio.get_mixture_or_task(lm_task)
  vocab = base.output_features["targets"].vocabulary
  if overwrite and name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
    name,
    source=base.source,
    output_features={
      "inputs": seqio.Feature(vocab, add_eos=False, dtype=tf.int32),
      "targets": seqio.Feature(vocab, add_eos=False, dtype=tf.int32),
    },
    preprocessors=[split_prompt_continuation],
    shuffle_buffer_size=None,
  )


from gpt_plugin.data import sample_task  # noqa: E402  pylint: disable=g-import-not-at-top  (registers pydocs)

register_prompt_task("pydocs_prompts", sample_task.PYDOCS_TASK)
