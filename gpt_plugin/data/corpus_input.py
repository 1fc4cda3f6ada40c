"""The corpus builder's input: finding the files, reading documents (with the file each came from), cleaning.

Every text file is one document; every JSONL line is one document (its `--jsonl_field`, default `text`, or the
line itself when it is a JSON string); directories are walked; `.gz` files are read through gzip.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import json
import os
import re
import unicodedata
from collections.abc import Sequence

from gpt_plugin import errors

TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst", ".rst.txt")


class CorpusInputError(errors.UserError, ValueError):
  """An input spec matches nothing, or an input file can't be read as documents (names the file and line)."""


@dataclasses.dataclass
class Documents:
  """The documents in input order; `file_of[i]` indexes `files` (the file document i came from)."""

  texts: list[str]
  file_of: list[int]
  files: list[str]


def iter_input_files(inputs: Sequence[str]) -> list[str]:
  files: list[str] = []
  for spec in inputs:
    if os.path.isdir(spec):
      for root, _dirs, names in sorted(os.walk(spec)):
        for n in sorted(names):
          if n.endswith(TEXT_SUFFIXES + (".jsonl", ".json")):
            files.append(os.path.join(root, n))
    else:
      matched = sorted(glob.glob(spec, recursive=True))
      if not matched:
        raise CorpusInputError(f"--input {spec!r} matches no files")
      files.extend(m for m in matched if os.path.isfile(m))
  if not files:
    raise CorpusInputError(f"--input {' '.join(inputs)}: no text ({', '.join(TEXT_SUFFIXES)}) or JSONL files there")
  return files


def _read_file(path: str, jsonl_field: str) -> list[str]:
  opener = gzip.open if path.endswith(".gz") else open
  name = path.removesuffix(".gz")
  try:
    with opener(path, "rt", encoding="utf-8", newline="") as f:
      if not name.endswith((".jsonl", ".json")):
        return [f.read()]
      docs = []
      for lineno, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          obj = json.loads(line)
        except json.JSONDecodeError as e:
          raise CorpusInputError(f"{path}:{lineno}: not a JSON line ({e.msg})") from None
        if isinstance(obj, str):
          docs.append(obj)
        elif isinstance(obj, dict) and isinstance(obj.get(jsonl_field), str):
          docs.append(obj[jsonl_field])
        else:
          raise CorpusInputError(f"{path}:{lineno}: no string field {jsonl_field!r} (--jsonl_field)")
      return docs
  except UnicodeDecodeError as e:
    raise CorpusInputError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None


def read_documents(files: Sequence[str], jsonl_field: str = "text", *, progress: bool = False) -> Documents:
  """Reads every file (a progress bar over files when `progress`)."""
  from tqdm import tqdm

  texts: list[str] = []
  file_of: list[int] = []
  for i, path in enumerate(tqdm(files, desc="read", unit="file", disable=not progress)):
    docs = _read_file(path, jsonl_field)
    texts.extend(docs)
    file_of.extend([i] * len(docs))
  return Documents(texts, file_of, list(files))


def clean_basic(text: str) -> str:
  """NFC, \\r\\n -> \\n, trailing spaces removed, >2 blank lines collapsed, stripped."""
  text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
  text = "\n".join(line.rstrip() for line in text.split("\n"))
  text = re.sub(r"\n{3,}", "\n\n", text)
  return text.strip()


def clean_gpt1(text: str) -> str:
  """The original project's cleaning: ftfy (if installed) + GPT-1 ``text_standardize``."""
  try:
    import ftfy

    text = ftfy.fix_text(text)
  except ImportError:
    pass
  text = text.replace("—", "-").replace("–", "-").replace("―", "-")
  text = text.replace("…", "...").replace("´", "'")
  text = re.sub(r"""(-+|~+|!+|"+|;+|\?+|\++|,+|\)+|\(+|\\+|\/+|\*+|\[+|\]+|}+|{+|\|+|_+)""", r" \1 ", text)
  text = re.sub(r"\s*\n\s*", " \n ", text)
  text = re.sub(r"[^\S\n]+", " ", text)
  return text.strip()


CLEANERS = {"none": None, "basic": clean_basic, "gpt1": clean_gpt1}
