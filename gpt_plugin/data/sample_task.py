"""The bundled sample corpus task ``pydocs`` (Python 3.11 documentation, PSF licence).

Pre-tokenised ``.npy`` shards and a byte-level BPE ``tokenizer.json`` (8192 tokens,
``<pad>``=0, ``<|endoftext|>``=1) live in ``gpt_plugin/data/sample_corpus``; see
PROVENANCE.md there.  Importing this module registers ``pydocs``; use it with
``MIXTURE_OR_TASK_NAME = 'pydocs'`` and the vocabulary from :func:`pydocs_vocabulary`
(gin: ``import tasks`` then ``@tasks.pydocs_vocabulary()``; the top-level ``tasks`` package re-exports it).
"""

import functools
import os

import gin
import seqio

from gpt_plugin import metrics_lib
from gpt_plugin.data import tasks_lib, vocabularies

SAMPLE_CORPUS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample_corpus")
PYDOCS_TOKENIZER = os.path.join(SAMPLE_CORPUS_DIR, "tokenizer.json")
PYDOCS_VOCAB_SIZE = 8192
PYDOCS_TASK = "pydocs"


@gin.configurable(module="tasks")
def pydocs_vocabulary() -> vocabularies.HFTokenizerVocabulary:
  """The sample corpus' tokenizer as a seqio vocabulary (8192 tokens, EOS id 1)."""
  return vocabularies.HFTokenizerVocabulary(PYDOCS_TOKENIZER, eos_token="<|endoftext|>")


def register_pydocs(name: str = PYDOCS_TASK):
  """Registers the task, with score metrics (loss, perplexity, bits per byte) for `t5x.eval`."""
  vocabulary = pydocs_vocabulary()
  return tasks_lib.register_tar_shard_task(
    name,
    train_shards=os.path.join(SAMPLE_CORPUS_DIR, "pydocs_train.index"),
    validation_shards=os.path.join(SAMPLE_CORPUS_DIR, "pydocs_validation.index"),
    vocabulary=vocabulary,
    member_format="npy",
    shuffle_window=256,
    metrics_fns=[metrics_lib.lm_score_metrics],
    postprocess_fn=functools.partial(metrics_lib.lm_target_stats, vocabulary=vocabulary),
  )


if PYDOCS_TASK not in seqio.TaskRegistry.names():
  register_pydocs()
