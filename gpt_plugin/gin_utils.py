"""Gin flags and gin parsing for every runner (train, eval, infer, convert); t5x keeps the same in `gin_utils.py`.

T5X flag names: `--gin_file` (repeatable, later files override earlier), `--gin_bindings` (repeatable),
`--gin_search_paths` (comma list). `--gin.NAME=VALUE` is shorthand for `--gin_bindings='NAME = VALUE'`.
The bundled gin folder (`GIN_DIR`) is always searched last, so `--gin_file=runs/quickstart.gin` works from anywhere:
inside an installed package it is the package data `gpt_plugin/gin`, in a checkout the repository's top-level `gin/`.
Multi-host flags (T5X names): `--multiprocess_gpu --coordinator_address --process_count --process_index`.

Every mistake in a gin file or binding comes out of `parse_gin` as a `gpt_plugin.errors.ConfigError` that names the
file or binding, with the closest valid names for a misspelt macro, configurable or parameter, and the corrected
flag for an unquoted string.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import os
import re
import sys
import tokenize
from typing import Dict, List, Optional, Sequence, Tuple

from absl import flags
import gin

from gpt_plugin.errors import ConfigError


class _GinPathProbeFilter(logging.Filter):
  """gin logs an ERROR for every search-path candidate of an include that is not the right one (`Path not
  found: ...`, from its package-resource probe); those probes are normal, so they are dropped."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.filename == "resource_reader.py" and str(record.msg).startswith("Path not found"))


logging.getLogger().addFilter(_GinPathProbeFilter())

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def find_gin_dir(package_dir: str = _PACKAGE_DIR) -> str:
  """The bundled gin folder: the package data `<package>/gin` (wheel, `pip install .`), else the checkout's
  top-level `gin/` next to the package (editable install, PYTHONPATH)."""
  candidates = (os.path.join(package_dir, "gin"), os.path.join(os.path.dirname(package_dir), "gin"))
  for d in candidates:
    if os.path.isdir(d):
      return os.path.normpath(d)
  return os.path.normpath(candidates[0])


GIN_DIR = find_gin_dir()
GIN_FOLDERS = ("models", "runs", "meshes", "partitioning", "features", "t5x")


class GinFileNotFoundError(ConfigError, FileNotFoundError):
  """A `--gin_file` (or an `include`) that is on none of the search paths; the message lists the presets."""


_MACRO_RE = re.compile(r"^\s*([A-Z_][A-Z0-9_]*)\s*=")
_BINDING_RE = re.compile(r"^\s*([\w./]+)\s*=\s*(.*?)\s*$", re.S)


def define_flags() -> None:
  """Defines the gin, multi-host and `--verbose` flags once (safe to call repeatedly)."""
  if "gin_file" in flags.FLAGS:
    return
  flags.DEFINE_multi_string("gin_file", default=None, help="Gin file(s) to load, in order.")
  flags.DEFINE_multi_string("gin_bindings", default=[], help="Individual gin bindings, applied after the files.")
  flags.DEFINE_list(
    "gin_search_paths", default=["."], help="Comma-separated gin search paths (the bundled gin/ folder is appended)."
  )
  flags.DEFINE_boolean("multiprocess_gpu", False, "Call jax.distributed.initialize with the flags below.")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for jax.distributed.initialize.")
  flags.DEFINE_integer("process_count", None, "Number of processes.")
  flags.DEFINE_integer("process_index", None, "This process's index.")
  flags.DEFINE_string(
    "cpu_collectives", None, "CPU collectives implementation for multi-process CPU runs (e.g. 'gloo')."
  )
  flags.DEFINE_boolean("verbose", False, "Show the full Python traceback of errors (also GPT_PLUGIN_VERBOSE=1).")


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
        raise ConfigError(f"gin flag {a!r} has no value (write --gin.NAME=VALUE)")
      out.append(f"--gin_bindings={name} = {value}")
    else:
      out.append(a)
    i += 1
  return out


def _defined_macros() -> set:
  return {scope for scope, selector in list(gin.config._CONFIG.keys()) if selector == "gin.macro"}  # pylint: disable=protected-access


def available_presets(kind: str = "models") -> List[str]:
  d = os.path.join(GIN_DIR, kind)
  if not os.path.isdir(d):
    return []
  return sorted(f[:-4] for f in os.listdir(d) if f.endswith(".gin"))


def did_you_mean(name: str, candidates, n: int = 3) -> str:
  """' (did you mean X or Y?)' for the closest candidates, '' when none is close."""
  close = difflib.get_close_matches(name, sorted(set(candidates)), n=n, cutoff=0.6)
  if not close:
    lower = {c.lower(): c for c in candidates}
    close = [lower[c] for c in difflib.get_close_matches(name.lower(), sorted(lower), n=n, cutoff=0.6)]
  return f" (did you mean {' or '.join(close)}?)" if close else ""


def _configurable_names() -> List[str]:
  """Short (`module.name`) and full selectors of every registered configurable."""
  names = []
  for selector in gin.config._REGISTRY._selector_map:  # pylint: disable=protected-access
    parts = selector.split(".")
    names += [selector, ".".join(parts[-2:]), parts[-1]]
  return names


def _parameter_names(configurable_name: str) -> List[str]:
  try:
    fn = gin.config._REGISTRY.get_match(configurable_name).wrapped  # pylint: disable=protected-access
    return list(inspect.signature(fn).parameters)
  except Exception:  # pylint: disable=broad-except
    return []


def _required_macros() -> List[str]:
  """Macros still bound to `%gin.REQUIRED`."""
  out = []
  for name in sorted(_defined_macros()):
    try:
      v = gin.query_parameter(f"%{name}")
    except Exception:  # pylint: disable=broad-except
      continue
    if isinstance(v, gin.config.ConfigurableReference) and v.scoped_selector.startswith("gin.REQUIRED/"):
      out.append(name)
  return out


def _looks_like_bare_string(value: str) -> bool:
  value = value.strip()
  if not value or value[0] in "'\"@%[({-+.0123456789":
    return False
  return value not in ("True", "False", "None")


def _explain(e: Exception, where: str, binding: Optional[str] = None) -> ConfigError:
  """A ConfigError for a gin parse/finalize error: what is wrong, where, and the closest valid names."""
  msg = str(e)
  m = re.search(r"No bindings specified for '(\w+)/gin\.macro'", msg)
  if m:  # an undefined %MACRO (gin appends the whole config; drop it)
    macro = m.group(1)
    return ConfigError(f"{where}: macro %{macro} is used but never defined{did_you_mean(macro, _defined_macros())}")
  m = re.search(r"([\w.]+)/macro\.value set to `%gin\.REQUIRED` but not subsequently overridden", msg)
  if m:
    missing = _required_macros() or [m.group(1)]
    return ConfigError(
      f"required gin macros not set: {', '.join(missing)}; set them, e.g. --gin.{missing[0]}=... (see --help)"
    )
  m = re.search(r"Configurable '([\w.]+)' doesn't have a parameter named '(\w+)'", msg)
  if m:
    conf, param = m.groups()
    return ConfigError(f"{where}: {conf} has no parameter {param!r}{did_you_mean(param, _parameter_names(conf))}")
  m = re.search(r"No configurable matching '([\w./]+)'", msg)
  if m:
    conf = m.group(1)
    hint = did_you_mean(conf.split("/")[-1], _configurable_names())
    return ConfigError(f"{where}: no configurable named {conf!r}{hint}; is its module imported by a gin file?")
  if isinstance(e, (SyntaxError, tokenize.TokenError)) and binding is not None:
    b = _BINDING_RE.match(binding)
    if b and _looks_like_bare_string(b.group(2)):
      name, value = b.groups()
      return ConfigError(
        f"{where}: {name} = {value} is not a gin value; strings need quotes: write "
        f'--gin.{name}=\\"{value}\\" (or --gin_bindings="{name} = \'{value}\'")'
      )
  return ConfigError(f"{where}: {type(e).__name__}: {msg}")


def _parse_file(f: str, gin_search_paths: Sequence[str]) -> None:
  try:
    gin.parse_config_file(f)
  except IOError as e:
    if "Unable to open file" not in str(e):
      raise
    raise GinFileNotFoundError(
      f"gin file {f!r} not found (search paths: {list(gin_search_paths)} + {GIN_DIR}). "
      + "; ".join(
        f"{'Model presets' if kind == 'models' else kind}: {', '.join(available_presets(kind)) or 'none'}"
        for kind in GIN_FOLDERS[:4]
      )
    ) from None
  except (SyntaxError, tokenize.TokenError, ValueError, ModuleNotFoundError) as e:
    raise _explain(e, f"gin file {f!r}") from e


def _parse_binding(b: str, known_macros: set) -> None:
  m = _MACRO_RE.match(b)
  if m and m.group(1) not in known_macros:
    macro = m.group(1)
    raise ConfigError(
      f"unknown gin macro {macro!r} in binding {b!r}{did_you_mean(macro, known_macros)}; macros defined by the "
      f"gin files: {', '.join(sorted(known_macros))}"
    )
  try:
    gin.parse_config(b)
  except (SyntaxError, tokenize.TokenError, ValueError, ModuleNotFoundError) as e:
    raise _explain(e, f"gin binding {b!r}", binding=b) from e


def parse_gin(
  gin_files: Sequence[str],
  gin_bindings: Sequence[str] = (),
  gin_search_paths: Sequence[str] = (".",),
  finalize: bool = True,
  allow_new_macros: Sequence[str] = (),
) -> None:
  """Loads gin files then bindings; every error is a ConfigError naming the file, binding, macro or parameter.

  A command-line binding of a macro (UPPER_CASE name) that no loaded file defines is rejected as a likely typo
  (gin would otherwise silently ignore it).
  """
  gin.clear_config()
  for p in list(gin_search_paths) + [GIN_DIR]:
    gin.add_config_file_search_path(os.path.abspath(p))
  files = list(gin_files or [])
  if not files:
    raise ConfigError("no --gin_file given (try --gin_file=runs/quickstart.gin)")
  for f in files:
    _parse_file(f, gin_search_paths)
  known = _defined_macros() | set(allow_new_macros)
  for b in gin_bindings or ():
    _parse_binding(b, known)
  if finalize:
    try:
      gin.finalize()
    except (ValueError, SyntaxError) as e:
      raise _explain(e, "gin config") from e


def parse_from_flags(finalize: bool = True) -> None:
  """Parses `--gin_file/--gin_bindings/--gin_search_paths` without TensorFlow's native start-up lines (seqio
  tasks, imported by the gin files, import it), then keeps TensorFlow (seqio's input pipelines) off the
  accelerators."""
  from gpt_plugin import cli  # pylint: disable=g-import-not-at-top

  F = flags.FLAGS
  with cli.quiet_native_logs():
    parse_gin(F.gin_file or [], F.gin_bindings, F.gin_search_paths, finalize=finalize)
  tf = sys.modules.get("tensorflow")
  if tf is not None:
    try:
      tf.config.set_visible_devices([], "GPU")
    except Exception:  # pylint: disable=broad-except
      pass


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


def maybe_initialize_distributed_from_gin() -> bool:
  """Starts multi-host JAX when the gin config asks for it (gin/meshes/gpu_multihost.gin, tpu_v4_32.gin); must
  run before anything counts the devices (the config checks do)."""
  from gpt_plugin import partitioning  # pylint: disable=g-import-not-at-top

  try:
    from jax._src import distributed  # pylint: disable=g-import-not-at-top

    if distributed.global_state.client is not None:
      return False
  except Exception:  # pylint: disable=broad-except
    pass
  try:
    init = gin.get_configurable(partitioning.maybe_initialize_distributed)
  except ValueError:
    return False
  return init()


_MACRO_LINE_RE = re.compile(r"^([A-Z_][A-Z0-9_]*)\s*=\s*(.*?)\s*(?:#\s*(.*))?$")


def file_macros(gin_file: str) -> List[Tuple[str, str, str]]:
  """(name, default, comment) for each top-level macro a gin file in GIN_DIR defines, read as text (no imports,
  so `--help` stays fast); `%gin.REQUIRED` becomes '(required)'."""
  out: Dict[str, Tuple[str, str, str]] = {}
  path = gin_file if os.path.isabs(gin_file) else os.path.join(GIN_DIR, gin_file)
  try:
    with open(path) as fh:
      lines = fh.read().splitlines()
  except OSError:
    return []
  for line in lines:
    m = _MACRO_LINE_RE.match(line)
    if m:
      name, value, comment = m.groups()
      out[name] = (name, "(required)" if value == "%gin.REQUIRED" else value, comment or "")
  return list(out.values())
