"""Train/validation split of the corpus builder, drawn across the whole corpus.

Two ways, both seeded (`--split_by`):

* ``document``: a seeded sample of whole documents (`--validation_fraction` of them, or `--validation_docs`).
  Good when there are many documents (JSONL lines, many files).
* ``within``: the last `--validation_fraction` of every document (cut at a line break, else at a space) is held
  out, so every file contributes to validation. Good for a few long files (books), where a sample of whole
  documents would be one or two files.
* ``auto`` (default): ``document`` when that gives at least `MIN_VALIDATION_DOCS` documents, else ``within``.

Each split's pieces are then shuffled (seeded) unless `shuffle_docs` is false. :func:`file_table` says which input
file went to which split (for metadata.json).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from gpt_plugin import errors

MIN_VALIDATION_DOCS = 20
SPLIT_MODES = ("auto", "document", "within")


class SplitError(errors.UserError, ValueError):
  """A split option can't be honoured (names the option and value)."""


@dataclasses.dataclass
class Split:
  """The texts of each split, in the order they are tokenised; `file_of[split][i]` is the input file index."""

  mode: str
  texts: dict[str, list[str]]
  file_of: dict[str, list[int]]


def split_documents(
  n_docs: int, *, validation_fraction: float, validation_docs: int | None, seed: int, shuffle_docs: bool
) -> tuple[list[int], list[int]]:
  """Indices of the train and validation documents: a seeded sample of whole documents."""
  rng = np.random.default_rng(seed)
  perm = rng.permutation(n_docs)
  n_val = validation_docs if validation_docs is not None else round(n_docs * validation_fraction)
  n_val = min(max(n_val, 0), max(n_docs - 1, 0))
  val, train = perm[:n_val], perm[n_val:]
  if not shuffle_docs:
    val, train = np.sort(val), np.sort(train)
  return train.tolist(), val.tolist()


def tail_cut(text: str, validation_fraction: float) -> int:
  """Where the held-out tail of `text` starts: the line break (else space) before the last fraction of it."""
  target = int(len(text) * (1.0 - validation_fraction))
  if target >= len(text):
    return len(text)
  for sep in ("\n", " "):
    cut = text.rfind(sep, 0, target) + 1
    if cut > target // 2:
      return cut
  return max(target, 1)


def _within_documents(texts, file_of, fraction, seed, shuffle_docs) -> Split:
  parts = {"train": ([], []), "validation": ([], [])}
  for text, f in zip(texts, file_of):
    cut = tail_cut(text, fraction)
    for split, piece in (("train", text[:cut]), ("validation", text[cut:])):
      if piece.strip():
        parts[split][0].append(piece)
        parts[split][1].append(f)
  rng = np.random.default_rng(seed)
  out = Split("within", {}, {})
  for split, (pieces, files) in parts.items():
    order = rng.permutation(len(pieces)) if shuffle_docs else np.arange(len(pieces))
    out.texts[split] = [pieces[i] for i in order]
    out.file_of[split] = [files[i] for i in order]
  return out


def split_corpus(
  texts: list[str],
  file_of: list[int],
  *,
  mode: str = "auto",
  validation_fraction: float = 0.05,
  validation_docs: int | None = None,
  seed: int = 1996,
  shuffle_docs: bool = True,
) -> Split:
  if mode not in SPLIT_MODES:
    raise SplitError(f"--split_by {mode!r}: use one of {', '.join(SPLIT_MODES)}")
  if not 0.0 <= validation_fraction < 1.0:
    raise SplitError(f"--validation_fraction {validation_fraction}: must be in [0, 1)")
  if mode == "auto":
    by_doc = validation_docs is not None or round(len(texts) * validation_fraction) >= MIN_VALIDATION_DOCS
    mode = "document" if by_doc else "within"
  if mode == "within":
    if validation_docs is not None:
      raise SplitError("--validation_docs counts whole documents; it needs --split_by document")
    return _within_documents(texts, file_of, validation_fraction, seed, shuffle_docs)
  train, val = split_documents(
    len(texts),
    validation_fraction=validation_fraction,
    validation_docs=validation_docs,
    seed=seed,
    shuffle_docs=shuffle_docs,
  )
  idx = {"train": train, "validation": val}
  return Split(
    "document", {k: [texts[i] for i in v] for k, v in idx.items()}, {k: [file_of[i] for i in v] for k, v in idx.items()}
  )


def file_table(split: Split, files: list[str]) -> list[dict]:
  """Per input file: how many documents (or document pieces) and UTF-8 bytes went to each split."""
  rows = [
    {"file": f, "train_documents": 0, "train_bytes": 0, "validation_documents": 0, "validation_bytes": 0} for f in files
  ]
  for name, texts in split.texts.items():
    for text, f in zip(texts, split.file_of[name]):
      rows[f][f"{name}_documents"] += 1
      rows[f][f"{name}_bytes"] += len(text.encode("utf-8"))
  return rows
