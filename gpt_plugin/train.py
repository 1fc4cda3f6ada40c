r"""Train a model: `python -m gpt_plugin.train --gin_file=runs/quickstart.gin --gin.MODEL_DIR=\"/tmp/qs\"`.

Flags follow T5X (`--gin_file`, `--gin_bindings`, `--gin_search_paths`, `--gin.NAME=VALUE`); the run gin files
bind `gpt_plugin.training.train_lib.train`. See README.md, "Training".
"""
import os
import sys

from absl import app
from absl import flags
from absl import logging

from gpt_plugin.training import gin_flags

gin_flags.define_flags()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  if not flags.FLAGS["verbosity"].present:  # orbax/absl INFO logs drown the progress line; -v 0 brings them back
    logging.set_verbosity(logging.WARNING)
  try:  # keep TF (used by seqio input pipelines) off the accelerators
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], "GPU")
  except Exception:  # pylint: disable=broad-except
    pass
  gin_flags.maybe_initialize_distributed_from_flags()
  gin_flags.parse_from_flags()
  from gpt_plugin.training import train_lib  # pylint: disable=g-import-not-at-top
  try:
    train_lib.run_from_gin()
  except (train_lib.NonFiniteLossError, train_lib.checkpointing.ShapeMismatchError) as e:
    logging.error("%s", e)
    print(f"ERROR: {e}", file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=gin_flags.flags_parser)
