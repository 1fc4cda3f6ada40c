r"""Perplexity / bits per byte at several context lengths (ALiBi length extrapolation at a glance).

  python -m gpt_plugin.eval --gin_file=runs/eval_quickstart.gin --gin.CHECKPOINT_PATH=\"/tmp/quickstart\"

Writes `eval_results.json` and `eval_perplexity.png` to EVAL_OUTPUT_DIR (default `<CHECKPOINT_PATH>/eval`).
The gin-bound logic lives in gpt_plugin/inference/eval_lib.py (`eval_lib.evaluate`).
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
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], "GPU")
  except Exception:  # pylint: disable=broad-except
    pass
  import gin  # pylint: disable=g-import-not-at-top
  from gpt_plugin.inference import eval_lib  # pylint: disable=g-import-not-at-top
  try:
    gin_flags.parse_from_flags()
    gin.get_configurable(eval_lib.evaluate)()
  except (ValueError, FileNotFoundError) as e:  # ParamsMismatchError is a ValueError
    print(f"ERROR: {e}", file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=gin_flags.flags_parser)
