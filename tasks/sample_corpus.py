"""The bundled sample corpus task ``pydocs``; it lives in :mod:`gpt_plugin.data.sample_task` (importing either
registers it). Kept so that gin files and scripts that ``import tasks.sample_corpus`` keep working."""

from gpt_plugin.data.sample_task import (  # noqa: F401
  PYDOCS_TOKENIZER,
  PYDOCS_VOCAB_SIZE,
  SAMPLE_CORPUS_DIR,
  pydocs_vocabulary,
  register_pydocs,
)
