"""Shared absl flags and gin parsing for the runners (train now; eval / infer later).

T5X flag names: `--gin_file` (repeatable, later files override earlier), `--gin_bindings` (repeatable),
`--gin_search_paths` (comma list). `--gin.NAME=VALUE` is shorthand for `--gin_bindings='NAME = VALUE'`.
The repo's `gin/` folder is always searched last, so `--gin_file=runs/quickstart.gin` works from anywhere.
Multi-host flags (T5X names): `--multiprocess_gpu --coordinator_address --process_count --process_index`.
"""

from __future__ import annotations

import os
import re
import sys
from typing import List, Sequence

import contextlib
import logging

from absl import flags
import gin


class _GinPathProbeFilter(logging.Filter):
  """gin logs an ERROR for every search-path candidate of an include that is not the right one (`Path not
  found: ...`, from its package-resource probe); those probes are normal, so they are dropped."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.filename == "resource_reader.py" and str(record.msg).startswith("Path not found"))


logging.getLogger().addFilter(_GinPathProbeFilter())

# Installed (wheel): the gin files ship as package data in gpt_plugin/gin; checkout / editable install: <repo>/gin.
_PACKAGE_GIN_DIR = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "gin"))
REPO_GIN_DIR = (
  _PACKAGE_GIN_DIR
  if os.path.isdir(_PACKAGE_GIN_DIR)
  else os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "gin"))
)
_MACRO_RE = re.compile(r"^\s*([A-Z_][A-Z0-9_]*)\s*=")


def define_flags() -> None:
  """Defines the gin and multi-host flags once (safe to call repeatedly)."""
  if "gin_file" in flags.FLAGS:
    return
  flags.DEFINE_multi_string("gin_file", default=None, help="Gin file(s) to load, in order.")
  flags.DEFINE_multi_string("gin_bindings", default=[], help="Individual gin bindings, applied after the files.")
  flags.DEFINE_list(
    "gin_search_paths", default=["."], help="Comma-separated gin search paths (the repo's gin/ folder is appended)."
  )
  flags.DEFINE_boolean("multiprocess_gpu", False, "Call jax.distributed.initialize with the flags below.")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for jax.distributed.initialize.")
  flags.DEFINE_integer("process_count", None, "Number of processes.")
  flags.DEFINE_integer("process_index", None, "This process's index.")
  flags.DEFINE_string(
    "cpu_collectives", None, "CPU collectives implementation for multi-process CPU runs (e.g. 'gloo')."
  )


def rewrite_gin_args(args: Sequence[str]) -> List[str]:
  """`--gin.NAME=VALUE` -> `--gin_bindings=NAME = VALUE` (also `--gin.NAME VALUE`)."""
  out, i = [], 0
  args = list(args)
  while i < len(args):
    a = args[i]
    if a.startswith("--gin."):
      body = a[len("--gin.") :]
      if "=" in body:
        name, value = body.split("=", 1)
      elif i + 1 < len(args):
        name, value = body, args[i + 1]
        i += 1
      else:
        raise ValueError(f"gin flag {a!r} has no value")
      out.append(f"--gin_bindings={name} = {value}")
    else:
      out.append(a)
    i += 1
  return out


def flags_parser(argv: Sequence[str]):
  """absl `flags_parser` for `app.run` that understands `--gin.NAME=VALUE`."""
  return flags.FLAGS(rewrite_gin_args(argv))


def _defined_macros() -> set:
  names = set()
  for scope, selector in list(gin.config._CONFIG.keys()):  # pylint: disable=protected-access
    if selector == "gin.macro":
      names.add(scope)
  return names


def available_presets(kind: str = "models") -> List[str]:
  d = os.path.join(REPO_GIN_DIR, kind)
  if not os.path.isdir(d):
    return []
  return sorted(f[:-4] for f in os.listdir(d) if f.endswith(".gin"))


def parse_gin(
  gin_files: Sequence[str],
  gin_bindings: Sequence[str] = (),
  gin_search_paths: Sequence[str] = (".",),
  finalize: bool = True,
  allow_new_macros: Sequence[str] = (),
) -> None:
  """Loads gin files then bindings; errors name the unknown file, macro or parameter.

  A command-line binding of a macro (UPPER_CASE name) that no loaded file defines is rejected as a likely typo
  (gin would otherwise silently ignore it).
  """
  gin.clear_config()
  for p in list(gin_search_paths) + [REPO_GIN_DIR]:
    gin.add_config_file_search_path(os.path.abspath(p))
  files = list(gin_files or [])
  if not files:
    raise ValueError("no --gin_file given (try --gin_file=runs/quickstart.gin)")
  for f in files:
    try:
      gin.parse_config_file(f)
    except IOError as e:
      if "Unable to open file" not in str(e):
        raise
      raise FileNotFoundError(
        f"gin file {f!r} not found (search paths: {list(gin_search_paths)} + {REPO_GIN_DIR}). "
        f"Model presets: {', '.join(available_presets('models')) or 'none'}; "
        f"runs: {', '.join(available_presets('runs')) or 'none'}; "
        f"meshes: {', '.join(available_presets('meshes')) or 'none'}; "
        f"partitioning: {', '.join(available_presets('partitioning')) or 'none'}"
      ) from None
  known = _defined_macros() | set(allow_new_macros)
  for b in gin_bindings or ():
    m = _MACRO_RE.match(b)
    if m and m.group(1) not in known:
      raise ValueError(
        f"unknown gin macro {m.group(1)!r} in binding {b!r}; macros defined by the gin files: "
        f"{', '.join(sorted(known))}"
      )
    gin.parse_config(b)
  if finalize:
    gin.finalize()


def parse_from_flags(finalize: bool = True) -> None:
  F = flags.FLAGS
  parse_gin(F.gin_file or [], F.gin_bindings, F.gin_search_paths, finalize=finalize)


def maybe_initialize_distributed_from_flags() -> bool:
  F = flags.FLAGS
  if not (F.multiprocess_gpu or F.coordinator_address):
    return False
  from gpt_plugin import partitioning  # pylint: disable=g-import-not-at-top

  return partitioning.maybe_initialize_distributed(
    coordinator_address=F.coordinator_address,
    num_processes=F.process_count,
    process_id=F.process_index,
    cpu_collectives=F.cpu_collectives,
    auto=F.multiprocess_gpu and not F.coordinator_address,
  )


def main_argv() -> List[str]:
  return rewrite_gin_args(sys.argv)


def prepare_runner(argv: Sequence[str]) -> None:
  """The common start of the `python -m gpt_plugin.{train,eval,infer}` runners: no stray positional arguments,
  quiet TF/absl logs (orbax INFO lines drown the progress output; `-v 0` brings them back), and TF (used by
  seqio input pipelines) kept off the accelerators."""
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  if not flags.FLAGS["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    tf.config.set_visible_devices([], "GPU")
  except Exception:  # pylint: disable=broad-except
    pass


@contextlib.contextmanager
def exit_on(*errors):
  """Turns the listed (user-facing) errors into `ERROR: ...` on stderr and exit status 2."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top

  try:
    yield
  except errors as e:
    absl_logging.error("%s", e)
    print(f"ERROR: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
