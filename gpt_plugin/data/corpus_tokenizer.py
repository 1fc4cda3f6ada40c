"""The corpus builder's tokenizer: loaded with `tokenizers` / `sentencepiece` directly (no TensorFlow, no seqio).

The builder runs in a plain Python process and in worker processes; both must start fast, so this module imports
only numpy at the top. It gives the same ids as the seqio vocabularies in :mod:`gpt_plugin.data.vocabularies`
that the corpus gin binds for training (`HFTokenizerVocabulary` with literal special tokens encoded as text,
`sentencepiece_vocabulary`, `byte_vocabulary`); `tests/test_data_builder.py` checks that.

A :class:`TokenizerSpec` is small and picklable: workers rebuild the tokenizer from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from collections.abc import Iterable, Sequence

import numpy as np

from gpt_plugin import errors

PAD, EOS = "<pad>", "<|endoftext|>"
EOS_CANDIDATES = (EOS, "</s>", "<eos>", "[SEP]", "<|eos|>")  # as gpt_plugin.data.vocabularies picks them
BYTE_SPECIALS = 3  # seqio.ByteVocabulary: pad 0, eos 1, unk 2, bytes at 3..258


class TokenizerError(errors.UserError, ValueError):
  """The tokenizer given to the builder can't be used (missing file, unknown type, no EOS token)."""


@dataclasses.dataclass(frozen=True)
class TokenizerSpec:
  """What the builder tokenises with: `kind` is 'hf' (tokenizer.json), 'sentencepiece' (.model) or 'byte'."""

  kind: str
  path: str | None = None  # absolute, inside the output folder for 'hf' and 'sentencepiece'
  eos_token: str | None = None
  eos_id: int = 1
  vocab_size: int = 256 + BYTE_SPECIALS

  def sha256(self) -> str:
    if self.path is None:
      return hashlib.sha256(f"{self.kind}:{self.vocab_size}".encode()).hexdigest()
    with open(self.path, "rb") as f:
      return hashlib.sha256(f.read()).hexdigest()


def train_bpe_tokenizer(docs: Iterable[str], vocab_size: int, *, min_frequency: int = 2, show_progress: bool = False):
  """Byte-level BPE (GPT-2 style pre-tokenisation) with ``<pad>``=0, ``<|endoftext|>``=1."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    min_frequency=min_frequency,
    special_tokens=[PAD, EOS],
    show_progress=show_progress,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
  )
  tok.train_from_iterator(docs, trainer=trainer)
  return tok


def _hf_spec(path: str) -> TokenizerSpec:
  from tokenizers import Tokenizer

  tok = Tokenizer.from_file(path)
  for name in EOS_CANDIDATES:
    eos = tok.token_to_id(name)
    if eos is not None:
      return TokenizerSpec("hf", path, name, eos, tok.get_vocab_size(with_added_tokens=True))
  raise TokenizerError(f"tokenizer {path} has none of the end-of-document tokens {list(EOS_CANDIDATES)}")


def _gpt2_files_to_json(directory: str, dest: str) -> None:
  """vocab.json + merges.txt -> tokenizer.json (the GPT-2 byte-level BPE that `vocabularies.gpt2_vocabulary` builds)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers

  tok = Tokenizer(models.BPE.from_file(os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt")))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  if tok.token_to_id(EOS) is not None:
    tok.add_special_tokens([EOS])
  tok.save(dest)


def check_tokenizer_args(given: str | None, train_size: int | None) -> None:
  """The tokenizer options' errors, found before anything is written."""
  if given and train_size:
    raise TokenizerError("give either --tokenizer or --train_tokenizer, not both")
  if not given and not train_size:
    raise TokenizerError("give --tokenizer (tokenizer.json, directory, .model or 'byte') or --train_tokenizer N")
  if train_size is not None and train_size < 256 + 3:
    raise TokenizerError(f"--train_tokenizer {train_size}: a byte-level BPE needs at least 259 tokens")
  if given and given != "byte":
    if not os.path.exists(given):
      raise TokenizerError(
        f"--tokenizer {given}: not a tokenizer.json, .model file, directory or 'byte' (no such file)"
      )
    if os.path.isfile(given) and not given.endswith((".json", ".model")):
      raise TokenizerError(f"--tokenizer {given}: not a tokenizer.json, .model file, directory or 'byte'")


def prepare_tokenizer(
  given: str | None, out_dir: str, *, train_docs=None, train_size: int | None = None, **train_kw
) -> tuple[TokenizerSpec, dict]:
  """Puts the corpus' own tokenizer into `out_dir` (trained, or copied from `given`) and returns its spec and a
  description for metadata.json. `given`: a tokenizer.json, a directory (tokenizer.json, vocab.json + merges.txt,
  or a SentencePiece .model), a .model file, or 'byte'."""
  out_json = os.path.join(out_dir, "tokenizer.json")
  if train_size:
    train_bpe_tokenizer(train_docs, train_size, **train_kw).save(out_json)
    return _hf_spec(out_json), {"type": "byte-level BPE (tokenizers)", "file": "tokenizer.json", "trained_on": "train"}
  if not given:
    raise TokenizerError("give --tokenizer (tokenizer.json, directory, .model or 'byte') or --train_tokenizer N")
  desc = {"type": "given", "source": os.path.abspath(given) if given != "byte" else "byte"}
  if given == "byte":
    return TokenizerSpec("byte"), desc
  src = given
  if os.path.isdir(given):
    names = [
      n
      for n in ("tokenizer.json", "spiece.model", "tokenizer.model", "sentencepiece.model")
      if os.path.exists(os.path.join(given, n))
    ]
    if names:
      src = os.path.join(given, names[0])
    elif os.path.exists(os.path.join(given, "vocab.json")) and os.path.exists(os.path.join(given, "merges.txt")):
      _gpt2_files_to_json(given, out_json)
      desc["file"] = "tokenizer.json"
      return _hf_spec(out_json), desc
    else:
      raise TokenizerError(f"--tokenizer {given}: no tokenizer.json, vocab.json+merges.txt or *.model in it")
  if not os.path.isfile(src) or not src.endswith((".json", ".model")):
    raise TokenizerError(f"--tokenizer {given}: not a tokenizer.json, .model file, directory or 'byte'")
  dest = out_json if src.endswith(".json") else os.path.join(out_dir, "tokenizer.model")
  if os.path.abspath(src) != os.path.abspath(dest):
    shutil.copyfile(src, dest)
  desc["file"] = os.path.basename(dest)
  return (_hf_spec(dest) if dest.endswith(".json") else _sentencepiece_spec(dest)), desc


def _sentencepiece_spec(path: str) -> TokenizerSpec:
  import sentencepiece

  sp = sentencepiece.SentencePieceProcessor(model_file=path)
  if sp.eos_id() < 0:
    raise TokenizerError(f"tokenizer {path} has no end-of-document (eos) piece")
  return TokenizerSpec("sentencepiece", path, sp.id_to_piece(sp.eos_id()), sp.eos_id(), sp.get_piece_size())


class Encoder:
  """Texts -> int32 id arrays (no EOS), for one :class:`TokenizerSpec`. Built once per process."""

  def __init__(self, spec: TokenizerSpec):
    self.spec = spec
    if spec.kind == "hf":
      from tokenizers import Tokenizer

      self._tok = Tokenizer.from_file(spec.path)
      self._tok.encode_special_tokens = True  # "<|endoftext|>" inside a document is text, as in training
    elif spec.kind == "sentencepiece":
      import sentencepiece

      self._tok = sentencepiece.SentencePieceProcessor(model_file=spec.path)

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    if self.spec.kind == "hf":
      return [np.asarray(e.ids, np.int32) for e in self._tok.encode_batch_fast(list(texts), add_special_tokens=False)]
    if self.spec.kind == "sentencepiece":
      return [np.asarray(ids, np.int32) for ids in self._tok.encode(list(texts))]
    return [np.frombuffer(t.encode("utf-8"), np.uint8).astype(np.int32) + BYTE_SPECIALS for t in texts]
