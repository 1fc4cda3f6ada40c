"""Data faults are never silent (issue 13, section 3 and the id check of section 2), each on crafted files.

Every test also checks that the files it crafted are unchanged afterwards (the reader never writes)."""

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import zipfile

import numpy as np
import pytest

from gpt_plugin.data import checks, pipeline, pth_reader, shards, tasks_lib
from gpt_plugin.errors import ConfigError, UserError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "data")
sys.path.insert(0, FIXTURES)
import shardgen  # noqa: E402

VOCAB = 300


def _snapshot(folder) -> dict:
  return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _read_all(name, length=64, **kw):
  it = pipeline.get_dataset(name, {"targets": length}, "train", 1, pack=False, shuffle=False, num_epochs=1, **kw)
  return [b["decoder_target_tokens"][0][b["decoder_target_tokens"][0] != 0].tolist() for b in it], it


def _ten_sample_tar(path):
  samples = [(f"s{i}", np.arange(1, 6) + i) for i in range(10)]
  shardgen.write_shard(str(path), samples)
  return samples


def _corrupt_header(path, member_index: int):
  """Overwrites the checksum field of the header of the member_index-th member (one member per sample)."""
  with tarfile.open(path) as tar:
    offset = tar.getmembers()[member_index].offset
  data = bytearray(path.read_bytes())
  data[offset + 148 : offset + 156] = b"garbage!"
  path.write_bytes(bytes(data))


def test_corrupt_header_after_first_member_is_detected(tmp_path, caplog):
  _ten_sample_tar(tmp_path / "h-0.tar")
  _corrupt_header(tmp_path / "h-0.tar", 2)
  with tarfile.open(tmp_path / "h-0.tar") as tar:  # what Python's tarfile alone makes of it: 2 samples, no error
    assert len(tar.getmembers()) == 2
  before = _snapshot(tmp_path)
  tasks_lib.register_tar_shard_task("f_hdr", train_shards=str(tmp_path / "h-0.tar"), vocab_size=VOCAB)
  with caplog.at_level("WARNING"):
    got, it = _read_all("f_hdr")
  assert len(got) == 2
  assert it.stats()["corrupt_shards"] == 1 and it.stats()["skipped_samples"] >= 1
  assert "h-0.tar" in caplog.text and "corrupt tar header" in caplog.text and "s1.npy" in caplog.text
  tasks_lib.register_tar_shard_task("f_hdr_s", train_shards=str(tmp_path / "h-0.tar"), vocab_size=VOCAB, strict=True)
  with pytest.raises(shards.CorruptSampleError, match=r"shard '.*h-0\.tar' is corrupt.*corrupt tar header"):
    _read_all("f_hdr_s")
  assert _snapshot(tmp_path) == before


def test_zeroed_header_and_index_count_are_detected(tmp_path, caplog):
  _ten_sample_tar(tmp_path / "z-0.tar")
  with tarfile.open(tmp_path / "z-0.tar") as tar:
    offset = tar.getmembers()[4].offset
  data = bytearray((tmp_path / "z-0.tar").read_bytes())
  data[offset : offset + 512] = bytes(512)  # an all-zero header reads as the end of the archive
  (tmp_path / "z-0.tar").write_bytes(bytes(data))
  _ten_sample_tar(tmp_path / "z-1.tar")  # intact, but the index claims 12 samples
  (tmp_path / "z.index").write_text("z-0.tar\t10\nz-1.tar\t12\n")
  before = _snapshot(tmp_path)
  tasks_lib.register_tar_shard_task("f_zero", train_shards=str(tmp_path / "z.index"), vocab_size=VOCAB)
  with caplog.at_level("WARNING"):
    got, it = _read_all("f_zero")
  assert len(got) == 4 + 10
  assert "z-0.tar" in caplog.text and "all-zero header" in caplog.text
  assert "z-1.tar" in caplog.text and "10 samples but its index says 12" in caplog.text
  assert it.stats()["skipped_samples"] == 6 + 2 and it.stats()["corrupt_shards"] == 2
  assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("fast", [True, False])
def test_ids_beyond_the_embedding_are_a_data_error(tmp_path, fast):
  shardgen.write_shard(str(tmp_path / "e-0.tar"), [("ok", np.arange(1, 50)), ("big", np.array([5, 255, 256, 7]))])
  before = _snapshot(tmp_path)
  # the task's vocabulary (GPT-2's 50257, pass-through) covers the ids; the model's 256 embedding rows do not
  tasks_lib.register_tar_shard_task("f_emb", train_shards=str(tmp_path / "e-0.tar"))
  with pytest.raises(shards.DataError) as e:
    _read_all("f_emb", checks=checks.DataChecks(embedding_rows=256), fast_path=fast)
  msg = str(e.value)
  assert "e-0.tar" in msg and "'big'" in msg and "member 'npy'" in msg
  assert "token id 256 >= the model's embedding rows 256 (VOCAB_SIZE)" in msg
  assert isinstance(e.value, UserError)
  got, _ = _read_all("f_emb", checks=checks.DataChecks(embedding_rows=257), fast_path=fast)
  assert got[1] == [5, 255, 256, 7]
  assert _snapshot(tmp_path) == before


def test_embedding_rows_come_from_gin(tmp_path):
  import gin

  shardgen.write_shard(str(tmp_path / "g-0.tar"), [("big", np.array([1, 300]))])
  tasks_lib.register_tar_shard_task("f_gin", train_shards=str(tmp_path / "g-0.tar"))
  gin.clear_config()
  try:
    gin.parse_config(
      "from __gin__ import dynamic_registration\n"
      "from gpt_plugin.data import checks\n"
      "VOCAB_SIZE = 256\n"
      "checks.DataChecks.embedding_rows = %VOCAB_SIZE\n"
    )
    with pytest.raises(shards.DataError, match="token id 300 >= the model's embedding rows 256"):
      _read_all("f_gin")
  finally:
    gin.clear_config()


def _bad_corpus(tmp_path):
  """40 good samples in two shards plus one of each fault: wrong dtype, wrong rank, id out of range, unreadable
  member, truncated gz (a third shard)."""
  rng = np.random.default_rng(0)
  good = [(f"g{i}", rng.integers(1, VOCAB, 8).astype(np.int32)) for i in range(40)]
  faults = [
    ("float", np.array([1.0, 2.0], np.float32)),
    ("rank2", np.array([[1, 2], [3, 4]], np.int32)),
    ("range", np.array([1, 999], np.int32)),
    ("unreadable", ("input_id.pth", b"PK\x03\x04 not a zip")),
  ]
  shardgen.write_shard(str(tmp_path / "b-0.tar"), good[:20] + faults[:2])
  shardgen.write_shard(str(tmp_path / "b-1.tar"), good[20:] + faults[2:])
  shardgen.write_shard(str(tmp_path / "b-2.tar.gz"), [(f"t{i}", rng.integers(1, VOCAB, 64)) for i in range(8)])
  shardgen.truncate(str(tmp_path / "b-2.tar.gz"))
  return good


def test_skip_policy_counts_logs_and_stops_over_the_cap(tmp_path, caplog):
  good = _bad_corpus(tmp_path)
  before = _snapshot(tmp_path)
  tasks_lib.register_tar_shard_task("f_skip", train_shards=str(tmp_path / "b-{0..2}.tar*"), vocab_size=VOCAB)
  with caplog.at_level("WARNING"):
    got, it = _read_all("f_skip", checks=checks.DataChecks(bad_samples="skip", max_skipped_fraction=0.2))
  assert {tuple(g.tolist()) for _, g in good} <= set(map(tuple, got))  # every good sample arrives
  assert len(got) < len(good) + 8
  skipped = it.stats()["skipped_samples"]
  assert skipped >= 5  # the four bad members and at least the lost sample of the truncated gz
  assert pipeline.data_metrics(it) == {"data/skipped_samples": skipped}
  for shard, member in (("b-0.tar", "float"), ("b-0.tar", "rank2"), ("b-1.tar", "range"), ("b-1.tar", "unreadable")):
    assert any(shard in r.message and f"'{member}'" in r.message for r in caplog.records), (shard, member)
  assert "b-2.tar.gz" in caplog.text
  # 5+ skipped of ~50 read: over a 5 % cap (counted over at least 20 samples) the run stops with one message
  with pytest.raises(shards.DataError, match=r"bad_samples='skip': \d+ of the \d+ samples read so far were skipped"):
    _read_all("f_skip", checks=checks.DataChecks(bad_samples="skip", max_skipped_fraction=0.05))
  # the default for this (non-builder) task is lenient: the wrong dtype is an error naming shard and member
  with pytest.raises(shards.DataError, match=r"b-0.tar.*'float'.*dtype float32"):
    _read_all("f_skip")
  assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("window", [7, 1024])
def test_skip_counters_continue_across_a_resume(tmp_path, window):
  rng = np.random.default_rng(1)
  samples = [(f"k{i}", rng.integers(1, VOCAB, 8).astype(np.int32)) for i in range(60)]
  for i in (3, 17, 41):
    samples[i] = (f"bad{i}", np.array([1.5, 2.5], np.float32))
  shardgen.write_shard(str(tmp_path / "r-0.tar"), samples[:30])
  shardgen.write_shard(str(tmp_path / "r-1.tar"), samples[30:])
  tasks_lib.register_tar_shard_task(
    "f_res", train_shards=str(tmp_path / "r-{0..1}.tar"), vocab_size=VOCAB, shuffle_window=window
  )
  kw = dict(
    pack=False,
    shuffle=True,
    seed=2,
    num_epochs=1,
    segment_samples=10,
    checks=checks.DataChecks(bad_samples="skip", max_skipped_fraction=0.2),
  )
  ref = pipeline.get_dataset("f_res", {"targets": 8}, "train", 2, **kw)
  batches = list(ref)
  assert ref.stats()["skipped_samples"] == 3
  for k in (5, 12, 20):
    it = pipeline.get_dataset("f_res", {"targets": 8}, "train", 2, **kw)
    for _ in range(k):
      next(it)
    counted = it.stats()["skipped_samples"]
    state = json.loads(json.dumps(it.get_state()))
    resumed = pipeline.get_dataset("f_res", {"targets": 8}, "train", 2, state=state, **kw)
    rest = list(resumed)
    assert len(rest) == len(batches) - k
    np.testing.assert_array_equal(rest[0]["decoder_target_tokens"], batches[k]["decoder_target_tokens"])
    assert counted <= resumed.stats()["skipped_samples"] == 3  # the whole run skipped 3, resumed or not


def test_builder_corpora_default_to_error(tmp_path):
  shardgen.write_shard(
    str(tmp_path / "c-0.tar"), [("ok", np.arange(1, 5)), ("broken", ("input_id.pth", b"PK\x03\x04junk"))]
  )
  (tmp_path / "c_train.index").write_text("c-0.tar\n")
  tasks_lib.register_tar_shard_task("f_lenient", train_shards=str(tmp_path / "c_train.index"), vocab_size=VOCAB)
  got, it = _read_all("f_lenient")  # no metadata.json: lenient, the corrupt member is skipped
  assert got == [[1, 2, 3, 4]] and it.stats()["skipped_samples"] == 1
  (tmp_path / "metadata.json").write_text(json.dumps({"builder": "python -m gpt_plugin.data.build_corpus"}))
  before = _snapshot(tmp_path)
  tasks_lib.register_tar_shard_task("f_built", train_shards=str(tmp_path / "c_train.index"), vocab_size=VOCAB)
  with pytest.raises(shards.CorruptSampleError, match=r"c-0.tar.*'broken'.*corrupt"):
    _read_all("f_built")
  with pytest.raises(ConfigError, match="bad_samples must be one of"):
    tasks_lib.register_tar_shard_task("f_x", train_shards=str(tmp_path / "c_train.index"), bad_samples="ignore")
  assert _snapshot(tmp_path) == before


def _zip_bomb_pth(path, inflated_bytes: int, declared_numel: int):
  """A torch.save-format .pth of a 64-token IntStorage tensor whose storage member inflates to inflated_bytes."""
  real = zipfile.ZipFile(io.BytesIO(pth_reader.write_pth_int_tensor(np.arange(64, dtype=np.int32))))
  pkl = real.read("archive/data.pkl")
  if declared_numel != 64:  # the pickle's storage size (BININT1 64 right after 'cpu') raised to match the bomb
    pkl = pkl.replace(b"cpuq", b"cpuq", 1)
    marker = b"X\x03\x00\x00\x00cpuK@"
    assert marker in pkl
    pkl = pkl.replace(marker, b"X\x03\x00\x00\x00cpuJ" + declared_numel.to_bytes(4, "little"), 1)
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", pkl)
    zf.writestr("archive/byteorder", b"little")
    info = zipfile.ZipInfo("archive/data/0")
    info.compress_type = zipfile.ZIP_DEFLATED
    with zf.open(info, "w", force_zip64=True) as f:
      chunk = bytes(1 << 20)
      for _ in range(inflated_bytes >> 20):
        f.write(chunk)


@pytest.mark.parametrize("declared_numel", [64, 2**28])
def test_zip_bomb_member_is_refused_with_low_peak_memory(tmp_path, declared_numel):
  bomb = tmp_path / "bomb.pth"
  _zip_bomb_pth(bomb, 1 << 30, declared_numel)
  assert bomb.stat().st_size < 2 << 20  # ~1 MB on disk, 1 GiB inflated
  shardgen.write_shard(
    str(tmp_path / "p-0.tar"), [("ok", np.arange(1, 9)), ("bomb", ("input_id.pth", bomb.read_bytes()))]
  )
  before = _snapshot(tmp_path)
  script = textwrap.dedent(
    f"""
    import tracemalloc
    from gpt_plugin.data import shards
    tracemalloc.start()
    for idx, key, members in shards.iter_tar_samples({str(tmp_path / "p-0.tar")!r}, strict=True):
      try:
        shards.decode_tokens(members, url="p-0.tar", key=key)
      except shards.DataError as e:
        print("ERROR", e)
    print("PY_PEAK_MB", tracemalloc.get_traced_memory()[1] >> 20)
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0]  # this process's peak RSS
    print("PEAK_MB", int(hwm.split()[1]) >> 10)
    """
  )
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # imports this checkout's gpt_plugin
  out = subprocess.run(
    [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True, cwd=repo
  ).stdout
  peak, py_peak = int(out.split("\nPEAK_MB")[1]), int(out.split("PY_PEAK_MB")[1].split()[0])
  assert peak < 300 and py_peak < 50, out  # inflating the member would take > 1 GiB
  assert "ERROR shard 'p-0.tar', sample 'bomb': member 'input_id.pth'" in out
  if declared_numel == 64:
    assert "declares 1073741824 bytes uncompressed, but its 64 x int32 elements need 256; refused unread" in out
  else:
    assert "storage holds 268435456 elements for a tensor of 64; refused unread" in out
  assert _snapshot(tmp_path) == before


def test_oversized_member_is_refused_unread(tmp_path, monkeypatch):
  shardgen.write_shard(str(tmp_path / "o-0.tar"), [("huge", np.arange(1, 2000))])
  monkeypatch.setattr(shards, "MAX_MEMBER_BYTES", 1000)
  tasks_lib.register_tar_shard_task("f_huge", train_shards=str(tmp_path / "o-0.tar"), vocab_size=VOCAB * 10)
  with pytest.raises(shards.DataError, match=r"o-0.tar.*'huge'.*member 'npy' declares \d+ bytes, more than the 1000"):
    _read_all("f_huge")


@pytest.mark.parametrize("lengths", [{"targets": 0}, {"targets": -4}, {"targets": 12.5}, {}])
def test_bad_task_feature_lengths_are_a_config_error(tmp_path, lengths):
  shardgen.write_shard(str(tmp_path / "l-0.tar"), [("a", np.arange(1, 9))])
  tasks_lib.register_tar_shard_task("f_len", train_shards=str(tmp_path / "l-0.tar"), vocab_size=VOCAB)
  before = _snapshot(tmp_path)
  with pytest.raises(ConfigError, match=r"TASK_FEATURE_LENGTHS"):
    pipeline.get_dataset("f_len", lengths, "train", 1)
  if lengths:
    with pytest.raises(ConfigError, match=rf"TASK_FEATURE_LENGTHS\['targets'\] = {lengths['targets']}"):
      pipeline.get_dataset("f_len", lengths, "train", 1)
  assert _snapshot(tmp_path) == before


def test_data_errors_are_user_errors():
  assert issubclass(shards.DataError, UserError) and issubclass(shards.DataError, ValueError)
  assert issubclass(shards.CorruptSampleError, UserError)
  assert issubclass(shards.ShardPatternError, UserError) and issubclass(shards.ShardPatternError, FileNotFoundError)
