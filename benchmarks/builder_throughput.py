"""Corpus builder end to end against `tokenizers`' own `encode_batch`, same text, same tokenizer, same run.

    python benchmarks/builder_throughput.py [--reps 3] [--copies 1] [--num_workers N] [--builder_args ...]

The text is the bundled `pydocs` corpus itself: its shards are decoded back to the 993 documents in their input
order (byte-level BPE is lossless; 1.96 MB of UTF-8, see gpt_plugin/data/sample_corpus/PROVENANCE.md) and
written as one JSONL file, `--copies` times over (what make_pydocs.py feeds the builder). Contenders, interleaved, `--reps` times each:

* builder: `python -m gpt_plugin.data.build_corpus --input <jsonl> --tokenizer <pydocs tokenizer.json>
  --n_ctx 1024 --quiet` in a fresh process, wall clock from spawn to exit (imports, reading, tokenising,
  packing, gzip tar shards, metadata, corpus gin);
* encode_batch: `tokenizers.Tokenizer.encode_batch(documents)` in this process, already loaded (only the call).

Both are reported in tokens/s of the same token count (tokens of every document + one EOS each), with the
ratio of the medians (builder / encode_batch). `--baseline_repo DIR` adds the builder of another checkout
(before/after in one run).
"""

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(REPO, "gpt_plugin", "data", "sample_corpus")
TOKENIZER = os.path.join(CORPUS, "tokenizer.json")


def load_tokenizer():
  from tokenizers import Tokenizer

  tok = Tokenizer.from_file(TOKENIZER)
  tok.encode_special_tokens = True  # as the builder and the vocabulary do: "<|endoftext|>" in text is text
  return tok


def bundled_documents(tok) -> list[str]:
  """The pydocs documents in their input order, decoded from the bundled shards.

  The shards hold each split's documents shuffled; the builder's seeded split (metadata.json's seed and counts)
  says where each came from."""
  from gpt_plugin.data import corpus_split

  with open(os.path.join(CORPUS, "metadata.json")) as f:
    meta = json.load(f)
  eos = meta["tokenizer"]["eos_id"]
  decoded = {}
  for split in ("train", "validation"):
    stream = []
    for shard in meta[f"{split}_shards"]:
      with tarfile.open(os.path.join(CORPUS, shard)) as tar:
        members = sorted(tar.getmembers(), key=lambda m: int(m.name.split("_")[1].split(".")[0]))
        stream.extend(np.load(io.BytesIO(tar.extractfile(m).read())).astype(np.int64) for m in members)
    ids = np.concatenate(stream)
    docs = np.split(ids, np.flatnonzero(ids == eos) + 1)
    decoded[split] = [tok.decode(d[:-1].tolist(), skip_special_tokens=False) for d in docs if d.size > 1]
  n_val, n = len(decoded["validation"]), meta["input_documents"]
  train, val = corpus_split.split_documents(
    n, validation_fraction=0.0, validation_docs=n_val, seed=meta["seed"], shuffle_docs=True
  )
  out = [""] * n
  for split, idx in (("train", train), ("validation", val)):
    for i, text in zip(idx, decoded[split]):
      out[i] = text
  return out


def run_builder(jsonl: str, out: str, extra: list[str], repo: str = REPO) -> float:
  cmd = [sys.executable, "-m", "gpt_plugin.data.build_corpus", "--input", jsonl, "--output_dir", out]
  cmd += ["--name", "bench", "--tokenizer", TOKENIZER, "--n_ctx", "1024", "--quiet"] + extra
  env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""), TF_CPP_MIN_LOG_LEVEL="3")
  t0 = time.perf_counter()
  # cwd=repo: `python -m` puts the working directory first on sys.path
  subprocess.run(cmd, check=True, env=env, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  return time.perf_counter() - t0


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--reps", type=int, default=3)
  p.add_argument("--copies", type=int, default=1, help="write the bundled text this many times")
  p.add_argument("--num_workers", type=int, default=None, help="passed to the builder (default: its own default)")
  p.add_argument(
    "--baseline_repo",
    default=None,
    help="also time the builder of this checkout (e.g. a `git worktree` of an older commit), interleaved",
  )
  a = p.parse_args()
  tok = load_tokenizer()
  docs = bundled_documents(tok) * a.copies
  n_bytes = sum(len(d.encode("utf-8")) for d in docs)
  n_tokens = sum(len(e.ids) for e in tok.encode_batch(docs, add_special_tokens=False)) + len(docs)
  extra = [] if a.num_workers is None else ["--num_workers", str(a.num_workers)]
  print(f"text: {len(docs)} documents, {n_bytes / 1e6:.2f} MB, {n_tokens} tokens (incl. one EOS per document)")
  print(f"machine: {os.cpu_count()} CPUs; builder flags: {' '.join(extra) or '(defaults)'}")
  t_build, t_enc, t_base = [], [], []
  with tempfile.TemporaryDirectory() as tmp:
    jsonl = os.path.join(tmp, "docs.jsonl")
    with open(jsonl, "w", encoding="utf-8") as f:
      f.writelines(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs)
    for r in range(a.reps):
      t_build.append(run_builder(jsonl, os.path.join(tmp, f"out{r}"), extra))
      if a.baseline_repo:
        t_base.append(run_builder(jsonl, os.path.join(tmp, f"base{r}"), extra, os.path.abspath(a.baseline_repo)))
      t0 = time.perf_counter()
      tok.encode_batch(docs, add_special_tokens=False)
      t_enc.append(time.perf_counter() - t0)
      base = f", baseline builder {t_base[-1]:.2f} s" if t_base else ""
      print(f"rep {r + 1}: builder {t_build[-1]:.2f} s, encode_batch {t_enc[-1]:.2f} s{base}", flush=True)
  b, e = statistics.median(t_build), statistics.median(t_enc)
  print(f"builder (end to end): {n_tokens / b / 1e3:8.1f}k tok/s  (median {b:.2f} s)")
  print(f"encode_batch        : {n_tokens / e / 1e3:8.1f}k tok/s  (median {e:.2f} s)")
  print(f"ratio builder / encode_batch: {e / b:.2f}x")
  if t_base:
    o = statistics.median(t_base)
    print(f"baseline builder    : {n_tokens / o / 1e3:8.1f}k tok/s  (median {o:.2f} s, {a.baseline_repo})")
    print(f"ratio baseline / encode_batch: {e / o:.2f}x; builder / baseline: {o / b:.2f}x")


if __name__ == "__main__":
  main()
