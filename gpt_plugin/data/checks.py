"""What the data reader checks and what it does with a bad sample: one gin-configurable record.

Bind it in a run gin (``gin/runs/pretrain.gin`` binds the embedding size)::

    from gpt_plugin.data import checks
    checks.DataChecks.embedding_rows = %VOCAB_SIZE      # ids must also be < the model's embedding rows
    checks.DataChecks.bad_samples = 'skip'              # or 'error'
    checks.DataChecks.max_skipped_fraction = 0.01

``pipeline.get_dataset`` builds ``DataChecks()`` (so gin's bindings apply) unless it is given one.
Importing this module is cheap (no TensorFlow, no seqio).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import gin

from gpt_plugin.errors import ConfigError

BAD_SAMPLE_POLICIES = ("error", "skip")


@gin.configurable(module="data")
@dataclasses.dataclass(frozen=True)
class DataChecks:
  """Checks on token data, set per run.

  Attributes:
    embedding_rows: the model's embedding rows (``VOCAB_SIZE``); a token id ``>=`` it is a ``DataError`` naming
      the shard, the member and the id (ids are also checked against the task vocabulary). None: not checked.
    bad_samples: what a bad sample (wrong dtype or rank, ids out of range, empty, unreadable member, truncated
      or corrupt shard) does: ``'error'`` stops with a ``DataError`` naming shard and member; ``'skip'`` logs it
      with shard and member, counts it (``DataIterator.stats()['skipped_samples']``) and goes on, until the
      skipped fraction passes ``max_skipped_fraction``. None: the task's own setting (its ``bad_samples``, else
      ``'error'`` for corpora written by ``gpt_plugin.data.build_corpus`` and for ``strict=True`` tasks, else the
      lenient default: corrupt shards and unreadable members are skipped with a warning, content faults raise).
    max_skipped_fraction: under ``'skip'``, the run stops when more than this fraction of the samples read so far
      was skipped, the fraction being taken over at least ``1 / max_skipped_fraction`` samples (so one bad sample
      among the first few does not stop a run; two in the first 100 at 0.01 do).
  """

  embedding_rows: Optional[int] = None
  bad_samples: Optional[str] = None
  max_skipped_fraction: float = 0.01

  def __post_init__(self):
    if self.embedding_rows is not None and (not isinstance(self.embedding_rows, int) or self.embedding_rows < 1):
      raise ConfigError(f"DataChecks.embedding_rows must be a positive int (VOCAB_SIZE), not {self.embedding_rows!r}")
    check_policy(self.bad_samples, "DataChecks.bad_samples")
    f = self.max_skipped_fraction
    if not isinstance(f, (int, float)) or not 0 <= f < 1:
      raise ConfigError(f"DataChecks.max_skipped_fraction must be in [0, 1), not {f!r}")


def check_policy(policy: Optional[str], where: str) -> None:
  if policy is not None and policy not in BAD_SAMPLE_POLICIES:
    raise ConfigError(f"{where} must be one of {BAD_SAMPLE_POLICIES} (or None), not {policy!r}")


def skip_limit(read: int, max_skipped_fraction: float) -> float:
  """How many skipped samples are allowed after ``read`` samples (see ``DataChecks.max_skipped_fraction``)."""
  if max_skipped_fraction <= 0:
    return 0.0
  return max_skipped_fraction * max(read, math.ceil(1 / max_skipped_fraction))


def check_feature_lengths(task_feature_lengths, where: str = "TASK_FEATURE_LENGTHS") -> dict:
  """The lengths as a dict of positive ints, or a ConfigError naming the feature and its value."""
  if not hasattr(task_feature_lengths, "items") or not task_feature_lengths:
    raise ConfigError(f"{where} must be a non-empty dict like {{'targets': 1024}}, not {task_feature_lengths!r}")
  out = {}
  for name, length in task_feature_lengths.items():
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
      raise ConfigError(f"{where}[{name!r}] = {length!r}: every feature length must be a positive int")
    out[name] = length
  return out
