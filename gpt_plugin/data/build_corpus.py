r"""Corpus builder: text files / JSONL -> tokenised, packed webdataset tar shards.

    python -m gpt_plugin.data.build_corpus \
        --input 'docs/**/*.txt' data.jsonl --output_dir /data/mycorpus --name mycorpus \
        --train_tokenizer 8192 --n_ctx 1024 --validation_fraction 0.05 --seed 1996

Steps (mirroring the original project's CLMDataset, see README.md, "Data"):

1. read documents: every text file is one document; every JSONL line is one
   document (``--jsonl_field``, default ``text``); directories are walked;
2. optional cleaning (``--clean basic`` or ``--clean gpt1``; default none, lossless);
3. split train/validation *by document* with a seeded permutation, then shuffle the
   documents of each split (seeded; ``--no_shuffle_docs`` keeps input order);
4. tokenise (``--tokenizer`` file/dir/``byte``, or ``--train_tokenizer N`` to train
   a byte-level BPE of N tokens on the train split: ``<pad>``=0, ``<|endoftext|>``=1)
   with a multiprocessing pool (``--num_workers``), appending one EOS per document;
5. pack the token stream into rows of ``n_ctx`` (the last partial row is kept unless
   ``--drop_remainder``); no padding, documents are separated by EOS only;
6. write ``{name}_{split}-%06d.tar[.gz]`` shards (``sample_<i>.npy``, or
   ``sample_<i>.input_id.pth`` with ``--format pth``) rolling over at
   ``--max_samples_per_shard`` / ``--max_shard_bytes``, an index file per split and
   ``metadata.json`` (corpus, tokenizer, n_ctx, sample/token/document counts, shards).
"""

from __future__ import annotations

import argparse
import glob
import gzip
import io
import json
import multiprocessing as mp
import os
import re
import shutil
import sys
import tarfile
import unicodedata
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from gpt_plugin.data import pth_reader

TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst", ".rst.txt")
PAD, EOS = "<pad>", "<|endoftext|>"


# ------------------------------------------------------------------------ reading
def iter_input_files(inputs: Sequence[str]) -> list[str]:
  files: list[str] = []
  for spec in inputs:
    if os.path.isdir(spec):
      for root, _dirs, names in sorted(os.walk(spec)):
        for n in sorted(names):
          if n.endswith(TEXT_SUFFIXES + (".jsonl", ".json")):
            files.append(os.path.join(root, n))
    else:
      matched = sorted(glob.glob(spec, recursive=True))
      if not matched:
        raise FileNotFoundError(f"input {spec!r} matches no files")
      files.extend(m for m in matched if os.path.isfile(m))
  if not files:
    raise FileNotFoundError(f"no input files in {list(inputs)}")
  return files


def read_documents(files: Sequence[str], jsonl_field: str = "text") -> list[str]:
  docs: list[str] = []
  for path in files:
    opener = gzip.open if path.endswith(".gz") else open
    name = path[:-3] if path.endswith(".gz") else path
    with opener(path, "rt", encoding="utf-8", newline="") as f:
      if name.endswith((".jsonl", ".json")):
        for lineno, line in enumerate(f, 1):
          if not line.strip():
            continue
          obj = json.loads(line)
          if isinstance(obj, str):
            docs.append(obj)
          elif isinstance(obj, dict) and isinstance(obj.get(jsonl_field), str):
            docs.append(obj[jsonl_field])
          else:
            raise ValueError(f"{path}:{lineno}: no string field {jsonl_field!r}")
      else:
        docs.append(f.read())
  return docs


# ----------------------------------------------------------------------- cleaning
def clean_basic(text: str) -> str:
  """NFC, \\r\\n -> \\n, trailing spaces removed, >2 blank lines collapsed, stripped."""
  text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
  text = "\n".join(line.rstrip() for line in text.split("\n"))
  text = re.sub(r"\n{3,}", "\n\n", text)
  return text.strip()


def clean_gpt1(text: str) -> str:
  """The original project's cleaning: ftfy (if installed) + GPT-1 ``text_standardize``."""
  try:
    import ftfy

    text = ftfy.fix_text(text)
  except ImportError:
    pass
  text = text.replace("—", "-").replace("–", "-").replace("―", "-")
  text = text.replace("…", "...").replace("´", "'")
  text = re.sub(r"""(-+|~+|!+|"+|;+|\?+|\++|,+|\)+|\(+|\\+|\/+|\*+|\[+|\]+|}+|{+|\|+|_+)""", r" \1 ", text)
  text = re.sub(r"\s*\n\s*", " \n ", text)
  text = re.sub(r"[^\S\n]+", " ", text)
  return text.strip()


CLEANERS = {"none": None, "basic": clean_basic, "gpt1": clean_gpt1}


# ---------------------------------------------------------------------- tokenising
def train_bpe_tokenizer(docs: Iterable[str], vocab_size: int, *, min_frequency: int = 2, show_progress: bool = False):
  """Byte-level BPE (GPT-2 style pre-tokenisation) with ``<pad>``=0, ``<|endoftext|>``=1."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    min_frequency=min_frequency,
    special_tokens=[PAD, EOS],
    show_progress=show_progress,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
  )
  tok.train_from_iterator(docs, trainer=trainer)
  return tok


_WORKER_VOCAB = None


def _init_worker(vocab_spec):
  global _WORKER_VOCAB
  os.environ["TOKENIZERS_PARALLELISM"] = "false"
  from gpt_plugin.data import vocabularies

  _WORKER_VOCAB = vocabularies.get_vocabulary(vocab_spec)


def _encode_chunk(docs: Sequence[str]) -> list[np.ndarray]:
  vocab = _WORKER_VOCAB
  if hasattr(vocab, "encode_batch"):
    ids = vocab.encode_batch(docs)
  else:
    ids = [vocab.encode(d) for d in docs]
  return [np.asarray(x, dtype=np.int32) for x in ids]


def encode_documents(
  docs: Sequence[str],
  vocab_spec,
  *,
  num_workers: int = 1,
  chunk: int = 64,
  desc: str = "tokenise",
  progress: bool = True,
) -> Iterator[np.ndarray]:
  """Yields token arrays in document order (no EOS)."""
  from tqdm import tqdm

  chunks = [docs[i : i + chunk] for i in range(0, len(docs), chunk)]
  bar = tqdm(total=len(docs), desc=desc, unit="doc", disable=not progress)
  if num_workers <= 1:
    _init_worker(vocab_spec)
    results = map(_encode_chunk, chunks)
    pool = None
  else:
    ctx = mp.get_context("spawn")
    pool = ctx.Pool(num_workers, initializer=_init_worker, initargs=(vocab_spec,))
    results = pool.imap(_encode_chunk, chunks)
  try:
    for c, res in zip(chunks, results):
      bar.update(len(c))
      yield from res
  finally:
    bar.close()
    if pool is not None:
      pool.close()
      pool.join()


def pack_rows(
  token_docs: Iterable[np.ndarray], n_ctx: int, eos_id: int, *, drop_remainder: bool = False
) -> Iterator[np.ndarray]:
  """Concatenates documents (each followed by one EOS) and cuts rows of ``n_ctx``."""
  buf: list[np.ndarray] = []
  size = 0
  eos = np.asarray([eos_id], np.int32)
  for ids in token_docs:
    buf.append(ids)
    buf.append(eos)
    size += ids.size + 1
    if size >= n_ctx:
      flat = np.concatenate(buf)
      n_full = flat.size // n_ctx
      for r in range(n_full):
        yield flat[r * n_ctx : (r + 1) * n_ctx]
      rest = flat[n_full * n_ctx :]
      buf, size = ([rest] if rest.size else []), rest.size
  if size and not drop_remainder:
    yield np.concatenate(buf)


# ------------------------------------------------------------------------ writing
class ShardWriter:
  """Deterministic webdataset tar writer with count/size rollover."""

  def __init__(self, pattern: str, *, max_samples: int = 100_000, max_bytes: float = 1e9, compress: bool = True):
    self.pattern, self.max_samples, self.max_bytes, self.compress = pattern, max_samples, max_bytes, compress
    self.paths: list[str] = []
    self._tar = self._gz = self._raw = None
    self._count = self._bytes = 0

  def _open(self):
    path = self.pattern % len(self.paths)
    self.paths.append(path)
    self._raw = open(path, "wb")
    if self.compress:
      self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0)
      self._tar = tarfile.open(fileobj=self._gz, mode="w", format=tarfile.USTAR_FORMAT)
    else:
      self._tar = tarfile.open(fileobj=self._raw, mode="w", format=tarfile.USTAR_FORMAT)
    self._count = self._bytes = 0

  def close(self):
    if self._tar is not None:
      self._tar.close()
      if self._gz is not None:
        self._gz.close()
      self._raw.close()
      self._tar = self._gz = self._raw = None

  def write(self, key: str, members: dict):
    size = sum(len(v) for v in members.values())
    if self._tar is None or self._count >= self.max_samples or (self._count and self._bytes + size > self.max_bytes):
      self.close()
      self._open()
    for ext, data in members.items():
      info = tarfile.TarInfo(f"{key}.{ext}")
      info.size, info.mtime, info.mode = len(data), 0, 0o644
      self._tar.addfile(info, io.BytesIO(data))
    self._count += 1
    self._bytes += size + 512 * (len(members) + 1)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def encode_member(ids: np.ndarray, fmt: str, dtype) -> tuple[str, bytes]:
  if fmt == "pth":
    return "input_id.pth", pth_reader.write_pth_int_tensor(ids.astype(np.int32))
  b = io.BytesIO()
  np.save(b, ids.astype(dtype), allow_pickle=False)
  return "npy", b.getvalue()


# --------------------------------------------------------------------------- main
def split_documents(
  n_docs: int, *, validation_fraction: float, validation_docs: Optional[int], seed: int, shuffle_docs: bool
) -> tuple[list[int], list[int]]:
  rng = np.random.default_rng(seed)
  perm = rng.permutation(n_docs)
  n_val = validation_docs if validation_docs is not None else int(round(n_docs * validation_fraction))
  n_val = min(max(n_val, 0), max(n_docs - 1, 0))
  val, train = perm[:n_val], perm[n_val:]
  if not shuffle_docs:
    val, train = np.sort(val), np.sort(train)
  return train.tolist(), val.tolist()


def build(args) -> dict:
  from gpt_plugin.data import vocabularies

  os.makedirs(args.output_dir, exist_ok=True)
  files = iter_input_files(args.input)
  docs = read_documents(files, args.jsonl_field)
  raw_bytes = sum(len(d.encode("utf-8")) for d in docs)
  cleaner = CLEANERS[args.clean]
  if cleaner is not None:
    docs = [cleaner(d) for d in docs]
  n_in = len(docs)
  docs = [d for d in docs if d.strip()] if args.drop_empty else docs
  train_idx, val_idx = split_documents(
    len(docs),
    validation_fraction=args.validation_fraction,
    validation_docs=args.validation_docs,
    seed=args.seed,
    shuffle_docs=not args.no_shuffle_docs,
  )
  splits = {"train": [docs[i] for i in train_idx], "validation": [docs[i] for i in val_idx]}

  # tokenizer
  tok_path = os.path.join(args.output_dir, "tokenizer.json")
  if args.train_tokenizer:
    tok = train_bpe_tokenizer(
      splits["train"], args.train_tokenizer, min_frequency=args.tokenizer_min_frequency, show_progress=not args.quiet
    )
    tok.save(tok_path)
    vocab_spec, tokenizer_desc = (
      tok_path,
      {"type": "byte-level BPE (tokenizers)", "file": "tokenizer.json", "trained_on": "train split"},
    )
  elif args.tokenizer:
    vocab_spec = args.tokenizer
    if args.tokenizer.endswith(".json") and os.path.abspath(args.tokenizer) != os.path.abspath(tok_path):
      shutil.copyfile(args.tokenizer, tok_path)
      vocab_spec = tok_path
    tokenizer_desc = {"type": "given", "source": args.tokenizer}
  else:
    raise SystemExit("give --tokenizer or --train_tokenizer")
  vocab = vocabularies.get_vocabulary(vocab_spec)
  eos_id = vocab.eos_id
  if eos_id is None:
    raise SystemExit("the tokenizer has no EOS token")
  vocab_size = int(vocab.vocab_size)
  dtype = (
    np.uint16
    if (args.dtype == "auto" and vocab_size <= 65536)
    else (np.int32 if args.dtype == "auto" else np.dtype(args.dtype))
  )
  tokenizer_desc.update(vocab_size=vocab_size, eos_id=int(eos_id), pad_id=0)

  meta = {
    "corpus": args.name,
    "tokenizer": tokenizer_desc,
    "n_ctx": args.n_ctx,
    "format": args.format,
    "dtype": np.dtype(dtype).name if args.format == "npy" else "int32",
    "seed": args.seed,
    "clean": args.clean,
    "raw_text_bytes": raw_bytes,
    "input_documents": n_in,
    "builder": "python -m gpt_plugin.data.build_corpus",
  }
  suffix = ".tar.gz" if not args.no_compress else ".tar"
  for split, split_docs in splits.items():
    if not split_docs:
      continue
    pattern = os.path.join(args.output_dir, f"{args.name}_{split}-%06d{suffix}")
    n_samples = n_tokens = 0
    token_docs = encode_documents(
      split_docs, vocab_spec, num_workers=args.num_workers, desc=split, progress=not args.quiet
    )
    with ShardWriter(
      pattern, max_samples=args.max_samples_per_shard, max_bytes=args.max_shard_bytes, compress=not args.no_compress
    ) as w:
      for row in pack_rows(token_docs, args.n_ctx, eos_id, drop_remainder=args.drop_remainder):
        ext, data = encode_member(row, args.format, dtype)
        w.write(f"sample_{n_samples}", {ext: data})
        n_samples += 1
        n_tokens += row.size
    names = [os.path.basename(p) for p in w.paths]
    index = os.path.join(args.output_dir, f"{args.name}_{split}.index")
    with open(index, "w") as f:
      f.write("".join(n + "\n" for n in names))
    meta.update(
      {
        f"num_{split}_samples": n_samples,
        f"num_{split}_tokens": n_tokens,
        f"num_{split}_documents": len(split_docs),
        f"{split}_shards": names,
        f"{split}_index": os.path.basename(index),
      }
    )
  with open(os.path.join(args.output_dir, "metadata.json"), "w") as f:
    json.dump(meta, f, indent=2)
    f.write("\n")
  return meta


def parse_args(argv=None):
  p = argparse.ArgumentParser(
    prog="python -m gpt_plugin.data.build_corpus",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("--input", nargs="+", required=True, help="text files, JSONL files, directories or globs")
  p.add_argument("--output_dir", required=True)
  p.add_argument("--name", default="corpus", help="corpus name (shard prefix, metadata 'corpus')")
  p.add_argument("--jsonl_field", default="text")
  p.add_argument("--clean", choices=sorted(CLEANERS), default="none")
  p.add_argument("--drop_empty", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--tokenizer", help="tokenizer.json, directory (vocab.json+merges.txt), .model, or 'byte'")
  p.add_argument(
    "--train_tokenizer",
    type=int,
    metavar="VOCAB_SIZE",
    help="train a byte-level BPE with this many tokens on the train split",
  )
  p.add_argument("--tokenizer_min_frequency", type=int, default=2)
  p.add_argument("--n_ctx", type=int, default=1024)
  p.add_argument("--validation_fraction", type=float, default=0.05)
  p.add_argument("--validation_docs", type=int, default=None)
  p.add_argument("--seed", type=int, default=1996)
  p.add_argument("--no_shuffle_docs", action="store_true")
  p.add_argument("--drop_remainder", action="store_true", help="drop the last partial row of each split")
  p.add_argument("--format", choices=("npy", "pth"), default="npy")
  p.add_argument("--dtype", default="auto", help="npy dtype: auto (uint16 if vocab <= 65536), int32, ...")
  p.add_argument("--no_compress", action="store_true", help="write .tar instead of .tar.gz")
  p.add_argument("--max_samples_per_shard", type=int, default=100_000)
  p.add_argument("--max_shard_bytes", type=float, default=1e9)
  p.add_argument("--num_workers", type=int, default=max(1, min(8, (os.cpu_count() or 1))))
  p.add_argument("--quiet", action="store_true")
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  meta = build(args)
  summary = {k: v for k, v in meta.items() if not k.endswith("_shards")}
  print(json.dumps(summary, indent=2))
  return 0


if __name__ == "__main__":
  from gpt_plugin import cli  # user errors: one ERROR line, exit 2 (--verbose: traceback)

  sys.exit(cli.run_argparse(main))
