"""seqio task registrations that gin files import (``import tasks``).

Thin: the code lives in ``gpt_plugin`` (library code never imports this package). ``import tasks`` registers the
bundled sample corpus task ``pydocs`` (:mod:`gpt_plugin.data.sample_task`) and makes
:func:`register_tar_shard_task` / the gin-configurable ``tasks.tar_shard_task`` available for your own tar-shard
corpora.
"""

from gpt_plugin.data.tasks_lib import register_tar_shard_task, tar_shard_task  # noqa: F401
from gpt_plugin.data.sample_task import PYDOCS_TOKENIZER, SAMPLE_CORPUS_DIR, pydocs_vocabulary  # noqa: F401

__all__ = ["register_tar_shard_task", "tar_shard_task", "pydocs_vocabulary", "SAMPLE_CORPUS_DIR", "PYDOCS_TOKENIZER"]
