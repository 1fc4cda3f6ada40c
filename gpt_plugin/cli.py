"""The common start and end of every runner: `--help`, `--verbose`, a quiet start-up and one-line user errors.

User errors (`gpt_plugin.errors.UserError` and the older error classes listed in `_OLDER_USER_ERRORS`, missing
files, and `ValueError`s raised by gpt_plugin's own checks) end the run with exit status 2 and one `ERROR: ...`
line on stderr, without a traceback; `--verbose` (or GPT_PLUGIN_VERBOSE=1) prints the traceback too. Any other
exception is a program bug and keeps its traceback.

Nothing heavy (jax, tensorflow, seqio, flax) is imported here: `--help` must stay fast.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import traceback
from typing import Callable, List, Optional, Sequence

VERBOSE_ENV = "GPT_PLUGIN_VERBOSE"
_HELP_ARGS = ("--help", "-h", "-?", "--helpshort", "--helpfull")
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

# Error classes that predate `UserError` (module, class name). They are looked up in `sys.modules` only, so that
# deciding whether an error is the user's never imports jax; a class whose module was never imported cannot
# have been raised.
_OLDER_USER_ERRORS = (
  ("gpt_plugin.params_io", "ParamsMismatchError"),  # also ShapeMismatchError, ConversionError, InitParams...
  ("gpt_plugin.torch_archive", "TorchFileError"),
)


def verbose_requested(argv: Sequence[str]) -> bool:
  if any(a in ("--verbose", "--verbose=true", "--verbose=1") for a in argv):
    return True
  return os.environ.get(VERBOSE_ENV, "").lower() not in ("", "0", "false", "no")


def quiet_startup(verbose: bool) -> None:
  """Hides start-up noise unless `verbose`: TensorFlow's C++ logs (its CUDA probe on CPU hosts) and absl's
  'Logging before flag parsing goes to stderr' warning. Must run before TensorFlow is imported."""
  if verbose:
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top

  absl_logging._warn_preinit_stderr = False  # pylint: disable=protected-access


# Native (C++) start-up lines of TensorFlow / XLA that say nothing to the user of a CPU host. TensorFlow >= 2.20
# writes them before its logging is set up, so TF_CPP_MIN_LOG_LEVEL does not hide them.
_NATIVE_NOISE = re.compile(
  r"All log messages before absl::InitializeLog|port\.cc:\d+\] oneDNN custom operations|cudart_stub\.cc|"
  r"cuda_(executor|dnn|fft|blas|diagnostics)\.cc|Unable to register cu(DNN|FFT|BLAS) factory|computation_placer\.cc|"
  r"TF-TRT Warning|This TensorFlow binary is optimized|rebuild TensorFlow with the appropriate compiler flags"
)


@contextlib.contextmanager
def quiet_native_logs(verbose: Optional[bool] = None):
  """Runs the block (where TensorFlow gets imported, e.g. the gin parse that imports seqio tasks) with the
  process's stderr captured, then writes back every line except TensorFlow's native start-up noise.
  `verbose` (default: --verbose / GPT_PLUGIN_VERBOSE) keeps everything."""
  if verbose is None:
    verbose = verbose_requested(sys.argv[1:])
  if verbose:
    yield
    return
  from gpt_plugin import stderr_capture  # pylint: disable=g-import-not-at-top

  captured: List[str] = []
  try:
    with stderr_capture.captured_stderr() as captured:
      yield
  finally:
    kept = [line for line in "".join(captured).splitlines() if not _NATIVE_NOISE.search(line)]
    if kept:
      sys.stderr.write("\n".join(kept) + "\n")
      sys.stderr.flush()


def _raised_by_our_code(e: BaseException) -> bool:
  tb = e.__traceback__
  while tb is not None and tb.tb_next is not None:
    tb = tb.tb_next
  return tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_PACKAGE_DIR + os.sep)


def is_user_error(e: BaseException) -> bool:
  """True for errors the person at the terminal can fix (see the module docstring)."""
  from gpt_plugin.errors import UserError  # pylint: disable=g-import-not-at-top

  types: List[type] = [UserError, FileNotFoundError]
  for module, name in _OLDER_USER_ERRORS:
    cls = getattr(sys.modules.get(module), name, None)
    if cls is not None:
      types.append(cls)
  if isinstance(e, tuple(types)):
    return True
  return isinstance(e, ValueError) and _raised_by_our_code(e)


_GIN_CALL_CONTEXT = re.compile(r"\s+In call to configurable '")  # gin's addition to errors in bound functions


def report_user_error(e: BaseException, verbose: bool) -> None:
  if verbose:
    traceback.print_exception(e)
  message = "\n".join(line for line in str(e).splitlines() if not _GIN_CALL_CONTEXT.match(line))
  print(f"ERROR: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def user_errors(verbose: bool, exit_code: int = 2):
  """User errors -> one `ERROR:` line and `sys.exit(exit_code)`; everything else propagates unchanged."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    if not is_user_error(e):
      raise
    report_user_error(e, verbose)
    sys.exit(exit_code)


def run_argparse(main: Callable[[List[str]], int], argv: Optional[Sequence[str]] = None) -> int:
  """Runs an argparse runner's `main(argv)` (convert, build_corpus); returns 2 on a user error. `--verbose` is
  taken out of argv before `main` sees it."""
  argv = list(sys.argv[1:] if argv is None else argv)
  verbose = verbose_requested(argv)
  argv = [a for a in argv if not a.startswith("--verbose")]
  quiet_startup(verbose)
  try:
    return main(argv)
  except Exception as e:  # pylint: disable=broad-except
    if not is_user_error(e):
      raise
    report_user_error(e, verbose)
    return 2


def help_text(doc: str, run_gin: Optional[str], runner_flags: str = "") -> str:
  """`--help`: the runner's docstring, the gin flags, the run macros of `run_gin` with their defaults, and the
  gin folders."""
  from gpt_plugin import gin_utils  # pylint: disable=g-import-not-at-top

  out = [doc.strip(), "", "Gin flags (T5X names):"]
  out += [
    "  --gin_file=FILE             gin file to load; repeatable, later files override earlier ones",
    "  --gin.NAME=VALUE            one binding, e.g. --gin.TRAIN_STEPS=1000; strings need quotes:",
    '                              --gin.MODEL_DIR=\\"/tmp/run\\"',
    "  --gin_bindings='NAME = V'   the same as a full gin statement; repeatable, applied after the files",
    "  --gin_search_paths=A,B      folders searched for gin files before the bundled gin folder (default: .)",
    "  --verbose                   full Python traceback on errors (or GPT_PLUGIN_VERBOSE=1)",
    "  --multiprocess_gpu, --coordinator_address, --process_count, --process_index   multi-host start (T5X)",
  ]
  if runner_flags:
    out += ["", "Runner flags:", runner_flags.rstrip()]
  macros = gin_utils.file_macros(run_gin) if run_gin else []
  if macros:
    out += ["", f"Run macros (set with --gin.NAME=VALUE; defaults from {run_gin}):"]
    for name, value, comment in macros:
      out.append(f"  {name:<26} {value}" + (f"   # {comment}" if comment else ""))
  return "\n".join(out) + "\n\n" + gin_folders_text()


def gin_folders_text() -> str:
  """Where `--gin_file=kind/name.gin` is looked up, and the presets found there."""
  from gpt_plugin import gin_utils  # pylint: disable=g-import-not-at-top

  out = [f"Gin folders (searched after --gin_search_paths; in {gin_utils.GIN_DIR}):"]
  for kind in gin_utils.GIN_FOLDERS:
    presets = gin_utils.available_presets(kind)
    if presets:
      out.append(f"  {kind + '/':<14} " + ", ".join(presets))
  return "\n".join(out) + "\n"


def _runner_flags_help(flag_values) -> str:
  """Help for the flags the runner's own module (`__main__`) defines, e.g. infer's --prompt."""
  lines = []
  for flag in flag_values.get_key_flags_for_module(sys.argv[0]) + flag_values.get_key_flags_for_module("__main__"):
    default = "" if flag.default is None else f" (default: {flag.default_as_str})"
    lines.append(f"  --{flag.name:<26} {' '.join(flag.help.split())}{default}")
  return "\n".join(dict.fromkeys(lines))


def _absl_flags_parser(argv: Sequence[str]) -> List[str]:
  from absl import flags  # pylint: disable=g-import-not-at-top
  from gpt_plugin import gin_utils  # pylint: disable=g-import-not-at-top
  from gpt_plugin.errors import UserError  # pylint: disable=g-import-not-at-top

  try:
    return flags.FLAGS(gin_utils.rewrite_gin_args(argv))
  except (flags.Error, UserError) as e:
    runner = os.path.splitext(os.path.basename(argv[0]))[0]
    print(f"ERROR: {e} (see python -m gpt_plugin.{runner} --help)", file=sys.stderr, flush=True)
    sys.exit(2)


def run_absl(main: Callable[[List[str]], None], doc: str, run_gin: Optional[str] = None) -> None:
  """`app.run(main)` for the gin runners (train, eval, infer) with `--help` (exit 0), a quiet start-up and
  one-line user errors. `run_gin`: the run gin file whose macros `--help` lists (e.g. 'runs/pretrain.gin')."""
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top

  verbose = verbose_requested(sys.argv[1:])
  quiet_startup(verbose)
  if any(a in _HELP_ARGS for a in sys.argv[1:]):
    sys.stdout.write(help_text(doc, run_gin, _runner_flags_help(flags.FLAGS)))
    if "--helpfull" in sys.argv[1:]:
      sys.stdout.write("\nAll flags:\n" + flags.FLAGS.get_help() + "\n")
    sys.exit(0)

  def wrapped(argv):
    with user_errors(verbose):
      if len(argv) > 1:
        from gpt_plugin.errors import UserError  # pylint: disable=g-import-not-at-top

        raise UserError(f"unexpected arguments: {argv[1:]} (flags are --name=value; see --help)")
      if not flags.FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)  # orbax INFO lines drown the progress output; -v 0 shows them
      main(argv)

  app.run(wrapped, flags_parser=_absl_flags_parser)


# The runners, as `python -m` modules; their console-script entry points (setup.py) follow: `gpt-plugin-train`,
# `-eval`, `-infer`, `-convert`, `-build-corpus`.
RUNNER_MODULES = (
  "gpt_plugin.train",
  "gpt_plugin.eval",
  "gpt_plugin.infer",
  "gpt_plugin.convert",
  "gpt_plugin.data.build_corpus",
)
_GIN_RUNNERS = {"train": "runs/pretrain.gin", "eval": "runs/eval.gin", "infer": "runs/infer.gin"}


def _gin_runner(name: str) -> None:
  import importlib  # pylint: disable=g-import-not-at-top

  module = importlib.import_module(f"gpt_plugin.{name}")
  run_absl(module.main, module.__doc__, run_gin=_GIN_RUNNERS[name])


def train() -> None:
  _gin_runner("train")


def eval() -> None:  # pylint: disable=redefined-builtin
  _gin_runner("eval")


def infer() -> None:
  _gin_runner("infer")


def convert() -> int:
  from gpt_plugin.convert.__main__ import main  # pylint: disable=g-import-not-at-top

  return main(sys.argv[1:])


def build_corpus() -> int:
  from gpt_plugin.data.build_corpus import main  # pylint: disable=g-import-not-at-top

  return run_argparse(main)
