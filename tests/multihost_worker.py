"""One process of the 2-process localhost test (tests/test_train_multihost.py).

usage: python multihost_worker.py PROCESS_ID NUM_PROCESSES PORT MODEL_DIR OUT_JSON TASK_NAME SHARD... [--validation SHARD...]
Runs with 4 simulated CPU devices, joined to the others by jax.distributed.initialize (gloo collectives), and
trains the tiny real model on the tar shards (registered as task TASK_NAME); `get_dataset` gives process p
the shards p, p + NUM_PROCESSES, ...
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main():
  pid, nproc, port, model_dir, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
  task, shards = sys.argv[6], sys.argv[7:]
  validation = []
  if "--validation" in shards:
    shards, validation = shards[: shards.index("--validation")], shards[shards.index("--validation") + 1 :]
  from gpt_plugin import partitioning

  partitioning.maybe_initialize_distributed(
    coordinator_address=f"127.0.0.1:{port}",
    num_processes=nproc,
    process_id=pid,
    cpu_collectives="gloo",
    initialization_timeout=120,
  )
  import jax
  from gpt_plugin.training import train_lib
  from train_helpers import losses, register_shard_task, run_train

  assert jax.process_count() == nproc and jax.device_count() == 4 * nproc, (jax.process_count(), jax.devices())
  register_shard_task(task, shards, validation or None)
  res = run_train(
    model_dir,
    steps=int(os.environ.get("WORKER_STEPS", "5")),
    mesh_shape=(2, 4, 1),
    num_devices=jax.device_count(),
    param_rules=[("embed", "fsdp"), ("mlp", "fsdp")],
    checkpoint_period=3,
    task=task,
    dataset_fn=train_lib.default_dataset_fn,
    eval_period=5 if validation else 0,
  )
  with open(out, "w") as f:
    json.dump(
      {
        "losses": losses(res).tolist(),
        "evals": res["evals"],
        "steps": [h["step"] for h in res["history"]],
        "process_index": jax.process_index(),
        "local_devices": jax.local_device_count(),
      },
      f,
    )
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
