r"""Corpus builder: text files / JSONL -> tokenised, packed webdataset tar shards, plus a gin file to train on them.

    python -m gpt_plugin.data.build_corpus \
        --input 'docs/**/*.txt' data.jsonl --output_dir /data/mycorpus --name mycorpus \
        --train_tokenizer 8192 --n_ctx 1024 --validation_fraction 0.05 --seed 1996

Steps (mirroring the original project's CLMDataset, see README.md, "Data"):

1. read documents (progress bar over files): every text file is one document; every JSONL line is one document
   (``--jsonl_field``, default ``text``); directories are walked;
2. optional cleaning (``--clean basic`` or ``--clean gpt1``; default none, lossless);
3. split train/validation across the corpus (``--split_by``: a seeded sample of documents, or the last
   ``--validation_fraction`` of every document; ``auto`` picks), then shuffle each split's documents (seeded;
   ``--no_shuffle_docs`` keeps input order);
4. tokenise (``--tokenizer`` file/dir/``byte``, or ``--train_tokenizer N`` to train a byte-level BPE of N tokens
   on the train split: ``<pad>``=0, ``<|endoftext|>``=1) with `tokenizers` / `sentencepiece` directly (no
   TensorFlow), in chunks of about equal bytes, appending one EOS per document; prints tokens/s at the end;
5. pack the token stream into rows of ``n_ctx`` (progress bar over rows; the last partial row is kept unless
   ``--drop_remainder``); no padding, documents are separated by EOS only;
6. write ``{name}_{split}-%06d.tar[.gz]`` shards (``sample_<i>.npy``, or ``sample_<i>.input_id.pth`` with
   ``--format pth``) rolling over at ``--max_samples_per_shard`` / ``--max_shard_bytes``, an index file per split,
   ``tokenizer.json`` (or ``tokenizer.model``), ``metadata.json`` (tokenizer hash, which input file went to which
   split, sample/token/document counts, shards) and ``{name}.gin`` (the task and its vocabulary, for
   ``--gin_file=runs/quickstart.gin --gin_file=OUT/NAME.gin``).
"""

from __future__ import annotations

import argparse
import gzip
import io
import itertools
import json
import os
import sys
import tarfile
import time
from collections.abc import Iterable, Iterator

import numpy as np

from gpt_plugin import errors
from gpt_plugin.data import corpus_encode, corpus_gin, corpus_input, corpus_split, corpus_tokenizer, pth_reader
from gpt_plugin.data.corpus_input import CLEANERS, clean_basic, clean_gpt1, iter_input_files, read_documents  # noqa: F401
from gpt_plugin.data.corpus_split import split_documents  # noqa: F401
from gpt_plugin.data.corpus_tokenizer import EOS, PAD, train_bpe_tokenizer  # noqa: F401


# ------------------------------------------------------------------------ packing
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


# ------------------------------------------------------------------------ building
def _check_args(args) -> None:
  if args.n_ctx <= 0:
    raise errors.UserError(f"--n_ctx {args.n_ctx}: must be a positive number of tokens per row")
  corpus_tokenizer.check_tokenizer_args(args.tokenizer, args.train_tokenizer)
  _token_dtype(args.dtype)
  if not args.name or not args.name.replace("_", "").replace("-", "").isalnum():
    raise errors.UserError(f"--name {args.name!r}: use letters, digits, '_' and '-' (it names the shards and task)")


def _read_split(args) -> tuple[corpus_input.Documents, corpus_split.Split, int]:
  docs = read_documents(iter_input_files(args.input), args.jsonl_field, progress=not args.quiet)
  raw_bytes = sum(len(d.encode("utf-8")) for d in docs.texts)
  cleaner = CLEANERS[args.clean]
  texts = [cleaner(d) for d in docs.texts] if cleaner is not None else docs.texts
  keep = [i for i, t in enumerate(texts) if t.strip()] if args.drop_empty else range(len(texts))
  if not keep:
    raise corpus_input.CorpusInputError(f"--input {' '.join(args.input)}: every document is empty")
  split = corpus_split.split_corpus(
    [texts[i] for i in keep],
    [docs.file_of[i] for i in keep],
    mode=args.split_by,
    validation_fraction=args.validation_fraction,
    validation_docs=args.validation_docs,
    seed=args.seed,
    shuffle_docs=not args.no_shuffle_docs,
  )
  return docs, split, raw_bytes


def _write_split_shards(args, split: str, token_docs: Iterable[np.ndarray], eos_id: int, dtype, bar) -> dict:
  suffix = ".tar.gz" if not args.no_compress else ".tar"
  pattern = os.path.join(args.output_dir, f"{args.name}_{split}-%06d{suffix}")
  n_samples = n_tokens = 0
  with ShardWriter(
    pattern, max_samples=args.max_samples_per_shard, max_bytes=args.max_shard_bytes, compress=not args.no_compress
  ) as w:
    for row in pack_rows(token_docs, args.n_ctx, eos_id, drop_remainder=args.drop_remainder):
      ext, data = encode_member(row, args.format, dtype)
      w.write(f"sample_{n_samples}", {ext: data})
      n_samples += 1
      n_tokens += row.size
      bar.update(1)
  names = [os.path.basename(p) for p in w.paths]
  index = f"{args.name}_{split}.index"
  with open(os.path.join(args.output_dir, index), "w") as f:
    f.write("".join(n + "\n" for n in names))
  return {
    f"num_{split}_samples": n_samples,
    f"num_{split}_tokens": n_tokens,
    f"{split}_shards": names,
    f"{split}_index": index,
  }


def _tokenise_and_write(args, split: corpus_split.Split, spec: corpus_tokenizer.TokenizerSpec, dtype) -> dict:
  """Tokenises every split through one stream (one pool), packs and writes; prints the stage's tokens/s."""
  from tqdm import tqdm

  texts = {k: v for k, v in split.texts.items() if v}
  total_chars = sum(len(t) for v in texts.values() for t in v)
  workers = args.num_workers or corpus_encode.default_num_workers(spec, total_chars)
  t0 = time.perf_counter()
  stream = corpus_encode.encode_splits(texts, spec, num_workers=workers)
  out = {}
  for name, chunks in itertools.groupby(stream, key=lambda item: item[0]):
    token_docs = (ids for _, chunk in chunks for ids in chunk)
    with tqdm(desc=f"tokenise+pack {name}", unit="row", disable=args.quiet) as bar:
      out.update(_write_split_shards(args, name, token_docs, spec.eos_id, dtype, bar))
    out[f"num_{name}_documents"] = len(texts[name])
  seconds = time.perf_counter() - t0
  tokens = sum(out[f"num_{k}_tokens"] for k in texts)
  print(
    f"tokenised {tokens} tokens ({total_chars / 1e6:.2f}M characters) in {seconds:.2f} s: "
    f"{tokens / max(seconds, 1e-9) / 1e3:.1f}k tokens/s ({workers} process{'es' if workers > 1 else ''})",
    file=sys.stderr,
    flush=True,
  )
  return out


def _token_dtype(name: str, vocab_size: int = 1):
  if name == "auto":
    return np.uint16 if vocab_size <= 65536 else np.int32
  try:
    dtype = np.dtype(name)
  except TypeError:
    dtype = None
  if dtype is None or dtype.kind not in "iu" or np.iinfo(dtype).max < vocab_size - 1:
    raise errors.UserError(f"--dtype {name}: not an integer type that holds ids up to {vocab_size - 1}")
  return dtype


def build(args) -> dict:
  """Builds the corpus described by `args` (see `parse_args`) and returns its metadata.json contents."""
  _check_args(args)
  docs, split, raw_bytes = _read_split(args)
  os.makedirs(args.output_dir, exist_ok=True)
  spec, tokenizer_desc = corpus_tokenizer.prepare_tokenizer(
    args.tokenizer,
    args.output_dir,
    train_docs=split.texts["train"],
    train_size=args.train_tokenizer,
    min_frequency=args.tokenizer_min_frequency,
    show_progress=not args.quiet,
  )
  dtype = _token_dtype(args.dtype, spec.vocab_size)
  tokenizer_desc.update(
    vocab_size=spec.vocab_size,
    padded_vocab_size=corpus_gin.padded_vocab_size(spec.vocab_size),
    eos_id=spec.eos_id,
    pad_id=0,
    sha256=spec.sha256(),
  )
  meta = {
    "corpus": args.name,
    "tokenizer": tokenizer_desc,
    "n_ctx": args.n_ctx,
    "format": args.format,
    "dtype": np.dtype(dtype).name if args.format == "npy" else "int32",
    "seed": args.seed,
    "clean": args.clean,
    "split": {
      "by": split.mode,
      "validation_fraction": args.validation_fraction,
      "validation_docs": args.validation_docs,
    },
    "raw_text_bytes": raw_bytes,
    "input_documents": len(docs.texts),
    "builder": "python -m gpt_plugin.data.build_corpus",
  }
  meta.update(_tokenise_and_write(args, split, spec, dtype))
  index_files = {k: meta.get(f"{k}_index") for k in ("train", "validation")}
  meta["gin"] = os.path.basename(
    corpus_gin.write_corpus_gin(args.name, args.output_dir, spec, index_files, args.format)
  )
  meta["inputs"] = corpus_split.file_table(split, docs.files)
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
  p.add_argument("--name", default="corpus", help="corpus name (shard prefix, task name, NAME.gin)")
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
  p.add_argument(
    "--split_by",
    choices=corpus_split.SPLIT_MODES,
    default="auto",
    help="validation = a seeded sample of documents ('document'), or the last --validation_fraction of every "
    f"document ('within'); 'auto': 'document' when that gives >= {corpus_split.MIN_VALIDATION_DOCS} documents",
  )
  p.add_argument("--validation_fraction", type=float, default=0.05)
  p.add_argument("--validation_docs", type=int, default=None, help="this many whole documents (--split_by document)")
  p.add_argument("--seed", type=int, default=1996)
  p.add_argument("--no_shuffle_docs", action="store_true")
  p.add_argument("--drop_remainder", action="store_true", help="drop the last partial row of each split")
  p.add_argument("--format", choices=("npy", "pth"), default="npy")
  p.add_argument("--dtype", default="auto", help="npy dtype: auto (uint16 if vocab <= 65536), int32, ...")
  p.add_argument("--no_compress", action="store_true", help="write .tar instead of .tar.gz")
  p.add_argument("--max_samples_per_shard", type=int, default=100_000)
  p.add_argument("--max_shard_bytes", type=float, default=1e9)
  p.add_argument(
    "--num_workers",
    type=int,
    default=0,
    help="tokenising processes; 0 (default): this process for tokenizers' tokenizers (their own thread pool uses "
    "every core) and small corpora, else one per core up to 8",
  )
  p.add_argument("--quiet", action="store_true", help="no progress bars")
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  meta = build(args)  # a UserError becomes one ERROR line and exit 2 in cli.run_argparse
  summary = {k: v for k, v in meta.items() if not k.endswith("_shards") and k != "inputs"}
  print(json.dumps(summary, indent=2))
  gin_path = os.path.join(os.path.abspath(args.output_dir), meta["gin"])
  print(
    f"train on it: python -m gpt_plugin.train --gin_file=runs/quickstart.gin --gin_file={gin_path} "
    f'--gin.MODEL_DIR=\\"/tmp/{args.name}_model\\"'
  )
  return 0


if __name__ == "__main__":
  from gpt_plugin import cli  # user errors: one ERROR line, exit 2 (--verbose: traceback)

  sys.exit(cli.run_argparse(main))
