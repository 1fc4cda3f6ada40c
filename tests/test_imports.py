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
