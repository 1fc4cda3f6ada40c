"""seqio DataSource and Task registration for webdataset tar-shard corpora.

The task's only output feature is ``targets`` (int32 token ids; EOS already in the
data for pre-tokenised shards, appended per document for ``.txt`` members).  The
preprocessors are ``[CacheDatasetPlaceholder, split_to_targets_length]`` so seqio's
cache job caches the raw token samples and samples longer than the requested
``targets`` length are cut into consecutive pieces instead of truncated (the
original project trained on ``x[:max_context]`` and Little-GPT reshaped; cutting
keeps every token).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from typing import Any, Mapping, Optional, Sequence, Union

import gin
import seqio
import tensorflow as tf

from gpt_plugin.data import checks as checks_lib
from gpt_plugin.data import shards as shards_lib
from gpt_plugin.data import stream as stream_lib
from gpt_plugin.data import vocabularies as vocab_lib

log = logging.getLogger(__name__)

GPT2_VOCAB_SIZE = 50257
GPT2_EOS_ID = 50256
OUTPUT_SIGNATURE = {"targets": tf.TensorSpec([None], tf.int32)}

# Set by gpt_plugin.data.pipeline while it builds one segment's tf.data pipeline:
# the source then reads from the pipeline's persistent, seekable SampleStream.
_ACTIVE = threading.local()


@contextlib.contextmanager
def reading_from(source: "TarShardDataSource", sample_iterable):
  prev = getattr(_ACTIVE, "value", None)
  _ACTIVE.value = (source, sample_iterable)
  try:
    yield
  finally:
    _ACTIVE.value = prev


def split_to_targets_length(
  dataset: tf.data.Dataset, sequence_length: Optional[Mapping[str, int]] = None, output_features=None
) -> tf.data.Dataset:
  """Cuts ``targets`` into consecutive pieces of at most ``sequence_length['targets']``."""
  del output_features
  if not sequence_length or sequence_length.get("targets") is None:
    return dataset
  length = int(sequence_length["targets"])

  def split(ex):
    t = ex["targets"]
    n = tf.size(t)
    num = tf.maximum((n + length - 1) // length, 1)
    lengths = tf.concat([tf.fill([num - 1], length), [n - (num - 1) * length]], axis=0)
    return tf.data.Dataset.from_tensor_slices({"targets": tf.RaggedTensor.from_row_lengths(t, lengths)}).map(
      lambda x: {"targets": x["targets"]}
    )

  return dataset.flat_map(split).map(lambda x: {"targets": tf.ensure_shape(x["targets"], [None])})


class TarShardDataSource(seqio.DataSource):
  """seqio DataSource over webdataset tar shards (see module docstring).

  ``get_dataset(split, shuffle, seed, shard_info)`` reads the shards of
  ``shard_info`` (``index, index+num_shards, ...``) once, shuffled with ``seed``
  (shard order + a window permutation, ``window`` samples) when ``shuffle``.
  """

  def __init__(
    self,
    split_patterns: Mapping[str, Union[str, Sequence[str]]],
    *,
    vocabulary: seqio.Vocabulary,
    member_format: str = "auto",
    strict: bool = False,
    window: int = 1024,
    append_eos_to_text: bool = True,
    check_vocab_size: bool = True,
    bad_samples: Optional[str] = None,
  ):
    checks_lib.check_policy(bad_samples, "bad_samples")
    if member_format not in ("auto",) + shards_lib.TOKEN_FORMATS:
      raise ValueError(f"member_format must be auto/pth/npy/txt, not {member_format!r}")
    super().__init__(
      splits=tuple(split_patterns), num_input_examples=None, caching_permitted=True, performs_internal_shuffling=True
    )
    self._patterns = {k: v for k, v in split_patterns.items()}
    self._shards: dict[str, list[str]] = {}
    self.vocabulary = vocabulary
    self.member_format = member_format
    self.strict = strict
    self.window = window
    self.append_eos_to_text = append_eos_to_text
    self.check_vocab_size = check_vocab_size
    self.bad_samples = bad_samples
    self.stats: dict[str, int] = {}

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  @property
  def patterns(self):
    return dict(self._patterns)

  def list_shards(self, split: str) -> Sequence[str]:
    if split not in self._patterns:
      raise ValueError(f"split {split!r} not in {list(self._patterns)}")
    if split not in self._shards:
      self._shards[split] = shards_lib.expand_shard_patterns(self._patterns[split])
    return self._shards[split]

  def bad_sample_policy(self, split: str, checks: Optional[checks_lib.DataChecks] = None) -> Optional[str]:
    """The run's ``DataChecks.bad_samples``, else this task's ``bad_samples``, else ``'error'`` for ``strict``
    tasks and corpora written by ``build_corpus``, else None (lenient, see ``stream.StreamSpec``)."""
    if checks is not None and checks.bad_samples is not None:
      return checks.bad_samples
    if self.bad_samples is not None:
      return self.bad_samples
    if self.strict or shards_lib.is_builder_corpus(self._patterns[split]):
      return "error"
    return None

  def decode_fn(self, embedding_rows: Optional[int] = None, check_range: bool = True):
    """(members, url, key) -> int32 ids; ``check_range=False`` leaves the id range of int32-safe dtypes to the
    caller (the pipeline's per-batch check)."""
    vocab = self.vocabulary
    tokenize = None if isinstance(vocab, seqio.PassThroughVocabulary) else vocab.encode
    vocab_size = int(vocab.vocab_size) if self.check_vocab_size else None
    return functools.partial(
      shards_lib.decode_tokens,
      fmt=self.member_format,
      vocab_size=vocab_size,
      embedding_rows=embedding_rows,
      tokenize=tokenize,
      eos_id=vocab.eos_id,
      append_eos_to_text=self.append_eos_to_text,
      check_range=check_range,
    )

  def stream_spec(
    self,
    split: str,
    *,
    shuffle: bool,
    seed: Optional[int],
    process_index: int = 0,
    process_count: int = 1,
    num_epochs: Optional[int] = 1,
    checks: Optional[checks_lib.DataChecks] = None,
    check_range: bool = True,
  ) -> stream_lib.StreamSpec:
    shards = stream_lib.process_shards(self.list_shards(split), process_index, process_count)
    checks = checks or checks_lib.DataChecks()
    policy = self.bad_sample_policy(split, checks)
    return stream_lib.StreamSpec(
      shards=shards,
      # under 'skip' every sample is checked on its own (a bad one is dropped, not its whole batch)
      decode=self.decode_fn(checks.embedding_rows, check_range=check_range or policy == "skip"),
      shuffle=shuffle,
      seed=stream_lib.default_seed(seed) if shuffle else 0,
      window=self.window,
      num_epochs=num_epochs,
      strict=self.strict,
      bad_samples=policy,
      max_skipped_fraction=checks.max_skipped_fraction,
      expected_samples=shards_lib.index_sample_counts(self._patterns[split]),
    )

  def get_dataset(
    self,
    split: str = "train",
    shuffle: bool = True,
    seed: Optional[int] = None,
    shard_info: Optional[seqio.ShardInfo] = None,
    *,
    sequence_length=None,
    use_cached: bool = False,
    num_epochs: Optional[int] = 1,
  ) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs  # seqio repeats after the source
    active = getattr(_ACTIVE, "value", None)
    if active is not None and active[0] is self:
      samples = active[1]
      gen = lambda: ({"targets": ids} for ids in samples)  # noqa: E731
    else:
      if isinstance(seed, tf.Tensor):
        seed = int(seed.numpy())
      index, count = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
      spec = self.stream_spec(split, shuffle=shuffle, seed=seed, process_index=index, process_count=count, num_epochs=1)
      stats = self.stats

      def gen():
        for ids in stream_lib.SampleStream(spec, stats=stats):
          yield {"targets": ids}

    return tf.data.Dataset.from_generator(gen, output_signature=OUTPUT_SIGNATURE)


def _resolve_vocabulary(vocabulary, vocab_size: Optional[int], eos_id: Optional[int]) -> seqio.Vocabulary:
  if vocabulary is None:
    return seqio.PassThroughVocabulary(
      size=vocab_size or GPT2_VOCAB_SIZE, eos_id=GPT2_EOS_ID if eos_id is None and vocab_size is None else eos_id
    )
  return vocab_lib.get_vocabulary(vocabulary)


def register_tar_shard_task(
  name: str,
  *,
  train_shards,
  validation_shards=None,
  vocabulary=None,
  vocab_size: Optional[int] = None,
  eos_id: Optional[int] = None,
  member_format: str = "auto",
  strict: bool = False,
  shuffle_window: int = 1024,
  append_eos_to_text: bool = True,
  split_long_samples: bool = True,
  overwrite: bool = True,
  extra_splits: Optional[Mapping[str, Any]] = None,
  metrics_fns=(),
  postprocess_fn=None,
  bad_samples: Optional[str] = None,
) -> seqio.Task:
  """Registers a seqio Task named ``name`` over tar shards and returns it.

  Args:
    train_shards / validation_shards: brace pattern(s), glob(s) or index file(s)
      (see :func:`gpt_plugin.data.shards.expand_shard_patterns`); validation is
      optional.  Patterns are expanded lazily (at first read), so registering a
      task for a corpus that is not on this machine is fine.
    vocabulary: a ``seqio.Vocabulary`` or a spec for
      :func:`gpt_plugin.data.vocabularies.get_vocabulary` (``tokenizer.json``,
      directory, ``.model``, ``"byte"``).  ``None``: token ids pass through
      unchanged, with ``vocab_size`` (default GPT-2's 50257, EOS 50256).
    member_format: ``"auto"`` (``.pth`` > ``.npy`` > ``.txt``), or one of them.
    strict: corrupt shards/samples raise instead of being skipped with a warning.
    shuffle_window: samples per shuffle window (see gpt_plugin.data.stream).
    append_eos_to_text: append EOS after each ``.txt`` document.
    split_long_samples: cut samples longer than the ``targets`` length into pieces.
    bad_samples: ``'error'`` or ``'skip'`` (see :class:`gpt_plugin.data.checks.DataChecks`, whose run-level
      setting wins); None: ``'error'`` for ``strict`` tasks and corpora written by ``build_corpus``, else
      lenient (corrupt shards and unreadable members skipped with a warning, other faults raise).
  """
  vocab = _resolve_vocabulary(vocabulary, vocab_size, eos_id)
  splits = {"train": train_shards}
  if validation_shards is not None:
    splits["validation"] = validation_shards
  splits.update(extra_splits or {})
  source = TarShardDataSource(
    splits,
    vocabulary=vocab,
    member_format=member_format,
    strict=strict,
    window=shuffle_window,
    append_eos_to_text=append_eos_to_text,
    bad_samples=bad_samples,
  )
  preprocessors = [seqio.CacheDatasetPlaceholder()]
  if split_long_samples:
    preprocessors.append(split_to_targets_length)
  if overwrite and name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
    name,
    source=source,
    output_features={"targets": seqio.Feature(vocab, add_eos=False, dtype=tf.int32)},
    preprocessors=preprocessors,
    shuffle_buffer_size=None,
    metric_fns=list(metrics_fns),
    postprocess_fn=postprocess_fn,
  )


@gin.configurable(module="tasks")
def tar_shard_task(
  name: str = "tar_shards", train_shards=gin.REQUIRED, validation_shards=None, vocabulary=None, **options
) -> str:
  """Gin entry point: registers a tar-shard task and returns its name, so a run gin
  can say ``MIXTURE_OR_TASK_NAME = @tasks.tar_shard_task()`` and bind
  ``tasks.tar_shard_task.train_shards = ['gs://bucket/books_train-{000000..000013}.tar.gz']``
  (or index files), like the original ``conf/config.yaml`` ``train_shard_urls``."""
  register_tar_shard_task(
    name, train_shards=train_shards, validation_shards=validation_shards, vocabulary=vocabulary, **options
  )
  return name


def task_source(task_name: str) -> Optional[TarShardDataSource]:
  provider = seqio.get_mixture_or_task(task_name)
  src = getattr(provider, "source", None)
  return src if isinstance(src, TarShardDataSource) else None
