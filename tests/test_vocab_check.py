"""check_model_and_task_vocab: the model's and the task's vocabularies are one tokenizer, and the embedding covers
it; otherwise one UserError naming both vocabularies and their sizes."""

import json
import os
import shutil

import pytest
import seqio

import tasks
from gpt_plugin.data import vocab_check, vocabularies
from gpt_plugin.errors import UserError


@pytest.fixture
def other_bpe(tmp_path):
  """A different tokenizer with the pydocs tokenizer's size and special ids (two tokens' ids swapped): what a
  corpus built with its own tokenizer looks like next to the pydocs vocabulary."""
  spec = json.load(open(tasks.PYDOCS_TOKENIZER))
  vocab = spec["model"]["vocab"]
  a, b = (next(t for t, i in vocab.items() if i == n) for n in (500, 501))
  vocab[a], vocab[b] = 501, 500
  path = tmp_path / "tokenizer.json"
  path.write_text(json.dumps(spec))
  return vocabularies.HFTokenizerVocabulary(str(path), eos_token="<|endoftext|>")


def test_same_tokenizer_file_passes(tmp_path):
  a = tasks.pydocs_vocabulary()
  copy = tmp_path / "copy.json"
  shutil.copy(tasks.PYDOCS_TOKENIZER, copy)
  b = vocabularies.HFTokenizerVocabulary(str(copy), eos_token="<|endoftext|>")
  vocab_check.check_model_and_task_vocab(a, b, 8192, task_name="mine")  # same hash, other path
  vocab_check.check_model_and_task_vocab(a, a, 8192 + 128)


def test_different_tokenizer_of_the_same_size_is_refused(other_bpe):
  model = tasks.pydocs_vocabulary()
  assert model.vocab_size == other_bpe.vocab_size and model.eos_id == other_bpe.eos_id
  with pytest.raises(UserError) as e:
    vocab_check.check_model_and_task_vocab(model, other_bpe, 8192, task_name="mycorpus")
  msg = str(e.value)
  assert "\n" not in msg
  assert f"the model (VOCABULARY) uses HFTokenizerVocabulary {tasks.PYDOCS_TOKENIZER!r}, 8192 tokens" in msg
  assert f"the task 'mycorpus' uses HFTokenizerVocabulary {other_bpe._tokenizer_file!r}, 8192 tokens" in msg
  assert "tokenizer files differ" in msg and "VOCABULARY" in msg and "VOCAB_SIZE" in msg


def test_pass_through_vocabularies():
  gpt2_model = seqio.PassThroughVocabulary(size=50304, eos_id=50256)  # gin/models/gpt_common.gin, padded
  gpt2_task = seqio.PassThroughVocabulary(size=50257, eos_id=50256)  # tasks.tar_shard_task's default
  vocab_check.check_model_and_task_vocab(gpt2_model, gpt2_task, 50304)
  with pytest.raises(UserError, match=r"PassThroughVocabulary, 50304 tokens, eos id 50256.*8192 tokens, eos id 1"):
    vocab_check.check_model_and_task_vocab(gpt2_model, tasks.pydocs_vocabulary(), 50304, task_name="pydocs")
  byte = seqio.ByteVocabulary()
  with pytest.raises(UserError, match="sizes differ"):
    vocab_check.check_model_and_task_vocab(byte, seqio.ByteVocabulary(extra_ids=10), 512)
  vocab_check.check_model_and_task_vocab(byte, seqio.ByteVocabulary(), 384)


def test_embedding_must_cover_the_task_vocabulary():
  pydocs = tasks.pydocs_vocabulary()
  with pytest.raises(UserError) as e:
    vocab_check.check_model_and_task_vocab(pydocs, pydocs, 256, task_name="pydocs")
  msg = str(e.value)
  assert "the model's embedding has 256 rows (VOCAB_SIZE)" in msg
  assert "the task 'pydocs' uses HFTokenizerVocabulary" in msg and "8192 tokens" in msg
  assert "Set VOCAB_SIZE to at least 8192" in msg
  with pytest.raises(UserError, match="embedding has 50257 rows.*at least 50304"):
    vocab_check.check_model_and_task_vocab(None, seqio.PassThroughVocabulary(size=50304), 50257)
  vocab_check.check_model_and_task_vocab(
    seqio.PassThroughVocabulary(size=300), seqio.PassThroughVocabulary(size=300), 300
  )


def test_hash_is_of_the_file_contents(tmp_path, other_bpe):
  a = vocab_check.vocabulary_hash(tasks.pydocs_vocabulary())
  assert a is not None and len(a) == 64
  assert vocab_check.vocabulary_hash(other_bpe) not in (None, a)
  assert vocab_check.vocabulary_hash(seqio.PassThroughVocabulary(size=10)) is None
  assert os.path.exists(tasks.PYDOCS_TOKENIZER)


def test_check_model_against_a_registered_task():
  from types import SimpleNamespace

  def model(vocab, rows):
    return SimpleNamespace(vocabulary=vocab, module=SimpleNamespace(config=SimpleNamespace(vocab_size=rows)))

  vocab_check.check_model_against_task(model(tasks.pydocs_vocabulary(), 8192), "pydocs")
  with pytest.raises(UserError, match=r"embedding has 4096 rows .* task 'pydocs'"):
    vocab_check.check_model_against_task(model(tasks.pydocs_vocabulary(), 4096), "pydocs")
  gpt2 = seqio.PassThroughVocabulary(size=50304, eos_id=50256)
  with pytest.raises(UserError, match=r"vocabulary mismatch: the model \(VOCABULARY\) uses PassThroughVocabulary"):
    vocab_check.check_model_against_task(model(gpt2, 50304), "pydocs")


def test_train_refuses_a_task_tokenised_with_another_tokenizer_before_model_dir_is_touched(tmp_path, other_bpe):
  """The README trap: the pydocs model vocabulary on a corpus tokenised with its own tokenizer."""
  from gpt_plugin.data import tasks_lib
  from train_helpers import run_train, tiny_lm

  tasks_lib.register_tar_shard_task(
    "vocab_check_other_bpe", train_shards=str(tmp_path / "none-*.tar"), vocabulary=other_bpe
  )
  model = tiny_lm()
  model.vocabulary = tasks.pydocs_vocabulary()
  model_dir = tmp_path / "run"
  with pytest.raises(UserError) as e:
    run_train(str(model_dir), model=model, task="vocab_check_other_bpe")
  assert "vocab_check_other_bpe" in str(e.value) and "8192" in str(e.value)
  assert not model_dir.exists()  # nothing written
