"""The gin file the corpus builder writes next to its shards: `OUT/NAME.gin`.

It registers the corpus as a seqio task (train and validation index files) and binds `VOCABULARY` to the corpus'
own tokenizer and `VOCAB_SIZE` to its size padded the way the presets pad (to a multiple of 128: GPT-2's 50257 ->
50304; the pydocs tokenizer's 8192 stays 8192). Paths are absolute, so it works from any folder. Give it after a
run gin, which it overrides:

    python -m gpt_plugin.train --gin_file=runs/quickstart.gin --gin_file=OUT/NAME.gin --gin.MODEL_DIR=\\"/tmp/m\\"
    python -m gpt_plugin.eval --gin_file=runs/eval_quickstart.gin --gin_file=OUT/NAME.gin --gin.CHECKPOINT_PATH=...
    python -m gpt_plugin.infer --gin_file=runs/infer_quickstart.gin --gin_file=OUT/NAME.gin --gin.CHECKPOINT_PATH=...
"""

from __future__ import annotations

import os

from gpt_plugin.data.corpus_tokenizer import TokenizerSpec

VOCAB_MULTIPLE = 128


def padded_vocab_size(vocab_size: int, multiple: int = VOCAB_MULTIPLE) -> int:
  return -(-int(vocab_size) // multiple) * multiple


def _vocabulary_lines(spec: TokenizerSpec) -> list[str]:
  if spec.kind == "hf":
    return [
      "VOCABULARY = @vocabularies.HFTokenizerVocabulary()",
      f"vocabularies.HFTokenizerVocabulary.tokenizer_file = {os.path.abspath(spec.path)!r}",
      f"vocabularies.HFTokenizerVocabulary.eos_token = {spec.eos_token!r}",
    ]
  if spec.kind == "sentencepiece":
    return [
      "VOCABULARY = @vocabularies.sentencepiece_vocabulary()",
      f"vocabularies.sentencepiece_vocabulary.model_file = {os.path.abspath(spec.path)!r}",
    ]
  return ["VOCABULARY = @vocabularies.byte_vocabulary()"]


def corpus_gin_text(
  name: str, out_dir: str, spec: TokenizerSpec, index_files: dict[str, str | None], member_format: str = "npy"
) -> str:
  """The gin text; `index_files` maps 'train' / 'validation' to an index file name in `out_dir` (or None)."""
  out_dir = os.path.abspath(out_dir)
  padded = padded_vocab_size(spec.vocab_size)
  lines = [
    f"# Corpus {name!r}, written by python -m gpt_plugin.data.build_corpus (see metadata.json next to this file).",
    "# Give it after a run gin, e.g. --gin_file=runs/quickstart.gin --gin_file=" + os.path.join(out_dir, f"{name}.gin"),
    "from __gin__ import dynamic_registration",
    "import tasks",
    "from gpt_plugin.data import vocabularies",
    "",
    f"# The corpus' own tokenizer: {spec.vocab_size} tokens, EOS id {spec.eos_id}, sha256 {spec.sha256()}.",
    *_vocabulary_lines(spec),
    f"VOCAB_SIZE = {padded}  # {spec.vocab_size} padded to a multiple of {VOCAB_MULTIPLE}, as the presets pad",
    "",
    "MIXTURE_OR_TASK_NAME = @tasks.tar_shard_task()",
    f"tasks.tar_shard_task.name = {name!r}",
    f"tasks.tar_shard_task.train_shards = {os.path.join(out_dir, index_files['train'])!r}",
  ]
  if index_files.get("validation"):
    lines.append(f"tasks.tar_shard_task.validation_shards = {os.path.join(out_dir, index_files['validation'])!r}")
  else:
    lines.append("# no validation split was built (--validation_fraction 0): set EVAL_PERIOD = None to train")
  lines += [
    "tasks.tar_shard_task.vocabulary = %VOCABULARY",
    f"tasks.tar_shard_task.member_format = {member_format!r}",
    "tasks.tar_shard_task.strict = True  # the builder's own shards: any fault is an error",
  ]
  return "\n".join(lines) + "\n"


def write_corpus_gin(
  name: str, out_dir: str, spec: TokenizerSpec, index_files: dict[str, str | None], member_format: str = "npy"
) -> str:
  path = os.path.join(out_dir, f"{name}.gin")
  with open(path, "w", encoding="utf-8") as f:
    f.write(corpus_gin_text(name, out_dir, spec, index_files, member_format))
  return os.path.abspath(path)
