"""The README's shell commands work: pulled out of its fenced blocks, each command's `--gin_file`s resolve, its flags
exist on its runner (read from the runner's own `--helpfull` / `--help`, which runs for real), its `--gin.` bindings
parse against its gin files, and every path it reads was written by an earlier command (or is one of the user's own
inputs listed below). The short ones run for real: the help texts, the quickstart for 2 steps, the infer command on
that model and the corpus builder on a tiny folder.
"""

import ast
import functools
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
GIN_DIR = os.path.join(REPO, "gin")

# Paths the README asks users to bring themselves: their texts, prompt files, Little-GPT files and training runs.
USER_INPUTS = {
  "texts/**/*.txt",
  "more.jsonl",
  "prompts.txt",
  "127_complete_state.pth.tar",
  "/ckpt/run_18l",
  "/runs/580m",
}
ABSL_RUNNERS = {"gpt_plugin.train", "gpt_plugin.eval", "gpt_plugin.infer", "seqio.scripts.cache_tasks_main"}
GIN_RUNNERS = {"gpt_plugin.train", "gpt_plugin.eval", "gpt_plugin.infer"}
T5X_RUNNERS = {"t5x.train", "t5x.infer", "t5x.eval"}
# (paths read, paths written) per runner: gin macros or flags; `<X>/eval` = a subfolder of macro X.
PATHS = {
  "gpt_plugin.train": (("INIT_PARAMS_FROM", "SEQIO_CACHE_DIRS"), ("MODEL_DIR",)),
  "t5x.train": (("seqio_additional_cache_dirs",), ("MODEL_DIR",)),
  "gpt_plugin.eval": (
    ("CHECKPOINT_PATH", "EVAL_INPUT_FILE", "COMPARE_RESULTS"),
    ("EVAL_OUTPUT_DIR|<CHECKPOINT_PATH>/eval",),
  ),
  "t5x.eval": (("CHECKPOINT_PATH",), ("EVAL_OUTPUT_DIR",)),
  "gpt_plugin.infer": (("CHECKPOINT_PATH", "INPUT_FILE"), ("INFER_OUTPUT_DIR",)),
  "t5x.infer": (("CHECKPOINT_PATH",), ("INFER_OUTPUT_DIR",)),
  "gpt_plugin.convert": (("input", "model_dir"), ("output",)),
  "gpt_plugin.data.build_corpus": (("input",), ("output_dir",)),
  "seqio.scripts.cache_tasks_main": ((), ("output_cache_dir",)),
}


class Command:
  """One README command: `runner` ('gpt_plugin.train', 'gpt_plugin.convert', 'script:benchmarks/x.py', ...),
  `sub` (convert's subcommand), `flags` {name: [values]} in order, `gin_files`, `bindings` {NAME: value text}."""

  def __init__(self, argv, required, line):
    self.argv, self.required, self.line = argv, required, line
    self.sub = None
    if argv[:2] == ["python", "-m"]:
      self.runner, rest = argv[2], argv[3:]
      if self.runner == "gpt_plugin.convert":
        self.sub, rest = rest[0], rest[1:]
    else:
      self.runner, rest = f"script:{argv[1]}", argv[2:]
    self.flags, name = {}, None
    for tok in rest:
      if tok.startswith("--"):
        name, eq, value = tok[2:].partition("=")
        self.flags.setdefault(name, [])
        if eq:
          self.flags[name].append(value)
          name = None
      elif name is not None:
        self.flags[name].append(tok)
    self.gin_files = self.flags.get("gin_file", [])
    self.bindings = {k[len("gin.") :]: v[-1] for k, v in self.flags.items() if k.startswith("gin.")}

  def __repr__(self):
    return f"README line {self.line}: {' '.join(self.argv)}"


def _clean_tokens(tokens):
  """-> (all tokens, the tokens outside `[--optional ...]` brackets), without `…`; `<repo>` is this checkout and
  `$i` a process index."""
  every, required, optional = [], [], False
  for tok in tokens:
    tok = tok.replace("<repo>", REPO).replace("$i", "0")
    if tok in ("…", "..."):
      continue
    if tok.startswith("[--"):
      tok, optional = tok[1:], True
    closes = optional and tok.endswith("]")
    tok = tok[:-1] if closes else tok
    every.append(tok)
    if not optional:
      required.append(tok)
    optional = optional and not closes
  return every, required


@functools.lru_cache(maxsize=None)
def readme_commands():
  text = open(README, encoding="utf-8").read()
  commands = []
  for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
    if m.group(1) not in ("bash", "sh", ""):
      continue
    first_line = text[: m.start(2)].count("\n") + 1
    body = re.sub(r"\\\n", " ", m.group(2))
    for line in body.splitlines():
      line = line.split(" # ")[0].strip()
      if not line or line.startswith("#"):
        continue
      for part in line.split(" && "):
        if not part.strip().startswith("python "):
          continue
        argv = shlex.split(part.strip())
        if argv and argv[0] == "python" and argv[1:2] != ["-c"] and argv[2:3] != ["pytest"]:
          every, required = _clean_tokens(argv)
          commands.append(Command(every, required, first_line))
  return tuple(commands)


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", TF_CPP_MIN_LOG_LEVEL="3")
  env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  return env


def _run(args, cwd=REPO, timeout=300, ok=(0,)):
  res = subprocess.run([sys.executable] + args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
  assert res.returncode in ok, f"{args}\nstdout:\n{res.stdout[-2000:]}\nstderr:\n{res.stderr[-3000:]}"
  return res.stdout + res.stderr


@functools.lru_cache(maxsize=None)
def runner_flags(runner, sub=None):
  """The flag names a runner accepts, read from its own help output (which must run)."""
  if runner.startswith("script:"):
    args = [runner[len("script:") :], "--help"]
  else:
    args = (
      ["-m", runner] + ([sub] if sub else []) + (["--helpfull"] if runner in ABSL_RUNNERS | T5X_RUNNERS else ["--help"])
    )
  text = _run(args, ok=(0, 1))  # absl's --help / --helpfull exit with status 1
  names = set(re.findall(r"^\s+--(?:\[no\])?([A-Za-z0-9_.-]+)", text, re.M))
  names |= set(re.findall(r"--([A-Za-z0-9_][A-Za-z0-9_-]*)", text))
  assert names, f"no flags found in the help of {runner} {sub or ''}"
  return frozenset(names)


def _check_flags(cmd):
  known = runner_flags(cmd.runner, cmd.sub)
  for name in cmd.flags:
    if name.startswith("gin."):
      assert "gin_bindings" in known, f"{cmd}: {cmd.runner} takes no gin bindings"
    else:
      assert name in known, f"{cmd}: flag --{name} does not exist on {cmd.runner} {cmd.sub or ''}"


def _literal(value):
  try:
    return ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return value


def _paths(cmd, names):
  out = []
  for name in names:
    values = [_literal(cmd.bindings[name])] if name.isupper() and name in cmd.bindings else cmd.flags.get(name, [])
    for v in values:
      out += [str(x) for x in (v if isinstance(v, list) else [v]) if x not in (None, "")]
  return out


def _check_paths(commands):
  written = []
  for cmd in commands:
    if cmd.runner not in PATHS:
      continue
    reads, writes = PATHS[cmd.runner]
    for path in _paths(cmd, reads):
      assert path in USER_INPUTS or any(path == w or path.startswith(w.rstrip("/") + "/") for w in written), (
        f"{cmd}: reads {path!r}, which no earlier README command writes (written so far: {written})"
      )
    for spec in writes:
      macro, _, fallback = spec.partition("|")
      got = _paths(cmd, [macro])
      if not got and fallback:
        base = _paths(cmd, [re.match(r"<(\w+)>", fallback).group(1)])
        got = [fallback.replace(re.match(r"<\w+>", fallback).group(0), b) for b in base]
      written += got


def _check_gin(cmd):
  for f in cmd.gin_files:
    assert os.path.isfile(os.path.join(GIN_DIR, f)), f"{cmd}: --gin_file={f} is not in {GIN_DIR}"
  if cmd.runner not in GIN_RUNNERS:
    return
  import gin  # pylint: disable=import-outside-toplevel

  from gpt_plugin import gin_utils  # pylint: disable=import-outside-toplevel

  bindings = [f"{k} = {v}" for k, v in cmd.bindings.items()]
  try:
    gin_utils.parse_gin(cmd.gin_files, bindings, finalize=False)
  except Exception as e:  # pylint: disable=broad-except
    pytest.fail(f"{cmd}: the gin files and bindings do not parse: {type(e).__name__}: {e}")
  finally:
    gin.clear_config()


def test_readme_commands_resolve_their_gin_files_flags_and_paths():
  commands = readme_commands()
  runners = {c.runner for c in commands}
  assert {"gpt_plugin.train", "gpt_plugin.eval", "gpt_plugin.infer", "gpt_plugin.convert"} <= runners, runners
  assert {"gpt_plugin.data.build_corpus", "seqio.scripts.cache_tasks_main", "t5x.train", "t5x.eval"} <= runners
  for cmd in commands:
    _check_gin(cmd)
    if cmd.runner not in T5X_RUNNERS and cmd.runner != "seqio.scripts.cache_tasks_main":
      _check_flags(cmd)
  _check_paths(commands)


def test_readme_quickstart_model_dir_is_the_one_everywhere():
  """One MODEL_DIR: the quickstart's, in the README, the gin comments and the runners' help texts."""
  sources = [README] + [os.path.join(GIN_DIR, "runs", f) for f in os.listdir(os.path.join(GIN_DIR, "runs"))]
  sources += [os.path.join(REPO, "gpt_plugin", f) for f in ("train.py", "eval.py", "infer.py")]
  for path in sources:
    text = open(path, encoding="utf-8").read()
    stale = re.findall(r"/tmp/(?:quickstart|qs)\b[\w/]*", text)
    assert not stale, f"{path} still names {stale}; the quickstart writes /tmp/gpt_plugin_quickstart"
  train = next(c for c in readme_commands() if c.runner == "gpt_plugin.train")
  assert _literal(train.bindings["MODEL_DIR"]) == "/tmp/gpt_plugin_quickstart"
  assert "/tmp/gpt_plugin_quickstart" in _run(["-m", "gpt_plugin.train", "--help"], ok=(0, 1))


@pytest.mark.skipif(importlib.util.find_spec("apache_beam") is None, reason="apache-beam is not installed")
def test_readme_seqio_cache_command_flags():
  for cmd in readme_commands():
    if cmd.runner == "seqio.scripts.cache_tasks_main":
      _check_flags(cmd)


@pytest.mark.skipif(importlib.util.find_spec("t5x") is None, reason="t5x is not importable (README: The real T5X path)")
def test_readme_t5x_command_flags():
  for cmd in readme_commands():
    if cmd.runner in T5X_RUNNERS:
      _check_flags(cmd)


def test_readme_quickstart_infer_and_build_corpus_run(tmp_path):
  """The quickstart train command (2 steps), the interactive infer command on its model, and the corpus builder
  command on a tiny folder, as the README writes them (paths moved under tmp_path, run lengths shortened)."""
  commands = readme_commands()
  model_dir = str(tmp_path / "gpt_plugin_quickstart")

  def argv_of(cmd, replace):
    out = []
    for tok in cmd.required[1:]:
      for old, new in replace.items():
        tok = tok.replace(old, new)
      out.append(tok)
    return out

  quick = next(c for c in commands if c.runner == "gpt_plugin.train")
  short = [
    "--gin.TRAIN_STEPS=2",
    "--gin.WARMUP_STEPS=1",
    "--gin.BATCH_SIZE=4",
    "--gin.EVAL_PERIOD=2",
    "--gin.EVAL_STEPS=1",
  ]
  short += ["--gin.CHECKPOINT_PERIOD=2", "--gin.train_lib.train.sample_length=4"]
  out = _run(argv_of(quick, {"/tmp/gpt_plugin_quickstart": model_dir}) + short)
  assert "step 2/2" in out and os.path.isdir(os.path.join(model_dir, "checkpoint_2")), out[-2000:]

  infer = next(c for c in commands if c.runner == "gpt_plugin.infer" and "prompt" in c.flags)
  out = _run(argv_of(infer, {"/tmp/gpt_plugin_quickstart": model_dir}) + ["--max_new_tokens=4"])
  assert "The for statement" in out, out[-2000:]

  build = next(c for c in commands if c.runner == "gpt_plugin.data.build_corpus")
  texts = tmp_path / "texts" / "a"
  texts.mkdir(parents=True)
  words = "the for statement iterates over the items of any sequence in the order that they appear".split()
  for i in range(40):
    (texts / f"doc{i}.txt").write_text(" ".join(words[i % 7 :] + words[: i % 7]) + f" number {i}.\n")
  with open(tmp_path / "more.jsonl", "w") as f:
    for i in range(4):
      f.write(json.dumps({"text": f"A list is a sequence {i}."}) + "\n")
  out_dir = tmp_path / "mycorpus"
  argv = argv_of(build, {"/data/mycorpus": str(out_dir)}) + ["--num_workers=1", "--quiet"]
  _run(argv, cwd=str(tmp_path))
  meta = json.loads((out_dir / "metadata.json").read_text())
  if meta["split"]["by"] == "within":  # a held-out tail of every document: each of the 44 is in both splits
    assert meta["num_train_documents"] == meta["num_validation_documents"] == 44, meta
  else:  # whole documents, sampled by seed
    assert meta["num_train_documents"] + meta["num_validation_documents"] == 44, meta
