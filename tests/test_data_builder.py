"""Corpus builder round trip, and the bundled pydocs corpus."""

import json
import os

import numpy as np
import pytest

from gpt_plugin.data import build_corpus, pipeline, tasks_lib, vocabularies

DOCS = [
  "The quick brown fox jumps over the lazy dog.\n\nA second paragraph, with unicode: naïve café ✓.",
  "def f(x):\n    return x * 2  # code   with  odd   spacing\n",
  "Short.",
  "<|endoftext|> appearing literally inside a document stays text.",
] + [f"Document number {i}: " + " ".join(f"word{j % 17}" for j in range(i * 7 % 50 + 5)) for i in range(40)]


def _write_inputs(tmp_path):
  d = tmp_path / "in"
  d.mkdir()
  for i, doc in enumerate(DOCS[:10]):
    (d / f"doc{i}.txt").write_text(doc, encoding="utf-8")
  with open(d / "more.jsonl", "w", encoding="utf-8") as f:
    for doc in DOCS[10:]:
      f.write(json.dumps({"text": doc}) + "\n")
  return str(d)


@pytest.mark.parametrize("fmt", ["npy", "pth"])
def test_builder_roundtrip_detokenises_to_input_documents(tmp_path, fmt):
  out = tmp_path / "corpus"
  meta = build_corpus.build(
    build_corpus.parse_args(
      [
        "--input",
        _write_inputs(tmp_path),
        "--output_dir",
        str(out),
        "--name",
        "toy",
        "--train_tokenizer",
        "400",
        "--n_ctx",
        "64",
        "--validation_docs",
        "6",
        "--seed",
        "7",
        "--max_samples_per_shard",
        "5",
        "--format",
        fmt,
        "--num_workers",
        "1",
        "--quiet",
      ]
    )
  )
  assert meta["num_train_documents"] == len(DOCS) - 6 and meta["num_validation_documents"] == 6
  assert 256 + 2 < meta["tokenizer"]["vocab_size"] <= 400 and meta["tokenizer"]["eos_id"] == 1
  assert len(meta["train_shards"]) > 1 and meta["n_ctx"] == 64
  vocab = vocabularies.get_vocabulary(str(out / "tokenizer.json"))
  tasks_lib.register_tar_shard_task(
    "toy",
    train_shards=str(out / "toy_train.index"),
    validation_shards=str(out / "toy_validation.index"),
    vocabulary=vocab,
  )
  decoded = {}
  for split in ("train", "validation"):
    it = pipeline.get_dataset("toy", {"targets": 64}, split, 1, shuffle=False, pack=False, num_epochs=1)
    rows = [b["decoder_target_tokens"][0] for b in it]
    assert len(rows) == meta[f"num_{split}_samples"]
    assert all((r != 0).sum() == 64 for r in rows[:-1])  # packed rows of n_ctx
    stream = np.concatenate([r[r != 0] for r in rows])
    assert stream.size == meta[f"num_{split}_tokens"] and stream[-1] == vocab.eos_id
    docs = np.split(stream, np.flatnonzero(stream == vocab.eos_id) + 1)[:-1]
    decoded[split] = [vocab.decode_document(d) for d in docs]
    assert all(d[-1] == vocab.eos_id and (d[:-1] != vocab.eos_id).all() for d in docs)  # one EOS per doc
  assert sorted(decoded["train"] + decoded["validation"]) == sorted(DOCS)
  assert not set(decoded["train"]) & set(decoded["validation"])
  # same seed -> same split and bytes
  meta2 = build_corpus.build(
    build_corpus.parse_args(
      [
        "--input",
        os.path.join(tmp_path, "in"),
        "--output_dir",
        str(tmp_path / "again"),
        "--name",
        "toy",
        "--tokenizer",
        str(out / "tokenizer.json"),
        "--n_ctx",
        "64",
        "--validation_docs",
        "6",
        "--seed",
        "7",
        "--max_samples_per_shard",
        "5",
        "--format",
        fmt,
        "--num_workers",
        "1",
        "--quiet",
      ]
    )
  )
  assert meta2["train_shards"] == meta["train_shards"]
  for name in meta["train_shards"]:
    assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes()


def test_cleaning_and_packing_helpers():
  assert build_corpus.clean_basic("a  \r\nb\n\n\n\nc  ") == "a\nb\n\nc"
  assert build_corpus.clean_gpt1("Hello,world...(yes)") == "Hello , world... ( yes )"
  rows = list(build_corpus.pack_rows([np.arange(1, 6), np.arange(10, 13)], 4, eos_id=99))
  assert [r.tolist() for r in rows] == [[1, 2, 3, 4], [5, 99, 10, 11], [12, 99]]
  rows = list(build_corpus.pack_rows([np.arange(1, 6), np.arange(10, 13)], 4, eos_id=99, drop_remainder=True))
  assert len(rows) == 2
  train, val = build_corpus.split_documents(
    100, validation_fraction=0.1, validation_docs=None, seed=1, shuffle_docs=True
  )
  assert len(val) == 10 and sorted(train + val) == list(range(100))


def test_bundled_pydocs_corpus():
  import tasks

  meta = json.load(open(os.path.join(tasks.SAMPLE_CORPUS_DIR, "metadata.json")))
  assert meta["raw_text_bytes"] >= 1_000_000
  assert os.path.exists(os.path.join(tasks.SAMPLE_CORPUS_DIR, "LICENSE"))
  assert os.path.exists(os.path.join(tasks.SAMPLE_CORPUS_DIR, "PROVENANCE.md"))
  vocab = tasks.pydocs_vocabulary()
  assert vocab.vocab_size == 8192 == meta["tokenizer"]["vocab_size"] and vocab.eos_id == 1
  it = pipeline.get_dataset("pydocs", {"targets": 1024}, "validation", 1, shuffle=False, num_epochs=1)
  n = sum(int(b["decoder_loss_weights"].sum()) for b in it)
  assert n == meta["num_validation_tokens"]
  it = pipeline.get_dataset("pydocs", {"targets": 128}, "train", 4, seed=0)
  b = next(it)
  assert b["decoder_target_tokens"].shape == (4, 128) and b["decoder_target_tokens"].max() < 8192
  text = vocab.decode_document(b["decoder_target_tokens"][0])
  assert sum(w in text.lower().split() for w in ("the", "a", "of", "is", "to")) >= 1
  assert it.stats()["skipped_samples"] == 0
