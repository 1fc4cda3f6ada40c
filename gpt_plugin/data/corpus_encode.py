"""Tokenising stage of the corpus builder: texts in chunks of about equal bytes, one worker pool for every split.

With a `tokenizers` tokenizer the default is to tokenise in this process: `encode_batch` already spreads a chunk
over every core with the library's own thread pool, and worker processes would only add start-up and pickling
(on a 2-core machine, 2 worker processes were slower than 1). SentencePiece and byte tokenizers use a spawn pool of
`num_workers` processes on larger corpora. Workers import numpy and the tokenizer library only (no TensorFlow).
"""

from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing as mp
import os
from collections.abc import Iterator, Sequence

import numpy as np

from gpt_plugin.data.corpus_tokenizer import Encoder, TokenizerSpec

MIN_CHUNK_BYTES = 64 << 10
MAX_CHUNK_BYTES = 4 << 20
POOL_MIN_BYTES = 16 << 20  # below this a pool's start-up costs more than it saves

_ENCODER = None


def available_cpus() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def default_num_workers(spec: TokenizerSpec, total_bytes: int) -> int:
  """1 (this process) for `tokenizers` tokenizers and small corpora, else one worker per core up to 8."""
  cpus = available_cpus()
  if spec.kind == "hf" or cpus <= 2 or total_bytes < POOL_MIN_BYTES:
    return 1
  return min(cpus, 8)


def byte_chunks(texts: Sequence[str], chunk_bytes: int) -> list[tuple[int, int]]:
  """[start, end) ranges of consecutive texts of about `chunk_bytes` UTF-8 bytes each (a longer text alone)."""
  ranges, start, size = [], 0, 0
  for i, t in enumerate(texts):
    size += len(t.encode("utf-8"))
    if size >= chunk_bytes:
      ranges.append((start, i + 1))
      start, size = i + 1, 0
  if start < len(texts):
    ranges.append((start, len(texts)))
  return ranges


def _init_worker(spec: TokenizerSpec) -> None:
  global _ENCODER
  os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
  _ENCODER = Encoder(spec)


def _encode(texts: list[str]) -> list[np.ndarray]:
  return _ENCODER.encode_batch(texts)


def encode_splits(
  split_texts: dict[str, list[str]], spec: TokenizerSpec, *, num_workers: int = 1, chunk_bytes: int = 0
) -> Iterator[tuple[str, list[np.ndarray]]]:
  """Yields `(split, token arrays of a chunk of its texts)` in order: every chunk of the first split, then the next.

  One pool serves every split. `chunk_bytes` 0 sizes chunks to about 8 per worker, within 64 KiB..4 MiB."""
  total = sum(len(t.encode("utf-8")) for texts in split_texts.values() for t in texts)
  if chunk_bytes <= 0:
    chunk_bytes = min(max(total // (8 * max(num_workers, 1)), MIN_CHUNK_BYTES), MAX_CHUNK_BYTES)
  tasks = [(split, texts[a:b]) for split, texts in split_texts.items() for a, b in byte_chunks(texts, chunk_bytes)]
  if num_workers <= 1:
    yield from _encode_here(tasks, Encoder(spec))
    return
  with start_pool(spec, num_workers) as pool:
    for (split, _), ids in zip(tasks, pool.imap(_encode, [t for _, t in tasks])):
      yield split, ids


def _encode_here(tasks, encoder: Encoder) -> Iterator[tuple[str, list[np.ndarray]]]:
  """In this process, one chunk ahead: a thread tokenises the next chunk (the tokenizer releases the GIL) while
  the caller packs and writes this one."""
  ahead: collections.deque = collections.deque()
  with concurrent.futures.ThreadPoolExecutor(1) as thread:
    for split, texts in tasks:
      ahead.append((split, thread.submit(encoder.encode_batch, texts)))
      if len(ahead) > 1:
        split_done, ids = ahead.popleft()
        yield split_done, ids.result()
    while ahead:
      split_done, ids = ahead.popleft()
      yield split_done, ids.result()


def start_pool(spec: TokenizerSpec, num_workers: int):
  """A worker pool as `encode_splits` starts it (for tests that inspect the workers)."""
  return mp.get_context("spawn").Pool(num_workers, initializer=_init_worker, initargs=(spec,))
