"""Multi-host for real: 2 processes on localhost (jax.distributed + gloo), 4 simulated CPU devices each."""
import json
import os
import socket
import subprocess
import sys

import numpy as np

from train_helpers import losses, run_train

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_single_process_and_share_one_checkpoint(tmp_path):
  model_dir = tmp_path / "mh"
  port = _free_port()
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([HERE, os.path.dirname(HERE), env.get("PYTHONPATH", "")])
  env.pop("XLA_FLAGS", None)
  procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "multihost_worker.py"), str(i), "2", str(port),
                             str(model_dir), str(tmp_path / f"out{i}.json")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
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
  results = [json.load(open(tmp_path / f"out{i}.json")) for i in range(2)]
  assert [r["process_index"] for r in results] == [0, 1]
  assert all(r["local_devices"] == 4 for r in results)

  ref = run_train(tmp_path / "ref", steps=7)  # single process, one device, all rows of every batch
  for r in results:
    np.testing.assert_allclose(r["losses"], losses(ref)[:5], rtol=1e-5, atol=1e-6)

  # One consistent checkpoint (both processes' data positions inside); a single process restores it and
  # continues exactly like the uninterrupted single-process run.
  ck = model_dir / "checkpoint_5"
  assert (ck / "data" / "process_0.json").exists() and (ck / "data" / "process_1.json").exists()
  assert not [p for p in os.listdir(model_dir) if "tmp" in p]
  cont = run_train(model_dir, steps=7, num_devices=1)
  assert [h["step"] for h in cont["history"]] == [6, 7]
  np.testing.assert_allclose(losses(cont), losses(ref)[5:], rtol=1e-5, atol=1e-6)
