r"""Generate with a trained model.

Batch (T5X infer-gin vocabulary; prompts from a seqio task or a text/JSONL file, predictions as JSONL):
  python -m gpt_plugin.infer --gin_file=runs/infer_quickstart.gin --gin.CHECKPOINT_PATH=\"/tmp/gpt_plugin_quickstart\" \
    --gin.INFER_OUTPUT_DIR=\"/tmp/gpt_plugin_quickstart/infer\" [--gin.INPUT_FILE=\"prompts.txt\"]

Interactive (prompt on the command line, text out):
  python -m gpt_plugin.infer --gin_file=runs/infer_quickstart.gin --gin.CHECKPOINT_PATH=\"/tmp/gpt_plugin_quickstart\" \
    --prompt="The for statement" [--prompt=...] [--max_new_tokens=64 --temperature=0.8 --top_p=0.9 --greedy]

The gin-bound logic lives in gpt_plugin/inference/infer_lib.py (`infer_lib.infer`, `infer_lib.interactive`).
"""

from absl import flags

from gpt_plugin import cli
from gpt_plugin import gin_utils

gin_utils.define_flags()
flags.DEFINE_multi_string("prompt", None, "Interactive mode: prompt text(s); prints prompt + continuation.")
flags.DEFINE_integer("max_new_tokens", 64, "Interactive mode: new tokens per prompt.")
flags.DEFINE_float("temperature", 0.8, "Interactive mode: sampling temperature (> 0).")
flags.DEFINE_integer("top_k", None, "Interactive mode: sample from the k most likely tokens.")
flags.DEFINE_float("top_p", None, "Interactive mode: nucleus sampling mass in (0, 1].")
flags.DEFINE_boolean("greedy", False, "Interactive mode: greedy decoding instead of sampling.")
flags.DEFINE_integer("num_samples", 1, "Interactive mode: samples per prompt.")
flags.DEFINE_integer("seed", 0, "Interactive mode: sampling seed.")


def main(argv):
  del argv  # checked by cli.run_absl
  F = flags.FLAGS
  gin_utils.parse_from_flags()
  import gin  # pylint: disable=g-import-not-at-top
  from gpt_plugin import config_checks  # pylint: disable=g-import-not-at-top
  from gpt_plugin.inference import infer_lib  # pylint: disable=g-import-not-at-top

  config_checks.check_infer(interactive=bool(F.prompt))
  if F.prompt:
    gin.get_configurable(infer_lib.interactive)(
      F.prompt,
      max_new_tokens=F.max_new_tokens,
      temperature=F.temperature,
      top_k=F.top_k,
      top_p=F.top_p,
      sample=not F.greedy,
      num_samples=F.num_samples,
      seed=F.seed,
    )
  else:
    gin.get_configurable(infer_lib.infer)()


if __name__ == "__main__":
  cli.run_absl(main, __doc__, run_gin="runs/infer.gin")
