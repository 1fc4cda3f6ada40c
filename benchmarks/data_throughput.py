"""Tokens/s of the pre-tokenised data pipeline on one CPU core.

    python benchmarks/data_throughput.py [--samples 8192] [--n_ctx 1024] [--compress] [--no_pack]
                                         [--tf_path] [--corpus pydocs]

Writes a synthetic pre-tokenised corpus (``.npy`` members, ``--shards`` shards,
GPT-2-sized ids) to a temp dir, pins the process to one core
(``sched_setaffinity`` + single-threaded TF), and times
``gpt_plugin.data.pipeline.get_dataset`` (shard reading, shuffling, seqio task,
DecoderFeatureConverter-equivalent packing, batching) over one epoch.  Target:
>= 1M tokens/s.  ``--tf_path`` times the pure tf.data seqio path instead of the
numpy fast path; ``--corpus pydocs`` times the bundled sample corpus.
"""

import argparse
import io
import os
import sys
import tarfile
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_corpus(root, samples, n_ctx, shards, compress, vocab_size):
  import numpy as np

  rng = np.random.default_rng(0)
  per = -(-samples // shards)
  ext = ".tar.gz" if compress else ".tar"
  k = 0
  for s in range(shards):
    with tarfile.open(os.path.join(root, f"bench-{s:06d}{ext}"), "w:gz" if compress else "w") as tar:
      for _ in range(min(per, samples - k)):
        b = io.BytesIO()
        np.save(b, rng.integers(1, vocab_size, n_ctx, dtype=np.int32).astype(np.uint16))
        info = tarfile.TarInfo(f"sample_{k}.npy")
        info.size = b.tell()
        b.seek(0)
        tar.addfile(info, b)
        k += 1
  return os.path.join(root, f"bench-{{000000..{shards - 1:06d}}}{ext}")


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--samples", type=int, default=8192)
  p.add_argument("--n_ctx", type=int, default=1024)
  p.add_argument("--shards", type=int, default=8)
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--compress", action="store_true", help="write .tar.gz shards (default .tar)")
  p.add_argument("--no_pack", action="store_true")
  p.add_argument("--tf_path", action="store_true")
  p.add_argument("--corpus", choices=("synthetic", "pydocs"), default="synthetic")
  p.add_argument("--all_cores", action="store_true")
  a = p.parse_args()
  if not a.all_cores and hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  import tensorflow as tf

  tf.config.threading.set_inter_op_parallelism_threads(1)
  tf.config.threading.set_intra_op_parallelism_threads(1)
  from gpt_plugin.data import pipeline, tasks_lib

  with tempfile.TemporaryDirectory() as tmp:
    if a.corpus == "pydocs":
      import tasks  # noqa: F401

      name, L = "pydocs", 1024
    else:
      t0 = time.time()
      pattern = write_corpus(tmp, a.samples, a.n_ctx, a.shards, a.compress, 50257)
      print(f"wrote {a.samples} samples x {a.n_ctx} tokens in {a.shards} shards ({time.time() - t0:.1f}s)")
      tasks_lib.register_tar_shard_task("bench", train_shards=pattern)
      name, L = "bench", a.n_ctx
    it = pipeline.get_dataset(
      name, {"targets": L}, "train", a.batch_size, pack=not a.no_pack, num_epochs=1, seed=0, fast_path=not a.tf_path
    )
    t0 = time.time()
    tokens = batches = 0
    for b in it:
      tokens += int(b["decoder_loss_weights"].sum())
      batches += 1
    dt = time.time() - t0
  cores = "all cores" if a.all_cores else "1 core"
  path = "tf.data path" if a.tf_path else "numpy fast path"
  print(
    f"{batches} batches, {tokens} tokens in {dt:.2f}s on {cores} ({path}, pack={not a.no_pack}, "
    f"{'gz' if a.compress else 'tar'}): {tokens / dt / 1e6:.2f}M tokens/s"
  )
  print("stats:", it.stats())


if __name__ == "__main__":
  main()
