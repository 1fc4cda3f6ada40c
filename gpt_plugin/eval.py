r"""Perplexity / bits per byte at several context lengths (ALiBi length extrapolation at a glance).

  python -m gpt_plugin.eval --gin_file=runs/eval_quickstart.gin --gin.CHECKPOINT_PATH=\"/tmp/gpt_plugin_quickstart\"

Writes `eval_results.json` and `eval_perplexity.png` to EVAL_OUTPUT_DIR (default `<CHECKPOINT_PATH>/eval`).
The gin-bound logic lives in gpt_plugin/inference/eval_lib.py (`eval_lib.evaluate`).
"""

from absl import app

from gpt_plugin.training import gin_flags

gin_flags.define_flags()


def main(argv):
  gin_flags.prepare_runner(argv)
  import gin  # pylint: disable=g-import-not-at-top
  from gpt_plugin.inference import eval_lib  # pylint: disable=g-import-not-at-top

  with gin_flags.exit_on(ValueError, FileNotFoundError):  # ParamsMismatchError is a ValueError
    gin_flags.parse_from_flags()
    gin.get_configurable(eval_lib.evaluate)()


if __name__ == "__main__":
  app.run(main, flags_parser=gin_flags.flags_parser)
