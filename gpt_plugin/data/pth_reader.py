"""Read (and write) ``torch.save``-serialised 1-D integer tensors without torch.

The original project's shards hold ``<key>.input_id.pth`` members: a
``torch.save``d 1-D ``torch.int32`` tensor of token ids.  This module is a thin
layer over :mod:`gpt_plugin.torch_archive` (the project's one restricted
``torch.save`` reader/writer, which never executes pickle): it loads the
archive and then requires a plain, 1-D, contiguous integer tensor.

Errors (all ``ValueError``):

* :class:`PthCorruptError` (= ``torch_archive.TorchFileCorruptError``): the bytes
  are not a readable torch zip archive (truncated, garbage, short storage...);
* :class:`UnsafePickleError` (= ``torch_archive.UnsafePickleError``): the pickle
  references anything but a plain tensor rebuild (e.g. ``os.system``), or uses
  constructs the restricted reader does not evaluate;
* :class:`PthFormatError` (= ``torch_archive.TorchFileError``, the base of both):
  readable, but not a 1-D contiguous integer tensor (float dtype, 2-D, a dict,
  a legacy pre-1.6 file...).
"""

from __future__ import annotations

import io

import numpy as np

from gpt_plugin import torch_archive

__all__ = [
  "PthFormatError",
  "PthCorruptError",
  "UnsafePickleError",
  "read_pth_int_tensor",
  "write_pth_int_tensor",
]

PthFormatError = torch_archive.TorchFileError
PthCorruptError = torch_archive.TorchFileCorruptError
UnsafePickleError = torch_archive.UnsafePickleError
# Storage elements a token tensor may leave unused (torch.save of a slice keeps the whole storage).
MAX_UNUSED_STORAGE_ELEMENTS = 1 << 16


def read_pth_int_tensor(data: bytes, name: str = "<bytes>") -> np.ndarray:
  """Returns the 1-D integer array stored by ``torch.save(tensor)`` in ``data``.

  Raises :class:`PthCorruptError` for unreadable bytes and for members that declare
  more uncompressed bytes than their tensor needs (checked before inflating: no zip
  bombs), :class:`UnsafePickleError` for pickles that reference anything but a plain
  tensor, and :class:`PthFormatError` for tensors that are not 1-D contiguous integer
  tensors or whose storage is much larger than the tensor.
  ``name`` is what the messages call the bytes.
  """
  obj = torch_archive.load_pth(data, name=name)
  foreign = torch_archive.find_opaque(obj)
  if foreign is not None:
    raise UnsafePickleError(f"{name}: pickle references {foreign.what}; only a plain integer tensor is accepted")
  if not isinstance(obj, torch_archive.TensorRef):
    raise PthFormatError(f"{name}: top-level object is {type(obj).__name__}, not a tensor")
  if obj.dtype.kind not in "iu":
    raise PthFormatError(
      f"{name}: tensor has dtype torch.{obj.storage.type_name[: -len('Storage')]}; expected an integer tensor"
    )
  if obj.backward_hooks or obj.metadata:
    raise UnsafePickleError(f"{name}: tensor with backward hooks or metadata")
  if len(obj.shape) != 1:
    raise PthFormatError(f"{name}: tensor has shape {obj.shape}; expected 1-D")
  if obj.shape[0] > 1 and tuple(obj.stride) != (1,):
    raise PthFormatError(f"{name}: tensor is not contiguous (stride {obj.stride})")
  if obj.storage.numel > obj.shape[0] + MAX_UNUSED_STORAGE_ELEMENTS:
    raise PthFormatError(
      f"{name}: storage holds {obj.storage.numel} elements for a tensor of {obj.shape[0]}; refused unread "
      "(a token tensor is saved with its own storage)"
    )
  return obj.numpy()


def write_pth_int_tensor(ids, name: str = "archive") -> bytes:
  """Serialises a 1-D integer array in the ``torch.save`` zip format (loadable by
  ``torch.load(..., weights_only=True)``), without torch.  Deterministic bytes."""
  arr = np.ascontiguousarray(np.asarray(ids))
  if arr.ndim != 1 or arr.dtype.kind not in "iu":
    raise ValueError("expected a 1-D integer array")
  if arr.dtype.newbyteorder("=") not in torch_archive.STORAGE_DTYPES.values():
    raise ValueError(f"no torch storage for dtype {arr.dtype}")
  buf = io.BytesIO()
  torch_archive.save_pth(arr, buf, archive_name=name)
  return buf.getvalue()
