"""The model, train step and decoding import without seqio / tensorflow / gin (bare GPU hosts carry no TF)."""

import subprocess
import sys
import textwrap


def test_model_train_step_and_decoding_import_without_tensorflow():
  code = textwrap.dedent("""
      import importlib.abc, sys
      class Block(importlib.abc.MetaPathFinder):
          def find_spec(self, name, path, target=None):
              if name.split(".")[0] in ("seqio", "tensorflow", "tensorflow_text", "gin", "tasks"):
                  raise ImportError("blocked " + name)
      sys.meta_path.insert(0, Block())
      import gpt_plugin.models, gpt_plugin.network, gpt_plugin.training.train_step, gpt_plugin.generate
      import gpt_plugin.decoding, gpt_plugin.kernels.flash_alibi
      assert "tensorflow" not in sys.modules and "seqio" not in sys.modules
      print("ok")
  """)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def _imported_modules(path):
  import ast  # pylint: disable=import-outside-toplevel

  tree = ast.parse(open(path, encoding="utf-8").read(), path)
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      yield node.module


def test_library_code_never_imports_the_top_level_tasks_package():
  """`tasks` is a thin registration package for gin files; a name that collides easily in site-packages."""
  import os  # pylint: disable=import-outside-toplevel

  root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gpt_plugin")
  offenders = []
  for folder, _, files in os.walk(root):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        offenders += [f"{path}: {m}" for m in _imported_modules(path) if m.split(".")[0] == "tasks"]
  assert not offenders, offenders


def test_bundled_and_prompt_tasks_register_without_the_tasks_package():
  code = textwrap.dedent("""
      import importlib.abc, sys
      class Block(importlib.abc.MetaPathFinder):
          def find_spec(self, name, path, target=None):
              if name.split(".")[0] == "tasks":
                  raise ImportError("blocked " + name)
      sys.meta_path.insert(0, Block())
      import seqio
      import gpt_plugin.inference.prompt_tasks, gpt_plugin.inference.infer_lib, gpt_plugin.inference.eval_lib
      assert {"pydocs", "pydocs_prompts"} <= set(seqio.TaskRegistry.names())
      assert seqio.get_mixture_or_task("pydocs").score_metric_fns
      print("ok")
  """)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
