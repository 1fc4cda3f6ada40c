r"""Checkpoints across the two runners.

* T5X -> ours: nothing to do. `gpt_plugin.params_io.load_params` reads T5X's orbax `checkpoint_<step>/state` (params
  under `target`), so `python -m gpt_plugin.infer/eval --gin.CHECKPOINT_PATH=\"<t5x MODEL_DIR>\"` works.
* ours -> T5X: `to_t5x_checkpoint` writes the params of a gpt_plugin checkpoint (training dir, step dir or
  export) in T5X's layout, `<output_dir>/checkpoint_<step>/state` = {'target': params, 'state': {'step': step}}
  (orbax, OCDBT), which `t5x.infer` / `t5x.eval` restore (optimizer slots are absent: T5X logs "Not restoring
  ... param_states" and serves the params) and `t5x.train` can fine-tune from
  (`utils.RestoreCheckpointConfig.mode = 'specific'`, `restore_dataset = False`, `strict = False`).

  python -m gpt_plugin.inference.t5x_compat --checkpoint_path=/tmp/gpt_plugin_quickstart \
    --output_dir=/tmp/gpt_plugin_quickstart_t5x
No t5x import is needed for either direction.
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Optional

import numpy as np

from gpt_plugin import params_io


def _step_of(path: str) -> int:
  m = re.search(r"checkpoint_(\d+)", path)
  return int(m.group(1)) if m else 0


def to_t5x_checkpoint(checkpoint_path: str, output_dir: str, step: Optional[int] = None) -> str:
  """Writes a T5X-layout checkpoint with the params of `checkpoint_path`; returns the step directory."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  params, path = params_io.load_params(checkpoint_path)  # numpy; only the params of a train state are read
  if step is None:
    step = _step_of(path)
  step_dir = os.path.join(os.path.abspath(output_dir), f"checkpoint_{step}")
  state = {"target": params, "state": {"step": np.asarray(step, np.int32)}}
  ckptr = ocp.PyTreeCheckpointer(use_ocdbt=True)
  ckptr.save(os.path.join(step_dir, "state"), state, force=True)
  ckptr.wait_until_finished() if hasattr(ckptr, "wait_until_finished") else None
  with open(os.path.join(step_dir, "commit_success.txt"), "w") as f:
    f.write("Checkpoint commit was successful.\n")
  return step_dir


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--checkpoint_path", required=True)
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--step", type=int, default=None)
  args = parser.parse_args(argv)
  print(to_t5x_checkpoint(args.checkpoint_path, args.output_dir, args.step))


if __name__ == "__main__":
  main()
