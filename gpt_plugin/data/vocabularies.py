"""seqio vocabularies from local files: HF ``tokenizers`` (GPT-2 BPE and others),
SentencePiece and byte-level.  Nothing here downloads.

seqio conventions to keep in mind: id 0 is padding (``DecoderFeatureConverter``
pads with 0, uses 0 as the shift-right BOS and gives loss weight 0 to target
tokens equal to 0).  Tokenizers trained by :mod:`gpt_plugin.data.build_corpus`
therefore reserve id 0 for ``<pad>`` and id 1 for ``<|endoftext|>``.  The GPT-2
vocabulary has a real token (``!``) at id 0, so with it ``!`` is never a loss
target: a known T5X/GPT-2 quirk, harmless for pretraining.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

__all__ = [
  "HFTokenizerVocabulary",
  "gpt2_vocabulary",
  "byte_vocabulary",
  "sentencepiece_vocabulary",
  "get_vocabulary",
  "vocabulary_fingerprint",
]

_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "[SEP]", "<|eos|>")


class HFTokenizerVocabulary(seqio.Vocabulary):
  """A seqio vocabulary backed by a local HF ``tokenizers`` tokenizer.

  Give either ``tokenizer_file`` (a ``tokenizer.json``) or ``vocab_file`` +
  ``merges_file`` (GPT-2 style byte-level BPE).  ``eos_token`` names the
  end-of-document token (looked up in the vocabulary); ``None`` picks the first
  of ``<|endoftext|>``, ``</s>``, ``<eos>`` that exists.  Literal special-token
  strings inside text are encoded as ordinary text, so decode(encode(s)) == s
  for byte-level tokenizers.
  """

  def __init__(
    self,
    tokenizer_file: Optional[str] = None,
    *,
    vocab_file: Optional[str] = None,
    merges_file: Optional[str] = None,
    eos_token: Optional[str] = None,
    extra_ids: int = 0,
  ):
    if tokenizer_file is None and (vocab_file is None or merges_file is None):
      raise ValueError("give tokenizer_file, or vocab_file and merges_file")
    self._tokenizer_file = tokenizer_file
    self._vocab_file = vocab_file
    self._merges_file = merges_file
    self._eos_token = eos_token
    self._tok = None
    self._eos = None
    super().__init__(extra_ids=extra_ids)
    self._load()  # fail early on missing files

  # -- loading / pickling (Tokenizer objects are rebuilt from the files) --------
  def _load(self):
    if self._tok is not None:
      return self._tok
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers

    if self._tokenizer_file is not None:
      path = self._tokenizer_file
      if path.startswith(("gs://", "s3://")) or not os.path.exists(path):
        with tf.io.gfile.GFile(path, "r") as f:
          tok = tokenizers.Tokenizer.from_str(f.read())
      else:
        tok = tokenizers.Tokenizer.from_file(path)
    else:
      tok = tokenizers.Tokenizer(models.BPE.from_file(self._vocab_file, self._merges_file))
      tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
      tok.decoder = decoders.ByteLevel()
      if tok.token_to_id("<|endoftext|>") is not None:
        tok.add_special_tokens(["<|endoftext|>"])
    try:
      tok.encode_special_tokens = True  # "<|endoftext|>" in text is text
    except AttributeError:  # very old tokenizers
      pass
    eos = None
    if self._eos_token is not None:
      eos = tok.token_to_id(self._eos_token)
      if eos is None:
        raise ValueError(f"eos token {self._eos_token!r} is not in the tokenizer")
    else:
      for cand in _EOS_CANDIDATES:
        eos = tok.token_to_id(cand)
        if eos is not None:
          break
    self._tok, self._eos = tok, eos
    return tok

  def __getstate__(self):
    state = self.__dict__.copy()
    state["_tok"] = None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)

  @property
  def tokenizer(self):
    return self._load()

  # -- seqio.Vocabulary ---------------------------------------------------------
  @property
  def eos_id(self) -> Optional[int]:
    self._load()
    return self._eos

  @property
  def unk_id(self) -> Optional[int]:
    model = self._load().model
    unk = getattr(model, "unk_token", None)
    return self._load().token_to_id(unk) if unk else None

  @property
  def _base_vocab_size(self) -> int:
    return self._load().get_vocab_size(with_added_tokens=True)

  def _encode(self, s: str) -> Sequence[int]:
    return self._load().encode(s, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """Fast batched encode (uses the tokenizers thread pool)."""
    return [e.ids for e in self._load().encode_batch(list(texts), add_special_tokens=False)]

  def _decode(self, ids) -> str:
    ids = [int(i) for i in ids]
    if self._pad_is_special():  # seqio pads with 0; padding is never text
      ids = [i for i in ids if i != 0]
    return self._load().decode(ids, skip_special_tokens=False)

  def decode_document(self, ids) -> str:
    """Decodes ids dropping EOS/pad (but not stopping at EOS)."""
    drop = {0, self.eos_id} if self._pad_is_special() else {self.eos_id}
    return self._load().decode([int(i) for i in ids if int(i) not in drop], skip_special_tokens=False)

  def _pad_is_special(self) -> bool:
    return self._load().id_to_token(0) in ("<pad>", "[PAD]", "<|pad|>")

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    def enc(x):
      if x.ndim == 0:
        return np.asarray(self._encode(x.item().decode("utf-8")), np.int32)
      raise ValueError("HFTokenizerVocabulary.encode_tf takes a scalar string")

    out = tf.numpy_function(enc, [s], tf.int32, stateful=False)
    out.set_shape([None])
    return out

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    def dec(x):
      if x.ndim == 1:
        return np.asarray(self._decode(x.tolist()).encode("utf-8"), dtype=object)
      return np.asarray(
        [self._decode(r.tolist()).encode("utf-8") for r in x.reshape(-1, x.shape[-1])], dtype=object
      ).reshape(x.shape[:-1])

    out = tf.numpy_function(dec, [ids], tf.string, stateful=False)
    out.set_shape(ids.shape[:-1])
    return out

  def __eq__(self, other):
    if not isinstance(other, HFTokenizerVocabulary):
      return False
    return (
      self._load().to_str() == other._load().to_str()
      and self.eos_id == other.eos_id
      and self.extra_ids == other.extra_ids
    )

  def __hash__(self):
    return hash((self._tokenizer_file, self._vocab_file, self._merges_file))

  def __repr__(self):
    src = self._tokenizer_file or f"{self._vocab_file}+{self._merges_file}"
    return f"HFTokenizerVocabulary({src!r}, size={self.vocab_size}, eos_id={self.eos_id})"


@gin.configurable
def gpt2_vocabulary(vocab_file: str, merges_file: str) -> HFTokenizerVocabulary:
  """GPT-2 BPE from local ``vocab.json`` + ``merges.txt`` (EOS ``<|endoftext|>`` = 50256)."""
  return HFTokenizerVocabulary(vocab_file=vocab_file, merges_file=merges_file, eos_token="<|endoftext|>")


@gin.configurable
def byte_vocabulary(extra_ids: int = 0) -> seqio.ByteVocabulary:
  """seqio's byte vocabulary: pad 0, eos 1, unk 2, bytes at 3..258."""
  return seqio.ByteVocabulary(extra_ids=extra_ids)


@gin.configurable
def sentencepiece_vocabulary(model_file: str, extra_ids: int = 0) -> seqio.SentencePieceVocabulary:
  return seqio.SentencePieceVocabulary(model_file, extra_ids=extra_ids)


@gin.configurable
def get_vocabulary(spec) -> seqio.Vocabulary:
  """Builds a vocabulary from a spec.

  ``spec`` may be a ``seqio.Vocabulary`` (returned as is), ``"byte"``, a path to a
  ``tokenizer.json`` (HF), a SentencePiece ``.model``, or a directory holding
  ``tokenizer.json``, ``vocab.json`` + ``merges.txt``, or ``spiece.model`` /
  ``tokenizer.model``.
  """
  if isinstance(spec, seqio.Vocabulary):
    return spec
  if not isinstance(spec, (str, os.PathLike)):
    raise TypeError(f"cannot build a vocabulary from {spec!r}")
  spec = os.fspath(spec)
  if spec == "byte":
    return byte_vocabulary()
  if spec.endswith(".json"):
    return HFTokenizerVocabulary(spec)
  if spec.endswith(".model"):
    return sentencepiece_vocabulary(spec)
  if tf.io.gfile.isdir(spec):
    join = os.path.join
    if tf.io.gfile.exists(join(spec, "tokenizer.json")):
      return HFTokenizerVocabulary(join(spec, "tokenizer.json"))
    if tf.io.gfile.exists(join(spec, "vocab.json")) and tf.io.gfile.exists(join(spec, "merges.txt")):
      return gpt2_vocabulary(join(spec, "vocab.json"), join(spec, "merges.txt"))
    for name in ("spiece.model", "tokenizer.model", "sentencepiece.model"):
      if tf.io.gfile.exists(join(spec, name)):
        return sentencepiece_vocabulary(join(spec, name))
    raise ValueError(f"no tokenizer.json, vocab.json+merges.txt or *.model in {spec}")
  raise ValueError(f"cannot build a vocabulary from {spec!r} (file missing or unknown type)")


def vocabulary_fingerprint(vocab: seqio.Vocabulary) -> dict:
  """A small JSON-able description (for metadata and state checks)."""
  return {
    "class": type(vocab).__name__,
    "vocab_size": int(vocab.vocab_size),
    "eos_id": None if vocab.eos_id is None else int(vocab.eos_id),
  }
