"""seqio task registrations for gpt_plugin.

``import tasks`` (e.g. from a gin file) registers the bundled sample corpus task
``pydocs`` and makes :func:`register_tar_shard_task` / the gin-configurable
``tasks.tar_shard_task`` available for your own tar-shard corpora.
"""

from gpt_plugin.data.tasks_lib import register_tar_shard_task, tar_shard_task  # noqa: F401
from tasks.sample_corpus import PYDOCS_TOKENIZER, SAMPLE_CORPUS_DIR, pydocs_vocabulary  # noqa: F401

__all__ = ["register_tar_shard_task", "tar_shard_task", "pydocs_vocabulary", "SAMPLE_CORPUS_DIR", "PYDOCS_TOKENIZER"]
