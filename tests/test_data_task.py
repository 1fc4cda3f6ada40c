"""seqio tar-shard tasks: member formats, packing, bad input, process split, resume."""

import json
import os
import shutil
import sys

import gin
import numpy as np
import pytest
import seqio

from gpt_plugin.data import pipeline, shards, tasks_lib

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "data")
sys.path.insert(0, FIXTURES)
import shardgen  # noqa: E402

VOCAB = 300


def _rand_samples(rng, n, prefix, lo=2, hi=60):
  return [(f"{prefix}_{i}", rng.integers(1, VOCAB, size=int(rng.integers(lo, hi))).astype(np.int32)) for i in range(n)]


@pytest.fixture
def npy_corpus(tmp_path):
  rng = np.random.default_rng(0)
  all_samples = {}
  for s in range(6):
    samples = _rand_samples(rng, 12, f"s{s}")
    all_samples.update(samples)
    shardgen.write_shard(str(tmp_path / f"c-{s:06d}.tar.gz"), samples)
  return str(tmp_path / "c-{000000..000005}.tar.gz"), all_samples


def _targets(name, split="train", length=64, **kw):
  """All samples' token ids via the seqio task + DecoderFeatureConverter (no packing)."""
  it = pipeline.get_dataset(name, {"targets": length}, split, 1, pack=False, shuffle=False, num_epochs=1, **kw)
  out = []
  for b in it:
    t = b["decoder_target_tokens"][0]
    out.append(t[t != 0].tolist())
  return out, it


def test_three_member_formats_exact_ids(tmp_path):
  # .input_id.pth written by real torch.save (checked-in fixture)
  shutil.copy(os.path.join(FIXTURES, "torch_input_id_pth.tar"), tmp_path / "pth-000000.tar")
  expected_pth = json.load(open(os.path.join(FIXTURES, "torch_input_id_pth.json")))["samples"]
  tasks_lib.register_tar_shard_task("t_pth", train_shards=str(tmp_path / "pth-000000.tar"), vocab_size=VOCAB + 10)
  got, _ = _targets("t_pth")
  assert got == [expected_pth[k] for k in ("sample_0", "sample_1", "sample_2")]

  # .npy (uint16 and int64 members) and a .pth written by our writer
  rng = np.random.default_rng(1)
  samples = _rand_samples(rng, 5, "n")
  samples[1] = (samples[1][0], samples[1][1].astype(np.uint16))
  samples[2] = (samples[2][0], samples[2][1].astype(np.int64))
  shardgen.write_shard(str(tmp_path / "npy-000000.tar"), samples, "npy")
  shardgen.write_shard(str(tmp_path / "wpth-000000.tar.gz"), samples, "pth")
  for name, pat in (("t_npy", "npy-000000.tar"), ("t_wpth", "wpth-000000.tar.gz")):
    tasks_lib.register_tar_shard_task(name, train_shards=str(tmp_path / pat), vocab_size=VOCAB)
    got, _ = _targets(name)
    assert got == [s[1].tolist() for s in samples]

  # .txt tokenised by the task's vocabulary (+ EOS per document)
  texts = ["Hello, world!", "ünïcödé ✓ text", "third\ndocument"]
  shardgen.write_shard(str(tmp_path / "txt-000000.tar"), [(f"d{i}", t) for i, t in enumerate(texts)], "txt")
  vocab = seqio.ByteVocabulary()
  tasks_lib.register_tar_shard_task("t_txt", train_shards=str(tmp_path / "txt-000000.tar"), vocabulary=vocab)
  got, _ = _targets("t_txt")
  assert got == [list(vocab.encode(t)) + [vocab.eos_id] for t in texts]
  assert [vocab.decode(g) for g in got] == texts


@pytest.mark.parametrize("pack", [False, True])
def test_seqio_task_with_decoder_feature_converter(npy_corpus, pack):
  pattern, all_samples = npy_corpus
  task = tasks_lib.register_tar_shard_task("t_conv", train_shards=pattern, vocab_size=VOCAB)
  ds = task.get_dataset({"targets": 32}, "train", shuffle=True, seed=3)
  ds = seqio.DecoderFeatureConverter(pack=pack)(ds, {"targets": 32})
  rows = list(ds.as_numpy_iterator())
  keys = {"decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights"}
  if pack:
    keys |= {"decoder_segment_ids", "decoder_positions"}
  assert set(rows[0]) == keys
  # every token of every sample arrives (long samples are cut into 32-token pieces)
  seen = []
  for r in rows:
    t, seg = r["decoder_target_tokens"], r.get("decoder_segment_ids", (r["decoder_target_tokens"] != 0) * 1)
    for s in np.unique(seg[seg > 0]):
      seen.append(tuple(t[seg == s]))
  want = []
  for ids in all_samples.values():
    want += [tuple(ids[i : i + 32]) for i in range(0, len(ids), 32)]
  assert sorted(seen) == sorted(want)


@pytest.mark.parametrize("pack", [False, True])
def test_numpy_fast_path_matches_tf_path(tmp_path, pack):
  rng = np.random.default_rng(2)
  for s in range(3):  # includes zero ids to exercise seqio's packing quirks
    shardgen.write_shard(
      str(tmp_path / f"z-{s}.tar"),
      [(f"k{i}", rng.integers(0, 20, size=int(rng.integers(1, 50))).astype(np.int32)) for i in range(25)],
    )
  tasks_lib.register_tar_shard_task("t_fast", train_shards=str(tmp_path / "z-{0..2}.tar"), vocab_size=20)
  kw = dict(pack=pack, num_epochs=2, seed=4, segment_samples=40)
  a = list(pipeline.get_dataset("t_fast", {"targets": 24}, "train", 3, **kw))
  b = list(pipeline.get_dataset("t_fast", {"targets": 24}, "train", 3, fast_path=False, **kw))
  assert len(a) == len(b) > 20
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      assert x[k].dtype == y[k].dtype and x[k].shape == (3, 24)
      np.testing.assert_array_equal(x[k], y[k])


@pytest.mark.parametrize("pack", [False, True])
def test_numpy_fast_path_full_rows_match_tf_path(tmp_path, pack):
  # rows of exactly the feature length (the builder's shards): whole batches of full rows, and batches that mix
  # full rows with short or zero-holding samples
  rng = np.random.default_rng(3)
  full = [(f"f{i}", rng.integers(1, 20, size=16).astype(np.uint16)) for i in range(24)]
  mixed = [(f"m{i}", rng.integers(0, 20, size=int(rng.integers(1, 40))).astype(np.int32)) for i in range(24)]
  shardgen.write_shard(str(tmp_path / "full-0.tar"), full)
  shardgen.write_shard(str(tmp_path / "full-1.tar"), mixed)
  tasks_lib.register_tar_shard_task("t_full", train_shards=str(tmp_path / "full-{0..1}.tar"), vocab_size=20)
  kw = dict(pack=pack, num_epochs=1, shuffle=False, segment_samples=16)
  a = list(pipeline.get_dataset("t_full", {"targets": 16}, "train", 4, **kw))
  b = list(pipeline.get_dataset("t_full", {"targets": 16}, "train", 4, fast_path=False, **kw))
  assert len(a) == len(b) >= 12
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      assert x[k].dtype == y[k].dtype == np.int32 and x[k].shape == (4, 16)
      np.testing.assert_array_equal(x[k], y[k])


def test_multi_process_split_disjoint_and_complete(npy_corpus):
  pattern, all_samples = npy_corpus
  tasks_lib.register_tar_shard_task("t_mp", train_shards=pattern, vocab_size=VOCAB)
  src = tasks_lib.task_source("t_mp")
  all_shards = src.list_shards("train")
  per = [src.stream_spec("train", shuffle=True, seed=0, process_index=p, process_count=2).shards for p in (0, 1)]
  assert per[0] == all_shards[0::2] and per[1] == all_shards[1::2]
  assert not set(per[0]) & set(per[1]) and set(per[0]) | set(per[1]) == set(all_shards)
  seen = []
  for p in (0, 1):
    got, _ = _targets("t_mp", process_index=p, process_count=2)
    seen.append({tuple(x) for x in got})
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == {tuple(v.tolist()) for v in all_samples.values()}
  with pytest.raises(ValueError, match="6 shards cannot be split over 7 processes"):
    pipeline.get_dataset("t_mp", {"targets": 64}, "train", 1, process_index=0, process_count=7)


@pytest.mark.parametrize("pack,fast", [(True, True), (False, True), (True, False)])
def test_resume_gives_same_next_batch(npy_corpus, pack, fast):
  pattern, _ = npy_corpus
  tasks_lib.register_tar_shard_task("t_res", train_shards=pattern, vocab_size=VOCAB, shuffle_window=7)
  kw = dict(pack=pack, seed=11, num_epochs=None, segment_samples=20, fast_path=fast)
  ref = pipeline.get_dataset("t_res", {"targets": 20}, "train", 4, **kw)
  n_ref, ks = (30, (1, 7, 13, 22)) if fast else (12, (7,))  # tf path: slower, fewer points
  batches = [next(ref) for _ in range(n_ref)]  # crosses segments and epochs (72 samples/epoch)
  for k in ks:
    it = pipeline.get_dataset("t_res", {"targets": 20}, "train", 4, **kw)
    for _ in range(k):
      next(it)
    state = json.loads(json.dumps(it.get_state()))
    resumed = pipeline.get_dataset("t_res", {"targets": 20}, "train", 4, state=state, **kw)
    for j in range(k, min(k + 3, n_ref)):
      b = next(resumed)
      for key in b:
        np.testing.assert_array_equal(b[key], batches[j][key])
    # the restore re-read at most one segment, not the epoch start
    assert resumed.stats()["samples"] <= 2 * 20 + 7 + 3 * 4 * 2
  # shuffling: seeded and reproducible, different seeds differ
  other = pipeline.get_dataset("t_res", {"targets": 20}, "train", 4, **{**kw, "seed": 12})
  assert any(not np.array_equal(next(other)["decoder_target_tokens"], b["decoder_target_tokens"]) for b in batches[:3])


def test_resume_state_mismatch_is_an_error(npy_corpus):
  pattern, _ = npy_corpus
  tasks_lib.register_tar_shard_task("t_mis", train_shards=pattern, vocab_size=VOCAB)
  it = pipeline.get_dataset("t_mis", {"targets": 20}, "train", 4)
  next(it)
  with pytest.raises(ValueError, match="batch_size"):
    pipeline.get_dataset("t_mis", {"targets": 20}, "train", 8, state=it.get_state())


def test_corrupt_shard_skipped_with_warning_and_strict_error(tmp_path, caplog):
  rng = np.random.default_rng(5)
  good = _rand_samples(rng, 10, "g")
  bad = _rand_samples(rng, 10, "b", lo=200, hi=201)
  shardgen.write_shard(str(tmp_path / "x-0.tar.gz"), good)
  shardgen.write_shard(str(tmp_path / "x-1.tar.gz"), bad)
  shardgen.truncate(str(tmp_path / "x-1.tar.gz"))
  # a corrupt member inside an intact shard
  shardgen.write_shard(
    str(tmp_path / "x-2.tar"), [("ok", np.arange(1, 5)), ("broken", ("input_id.pth", b"PK\x03\x04junk"))]
  )
  tasks_lib.register_tar_shard_task("t_bad", train_shards=str(tmp_path / "x-{0..2}.tar*"), vocab_size=VOCAB)
  with caplog.at_level("WARNING"):
    got, it = _targets("t_bad", length=256)
  st = it.stats()
  assert st["corrupt_shards"] == 1 and st["skipped_samples"] >= 2
  assert 10 + 1 <= len(got) < 10 + 1 + 10
  assert "x-1.tar.gz" in caplog.text and "b_" in caplog.text  # names shard and member
  assert "x-2.tar" in caplog.text and "broken" in caplog.text
  tasks_lib.register_tar_shard_task(
    "t_bad_strict", train_shards=str(tmp_path / "x-{0..2}.tar*"), vocab_size=VOCAB, strict=True
  )
  with pytest.raises(shards.CorruptSampleError, match="x-1.tar.gz|broken"):
    _targets("t_bad_strict", length=256)


@pytest.mark.parametrize(
  "payload,msg",
  [
    (np.array([1, 2, 999], np.int32), "token id 999 >= vocabulary size 300"),
    (np.array([], np.int32), "empty sample"),
    (np.array([1.0, 2.0], np.float32), "dtype float32"),
    (np.array([[1, 2], [3, 4]], np.int32), "shape"),
  ],
)
def test_bad_samples_error_names_shard_and_key(tmp_path, payload, msg):
  shardgen.write_shard(str(tmp_path / "e-0.tar"), [("fine", np.array([3, 4])), ("culprit", payload)])
  tasks_lib.register_tar_shard_task("t_err", train_shards=str(tmp_path / "e-0.tar"), vocab_size=VOCAB)
  with pytest.raises(shards.DataError, match=f"e-0.tar.*culprit.*{msg}"):
    _targets("t_err")


def test_unsafe_pth_member_is_rejected(tmp_path):
  import pickle
  import zipfile, io  # noqa: E401

  marker = tmp_path / "ran"
  pkl = (
    b"\x80\x02cbuiltins\nopen\nX"
    + len(str(marker)).to_bytes(4, "little")
    + str(marker).encode()
    + b"X\x01\x00\x00\x00w\x86R."
  )
  pickle.loads  # the pickle above would create `marker` if it were executed
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w") as zf:
    zf.writestr("archive/data.pkl", pkl)
  shardgen.write_shard(str(tmp_path / "u-0.tar"), [("evil", ("input_id.pth", buf.getvalue()))])
  tasks_lib.register_tar_shard_task("t_evil", train_shards=str(tmp_path / "u-0.tar"), vocab_size=VOCAB)
  with pytest.raises(shards.DataError, match="u-0.tar.*evil.*builtins.open"):
    _targets("t_evil")
  assert not marker.exists()


def test_patterns_and_index_files(tmp_path, npy_corpus):
  pattern, _ = npy_corpus
  base = os.path.dirname(pattern)
  urls = shards.expand_shard_patterns(pattern)
  assert len(urls) == 6
  idx = tmp_path / "sub" / "train.index"
  idx.parent.mkdir()
  idx.write_text(
    "".join(f"../c-{i:06d}.tar.gz\n" for i in range(3)) + "\n" + os.path.join(base, "c-000005.tar.gz") + "\n"
  )
  got = shards.expand_shard_patterns([str(idx), os.path.join(base, "c-00000{3,4}.tar.gz")])
  assert [os.path.basename(u) for u in got] == [f"c-{i:06d}.tar.gz" for i in (0, 1, 2, 5, 3, 4)]
  assert len(shards.expand_shard_patterns(os.path.join(base, "c-*.tar.gz"))) == 6
  with pytest.raises(shards.ShardPatternError, match="nothing-{000..002}.tar"):
    shards.expand_shard_patterns(str(tmp_path / "nothing-{000..002}.tar"))
  with pytest.raises(shards.ShardPatternError, match=r"nope-\*.tar"):
    shards.expand_shard_patterns(str(tmp_path / "nope-*.tar"))
  empty = tmp_path / "empty.index"
  empty.write_text("\n")
  with pytest.raises(shards.ShardPatternError, match="empty.index.*empty"):
    shards.expand_shard_patterns(str(empty))
  tasks_lib.register_tar_shard_task("t_none", train_shards=str(tmp_path / "missing-{0..3}.tar"))
  with pytest.raises(shards.ShardPatternError, match="missing-"):
    pipeline.get_dataset("t_none", {"targets": 8}, "train", 1)


def test_gin_configurable_shard_patterns(npy_corpus):
  pattern, all_samples = npy_corpus
  gin.clear_config()
  try:
    gin.parse_config(
      [
        "tasks.tar_shard_task.name = 'gin_corpus'",
        f"tasks.tar_shard_task.train_shards = ['{pattern}']",
        f"tasks.tar_shard_task.validation_shards = '{pattern}'",
        "tasks.tar_shard_task.vocab_size = 300",
        "MIXTURE_OR_TASK_NAME = @tasks.tar_shard_task()",
        "get_name.name = %MIXTURE_OR_TASK_NAME",
      ],
      skip_unknown=["get_name"],
    )
    name = gin.query_parameter("tasks.tar_shard_task.name")
    assert tasks_lib.tar_shard_task() == name == "gin_corpus"
  finally:
    gin.clear_config()
  got, _ = _targets("gin_corpus", split="validation")
  assert sorted(map(tuple, got)) == sorted(tuple(v.tolist()) for v in all_samples.values())


def test_pydocs_vocabulary_decode_drops_padding():
  import seqio
  import tasks  # noqa: F401  (registers pydocs)

  vocab = seqio.get_mixture_or_task("pydocs").output_features["targets"].vocabulary
  ids = vocab.encode("The for statement")
  assert vocab.decode([0] + ids + [0, 0]) == "The for statement"
