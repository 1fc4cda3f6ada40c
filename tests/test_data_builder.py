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


# ----------------------------------------------------------------- the builder's gin file, split, speed path
LINES = [
  f"Line {i} of the story: the {w} sat by the {v} and watched the {u}."
  for i in range(400)
  for w, v, u in [(("cat", "dog", "owl")[i % 3], ("river", "fire", "door")[i % 3], ("moon", "rain", "road")[i % 3])]
]


def _book_folder(tmp_path, n_files=5, lines=80):
  d = tmp_path / "books"
  d.mkdir()
  for f in range(n_files):
    (d / f"book{f}.txt").write_text("\n".join(LINES[f * lines : (f + 1) * lines]) + "\n", encoding="utf-8")
  return d


def _build(tmp_path, *extra, inp=None, out="out"):
  inp = inp or str(_book_folder(tmp_path))
  argv = ["--input", inp, "--output_dir", str(tmp_path / out), "--name", "books", "--n_ctx", "64", "--quiet"]
  return build_corpus.build(build_corpus.parse_args(argv + list(extra)))


def test_corpus_gin_binds_task_and_the_corpus_vocabulary_after_quickstart(tmp_path, monkeypatch):
  import gin
  from gpt_plugin.data import corpus_gin
  from gpt_plugin import gin_utils

  assert [corpus_gin.padded_vocab_size(n) for n in (50257, 8192, 300)] == [50304, 8192, 384]
  meta = _build(tmp_path, "--train_tokenizer", "300")
  gin_file = tmp_path / "out" / "books.gin"
  assert meta["gin"] == "books.gin" and meta["tokenizer"]["padded_vocab_size"] == 384
  text = gin_file.read_text()
  assert f"'{tmp_path / 'out' / 'tokenizer.json'}'" in text and f"'{tmp_path / 'out' / 'books_train.index'}'" in text
  monkeypatch.chdir(tmp_path)  # absolute paths: works from any folder
  gin_utils.parse_gin(["runs/quickstart.gin", str(gin_file)], finalize=False)
  try:
    assert gin.query_parameter("%VOCAB_SIZE") == 384
    vocab = gin.query_parameter("%VOCABULARY").scoped_configurable_fn()
    assert isinstance(vocab, vocabularies.HFTokenizerVocabulary) and vocab.vocab_size == 300 and vocab.eos_id == 1
    assert (
      vocab.tokenizer.to_str()
      == vocabularies.get_vocabulary(str(tmp_path / "out" / "tokenizer.json")).tokenizer.to_str()
    )
    assert gin.query_parameter("%MIXTURE_OR_TASK_NAME").scoped_configurable_fn() == "books"
  finally:
    gin.clear_config()
  it = pipeline.get_dataset("books", {"targets": 64}, "validation", 1, shuffle=False, pack=False, num_epochs=1)
  n = sum(int((b["decoder_target_tokens"] != 0).sum()) for b in it)
  assert n == meta["num_validation_tokens"] > 0


def test_validation_is_drawn_from_every_file_when_files_are_few(tmp_path):
  meta = _build(tmp_path, "--train_tokenizer", "300", "--validation_fraction", "0.1")
  assert meta["split"]["by"] == "within"  # 5 files x 0.1 would be 0-1 whole files
  rows = meta["inputs"]
  assert [os.path.basename(r["file"]) for r in rows] == [f"book{i}.txt" for i in range(5)]
  for r in rows:
    assert r["train_documents"] == r["validation_documents"] == 1
    assert 0.05 < r["validation_bytes"] / (r["train_bytes"] + r["validation_bytes"]) < 0.15
  assert (
    meta["tokenizer"]["sha256"]
    == __import__("hashlib").sha256((tmp_path / "out" / "tokenizer.json").read_bytes()).hexdigest()
  )
  assert meta["num_train_tokens"] + meta["num_validation_tokens"] > 0
  # each file's held-out piece is its last lines, cut at a line break
  text = (tmp_path / "books" / "book0.txt").read_text()
  cut = corpus_split_tail = __import__("gpt_plugin.data.corpus_split", fromlist=["x"]).tail_cut(text, 0.1)
  assert text[corpus_split_tail - 1] == "\n" and 0.85 < cut / len(text) < 0.95


def test_document_split_samples_across_the_corpus():
  from gpt_plugin.data import corpus_split

  texts = [f"doc {i}" for i in range(1000)]
  s = corpus_split.split_corpus(texts, list(range(1000)), validation_fraction=0.05, seed=3)
  assert s.mode == "document" and len(s.texts["validation"]) == 50
  val = sorted(s.file_of["validation"])
  assert val[0] < 100 and val[-1] > 900  # spread over the corpus, not a run of neighbours
  assert max(np.diff(val)) < 200
  with pytest.raises(corpus_split.SplitError, match="--validation_docs counts whole documents"):
    corpus_split.split_corpus(texts, list(range(1000)), mode="within", validation_docs=3)


def test_builder_tokenises_as_the_training_vocabulary():
  import seqio

  import tasks
  from gpt_plugin.data import corpus_tokenizer

  spec = corpus_tokenizer._hf_spec(tasks.PYDOCS_TOKENIZER)
  got = corpus_tokenizer.Encoder(spec).encode_batch(DOCS)
  vocab = tasks.pydocs_vocabulary()
  assert spec.vocab_size == vocab.vocab_size and spec.eos_id == vocab.eos_id
  assert all(g.tolist() == list(vocab.encode(d)) for g, d in zip(got, DOCS))
  got = corpus_tokenizer.Encoder(corpus_tokenizer.TokenizerSpec("byte")).encode_batch(DOCS)
  assert all(g.tolist() == list(seqio.ByteVocabulary().encode(d)) for g, d in zip(got, DOCS))


def test_builder_and_its_workers_import_no_tensorflow(tmp_path):
  import subprocess
  import sys

  books = _book_folder(tmp_path)
  code = (
    "import sys\n"
    "from gpt_plugin.data import build_corpus, corpus_encode, corpus_tokenizer\n"
    "for w, out in ((1, 'one'), (2, 'two')):\n"
    f"  rc = build_corpus.main(['--input', {str(books)!r}, '--output_dir', {str(tmp_path)!r} + '/' + out,\n"
    "    '--name', 'b', '--train_tokenizer', '300', '--n_ctx', '64', '--num_workers', str(w), '--quiet'])\n"
    "  assert rc == 0\n"
    "heavy = [m for m in ('tensorflow', 'seqio', 'jax') if m in sys.modules]\n"
    f"spec = corpus_tokenizer._hf_spec({str(tmp_path / 'one' / 'tokenizer.json')!r})\n"
    "with corpus_encode.start_pool(spec, 2) as pool:\n"
    "  in_worker = pool.apply(eval, (\"[m for m in ('tensorflow', 'seqio') if m in __import__('sys').modules]\",))\n"
    "print('HEAVY', heavy, in_worker)\n"
  )
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "HEAVY [] []" in r.stdout
  assert "tokens/s (2 processes)" in r.stderr and "tokens/s (1 process)" in r.stderr
  for name in os.listdir(tmp_path / "one"):  # the pool gives the same bytes as this process
    if name.endswith(".tar.gz"):
      assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_rebuilding_the_bundled_corpus_gives_the_same_shards(tmp_path):
  import tasks
  from benchmarks import builder_throughput

  docs = builder_throughput.bundled_documents(builder_throughput.load_tokenizer())
  jsonl = tmp_path / "pydocs.jsonl"
  jsonl.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
  argv = ["--input", str(jsonl), "--output_dir", str(tmp_path / "out"), "--name", "pydocs", "--tokenizer"]
  argv += [tasks.PYDOCS_TOKENIZER, "--n_ctx", "1024", "--max_samples_per_shard", "32", "--quiet"]
  meta = build_corpus.build(build_corpus.parse_args(argv))
  with open(os.path.join(tasks.SAMPLE_CORPUS_DIR, "metadata.json")) as f:
    bundled = json.load(f)
  assert meta["split"]["by"] == "document"
  for split in ("train", "validation"):
    assert meta[f"{split}_shards"] == bundled[f"{split}_shards"]
    assert meta[f"num_{split}_tokens"] == bundled[f"num_{split}_tokens"]
    for name in meta[f"{split}_shards"]:
      got = tarfile_members(tmp_path / "out" / name)
      assert got == tarfile_members(os.path.join(tasks.SAMPLE_CORPUS_DIR, name)), name


def tarfile_members(path):
  import tarfile

  with tarfile.open(path) as tar:
    return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


@pytest.mark.parametrize(
  "args, message",
  [
    (["--input", "{tmp}/nothing/*.txt", "--tokenizer", "byte"], "ERROR: --input '{tmp}/nothing/*.txt' matches no"),
    (["--input", "{tmp}/bad.jsonl", "--tokenizer", "byte"], "ERROR: {tmp}/bad.jsonl:2: not a JSON line"),
    (["--input", "{tmp}/bad.jsonl", "--tokenizer", "{tmp}/missing.json"], "ERROR: --tokenizer {tmp}/missing.json: not"),
    (["--input", "{tmp}/ok.txt", "--tokenizer", "{tmp}/ok.txt"], "ERROR: --tokenizer {tmp}/ok.txt: not a tokenizer"),
    (["--input", "{tmp}/ok.txt", "--tokenizer", "byte", "--n_ctx", "0"], "ERROR: --n_ctx 0: must be a positive"),
    (["--input", "{tmp}/ok.txt"], "ERROR: give --tokenizer"),
    (["--input", "{tmp}/ok.txt", "--train_tokenizer", "100"], "ERROR: --train_tokenizer 100: a byte-level BPE needs"),
    (["--input", "{tmp}/ok.txt", "--tokenizer", "byte", "--validation_fraction", "1.5"], "--validation_fraction 1.5"),
    (["--input", "{tmp}/ok.txt", "--tokenizer", "byte", "--dtype", "float32"], "ERROR: --dtype float32: not an integ"),
  ],
)
def test_bad_input_is_one_error_line_and_exit_2(tmp_path, capsys, args, message):
  (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\nnot json\n')
  (tmp_path / "ok.txt").write_text("some text\n")
  argv = [a.format(tmp=tmp_path) for a in args] + ["--output_dir", str(tmp_path / "out"), "--quiet"]
  from gpt_plugin import cli

  assert cli.run_argparse(build_corpus.main, argv) == 2  # the runner's own entry: one ERROR line, exit 2
  err = capsys.readouterr().err
  assert message.format(tmp=tmp_path) in err and err.count("ERROR") == 1 and "Traceback" not in err
  assert not (tmp_path / "out").exists()  # nothing written


def test_chunks_are_sized_by_bytes_and_the_default_is_one_process_for_tokenizers():
  from gpt_plugin.data import corpus_encode, corpus_tokenizer

  texts = ["é" * 500] * 10 + ["x" * 5000] + ["ab"] * 3  # "é" is 2 bytes
  ranges = corpus_encode.byte_chunks(texts, 2000)
  assert ranges == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10), (10, 11), (11, 14)]
  hf = corpus_tokenizer.TokenizerSpec("hf", "x.json")
  assert corpus_encode.default_num_workers(hf, 1 << 30) == 1
  assert corpus_encode.default_num_workers(corpus_tokenizer.TokenizerSpec("byte"), 1 << 10) == 1
