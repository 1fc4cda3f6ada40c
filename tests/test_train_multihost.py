"""Multi-host for real: 2 processes on localhost (jax.distributed + gloo), 4 simulated CPU devices each, the
real tiny model, each process reading its own tar shards through `gpt_plugin.data.pipeline.get_dataset`."""

import json
import shutil
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from train_helpers import (
  as_if_processes_dataset_fn,
  host_params,
  losses,
  register_shard_task,
  run_train,
  write_token_shards,
)

HERE = os.path.dirname(os.path.abspath(__file__))
TASK = "multihost_test_shards"


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_workers(tmp_path, model_dir, shard_args, out_prefix, steps=5):
  """Runs the 2 worker processes to `steps` on `model_dir`; each writes tmp_path/<out_prefix><i>.json."""
  port = _free_port()
  env = dict(os.environ, WORKER_STEPS=str(steps))
  env["PYTHONPATH"] = os.pathsep.join([HERE, os.path.dirname(HERE), env.get("PYTHONPATH", "")])
  env.pop("XLA_FLAGS", None)
  worker = os.path.join(HERE, "multihost_worker.py")
  procs = [
    subprocess.Popen(
      [sys.executable, worker, str(i), "2", str(port), str(model_dir), str(tmp_path / f"{out_prefix}{i}.json")]
      + [TASK, *shard_args],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  outs = []
  for p in procs:
    try:
      out, _ = p.communicate(timeout=240)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    outs.append(out)
    assert p.returncode == 0, out[-4000:]
  return outs


def test_two_processes_match_single_process_and_share_one_checkpoint(tmp_path):
  shards = write_token_shards(tmp_path / "shards", num_shards=4)
  # Three validation shards: process 0 reads two, process 1 one, so their counts of full batches differ and the
  # in-training eval must agree on how many it scores (else one process waits for the other in a collective).
  validation = write_token_shards(tmp_path / "val", num_shards=3, seed=1, prefix="validation")
  model_dir = tmp_path / "mh"
  _run_workers(tmp_path, model_dir, shards + ["--validation", *validation], "out")
  results = [json.load(open(tmp_path / f"out{i}.json")) for i in range(2)]
  broken = tmp_path / "mh_broken"
  shutil.copytree(model_dir, broken)  # for the fallback test below, before anything else writes to model_dir
  assert [r["process_index"] for r in results] == [0, 1]
  assert all(r["local_devices"] == 4 for r in results)

  # Single process, one device, reading what the two processes read together (process 0's shards 0 and 2 give
  # the first half of every global batch, process 1's shards 1 and 3 the second half).
  register_shard_task(TASK, shards, validation)
  ref = run_train(tmp_path / "ref", steps=7, task=TASK, dataset_fn=as_if_processes_dataset_fn(2), eval_period=5)
  for r in results:
    np.testing.assert_allclose(r["losses"], losses(ref)[:5], rtol=1e-5, atol=1e-6)
    # The same 2 batches, spread over the validation batches both processes have, score the same as the
    # single-process view of the shorter process's batches.
    assert [e["step"] for e in r["evals"]] == [5] and ref["evals"][0]["step"] == 5
    np.testing.assert_allclose(r["evals"][0]["loss"], ref["evals"][0]["loss"], rtol=1e-5)
    assert r["evals"][0]["num_tokens"] == ref["evals"][0]["num_tokens"] > 0

  # One consistent checkpoint holding each process's own data position; a single process restores it (params,
  # optimiser state, step) and, reading on from both positions, continues like the uninterrupted run.
  ck = model_dir / "checkpoint_5"
  states = [json.load(open(ck / "data" / f"process_{i}.json")) for i in range(2)]
  assert [(s["process_index"], s["process_count"], s["batches"]) for s in states] == [(0, 2, 5), (1, 2, 5)]
  assert not [p for p in os.listdir(model_dir) if "tmp" in p]
  cont = run_train(model_dir, steps=7, num_devices=1, task=TASK, dataset_fn=as_if_processes_dataset_fn(2, states))
  assert [h["step"] for h in cont["history"]] == [6, 7]
  np.testing.assert_allclose(losses(cont), losses(ref)[5:], rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), host_params(cont), host_params(ref))

  # Process 1's data position in checkpoint_5 is garbled: process 0 restores checkpoint_5 fine, process 1 cannot.
  # Both must fall back to checkpoint_3 together (not hang in a collective, not continue from different steps).
  (broken / "checkpoint_5" / "data" / "process_1.json").write_text('{"step": 1')
  outs = _run_workers(tmp_path, broken, shards, "resumed", steps=7)
  resumed = [json.load(open(tmp_path / f"resumed{i}.json")) for i in range(2)]
  assert [r["steps"] for r in resumed] == [[4, 5, 6, 7]] * 2
  for r in resumed:  # from checkpoint_3's params and both data positions: the uninterrupted run's steps 4..7
    np.testing.assert_allclose(r["losses"], losses(ref)[3:7], rtol=1e-5, atol=1e-6)
  assert os.path.isdir(broken / "checkpoint_5.corrupt") and os.path.isdir(broken / "checkpoint_7")
  assert any("did not restore in process(es) 1" in out for out in outs), outs[0][-3000:]
