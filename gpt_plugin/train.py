r"""Train a model:

  python -m gpt_plugin.train --gin_file=runs/quickstart.gin --gin.MODEL_DIR=\"/tmp/gpt_plugin_quickstart\"

Flags follow T5X (`--gin_file`, `--gin_bindings`, `--gin_search_paths`, `--gin.NAME=VALUE`); the run gin files
bind `gpt_plugin.training.train_lib.train`. The configuration is checked (gpt_plugin/config_checks.py) before
MODEL_DIR is touched. See README.md, "Training".
"""

from gpt_plugin import cli
from gpt_plugin import gin_utils

gin_utils.define_flags()


def main(argv):
  del argv  # checked by cli.run_absl
  gin_utils.maybe_initialize_distributed_from_flags()
  gin_utils.parse_from_flags()
  gin_utils.maybe_initialize_distributed_from_gin()
  from gpt_plugin import config_checks  # pylint: disable=g-import-not-at-top
  from gpt_plugin.training import train_lib  # pylint: disable=g-import-not-at-top

  config_checks.check_train()  # before MODEL_DIR is touched; the start banner names the mesh
  train_lib.run_from_gin()


if __name__ == "__main__":
  cli.run_absl(main, __doc__, run_gin="runs/pretrain.gin")
