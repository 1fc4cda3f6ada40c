"""Tokens/s of the pre-tokenised data pipeline against a raw tar reader, on one CPU core, in one run.

    python benchmarks/data_throughput.py [--samples 8192] [--n_ctx 1024] [--reps 3] [--compress] [--no_pack]
                                         [--tf_path] [--corpus pydocs]

Writes a synthetic pre-tokenised corpus (``.npy`` members, ``--shards`` shards,
GPT-2-sized ids) to a temp dir, pins the process to one core
(``sched_setaffinity`` + single-threaded TF), and times, interleaved, ``--reps`` times each:

* ``raw``: ``tarfile`` stream + ``np.frombuffer`` per member (header length from the npy preamble,
  dtype from the first member), summing token counts: the floor any reader pays;
* ``get_dataset``: ``gpt_plugin.data.pipeline.get_dataset`` over one epoch (shard reading,
  shuffling, validation, DecoderFeatureConverter-equivalent rows, batching).

Prints each rep, the medians and the ratio ``get_dataset / raw`` (issue 16's goal: >= 0.6), and the median of
the per-rep ratios (each rep runs the two back to back, so on a shared machine that one is the steadier).
``--tf_path`` times the pure tf.data seqio path instead of the numpy fast path; ``--corpus pydocs``
times the bundled sample corpus.
"""

import argparse
import io
import os
import statistics
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


def raw_reader_tokens(urls) -> int:
  """The contender: tarfile stream + np.frombuffer, nothing else."""
  import numpy as np

  tokens, dtype = 0, None
  for url in urls:
    with tarfile.open(url, "r|*") as tar:
      for info in tar:
        data = tar.extractfile(info).read()
        header_len = int.from_bytes(data[8:10], "little")
        if dtype is None:
          dtype = np.lib.format.read_array_header_1_0(io.BytesIO(data[8:]))[2]
          dtype = np.dtype(dtype)
        tokens += np.frombuffer(data, dtype, offset=10 + header_len).size
  return tokens


def pipeline_tokens(name, L, a) -> int:
  from gpt_plugin.data import pipeline

  it = pipeline.get_dataset(
    name, {"targets": L}, "train", a.batch_size, pack=not a.no_pack, num_epochs=1, seed=0, fast_path=not a.tf_path
  )
  tokens = 0
  for b in it:
    tokens += int(b["decoder_loss_weights"].sum())
  return tokens


def timed(fn, *args):
  t0 = time.perf_counter()
  n = fn(*args)
  return n, time.perf_counter() - t0


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--samples", type=int, default=8192)
  p.add_argument("--n_ctx", type=int, default=1024)
  p.add_argument("--shards", type=int, default=8)
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--reps", type=int, default=3)
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
  from gpt_plugin.data import tasks_lib

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
    urls = tasks_lib.task_source(name).list_shards("train")
    raw_times, pipe_times = [], []
    for rep in range(a.reps):
      raw_n, raw_dt = timed(raw_reader_tokens, urls)
      pipe_n, pipe_dt = timed(pipeline_tokens, name, L, a)
      raw_times.append(raw_n / raw_dt)
      pipe_times.append(pipe_n / pipe_dt)
      print(
        f"rep {rep}: raw {raw_n} tokens in {raw_dt:.2f}s ({raw_times[-1] / 1e6:.2f}M/s); "
        f"get_dataset {pipe_n} tokens in {pipe_dt:.2f}s ({pipe_times[-1] / 1e6:.2f}M/s)"
      )
  cores = "all cores" if a.all_cores else "1 core"
  path = "tf.data path" if a.tf_path else "numpy fast path"
  raw_med, pipe_med = statistics.median(raw_times), statistics.median(pipe_times)
  shards_kind = "pydocs .tar.gz" if a.corpus == "pydocs" else ("gz" if a.compress else "tar")
  print(
    f"median of {a.reps} on {cores} ({path}, pack={not a.no_pack}, {shards_kind}): "
    f"raw tarfile+np.frombuffer {raw_med / 1e6:.2f}M tokens/s, get_dataset {pipe_med / 1e6:.2f}M tokens/s, "
    f"ratio {pipe_med / raw_med:.2f}x (goal >= 0.6x); median of the per-rep ratios "
    f"{statistics.median(p / r for p, r in zip(pipe_times, raw_times)):.2f}x"
  )


if __name__ == "__main__":
  main()
