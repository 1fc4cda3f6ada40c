"""Console-script entry points (`gpt-plugin-train`, `-eval`, `-infer`, `-convert`, `-build-corpus`), the same
runners as `python -m gpt_plugin.train|eval|infer|convert` and `python -m gpt_plugin.data.build_corpus`."""

import sys


def _absl_runner(module_name: str) -> None:
  import importlib  # pylint: disable=import-outside-toplevel

  from absl import app  # pylint: disable=import-outside-toplevel

  from gpt_plugin.training import gin_flags  # pylint: disable=import-outside-toplevel

  module = importlib.import_module(module_name)
  sys.modules["__main__"].__doc__ = module.__doc__  # absl's --help prints the main module's docstring
  app.run(module.main, flags_parser=gin_flags.flags_parser)


def train() -> None:
  _absl_runner("gpt_plugin.train")


def eval() -> None:  # pylint: disable=redefined-builtin
  _absl_runner("gpt_plugin.eval")


def infer() -> None:
  _absl_runner("gpt_plugin.infer")


def convert() -> int:
  from gpt_plugin.convert.__main__ import main  # pylint: disable=import-outside-toplevel

  return main(sys.argv[1:])


def build_corpus() -> int:
  from gpt_plugin.data.build_corpus import main  # pylint: disable=import-outside-toplevel

  return main(sys.argv[1:])
