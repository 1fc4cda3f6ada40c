r"""Train a model: `python -m gpt_plugin.train --gin_file=runs/quickstart.gin --gin.MODEL_DIR=\"/tmp/qs\"`.

Flags follow T5X (`--gin_file`, `--gin_bindings`, `--gin_search_paths`, `--gin.NAME=VALUE`); the run gin files
bind `gpt_plugin.training.train_lib.train`. See README.md, "Training".
"""

from absl import app

from gpt_plugin.training import gin_flags

gin_flags.define_flags()


def main(argv):
  gin_flags.prepare_runner(argv)
  gin_flags.maybe_initialize_distributed_from_flags()
  gin_flags.parse_from_flags()
  from gpt_plugin.training import train_lib  # pylint: disable=g-import-not-at-top

  from gpt_plugin import errors  # pylint: disable=g-import-not-at-top

  # NonFiniteLossError / NoStepAppliedError, ShapeMismatchError, NoRestorableCheckpointError, ... are UserErrors.
  with gin_flags.exit_on(errors.UserError):
    train_lib.run_from_gin()


if __name__ == "__main__":
  app.run(main, flags_parser=gin_flags.flags_parser)
