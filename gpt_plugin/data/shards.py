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
from gpt_plugin.errors import UserError

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


class DataError(UserError, ValueError):
  """Bad data in a shard (message names the shard, the sample key and the member)."""


class ShardPatternError(UserError, FileNotFoundError):
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


def _index_path(pattern: str) -> str:
  return pattern[len("index:") :] if pattern.startswith("index:") else pattern


def _read_index_entries(pattern: str) -> list[tuple[str, Optional[int]]]:
  """(url, expected sample count or None) per line; a line is ``url`` or ``url<TAB>num_samples``."""
  path = _index_path(pattern)
  if not _exists(path):
    raise ShardPatternError(f"shard index file {path!r} does not exist")
  with open_file(path, "rb") as f:
    lines = f.read().decode("utf-8").splitlines()
  base = posixpath.dirname(path) if _is_remote(path) else os.path.dirname(os.path.abspath(path))
  entries = []
  for line in lines:
    line = line.strip()
    if not line or line.startswith("#"):
      continue
    count = None
    if "\t" in line:
      line, _, count_text = line.partition("\t")
      line = line.strip()
      try:
        count = int(count_text)
      except ValueError:
        raise ShardPatternError(
          f"shard index file {path!r}: {count_text!r} after the tab is not a sample count"
        ) from None
    if not _is_remote(line) and not os.path.isabs(line):
      line = posixpath.join(base, line) if _is_remote(base) else os.path.join(base, line)
    entries.append((line, count))
  if not entries:
    raise ShardPatternError(f"shard index file {path!r} is empty")
  return entries


def _read_index(pattern: str) -> list[str]:
  return [url for url, _ in _read_index_entries(pattern)]


def index_sample_counts(patterns: Union[str, Sequence[str]]) -> dict[str, int]:
  """``{shard url: number of samples}`` from index files whose lines carry a count (``url<TAB>count``)."""
  if isinstance(patterns, (str, os.PathLike)):
    patterns = [patterns]
  out = {}
  for pattern in map(os.fspath, patterns or ()):
    if _is_index_file(pattern):
      out.update({url: n for url, n in _read_index_entries(pattern) if n is not None})
  return out


def is_builder_corpus(patterns: Union[str, Sequence[str]]) -> bool:
  """True when an index file of ``patterns`` sits next to a ``metadata.json`` written by
  ``gpt_plugin.data.build_corpus`` (its ``"builder"`` entry)."""
  if isinstance(patterns, (str, os.PathLike)):
    patterns = [patterns]
  for pattern in map(os.fspath, patterns or ()):
    if not _is_index_file(pattern) or _is_remote(pattern):
      continue
    meta = os.path.join(os.path.dirname(os.path.abspath(_index_path(pattern))), "metadata.json")
    try:
      with open(meta, "rb") as f:
        if b'"builder"' in f.read():
          return True
    except OSError:
      continue
  return False


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
  dot = name.find(".", name.rfind("/") + 1)
  if dot < 0:
    return name, ""
  return name[:dot], name[dot + 1 :]


_CORRUPT_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError)
# A member larger than this is refused unread (a sample is a document or a row of tokens, never this big).
MAX_MEMBER_BYTES = 256 * 2**20


class _OversizedMember:
  """Stands in for a member that was not read because its header declares more than MAX_MEMBER_BYTES."""

  __slots__ = ("size",)

  def __init__(self, size: int):
    self.size = size


class _WatchedTarInfo(tarfile.TarInfo):
  """Records on the TarFile why header reading stopped: Python's tarfile takes a corrupt, truncated or missing
  header after the first member for the end of the archive and says nothing."""

  @classmethod
  def fromtarfile(cls, tarfile_):
    try:
      return super().fromtarfile(tarfile_)
    except tarfile.HeaderError as e:
      tarfile_.stop_reason = e
      raise


def _early_stop(tar: tarfile.TarFile) -> Optional[str]:
  """Why reading ended before the end of the file, or None if the archive ended properly (end-of-archive zero
  block, and nothing but zeros after it)."""
  reason = getattr(tar, "stop_reason", None)
  if isinstance(reason, tarfile.EmptyHeaderError):
    return "the file ends without an end-of-archive marker (truncated)"
  if reason is not None and not isinstance(reason, tarfile.EOFHeaderError):
    return f"corrupt tar header ({reason})"
  while True:  # after the zero block: only zero padding, else a zeroed header hid the rest
    chunk = tar.fileobj.read(1 << 16)
    if not chunk:
      return None
    if chunk.count(0) != len(chunk):
      return "data after an all-zero header block (a zeroed header ends the archive early)"


def iter_tar_samples(
  url: str,
  *,
  skip: int = 0,
  strict: bool = False,
  stats: Optional[dict] = None,
  opener: Callable = open_file,
  expected_samples: Optional[int] = None,
) -> Iterator[tuple[int, str, Optional[dict]]]:
  """Yields ``(index, key, members)`` for the samples of one tar shard in order.

  ``members`` maps extension to bytes (a member over ``MAX_MEMBER_BYTES`` is not read; ``decode_tokens``
  refuses it).  Samples with ``index < skip`` are yielded with ``members=None`` and their payloads are not kept
  (seek-by-skip).  A corrupt or truncated shard, a corrupt header after the first member (which ``tarfile``
  alone reads as the end of the archive), or a sample count different from ``expected_samples`` (the builder's
  index) logs a warning naming the shard and the last member, counts the lost samples in
  ``stats['skipped_samples']`` (at least one; all the missing ones when the count is known) and
  ``stats['corrupt_shards']``, and ends the shard (``strict``: raises :class:`CorruptSampleError`).
  """
  index = 0
  cur_key, cur = None, {}
  last_member = None
  problem, error = None, None
  try:
    with opener(url, "rb") as raw:
      with tarfile.open(fileobj=raw, mode="r|*", tarinfo=_WatchedTarInfo) as tar:
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
            if info.size > MAX_MEMBER_BYTES:
              cur[ext] = _OversizedMember(info.size)
            else:
              f = tar.extractfile(info)
              cur[ext] = f.read() if f is not None else b""
        problem = _early_stop(tar)
        if cur_key is not None:
          yield index, cur_key, (cur if index >= skip else None)
          index += 1
  except _CORRUPT_ERRORS as e:
    if isinstance(e, (FileNotFoundError, PermissionError)):
      raise
    problem, error = f"{type(e).__name__}: {e}", e
    if cur_key is not None:
      index += 1  # the partial sample is lost
  if problem is None and expected_samples is not None and index != expected_samples:
    problem = f"it has {index} samples but its index says {expected_samples}"
  if problem is None:
    return
  msg = f"shard {url!r} is corrupt or truncated after member {last_member!r} (sample {cur_key!r}): {problem}"
  if strict:
    raise CorruptSampleError(msg) from error
  lost = max(1, expected_samples - index + (error is not None)) if expected_samples is not None else 1
  log.warning("%s; %d sample(s) skipped", msg, lost)
  if stats is not None:
    stats["corrupt_shards"] = stats.get("corrupt_shards", 0) + 1
    stats["skipped_samples"] = stats.get("skipped_samples", 0) + lost


_PICKED: dict[tuple, tuple[str, str]] = {}  # (format, member extensions) -> (format, extension)


def _pick_member(members: dict, fmt: str) -> tuple[str, str]:
  """Returns (format, extension) of the token payload of a sample (memoised per set of extensions)."""
  cache_key = (fmt, *members)
  picked = _PICKED.get(cache_key)
  if picked is None:
    picked = _pick_member_uncached(list(members), fmt)
    if len(_PICKED) < 1024:
      _PICKED[cache_key] = picked
  return picked


def _pick_member_uncached(exts: list, fmt: str) -> tuple[str, str]:
  order = TOKEN_FORMATS if fmt == "auto" else (fmt,)
  for f in order:
    for ext in exts:
      if (f == "pth" and ext.endswith("pth")) or ext == f or ext.endswith("." + f):
        return f, ext
  return "", ""


# Parsed .npy preambles, keyed by the preamble's bytes (magic, version, header): a shard's members share a
# handful of shapes, so each header is parsed once (np.load parses every one with ast.literal_eval).
_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple, int, int]] = {}
_NPY_MAGIC = b"\x93NUMPY"


def _npy_preamble_length(data: bytes) -> int:
  if len(data) < 10 or data[:6] != _NPY_MAGIC:
    raise ValueError("not a .npy file (bad magic)")
  if data[6] == 1:
    return 10 + int.from_bytes(data[8:10], "little")
  if data[6] in (2, 3):
    return 12 + int.from_bytes(data[8:12], "little")
  raise ValueError(f"unsupported .npy format version {data[6]}")


def _parse_npy_preamble(preamble: bytes) -> tuple[np.dtype, tuple, int, int]:
  """(dtype, shape, data offset, element count) of a .npy preamble (np.lib.format's own parser)."""
  fp = io.BytesIO(preamble)
  version = np.lib.format.read_magic(fp)
  read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
  shape, fortran, dtype = read_header(fp)
  if dtype.hasobject:
    raise DataError("has dtype object (pickled); expected integers")
  if fortran and len(shape) > 1:
    shape = shape[::-1]  # a transposed layout; only the rank matters (it is refused)
  return dtype, shape, len(preamble), int(np.prod(shape, dtype=np.int64))


def read_npy(data: bytes) -> np.ndarray:
  """A ``.npy`` member as a read-only array over ``data`` (no pickles). Raises ``ValueError`` for unreadable or
  truncated bytes, ``DataError`` for object arrays. Headers are parsed once per distinct header (shape)."""
  end = _npy_preamble_length(data)
  preamble = data[:end]
  parsed = _NPY_HEADERS.get(preamble)
  if parsed is None:
    if len(data) < end:
      raise ValueError("truncated .npy header")
    parsed = _parse_npy_preamble(preamble)
    if len(_NPY_HEADERS) < 4096:
      _NPY_HEADERS[preamble] = parsed
  dtype, shape, offset, count = parsed
  if len(data) - offset != count * dtype.itemsize:
    raise ValueError(f"{len(data) - offset} data bytes for shape {shape} of {dtype} ({count * dtype.itemsize})")
  arr = np.frombuffer(data, dtype, count, offset)
  return arr if len(shape) == 1 else arr.reshape(shape)


def _read_payload(f: str, ext: str, data, where: str, tokenize, eos_id, append_eos_to_text) -> np.ndarray:
  if isinstance(data, _OversizedMember):
    raise DataError(
      f"{where}: member {ext!r} declares {data.size} bytes, more than the {MAX_MEMBER_BYTES} a sample may have; "
      "refused unread"
    )
  if f == "pth":
    try:
      return pth_reader.read_pth_int_tensor(data)
    except pth_reader.PthCorruptError as e:
      raise CorruptSampleError(f"{where}: member {ext!r} is corrupt: {e}") from None
    except pth_reader.PthFormatError as e:
      raise DataError(f"{where}: member {ext!r} rejected: {e}") from None
  if f == "npy":
    try:
      return read_npy(data)
    except DataError as e:
      raise DataError(f"{where}: member {ext!r} {e}") from None
    except (ValueError, OSError, EOFError, SyntaxError) as e:
      raise CorruptSampleError(f"{where}: member {ext!r} is not a valid .npy: {e}") from None
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
  return np.asarray(ids, dtype=np.int32)


def casts_losslessly_to_int32(dtype: np.dtype) -> bool:
  """Whether every value of ``dtype`` keeps its value as int32 (so ids can be range-checked after the cast)."""
  return dtype.kind in "iu" and (dtype.itemsize < 4 or (dtype.kind == "i" and dtype.itemsize == 4))


def check_id_range(arr: np.ndarray, where: str, vocab_size: Optional[int], embedding_rows: Optional[int]) -> None:
  """DataError naming ``where`` and the id if ``arr`` has an id < 0, >= ``vocab_size`` (the task's vocabulary)
  or >= ``embedding_rows`` (the model's embedding)."""
  if arr.size == 0:
    return
  lo, hi = int(arr.min()), int(arr.max())
  if lo < 0:
    raise DataError(f"{where}: negative token id {lo}")
  if embedding_rows is not None and hi >= embedding_rows and (vocab_size is None or embedding_rows <= vocab_size):
    raise DataError(
      f"{where}: token id {hi} >= the model's embedding rows {embedding_rows} (VOCAB_SIZE); the corpus and the "
      "model use different vocabularies, or VOCAB_SIZE is too small"
    )
  if vocab_size is not None and hi >= vocab_size:
    raise DataError(f"{where}: token id {hi} >= vocabulary size {vocab_size}")
  if hi >= 2**31:
    raise DataError(f"{where}: token id {hi} does not fit int32")


def decode_tokens(
  members: dict,
  url: str,
  key: str,
  *,
  fmt: str = "auto",
  vocab_size: Optional[int] = None,
  embedding_rows: Optional[int] = None,
  tokenize: Optional[Callable[[str], Sequence[int]]] = None,
  eos_id: Optional[int] = None,
  append_eos_to_text: bool = True,
  check_range: bool = True,
) -> np.ndarray:
  """Decodes one sample's token payload to an int32 array.

  Raises :class:`CorruptSampleError` for unreadable payloads, :class:`DataError` (naming shard, key and
  member) for wrong dtype/shape, empty samples, oversized members, ids out of range (the task's
  ``vocab_size`` and the model's ``embedding_rows``) and ``.pth`` pickles that are not a plain integer tensor.
  ``check_range=False`` leaves the range check of ids whose dtype casts losslessly to int32 to the caller (the
  pipeline checks whole batches at once, see ``check_id_range``) and returns such ids in their own dtype (the
  caller casts them when it builds the int32 batch).
  """
  where = f"shard {url!r}, sample {key!r}"
  f, ext = _pick_member(members, fmt)
  if not f:
    raise DataError(f"{where}: no token member (format {fmt!r}); members: {sorted(members)}")
  arr = _read_payload(f, ext, members[ext], where, tokenize, eos_id, append_eos_to_text)
  if arr.dtype.kind not in "iu":
    raise DataError(f"{where}: member {ext!r} has dtype {arr.dtype}; expected integer token ids")
  if arr.ndim != 1:
    raise DataError(f"{where}: member {ext!r} has shape {arr.shape}; expected 1-D token ids")
  if arr.size == 0:
    raise DataError(f"{where}: empty sample (member {ext!r})")
  if not check_range and casts_losslessly_to_int32(arr.dtype):
    return arr
  check_id_range(arr, f"{where}, member {ext!r}", vocab_size, embedding_rows)
  return arr.astype(np.int32, copy=False)
