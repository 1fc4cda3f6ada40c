"""Is the model's vocabulary the task's vocabulary, and does the model's embedding cover it?

Called by the runners' validation pass, before anything is written to MODEL_DIR::

    vocab_check.check_model_against_task(model, MIXTURE_OR_TASK_NAME)   # every task of a mixture
    # or, with the pieces at hand:
    vocab_check.check_model_and_task_vocab(model.vocabulary, task_vocabulary, config.vocab_size, task_name=name)

Two vocabularies are the same tokenizer when both come from tokenizer files with the same content hash (SHA-256
of the files), or, when one side has no file (a pass-through or byte vocabulary), when they agree on the size and
the special ids. A pass-through vocabulary (ids in, ids out; sized by ``VOCAB_SIZE``, often padded) carries no
tokenizer: it is consistent with a tokenizer of at most its size and the same EOS id.
"""

from __future__ import annotations

import hashlib
import os
from typing import Optional

from gpt_plugin.errors import UserError

__all__ = [
  "VocabularyMismatchError",
  "check_model_against_task",
  "check_model_and_task_vocab",
  "describe_vocabulary",
  "vocabulary_hash",
]


class VocabularyMismatchError(UserError, ValueError):
  """The model's and the task's vocabularies differ, or the model's embedding does not cover the task's."""


def _sha256_files(paths) -> Optional[str]:
  h = hashlib.sha256()
  for p in paths:
    if not p or not os.path.isfile(p):
      return None
    with open(p, "rb") as f:
      h.update(f.read())
  return h.hexdigest()


def vocabulary_hash(vocab) -> Optional[str]:
  """SHA-256 of the files behind ``vocab`` (tokenizer.json, vocab.json + merges.txt, SentencePiece model), or
  None for vocabularies without a file (pass-through, byte)."""
  files = [getattr(vocab, "_tokenizer_file", None)]
  if files[0] is None and getattr(vocab, "_vocab_file", None):
    files = [vocab._vocab_file, vocab._merges_file]  # pylint: disable=protected-access
  if files[0] is not None:
    return _sha256_files(files)
  sp = getattr(vocab, "sp_model", None) if type(vocab).__name__ == "SentencePieceVocabulary" else None
  return hashlib.sha256(sp).hexdigest() if isinstance(sp, bytes) else None


def _special_ids(vocab) -> dict:
  out = {}
  for name in ("pad_id", "eos_id", "unk_id"):
    try:
      out[name] = getattr(vocab, name)
    except Exception:  # pylint: disable=broad-except  # some vocabularies raise for ids they lack
      out[name] = None
  return out


def describe_vocabulary(vocab) -> str:
  """One line: class, source file, size, EOS id and a short hash."""
  src = getattr(vocab, "_tokenizer_file", None) or getattr(vocab, "_vocab_file", None)
  src = src or getattr(vocab, "sentencepiece_model_file", None)
  digest = vocabulary_hash(vocab)
  parts = [type(vocab).__name__ + (f" {src!r}" if src else ""), f"{int(vocab.vocab_size)} tokens"]
  parts.append(f"eos id {_special_ids(vocab)['eos_id']}")
  if digest:
    parts.append(f"sha256 {digest[:12]}")
  return ", ".join(parts)


def _is_pass_through(vocab) -> bool:
  return type(vocab).__name__ == "PassThroughVocabulary"


def _tokenizer_difference(model_vocab, task_vocab) -> Optional[str]:
  """Why the two are not the same tokenizer, or None if they are."""
  if model_vocab is task_vocab:
    return None
  if _is_pass_through(model_vocab) or _is_pass_through(task_vocab):
    passthrough, other = (model_vocab, task_vocab) if _is_pass_through(model_vocab) else (task_vocab, model_vocab)
    if int(other.vocab_size) > int(passthrough.vocab_size):
      return "the tokenizer has more tokens than the pass-through vocabulary"
    eos_a, eos_b = _special_ids(passthrough)["eos_id"], _special_ids(other)["eos_id"]
    if eos_a is not None and eos_b is not None and eos_a != eos_b:
      return f"their EOS ids differ ({eos_a} vs {eos_b})"
    return None
  hash_a, hash_b = vocabulary_hash(model_vocab), vocabulary_hash(task_vocab)
  if hash_a is not None and hash_b is not None:
    return None if hash_a == hash_b else "their tokenizer files differ (SHA-256)"
  if int(model_vocab.vocab_size) != int(task_vocab.vocab_size):
    return "their sizes differ"
  ids_a, ids_b = _special_ids(model_vocab), _special_ids(task_vocab)
  if ids_a != ids_b:
    return f"their special ids differ ({ids_a} vs {ids_b})"
  if type(model_vocab) is not type(task_vocab):
    return "they are different kinds of vocabulary"
  return None


def check_model_and_task_vocab(
  model_vocab, task_vocab, embedding_rows: Optional[int], *, task_name: str = "the task"
) -> None:
  """Raises ``VocabularyMismatchError`` (a ``UserError``: exit 2) with one message naming both vocabularies and
  their sizes if they are not the same tokenizer, or if ``embedding_rows`` (the model's ``VOCAB_SIZE``) is smaller
  than either vocabulary. ``model_vocab`` None (the model has no vocabulary of its own): only the embedding is
  checked; ``embedding_rows`` None (unknown): only the tokenizers are compared."""

  def task_desc() -> str:  # only for the messages: describing a vocabulary hashes its files
    return f"the task {task_name!r} uses {describe_vocabulary(task_vocab)}"

  if model_vocab is not None:
    why = _tokenizer_difference(model_vocab, task_vocab)
    if why is not None:
      raise VocabularyMismatchError(
        f"vocabulary mismatch: the model (VOCABULARY) uses {describe_vocabulary(model_vocab)}, but {task_desc()}; "
        f"{why}. Train, evaluate and sample with the tokenizer the corpus was tokenised with: bind VOCABULARY "
        "and VOCAB_SIZE from the corpus's gin file (build_corpus writes OUT/NAME.gin)"
      )
  if embedding_rows is None:
    return
  needed = max(int(task_vocab.vocab_size), 0 if model_vocab is None else int(model_vocab.vocab_size))
  if model_vocab is not None and _is_pass_through(model_vocab):
    needed = int(task_vocab.vocab_size)
  if int(embedding_rows) < needed:
    padded = -(-needed // 128) * 128
    model_desc = "" if model_vocab is None else f"the model (VOCABULARY) uses {describe_vocabulary(model_vocab)}; "
    raise VocabularyMismatchError(
      f"the model's embedding has {int(embedding_rows)} rows (VOCAB_SIZE) but {task_desc()}; {model_desc}"
      f"token ids up to {needed - 1} would index past the embedding. Set VOCAB_SIZE to at least {needed} "
      f"(the presets pad to a multiple of 128: {padded})"
    )


def _embedding_rows(model) -> Optional[int]:
  config = getattr(getattr(model, "module", None), "config", None)
  rows = getattr(config, "vocab_size", None)
  return int(rows) if rows is not None else None


def check_model_against_task(model, mixture_or_task_name: str, feature: str = "targets") -> None:
  """``check_model_and_task_vocab`` for a model (``models.DecoderOnlyLM``: ``.vocabulary`` and
  ``.module.config.vocab_size``) and every task of ``mixture_or_task_name`` (its ``feature`` vocabulary). A model
  without a ``module.config.vocab_size`` gets only the tokenizer comparison."""
  import seqio  # pylint: disable=g-import-not-at-top  # heavy; only when a runner validates

  provider = seqio.get_mixture_or_task(mixture_or_task_name)
  tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
  model_vocab, rows = getattr(model, "vocabulary", None), _embedding_rows(model)
  for task in tasks:
    check_model_and_task_vocab(model_vocab, task.output_features[feature].vocabulary, rows, task_name=task.name)


def check_model_against_registered_task(model, mixture_or_task_name: Optional[str], feature: str = "targets") -> None:
  """``check_model_against_task`` when ``mixture_or_task_name`` is a registered seqio task or mixture (the
  runners' data path); nothing for a name a custom ``dataset_fn`` resolves itself. Call it before anything is
  written."""
  if not mixture_or_task_name:
    return
  import seqio  # pylint: disable=g-import-not-at-top

  names = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
  if mixture_or_task_name in names:
    check_model_against_task(model, mixture_or_task_name, feature)
