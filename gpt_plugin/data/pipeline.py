"""The training input pipeline: seqio task -> feature converter -> per-process batches,
with an exactly resumable, JSON-serialisable position.

How resuming works (tar-shard tasks, ``use_cached=False``)
----------------------------------------------------------
The task's samples come from one persistent, seekable
:class:`gpt_plugin.data.stream.SampleStream` (seeded shard order + window
permutation; its cursor is a small dict).  The stream is consumed in *segments* of
``segment_samples`` samples; each segment runs through its own short-lived seqio
pipeline (``Task.get_dataset`` -> ``feature_converter``).  At a segment boundary
no tf.data buffer (packing, prefetch) holds anything, so the position of the next
batch is ``(stream cursor at the segment's start, rows of the segment already
emitted)``.  Restoring seeks the stream to that cursor (one shard opened, earlier
tar members skipped without decoding), rebuilds that segment's pipeline and drops
the emitted rows: at most one segment is re-read, never the data before it.
seqio's packing works on fixed groups of ``max(feature length)`` examples, so
segments change nothing about which examples share a packed row except at segment
ends.

Mixtures and cached tasks (``use_cached=True``) use one tf.data pipeline and resume
by skipping the batches already produced (documented limitation: this re-reads).
"""

from __future__ import annotations

import itertools
import logging
from typing import Iterator, Mapping, Optional

import numpy as np
import seqio
import tensorflow as tf

from gpt_plugin.data import checks as checks_lib
from gpt_plugin.data import shards as shards_lib
from gpt_plugin.data import stream as stream_lib
from gpt_plugin.data import tasks_lib

log = logging.getLogger(__name__)

STATE_VERSION = 1
DEFAULT_SEGMENT_SAMPLES = 4096


class DataIterator:
  """Iterator of batches (dicts of numpy arrays, leading dim ``batch_size``).

  ``get_state()`` returns a JSON-serialisable dict; pass it as ``state=`` to
  :func:`get_dataset` to continue with exactly the next batch.  ``stats()``
  returns counters (``skipped_samples``, ``corrupt_shards``, ``samples``,
  ``tokens``, ``batches``); :func:`data_metrics` turns them into metrics.
  """

  def __init__(
    self,
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    split: str,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: Optional[int] = 0,
    pack: bool = True,
    use_cached: bool = False,
    process_index: int = 0,
    process_count: int = 1,
    num_epochs: Optional[int] = None,
    feature_converter_cls=seqio.DecoderFeatureConverter,
    state: Optional[dict] = None,
    segment_samples: int = DEFAULT_SEGMENT_SAMPLES,
    fast_path: bool = True,
    checks: Optional[checks_lib.DataChecks] = None,
  ):
    if batch_size < 1:
      raise ValueError("batch_size must be >= 1")
    self.feature_lengths = checks_lib.check_feature_lengths(task_feature_lengths)
    self.checks = checks if checks is not None else checks_lib.DataChecks()
    self.name = mixture_or_task_name
    self.provider = seqio.get_mixture_or_task(mixture_or_task_name)
    self.split = split
    self.batch_size = int(batch_size)
    self.shuffle = shuffle
    self.pack = pack
    self.use_cached = use_cached
    self.process_index, self.process_count = int(process_index), int(process_count)
    self.num_epochs = num_epochs
    self.converter = feature_converter_cls(pack=pack)
    self.source = tasks_lib.task_source(mixture_or_task_name)
    self.mode = "stream" if (self.source is not None and not use_cached) else "skip"
    self.fast_path = bool(fast_path) and self.mode == "stream" and self._fast_path_ok(feature_converter_cls)
    if shuffle and seed is None:
      seed = stream_lib.default_seed(None)
    self.seed = int(seed) if seed is not None else 0
    self._stats = {"samples": 0, "tokens": 0, "skipped_samples": 0, "corrupt_shards": 0}
    self._batches = 0
    self._error: Optional[BaseException] = None
    if state is not None:
      self._check_state(state)
      self.seed = int(state["seed"])
      self._batches = int(state.get("batches", 0))
    if self.mode == "stream":
      max_len = max(self.feature_lengths.values())
      # whole packing groups per segment
      self.segment_samples = max(1, -(-int(segment_samples) // max_len)) * max_len
      # the fast path checks ids a batch at a time (_check_batch_ids)
      spec = self._stream_spec(check_range=not self.fast_path)
      vocab_size = int(self.source.vocabulary.vocab_size) if self.source.check_vocab_size else None
      limits = [n for n in (vocab_size, self.checks.embedding_rows) if n is not None]
      self._id_bound = min(limits) if limits else None  # ids must be below it
      cursor = dict(state["segment_start"]) if state is not None else None
      skip_rows = int(state["rows_done"]) if state is not None else 0
      self._finished = bool(state.get("finished")) if state is not None else False
      self._stream = stream_lib.SampleStream(spec, cursor=cursor, stats=self._stats)
      if state is not None:  # skip counters as they were at the segment's start: the cap and the metric go on
        self._stream.restore_counts(state.get("skip_counts") or {})
      self._rows = self._stream_rows(skip_rows)
    else:
      self._finished = bool(state.get("finished")) if state is not None else False
      self._rows = None
      self._batch_it = self._skip_mode_batches(self._batches)
    self._peek = None
    self._peek_pos = None

  # -- state ----------------------------------------------------------------------
  def _state_header(self) -> dict:
    return {
      "version": STATE_VERSION,
      "mode": self.mode,
      "task": self.name,
      "split": self.split,
      "seed": self.seed,
      "shuffle": bool(self.shuffle),
      "pack": bool(self.pack),
      "feature_lengths": self.feature_lengths,
      "batch_size": self.batch_size,
      "process_index": self.process_index,
      "process_count": self.process_count,
      "num_epochs": self.num_epochs,
      "batches": self._batches,
    }

  def _check_state(self, state: dict):
    if state.get("version") != STATE_VERSION:
      raise ValueError(f"unsupported data state version {state.get('version')!r}")
    want = self._state_header()
    for k in (
      "mode",
      "task",
      "split",
      "shuffle",
      "pack",
      "feature_lengths",
      "batch_size",
      "process_index",
      "process_count",
    ):
      if state.get(k) != want[k]:
        raise ValueError(
          f"data state was saved with {k}={state.get(k)!r} but this pipeline has {k}={want[k]!r}; cannot resume exactly"
        )

  def get_state(self) -> dict:
    st = self._state_header()
    if self.mode == "stream":
      self._fill_peek()
      if self._peek is None:
        st.update(finished=True, segment_start=dict(self._stream.cursor), rows_done=0)
        st.update(skip_counts=self._stream.counts())
      else:
        st.update(finished=False, segment_start=dict(self._peek_pos[0]), rows_done=self._peek_pos[1])
        st.update(skip_counts=dict(self._peek_pos[2]))
    else:
      st.update(finished=self._finished)
    return st

  def stats(self) -> dict:
    out = dict(self._stats)
    if self.mode == "skip":
      for src in self._sources():
        for k, v in src.stats.items():
          out[k] = out.get(k, 0) + v
    out["batches"] = self._batches
    return out

  def _sources(self):
    tasks = self.provider.tasks if isinstance(self.provider, seqio.Mixture) else [self.provider]
    return [t.source for t in tasks if isinstance(t.source, tasks_lib.TarShardDataSource)]

  # -- stream mode ------------------------------------------------------------------
  def _stream_spec(self, check_range: bool) -> stream_lib.StreamSpec:
    """This process's sample stream over the task's shards (the same spec for reading and for re-checking)."""
    return self.source.stream_spec(
      self.split,
      shuffle=self.shuffle,
      seed=self.seed,
      process_index=self.process_index,
      process_count=self.process_count,
      num_epochs=self.num_epochs,
      checks=self.checks,
      check_range=check_range,
    )

  def _counted(self, it, counter):
    try:
      for x in it:
        counter[0] += 1
        yield x
    except BaseException as e:  # surfaced with its own type/message, not tf's wrapper
      self._error = e
      raise

  def _segment_dataset(self, samples) -> tf.data.Dataset:
    with tasks_lib.reading_from(self.source, samples):
      ds = self.provider.get_dataset(
        sequence_length=self.feature_lengths,
        split=self.split,
        use_cached=False,
        shuffle=self.shuffle,
        seed=self.seed,
        shard_info=None,
        num_epochs=1,
        try_in_mem_cache=False,
      )
    return self.converter(ds, self.feature_lengths)

  def _stream_rows(self, skip_rows: int) -> Iterator[tuple[tuple[dict, int, dict], dict]]:
    """((segment start cursor, row index in the segment, skip counters at the segment start), row)."""
    if self._finished:
      return
    while True:
      start, counts = dict(self._stream.cursor), self._stream.counts()
      counter = [0]
      samples = self._counted(itertools.islice(self._stream.samples(), self.segment_samples), counter)
      row_index = skip_rows
      if self.fast_path:
        rows = itertools.islice(self._numpy_rows(samples), skip_rows, None)
        skip_rows = 0
        for row in rows:
          yield (start, row_index, counts), row
          row_index += 1
      else:
        ds = self._segment_dataset(samples)
        if skip_rows:
          ds = ds.skip(skip_rows)
        skip_rows = 0
        try:
          for row in ds.as_numpy_iterator():
            yield (start, row_index, counts), row
            row_index += 1
        except (tf.errors.OpError, StopIteration) as e:
          if self._error is not None:
            err, self._error = self._error, None
            raise err from None
          raise RuntimeError(f"data pipeline failed: {e}") from e
      if counter[0] < self.segment_samples:
        return

  # -- numpy fast path: the same rows as Task.get_dataset -> DecoderFeatureConverter ----
  def _fast_path_ok(self, feature_converter_cls) -> bool:
    task = self.provider
    if not isinstance(task, seqio.Task) or set(self.feature_lengths) != {"targets"}:
      return False
    if feature_converter_cls not in (seqio.DecoderFeatureConverter, seqio.LMFeatureConverter):
      return False
    if getattr(self.converter, "bos_id", 0) != 0:
      return False
    for p in task.preprocessors:
      if not (isinstance(p, seqio.CacheDatasetPlaceholder) or p is tasks_lib.split_to_targets_length):
        return False
    return True

  def _numpy_rows(self, samples) -> Iterator[dict]:
    L = int(self.feature_lengths["targets"])
    split = any(p is tasks_lib.split_to_targets_length for p in self.provider.preprocessors)

    def examples():
      for ids in samples:
        if split and ids.size > L:
          for i in range(0, ids.size, L):
            yield ids[i : i + L]
        else:
          yield ids[:L]  # Task._trim_output_features

    if not self.pack:
      for ex in examples():
        yield _unpacked_row(ex, L)
      return
    # seqio.utils.trim_and_pack_dataset (tf ops): groups of L consecutive examples,
    # greedy sequential packing, example length = number of non-zero ids.
    group: list = []
    for ex in itertools.chain(examples(), [None]):
      if ex is not None:
        group.append(ex)
        if len(group) < L:
          continue
      if not group:
        break
      yield from _pack_group(group, L)
      group = []

  # -- skip mode --------------------------------------------------------------------
  def _fill_peek(self):
    if self._peek is None and not self._finished:
      nxt = next(self._rows, None)
      if nxt is None:
        self._finished = True
      else:
        self._peek_pos, self._peek = nxt

  def _skip_mode_batches(self, skip_batches: int):
    if self._finished:
      return iter(())
    shard_info = seqio.ShardInfo(self.process_index, self.process_count) if self.process_count > 1 else None
    if shard_info is not None:
      for src in self._sources():
        stream_lib.process_shards(src.list_shards(self.split), self.process_index, self.process_count)
    ds = self.provider.get_dataset(
      sequence_length=self.feature_lengths,
      split=self.split,
      use_cached=self.use_cached,
      shuffle=self.shuffle,
      seed=self.seed,
      shard_info=shard_info,
      num_epochs=self.num_epochs,
    )
    if self.shuffle and self.use_cached:
      ds = ds.shuffle(10_000, seed=self.seed, reshuffle_each_iteration=True)
    opts = tf.data.Options()
    opts.deterministic = True  # reproducible order, so that skipping resumes exactly
    ds = ds.with_options(opts)
    ds = self.converter(ds, self.feature_lengths)
    ds = ds.batch(self.batch_size, drop_remainder=True)
    if skip_batches:
      ds = ds.skip(skip_batches)
    return ds.prefetch(2).as_numpy_iterator()

  # -- iteration --------------------------------------------------------------------
  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self.mode == "skip":
      if self._finished:
        raise StopIteration
      try:
        batch = next(self._batch_it)
      except StopIteration:
        self._finished = True
        raise
      self._batches += 1
      return batch
    rows, first_pos = [], None
    while len(rows) < self.batch_size:
      self._fill_peek()
      if self._peek is None:
        raise StopIteration  # drop_remainder
      first_pos = first_pos or self._peek_pos
      rows.append(self._peek)
      self._peek = None
    batch = _batch(rows, self.pack)
    if self.fast_path:
      self._check_batch_ids(batch["decoder_target_tokens"], first_pos[0])
    self._batches += 1
    return batch

  def _check_batch_ids(self, tokens: np.ndarray, segment_start: dict) -> None:
    """One vectorised range check per batch (the fast path decodes without per-sample checks, except under the
    'skip' policy). On a hit, re-reads the batch's segment with per-sample checks (same policy) to name the
    shard, the member and the id."""
    if int(tokens.min()) >= 0 and (self._id_bound is None or int(tokens.max()) < self._id_bound):
      return
    spec = self._stream_spec(check_range=True)
    for _ in itertools.islice(stream_lib.SampleStream(spec, cursor=segment_start), 2 * self.segment_samples):
      pass  # raises the sample's DataError
    bad = int(tokens.max()) if int(tokens.min()) >= 0 else int(tokens.min())
    raise shards_lib.DataError(f"token id {bad} out of range in a batch read from {spec.shards[0]!r} onwards")


def _shifted_right(tgt: np.ndarray) -> np.ndarray:
  """Decoder inputs: targets shifted right by one along the last axis, 0 first."""
  inp = np.empty(tgt.shape, np.int32)
  inp[..., 0] = 0
  inp[..., 1:] = tgt[..., :-1]
  return inp


# A row is a dict of the converter's features, or, for a full row (one example of exactly L ids, which in packed
# mode are all non-zero), the bare id array: its other features are derived a batch at a time in _batch.


def _unpacked_row(ex: np.ndarray, L: int):
  """DecoderFeatureConverter(pack=False) for one example of at most L ids."""
  if ex.size == L:
    return ex
  tgt = np.zeros(L, np.int32)
  tgt[: ex.size] = ex
  return {
    "decoder_target_tokens": tgt,
    "decoder_input_tokens": _shifted_right(tgt),
    "decoder_loss_weights": (tgt != 0).astype(np.int32),
  }


def _full_rows_batch(targets: list, pack: bool) -> dict:
  """The batch of full rows, every feature computed once for the whole batch."""
  tgt = np.stack(targets, dtype=np.int32)
  batch = {
    "decoder_target_tokens": tgt,
    "decoder_input_tokens": _shifted_right(tgt),
    "decoder_loss_weights": (tgt != 0).astype(np.int32),
  }
  if pack:  # one segment per row
    batch["decoder_segment_ids"] = np.ones(tgt.shape, np.int32)
    batch["decoder_positions"] = np.broadcast_to(np.arange(tgt.shape[1], dtype=np.int32), tgt.shape).copy()
  return batch


def _batch(rows: list, pack: bool) -> dict:
  full = [r for r in rows if type(r) is np.ndarray]  # noqa: E721  (exact type: rows are dicts or arrays)
  if len(full) == len(rows):
    return _full_rows_batch(rows, pack)
  if full:  # a mixed batch: expand the full rows to dicts
    rows = [{k: v[0] for k, v in _full_rows_batch([r], pack).items()} if type(r) is np.ndarray else r for r in rows]  # noqa: E721
  return {k: np.stack([r[k] for r in rows], dtype=np.int32) for k in rows[0]}


def _packed_row(parts: list, L: int):
  nonempty = [p for p in parts if p.size]
  if len(nonempty) == 1 and nonempty[0].size == L:
    return nonempty[0]  # a full row
  tgt = np.zeros(L, np.int32)
  pos = np.zeros(L, np.int32)
  if nonempty:
    flat = np.concatenate(nonempty)
    tgt[: flat.size] = flat
    pos[: flat.size] = np.concatenate([np.arange(p.size, dtype=np.int32) for p in nonempty])
  seg = np.cumsum(pos == 0, dtype=np.int32) * (tgt != 0)
  inp = _shifted_right(tgt)
  prev_seg = np.zeros(L, seg.dtype)
  prev_seg[1:] = seg[:-1]
  inp *= seg == prev_seg
  return {
    "decoder_target_tokens": tgt,
    "decoder_input_tokens": inp,
    "decoder_loss_weights": (tgt != 0).astype(np.int32),
    "decoder_segment_ids": seg.astype(np.int32),
    "decoder_positions": pos,
  }


def _pack_group(group, L: int) -> Iterator[dict]:
  """Packs one group like seqio's ``_pack_with_tf_ops`` + ``LMFeatureConverter`` (greedy, in order; an example's
  length is its number of non-zero ids; the last row is written even when empty)."""
  cur, cur_len = [], 0
  for ex in group:
    n = int(np.count_nonzero(ex))
    if cur_len + n > L:
      yield _packed_row(cur, L)
      cur, cur_len = [], 0
    cur.append(ex[:n])
    cur_len += n
  yield _packed_row(cur, L)


def data_metrics(iterator) -> dict[str, int]:
  """``{'data/skipped_samples': n}`` for an iterator from :func:`get_dataset` (``{}`` for other iterators):
  the samples skipped so far (bad-sample policy ``'skip'``, corrupt shards and members), for the trainer's logs."""
  stats = getattr(iterator, "stats", None)
  if not callable(stats):
    return {}
  return {"data/skipped_samples": int(stats().get("skipped_samples", 0))}


def get_dataset(
  mixture_or_task_name: str,
  task_feature_lengths: Mapping[str, int],
  split: str,
  batch_size: int,
  *,
  shuffle: bool = True,
  seed: Optional[int] = 0,
  pack: bool = True,
  use_cached: bool = False,
  process_index: int = 0,
  process_count: int = 1,
  num_epochs: Optional[int] = None,
  feature_converter_cls=seqio.DecoderFeatureConverter,
  state: Optional[dict] = None,
  cache_dir: Optional[str] = None,
  segment_samples: int = DEFAULT_SEGMENT_SAMPLES,
  fast_path: bool = True,
  checks: Optional[checks_lib.DataChecks] = None,
) -> DataIterator:
  """Per-process batches of ``mixture_or_task_name`` for training / evaluation.

  ``batch_size`` is the per-process batch; the last partial batch is dropped.
  Process ``p`` of ``process_count`` reads shards ``p, p+P, ...``.  ``state`` (from
  ``DataIterator.get_state()``) resumes at exactly the next batch.  ``cache_dir``
  adds a seqio cache directory (for ``use_cached=True``).  ``checks`` (default ``DataChecks()``, i.e. gin's
  bindings) sets the embedding-size check and the bad-sample policy.
  """
  if cache_dir:
    seqio.add_global_cache_dirs([cache_dir])
  return DataIterator(
    mixture_or_task_name,
    task_feature_lengths,
    split,
    batch_size,
    shuffle=shuffle,
    seed=seed,
    pack=pack,
    use_cached=use_cached,
    process_index=process_index,
    process_count=process_count,
    num_epochs=num_epochs,
    feature_converter_cls=feature_converter_cls,
    state=state,
    segment_samples=segment_samples,
    fast_path=fast_path,
    checks=checks,
  )
