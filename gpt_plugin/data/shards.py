"""Webdataset tar shards: pattern expansion, file access, sample iteration, decoding.

A shard is a (optionally gzip-compressed) tar whose members are grouped into
samples by key, webdataset style: ``dir/sample_7.input_id.pth`` has key
``dir/sample_7`` and extension ``input_id.pth``.  Consecutive members with the
same key form one sample.  Token payloads:

* ``*.pth`` (``input_id.pth`` in the original project): ``torch.save``d 1-D integer
  tensor, read by :mod:`gpt_plugin.data.pth_reader` (no torch, no pickle execution);
* ``npy``: a 1-D integer ``.npy`` array (``allow_pickle=False``);
* ``txt``: UTF-8 text, tokenised by the task's vocabulary.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import posixpath
import tarfile
import zlib
from typing import Callable, Iterator, Optional, Sequence, Union

import braceexpand
import numpy as np

from gpt_plugin.data import pth_reader

log = logging.getLogger(__name__)

__all__ = [
  "DataError",
  "ShardPatternError",
  "CorruptSampleError",
  "expand_shard_patterns",
  "open_file",
  "iter_tar_samples",
  "decode_tokens",
  "TOKEN_FORMATS",
]

INDEX_SUFFIXES = (".index", ".idx", ".list", ".txt")
TOKEN_FORMATS = ("pth", "npy", "txt")
_REMOTE_PREFIXES = ("gs://", "s3://", "hdfs://", "http://", "https://", "az://", "abfs://")


class DataError(ValueError):
  """Bad data in a shard (message names the shard and the sample key)."""


class ShardPatternError(FileNotFoundError):
  """A shard pattern or index file that yields no (existing) shards."""


class CorruptSampleError(DataError):
  """A sample or shard that cannot be read (truncated / corrupt)."""


def _is_remote(path: str) -> bool:
  return path.startswith(_REMOTE_PREFIXES)


def _exists(path: str) -> bool:
  if not _is_remote(path):
    return os.path.exists(path)
  try:
    import tensorflow as tf

    return tf.io.gfile.exists(path)
  except ImportError:
    import fsspec

    fs, p = fsspec.core.url_to_fs(path)
    return fs.exists(p)


def _glob(pattern: str) -> list[str]:
  if not _is_remote(pattern):
    import glob

    return sorted(glob.glob(pattern))
  try:
    import tensorflow as tf

    return sorted(tf.io.gfile.glob(pattern))
  except ImportError:
    import fsspec

    fs, p = fsspec.core.url_to_fs(pattern)
    proto = pattern.split("://", 1)[0]
    return sorted(f"{proto}://{x}" for x in fs.glob(p))


def open_file(path: str, mode: str = "rb"):
  """Opens a local path with ``open`` and remote URLs with tf.io.gfile (or fsspec)."""
  if not _is_remote(path):
    return open(path, mode)
  try:
    import tensorflow as tf

    return tf.io.gfile.GFile(path, mode)
  except ImportError:
    import fsspec

    return fsspec.open(path, mode).open()


def _is_index_file(pattern: str) -> bool:
  return pattern.startswith("index:") or pattern.endswith(INDEX_SUFFIXES)


def _read_index(pattern: str) -> list[str]:
  path = pattern[len("index:") :] if pattern.startswith("index:") else pattern
  if not _exists(path):
    raise ShardPatternError(f"shard index file {path!r} does not exist")
  with open_file(path, "rb") as f:
    lines = f.read().decode("utf-8").splitlines()
  base = posixpath.dirname(path) if _is_remote(path) else os.path.dirname(os.path.abspath(path))
  urls = []
  for line in lines:
    line = line.strip()
    if not line or line.startswith("#"):
      continue
    if not _is_remote(line) and not os.path.isabs(line):
      line = posixpath.join(base, line) if _is_remote(base) else os.path.join(base, line)
    urls.append(line)
  if not urls:
    raise ShardPatternError(f"shard index file {path!r} is empty")
  return urls


def expand_shard_patterns(patterns: Union[str, Sequence[str]], *, check_exists: bool = True) -> list[str]:
  """Expands shard patterns into a list of shard URLs (order preserved).

  Each pattern is a brace pattern (``books_train-{000000..000013}.tar.gz``), a
  glob (``shards/*.tar``), or an index file with one URL per line (a path ending
  in ``.index``/``.idx``/``.list``/``.txt``, or prefixed ``index:``; relative
  lines are relative to the index file).  Raises :class:`ShardPatternError`
  naming the pattern if it matches nothing or names shards that do not exist.
  """
  if isinstance(patterns, (str, os.PathLike)):
    patterns = [patterns]
  if patterns is None or len(patterns) == 0:
    raise ShardPatternError("no shard patterns given")
  out: list[str] = []
  for pattern in patterns:
    pattern = os.fspath(pattern)
    if _is_index_file(pattern):
      urls = _read_index(pattern)
    else:
      urls = []
      for p in braceexpand.braceexpand(pattern):
        if any(c in p for c in "*?["):
          matched = _glob(p)
          if not matched:
            raise ShardPatternError(f"shard pattern {pattern!r} matches no files")
          urls.extend(matched)
        else:
          urls.append(p)
    if check_exists:
      missing = [u for u in urls if not _exists(u)]
      if missing:
        if len(missing) == len(urls):
          raise ShardPatternError(f"shard pattern {pattern!r} matches no files (e.g. {missing[0]!r} does not exist)")
        raise ShardPatternError(
          f"shard pattern {pattern!r}: {len(missing)} of {len(urls)} shards do not exist, e.g. {missing[:3]}"
        )
    out.extend(urls)
  if not out:
    raise ShardPatternError(f"shard patterns {list(patterns)!r} match no files")
  return out


def _split_key(name: str) -> tuple[str, str]:
  """webdataset's key/extension split: extension starts at the first dot of the basename."""
  d, base = posixpath.split(name)
  if "." not in base:
    return name, ""
  stem, ext = base.split(".", 1)
  return (posixpath.join(d, stem) if d else stem), ext


_CORRUPT_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError)


def iter_tar_samples(
  url: str, *, skip: int = 0, strict: bool = False, stats: Optional[dict] = None, opener: Callable = open_file
) -> Iterator[tuple[int, str, Optional[dict]]]:
  """Yields ``(index, key, members)`` for the samples of one tar shard in order.

  ``members`` maps extension to bytes.  Samples with ``index < skip`` are yielded
  with ``members=None`` and their payloads are not kept (seek-by-skip).  A
  corrupt/truncated shard logs a warning naming the shard and the last member,
  counts the partial sample in ``stats['skipped_samples']`` and
  ``stats['corrupt_shards']`` and ends the shard (``strict``: raises
  :class:`CorruptSampleError`).
  """
  index = 0
  cur_key, cur = None, {}
  last_member = None
  try:
    with opener(url, "rb") as raw:
      with tarfile.open(fileobj=raw, mode="r|*") as tar:
        for info in tar:
          if not info.isfile():
            continue
          key, ext = _split_key(info.name)
          last_member = info.name
          if cur_key is not None and key != cur_key:
            yield index, cur_key, (cur if index >= skip else None)
            index += 1
            cur = {}
          cur_key = key
          if index >= skip:
            f = tar.extractfile(info)
            cur[ext] = f.read() if f is not None else b""
        if cur_key is not None:
          yield index, cur_key, (cur if index >= skip else None)
  except _CORRUPT_ERRORS as e:
    if isinstance(e, (FileNotFoundError, PermissionError)):
      raise
    msg = (
      f"shard {url!r} is corrupt or truncated after member {last_member!r} "
      f"(sample {cur_key!r} dropped): {type(e).__name__}: {e}"
    )
    if strict:
      raise CorruptSampleError(msg) from e
    log.warning(msg)
    if stats is not None:
      stats["corrupt_shards"] = stats.get("corrupt_shards", 0) + 1
      if cur_key is not None:
        stats["skipped_samples"] = stats.get("skipped_samples", 0) + 1


def _pick_member(members: dict, fmt: str) -> tuple[str, str]:
  """Returns (format, extension) of the token payload of a sample."""
  exts = list(members)
  order = TOKEN_FORMATS if fmt == "auto" else (fmt,)
  for f in order:
    for ext in exts:
      if (f == "pth" and ext.endswith("pth")) or ext == f or ext.endswith("." + f):
        return f, ext
  return "", ""


def decode_tokens(
  members: dict,
  *,
  url: str,
  key: str,
  fmt: str = "auto",
  vocab_size: Optional[int] = None,
  tokenize: Optional[Callable[[str], Sequence[int]]] = None,
  eos_id: Optional[int] = None,
  append_eos_to_text: bool = True,
) -> np.ndarray:
  """Decodes one sample's token payload to an int32 array.

  Raises :class:`CorruptSampleError` for unreadable payloads, :class:`DataError`
  (naming shard and key) for wrong dtype/shape, empty samples, ids out of range
  and ``.pth`` pickles that are not a plain integer tensor.
  """
  where = f"shard {url!r}, sample {key!r}"
  f, ext = _pick_member(members, fmt)
  if not f:
    raise DataError(f"{where}: no token member (format {fmt!r}); members: {sorted(members)}")
  data = members[ext]
  if f == "pth":
    try:
      arr = pth_reader.read_pth_int_tensor(data)
    except pth_reader.PthCorruptError as e:
      raise CorruptSampleError(f"{where}: member {ext!r} is corrupt: {e}") from None
    except pth_reader.PthFormatError as e:
      raise DataError(f"{where}: member {ext!r} rejected: {e}") from None
  elif f == "npy":
    try:
      arr = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:
      if "pickle" in str(e).lower() or "object" in str(e).lower():
        raise DataError(f"{where}: member {ext!r} has dtype object (pickled); expected integers") from None
      raise CorruptSampleError(f"{where}: member {ext!r} is not a valid .npy: {e}") from None
    except (OSError, EOFError) as e:
      raise CorruptSampleError(f"{where}: member {ext!r} is not a valid .npy: {e}") from None
  else:
    if tokenize is None:
      raise DataError(f"{where}: text member {ext!r} but the task has no vocabulary to tokenise it")
    try:
      text = data.decode("utf-8")
    except UnicodeDecodeError as e:
      raise CorruptSampleError(f"{where}: member {ext!r} is not UTF-8: {e}") from None
    if not text:
      raise DataError(f"{where}: empty sample (member {ext!r})")
    ids = list(tokenize(text))
    if append_eos_to_text and eos_id is not None:
      ids.append(eos_id)
    arr = np.asarray(ids, dtype=np.int32)
  if arr.dtype.kind not in "iu":
    raise DataError(f"{where}: member {ext!r} has dtype {arr.dtype}; expected integer token ids")
  if arr.ndim != 1:
    raise DataError(f"{where}: member {ext!r} has shape {arr.shape}; expected 1-D token ids")
  if arr.size == 0:
    raise DataError(f"{where}: empty sample (member {ext!r})")
  if vocab_size is not None or arr.dtype.kind == "i":
    hi, lo = int(arr.max()), int(arr.min())
    if lo < 0:
      raise DataError(f"{where}: negative token id {lo}")
    if vocab_size is not None and hi >= vocab_size:
      raise DataError(f"{where}: token id {hi} >= vocabulary size {vocab_size}")
  elif arr.dtype.itemsize > 4 and int(arr.max()) >= 2**31:
    raise DataError(f"{where}: token id {int(arr.max())} does not fit int32")
  return arr.astype(np.int32, copy=False)
