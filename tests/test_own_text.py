"""The README's "Train on your own text": its four commands, read from README.md and run as written, on a folder
of text this test writes (with extra --gin flags that shrink the model and the step counts)."""

import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_MODEL_DIR = "/tmp/licenses_model"

TINY_MODEL = ["--gin.network.GPTConfig.num_layers=1", "--gin.network.GPTConfig.emb_dim=32"]
EXTRA = {
  "gpt_plugin.data.build_corpus": [],
  "gpt_plugin.train": TINY_MODEL
  + ["--gin.TRAIN_STEPS=3", "--gin.BATCH_SIZE=4", "--gin.WARMUP_STEPS=1", "--gin.EVAL_PERIOD=3", "--gin.EVAL_STEPS=2"]
  + ["--gin.CHECKPOINT_PERIOD=3", "--gin.LOG_PERIOD=1", "--gin.train_lib.train.sample_length=8"],
  "gpt_plugin.eval": TINY_MODEL + ["--gin.CONTEXT_MULTIPLIERS=[1, 2]", "--gin.MAX_EVAL_TOKENS=512"],
  "gpt_plugin.infer": TINY_MODEL + ["--max_new_tokens=8"],
}


def readme_commands() -> list[list[str]]:
  """The `$ ` lines (with their `\\` continuations) of README.md's "Train on your own text" section."""
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    text = f.read()
  section = text[text.index("### Train on your own text") :]
  section = section[: section.index("\n## ", 1)] if "\n## " in section else section
  section = section[: section.index("\n### ", 1)] if "\n### " in section[1:] else section
  commands, current = [], None
  for line in section.splitlines():
    if current is None and line.startswith("$ "):
      current = line[2:]
    elif current is not None:
      current += " " + line.strip()
    if current is not None and not current.endswith("\\"):
      commands.append(shlex.split(current))
      current = None
    elif current is not None:
      current = current[:-1].rstrip()
  return commands


def write_texts(folder):
  """A few files of simple, learnable English-like text (deterministic)."""
  rng = np.random.default_rng(0)
  subjects = ["the licensee", "the author", "a user", "this program", "the work", "each contributor"]
  verbs = ["may copy", "shall distribute", "can modify", "must keep", "will receive", "may convey"]
  objects = ["the source code", "this license", "a copy of the notice", "the covered work", "any patent claim"]
  os.makedirs(folder)
  for f in range(4):
    lines = []
    for _ in range(150):
      s = [rng.choice(subjects), rng.choice(verbs), rng.choice(objects)]
      lines.append(" ".join(s).capitalize() + ".")
    with open(os.path.join(folder, f"part{f}.txt"), "w", encoding="utf-8") as fh:
      fh.write("\n".join(lines) + "\n")


def run(argv, cwd, model_dir):
  assert argv[0] == "python" and argv[1] == "-m", argv
  module = argv[2]
  args = [a.replace(README_MODEL_DIR, model_dir) for a in argv[3:]] + EXTRA[module]
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)  # one CPU device, as on a user's machine (conftest simulates 8)
  r = subprocess.run(
    [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
  )
  assert r.returncode == 0, f"{module} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
  return r.stdout + r.stderr


def test_readme_own_text_four_commands(tmp_path):
  commands = readme_commands()
  assert [c[2] for c in commands] == list(EXTRA), commands
  write_texts(tmp_path / "my_texts")
  model_dir = str(tmp_path / "model")
  build, train, evaluate, infer = (run(c, str(tmp_path), model_dir) for c in commands)
  meta = json.loads((tmp_path / "my_corpus" / "metadata.json").read_text())
  assert re.search(r"tokenised \d+ tokens .* tokens/s", build)
  assert meta["split"]["by"] == "within" and all(r["validation_bytes"] > 0 for r in meta["inputs"])
  assert "--- sample 1/2" in train and "done: step 3" in train
  results = json.loads((tmp_path / "model" / "eval" / "eval_results.json").read_text())
  assert (tmp_path / "model" / "eval" / "eval_perplexity.png").stat().st_size > 0
  assert "eval nonoverlapping C=   256" in evaluate, results
  prompt = next(a.split("=", 1)[1] for a in commands[3] if a.startswith("--prompt="))
  assert prompt in infer
