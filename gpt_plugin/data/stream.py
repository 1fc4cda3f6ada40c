"""A deterministic, seekable stream of token samples over a list of shards.

Order (all of it a pure function of ``seed``, the shard list and the epoch):

* each epoch visits this process's shards in a seeded permutation
  (``shuffle=False``: in the given order);
* the epoch's concatenated sample stream is cut into windows of ``window`` raw
  samples (windows may span shard boundaries); each window is emitted in a seeded
  permutation (``shuffle=False``: in order).

The position is a small JSON-able cursor ``{"epoch", "shard", "sample",
"emitted"}``: the window starting at raw sample ``sample`` of the ``shard``-th shard
of ``epoch``'s order, of which ``emitted`` samples were already produced.  Seeking
to a cursor opens that one shard, skips ``sample`` tar samples without decoding
them, re-reads one window and drops ``emitted`` samples; it never re-reads earlier
shards.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from gpt_plugin.data import checks as checks_lib
from gpt_plugin.data import shards as shards_lib

log = logging.getLogger(__name__)

START = {"epoch": 0, "shard": 0, "sample": 0, "emitted": 0}


def process_shards(all_shards: Sequence[str], process_index: int, process_count: int) -> list[str]:
  """Shards of process ``p`` of ``P``: ``p, p+P, p+2P, ...`` (errors if too few)."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"bad process_index/process_count {process_index}/{process_count}")
  if len(all_shards) < process_count:
    raise ValueError(
      f"{len(all_shards)} shards cannot be split over {process_count} processes: every "
      f"process needs at least one shard; write more (smaller) shards"
    )
  return list(all_shards[process_index::process_count])


@dataclasses.dataclass
class StreamSpec:
  shards: Sequence[str]
  decode: Callable[[dict, str, str], np.ndarray]  # (members, url, key) -> int32 ids
  shuffle: bool = True
  seed: int = 0
  window: int = 1024
  num_epochs: Optional[int] = 1  # None: forever
  strict: bool = False
  # 'error': any bad sample raises; 'skip': skipped, logged and counted up to max_skipped_fraction; None: corrupt
  # shards and unreadable members are skipped with a warning (raise if strict), other faults raise.
  bad_samples: Optional[str] = None
  max_skipped_fraction: float = 0.01
  expected_samples: Optional[dict] = None  # {url: sample count} from the builder's index


class SampleStream:
  """Iterates token arrays from ``spec`` starting at ``cursor``; ``.cursor`` is the
  position just after the last sample returned, ``.stats`` counts what was read."""

  def __init__(self, spec: StreamSpec, cursor: Optional[dict] = None, stats: Optional[dict] = None):
    self.spec = spec
    given = dict(cursor or START)
    for k in START:
      if not isinstance(given.get(k), int):
        raise ValueError(f"bad stream cursor {cursor!r}")
    self._pos = tuple(given[k] for k in START)  # (epoch, shard, sample, emitted); a tuple: set once per sample
    self.stats = stats if stats is not None else {}
    self._read = 0  # samples handed to decode
    self._decode_skipped = 0  # of which skipped (the rest of stats['skipped_samples'] was lost in broken shards)
    self._pos_counts: Optional[tuple] = None  # the counters at the start of the window at self._pos
    for k in ("samples", "tokens", "skipped_samples", "corrupt_shards"):
      self.stats.setdefault(k, 0)
    self._it = self._run()

  @property
  def cursor(self) -> dict:
    return dict(zip(START, self._pos))

  def __iter__(self):
    return self

  def __next__(self) -> np.ndarray:
    return next(self._it)

  _COUNTS = ("skipped_samples", "corrupt_shards", "read", "decode_skipped")

  def _counts_now(self) -> tuple:
    return (self.stats["skipped_samples"], self.stats["corrupt_shards"], self._read, self._decode_skipped)

  def counts(self) -> dict:
    """The bad-sample counters as they were when the window at ``cursor`` started (a seek to the cursor re-reads
    that window and counts its bad samples again), JSON-able, for ``restore_counts`` after a restart."""
    return dict(zip(self._COUNTS, self._pos_counts or self._counts_now()))

  def restore_counts(self, counts: dict) -> None:
    skipped, corrupt, read, decode_skipped = (int(counts.get(k, 0)) for k in self._COUNTS)
    self.stats["skipped_samples"], self.stats["corrupt_shards"] = skipped, corrupt
    self._read, self._decode_skipped, self._pos_counts = read, decode_skipped, None

  def samples(self) -> Iterator[np.ndarray]:
    """The underlying generator (the same items as iterating the stream, one call less per sample)."""
    return self._it

  # -- order ------------------------------------------------------------------
  def _order(self, epoch: int) -> list[int]:
    n = len(self.spec.shards)
    if not self.spec.shuffle:
      return list(range(n))
    return np.random.default_rng([self.spec.seed, epoch, 0x5EED]).permutation(n).tolist()

  def _perm(self, n: int, epoch: int, shard: int, sample: int) -> list[int]:
    if not self.spec.shuffle or n <= 1:
      return list(range(n))
    return np.random.default_rng([self.spec.seed, epoch, shard, sample, 0x717D]).permutation(n).tolist()

  # -- reading ----------------------------------------------------------------
  def _raw_samples(self, order: list[int], shard_pos: int, skip: int) -> Iterator[tuple[int, int, object, tuple]]:
    """Yields (shard_pos, index_in_shard, ids-or-None-if-bad, counters before this sample was read) from
    (shard_pos, skip) to epoch end."""
    spec = self.spec
    expected = spec.expected_samples or {}
    for pos in range(shard_pos, len(order)):
      url = spec.shards[order[pos]]
      skipped_before = self.stats["skipped_samples"]
      for idx, key, members in shards_lib.iter_tar_samples(
        url,
        skip=skip if pos == shard_pos else 0,
        strict=spec.strict or spec.bad_samples == "error",
        stats=self.stats,
        expected_samples=expected.get(url),
      ):
        if members is None:
          continue
        before = self._counts_now()
        self._read += 1
        try:
          ids = spec.decode(members, url, key)
        except shards_lib.DataError as e:
          ids = self._bad_sample(e)
        yield pos, idx, ids, before
      if self.stats["skipped_samples"] != skipped_before:  # the shard ended early: counted by iter_tar_samples
        self._check_skip_cap(f"shard {url!r} ended early")

  def _bad_sample(self, error: "shards_lib.DataError") -> None:
    """Applies the bad-sample policy to one sample that did not decode: raises, or counts and logs it."""
    spec = self.spec
    lenient_skip = spec.bad_samples is None and isinstance(error, shards_lib.CorruptSampleError) and not spec.strict
    if spec.bad_samples != "skip" and not lenient_skip:
      raise error
    self.stats["skipped_samples"] += 1
    self._decode_skipped += 1
    log.warning("skipping bad sample (%d skipped so far): %s", self.stats["skipped_samples"], error)
    if spec.bad_samples == "skip":
      self._check_skip_cap(str(error))

  def _check_skip_cap(self, last: str) -> None:
    spec = self.spec
    if spec.bad_samples != "skip":
      return
    skipped = self.stats["skipped_samples"]
    seen = self._read + skipped - self._decode_skipped
    if skipped > checks_lib.skip_limit(seen, spec.max_skipped_fraction):
      raise shards_lib.DataError(
        f"bad_samples='skip': {skipped} of the {seen} samples read so far were skipped, more than "
        f"max_skipped_fraction={spec.max_skipped_fraction} allows; last: {last}. Fix or drop the shards named "
        "in the warnings above, or raise DataChecks.max_skipped_fraction"
      )

  def _run(self) -> Iterator[np.ndarray]:
    spec, c = self.spec, self.cursor
    w = max(1, int(spec.window)) if spec.shuffle else 1
    epoch = c["epoch"]
    while spec.num_epochs is None or epoch < spec.num_epochs:
      order = self._order(epoch)
      if epoch == c["epoch"]:
        shard_pos, sample, emitted = c["shard"], c["sample"], c["emitted"]
      else:
        shard_pos, sample, emitted = 0, 0, 0
      fresh_epoch = (shard_pos, sample, emitted) == (0, 0, 0)
      produced_in_epoch = 0
      raw = self._raw_samples(order, shard_pos, sample)
      pending = next(raw, None)
      while pending is not None:
        # The window starts at the first raw sample actually present.
        start_pos, start_sample, start_counts = pending[0], pending[1], pending[3]
        window = [pending[2]]
        pending = None
        for item in raw:
          if len(window) == w:
            pending = item
            break
          window.append(item[2])
        if pending is None and len(window) == w:
          pending = next(raw, None)
        if pending is not None:
          nxt, nxt_counts = (epoch, pending[0], pending[1], 0), pending[3]
        else:
          nxt, nxt_counts = (epoch + 1, 0, 0, 0), self._counts_now()
        perm = self._perm(len(window), epoch, start_pos, start_sample)
        for j in range(emitted, len(perm)):
          ids = window[perm[j]]
          if j + 1 == len(perm):
            self._pos, self._pos_counts = nxt, nxt_counts
          else:
            self._pos, self._pos_counts = (epoch, start_pos, start_sample, j + 1), start_counts
          if ids is None:
            continue
          produced_in_epoch += 1
          self.stats["samples"] += 1
          self.stats["tokens"] += int(ids.size)
          yield ids
        emitted = 0
      self._pos, self._pos_counts = (epoch + 1, 0, 0, 0), self._counts_now()
      if produced_in_epoch == 0 and fresh_epoch:
        raise shards_lib.DataError(f"no readable samples in {len(spec.shards)} shard(s), e.g. {spec.shards[0]!r}")
      c = self.cursor
      epoch += 1


def default_seed(seed: Optional[int]) -> int:
  if seed is None:
    return int.from_bytes(os.urandom(4), "little")
  return int(seed)
