r"""Perplexity / bits per byte at several context lengths (ALiBi length extrapolation at a glance).

  python -m gpt_plugin.eval --gin_file=runs/eval_quickstart.gin --gin.CHECKPOINT_PATH=\"/tmp/gpt_plugin_quickstart\"

Writes `eval_results.json` and `eval_perplexity.png` to EVAL_OUTPUT_DIR (default `<CHECKPOINT_PATH>/eval`).
The gin-bound logic lives in gpt_plugin/inference/eval_lib.py (`eval_lib.evaluate`).
"""

from gpt_plugin import cli
from gpt_plugin import gin_utils

gin_utils.define_flags()


def main(argv):
  del argv  # checked by cli.run_absl
  gin_utils.parse_from_flags()
  import gin  # pylint: disable=g-import-not-at-top
  from gpt_plugin import config_checks  # pylint: disable=g-import-not-at-top
  from gpt_plugin.inference import eval_lib  # pylint: disable=g-import-not-at-top

  config_checks.check_eval()
  gin.get_configurable(eval_lib.evaluate)()


if __name__ == "__main__":
  cli.run_absl(main, __doc__, run_gin="runs/eval.gin")
