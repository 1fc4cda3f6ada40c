"""The torch-free .pth reader: real torch fixtures, the writer, and unsafe pickles."""

import importlib.util
import io
import json
import os
import pickle
import tarfile
import zipfile

import numpy as np
import pytest

from gpt_plugin.data import pth_reader

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "data")


def _fixture_members():
  with tarfile.open(os.path.join(FIXTURES, "torch_input_id_pth.tar")) as tar:
    return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_checked_in_torch_fixture_reads_exactly():
  expected = json.load(open(os.path.join(FIXTURES, "torch_input_id_pth.json")))["samples"]
  members = _fixture_members()
  assert len(members) == 3
  for key, ids in expected.items():
    arr = pth_reader.read_pth_int_tensor(members[f"{key}.input_id.pth"])
    assert arr.dtype == np.int32
    np.testing.assert_array_equal(arr, np.asarray(ids, np.int32))


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.int16, np.uint8])
def test_writer_roundtrip(dtype):
  ids = (np.arange(257) % 250).astype(dtype)
  data = pth_reader.write_pth_int_tensor(ids)
  out = pth_reader.read_pth_int_tensor(data)
  assert out.dtype == dtype
  np.testing.assert_array_equal(out, ids)
  assert data == pth_reader.write_pth_int_tensor(ids)  # deterministic bytes


def _torch_like_zip(pkl: bytes, storage: bytes = b"") -> bytes:
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w") as zf:
    zf.writestr("archive/data.pkl", pkl)
    zf.writestr("archive/byteorder", "little")
    zf.writestr("archive/data/0", storage)
  return buf.getvalue()


class _Evil:
  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (open, (self.path, "w"))


def test_code_running_pickle_is_rejected_and_never_run(tmp_path):
  marker = tmp_path / "pwned"
  pkl = pickle.dumps(_Evil(str(marker)), protocol=2)
  with pytest.raises(pth_reader.UnsafePickleError, match="builtins|io"):
    pth_reader.read_pth_int_tensor(_torch_like_zip(pkl))
  assert not marker.exists()
  # also a non-tensor object made of allowed opcodes only
  with pytest.raises(pth_reader.PthFormatError, match="not a tensor"):
    pth_reader.read_pth_int_tensor(_torch_like_zip(pickle.dumps({"a": 1}, protocol=2)))
  # os.system via GLOBAL/REDUCE written by hand
  pkl = b"\x80\x02cos\nsystem\nX\x05\x00\x00\x00touchR."
  with pytest.raises(pth_reader.UnsafePickleError, match="os.system"):
    pth_reader.read_pth_int_tensor(_torch_like_zip(pkl))


def test_wrong_dtype_shape_and_corruption():
  good = pth_reader.write_pth_int_tensor(np.arange(10, dtype=np.int32))
  float_pkl = zipfile.ZipFile(io.BytesIO(good)).read("archive/data.pkl").replace(b"IntStorage", b"FloatStorage")
  with pytest.raises(pth_reader.PthFormatError, match="Float"):
    pth_reader.read_pth_int_tensor(_torch_like_zip(float_pkl, b"\0" * 40))
  with pytest.raises(pth_reader.PthCorruptError):
    pth_reader.read_pth_int_tensor(good[: len(good) // 2])
  with pytest.raises(pth_reader.PthCorruptError):
    pth_reader.read_pth_int_tensor(b"garbage")
  pkl = zipfile.ZipFile(io.BytesIO(good)).read("archive/data.pkl")
  with pytest.raises(pth_reader.PthCorruptError, match="truncated"):
    pth_reader.read_pth_int_tensor(_torch_like_zip(pkl, b"\0" * 8))


def test_members_declaring_more_than_needed_are_refused_before_inflating(monkeypatch):
  from gpt_plugin import torch_archive

  good = pth_reader.write_pth_int_tensor(np.arange(10, dtype=np.int32))
  pkl = zipfile.ZipFile(io.BytesIO(good)).read("archive/data.pkl")
  # storage member larger than its 10 int32 elements (stored, so the declared size is the real one)
  with pytest.raises(pth_reader.PthCorruptError, match=r"'archive/data/0' declares 44 bytes .* need 40; refused"):
    pth_reader.read_pth_int_tensor(_torch_like_zip(pkl, b"\0" * 44))
  # a data.pkl over the cap is not read at all
  monkeypatch.setattr(torch_archive, "MAX_PICKLE_BYTES", 16)
  with pytest.raises(
    pth_reader.PthCorruptError, match=r"member 'archive/data.pkl' declares \d+ bytes .* more than the 16"
  ):
    pth_reader.read_pth_int_tensor(good)


@pytest.mark.skipif(
  importlib.util.find_spec("torch") is None,
  reason="torch is not installed (pip install '.[torch]'); the checked-in fixture covers the reader",
)
def test_real_torch_save_and_load():
  import torch

  for dt in (torch.int32, torch.int64):
    t = torch.arange(1000, dtype=dt) * 3
    b = io.BytesIO()
    torch.save(t, b)
    np.testing.assert_array_equal(pth_reader.read_pth_int_tensor(b.getvalue()), t.numpy())
  view = torch.arange(100, dtype=torch.int32)[10:20]
  b = io.BytesIO()
  torch.save(view, b)
  np.testing.assert_array_equal(pth_reader.read_pth_int_tensor(b.getvalue()), np.arange(10, 20))
  loaded = torch.load(io.BytesIO(pth_reader.write_pth_int_tensor(np.arange(7, dtype=np.int32))), weights_only=True)
  assert loaded.dtype == torch.int32 and loaded.tolist() == list(range(7))
  b = io.BytesIO()
  torch.save(torch.arange(4.0), b)
  with pytest.raises(pth_reader.PthFormatError):
    pth_reader.read_pth_int_tensor(b.getvalue())
