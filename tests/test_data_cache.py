"""seqio's own cache job (Apache Beam, DirectRunner) on a tar-shard task, read back with use_cached, and
`gpt_plugin.train`'s gin run reading the cache through SEQIO_CACHE_DIRS."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
  importlib.util.find_spec("apache_beam") is None, reason="apache-beam is not installed (pip install '.[cache]')"
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fixtures", "data"))


def test_seqio_cache_job_and_cached_reading(tmp_path):
  import shardgen
  from gpt_plugin.data import pipeline

  rng = np.random.default_rng(0)
  samples = []
  for s in range(3):
    part = [(f"s{s}_{i}", rng.integers(1, 500, size=int(rng.integers(3, 70))).astype(np.int32)) for i in range(15)]
    samples += part
    shardgen.write_shard(str(tmp_path / f"cc-{s:06d}.tar.gz"), part)
  mod = tmp_path / "cache_toy_tasks.py"
  mod.write_text(
    textwrap.dedent(f"""
        from gpt_plugin.data import tasks_lib
        tasks_lib.register_tar_shard_task("cache_toy", train_shards={str(tmp_path / 'cc-{000000..000002}.tar.gz')!r},
                                          vocab_size=500)
    """)
  )
  cache = tmp_path / "cache"
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), REPO, os.environ.get("PYTHONPATH", "")]))
  cmd = [
    sys.executable,
    "-m",
    "seqio.scripts.cache_tasks_main",
    "--module_import=cache_toy_tasks",
    "--tasks=cache_toy",
    f"--output_cache_dir={cache}",
    "--pipeline_options=--runner=BundleBasedDirectRunner",
  ]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (cache / "cache_toy" / "stats.train.json").exists()

  sys.path.insert(0, str(tmp_path))
  import cache_toy_tasks  # (registers the same task in this process)

  it = pipeline.get_dataset(
    "cache_toy",
    {"targets": 128},
    "train",
    1,
    use_cached=True,
    cache_dir=str(cache),
    shuffle=False,
    pack=False,
    num_epochs=1,
  )
  got = sorted(tuple(t[t != 0]) for t in (b["decoder_target_tokens"][0] for b in it))
  assert got == sorted(tuple(ids.tolist()) for _, ids in samples)

  # shuffled, packed, resumable (by skipping) on the cache
  kw = dict(use_cached=True, shuffle=True, seed=3, pack=True)
  ref = pipeline.get_dataset("cache_toy", {"targets": 32}, "train", 2, **kw)
  first = [next(ref) for _ in range(6)]
  it = pipeline.get_dataset("cache_toy", {"targets": 32}, "train", 2, **kw)
  for _ in range(4):
    next(it)
  resumed = pipeline.get_dataset("cache_toy", {"targets": 32}, "train", 2, state=it.get_state(), **kw)
  for j in (4, 5):
    b = next(resumed)
    for k in b:
      np.testing.assert_array_equal(b[k], first[j][k])

  # gpt_plugin.train reads the cache through the SEQIO_CACHE_DIRS macro (seqio.add_global_cache_dirs), as the
  # README shows. A fresh seqio cache-dir list and a freshly registered task (seqio remembers where it found a
  # task's cache) before each run, so that only the macro can point seqio at the cache.
  import importlib

  import gin
  import seqio

  from gpt_plugin import gin_utils
  from gpt_plugin.training import train_lib

  def fresh_task():
    seqio.set_global_cache_dirs([])
    importlib.reload(cache_toy_tasks)

  fresh_task()
  bindings = [
    f"MODEL_DIR = '{tmp_path / 'model'}'",
    "MIXTURE_OR_TASK_NAME = 'cache_toy'",
    "TASK_FEATURE_LENGTHS = {'targets': 32}",
    "TRAIN_STEPS = 2",
    "BATCH_SIZE = 2",
    "WARMUP_STEPS = 1",
    "EVAL_STEPS = 1",
    "MESH_SHAPE = (1, 1, 1)",
    "USE_CACHED_TASKS = True",
    "VOCAB_SIZE = 512",
  ]
  gin_utils.parse_gin(["models/small.gin", "runs/pretrain.gin"], bindings + ["SEQIO_CACHE_DIRS = []"])
  try:
    with pytest.raises(Exception, match="cache"):  # no cache dir: seqio cannot find the cached task
      train_lib.run_from_gin()
  finally:
    gin.clear_config()
  fresh_task()
  gin_utils.parse_gin(["models/small.gin", "runs/pretrain.gin"], bindings + [f"SEQIO_CACHE_DIRS = ['{cache}']"])
  try:
    res = train_lib.run_from_gin()
  finally:
    gin.clear_config()
  assert res["step"] == 2 and all(np.isfinite(h["loss"]) for h in res["history"])
