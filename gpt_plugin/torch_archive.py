"""Read and write `torch.save` files without torch and without running pickle: the project's one implementation.

Used by `gpt_plugin.convert` (state dicts, Little-GPT "complete state" files) and by `gpt_plugin.data.pth_reader`
(`<key>.input_id.pth` shard members: a 1-D integer tensor).

`torch.save` (torch >= 1.6) writes a zip archive `<name>/data.pkl` (a pickle in which every tensor is a call to
`torch._utils._rebuild_tensor_v2` on a storage referenced by persistent id), `<name>/data/<key>` (the raw
little-endian bytes of each storage) and small metadata entries (`byteorder`, `version`, ...).

Reading never runs pickle: `data.pkl` is decoded opcode by opcode with `pickletools.genops` (which only parses)
and evaluated by a small stack machine. Nothing is imported, constructed or called:
  - `collections.OrderedDict` becomes a plain `dict`;
  - `torch._utils._rebuild_tensor_v2` / `_rebuild_parameter` on a `torch.<Type>Storage` becomes a `TensorRef`
    (dtype, shape, strides, storage key), read lazily from the archive as a numpy array;
  - any other global (e.g. inside an optimizer or scaler state of a "complete state" file) becomes an inert
    `Opaque` record naming it; it is never imported. Callers that need tensors only (`read_state_dict`) reject
    an `Opaque` wherever it shows up in the selected state dict.
Legacy (pre-1.6, non-zip) files are rejected with a message. Storages of the optimizer state are never read.

Errors (all `TorchFileError`, a `ValueError`; messages start with the file name, or `<bytes>`):
  - `TorchFileCorruptError`: the archive cannot be read (not a zip, truncated, a member missing or shorter than
    recorded, a pickle that does not decode); "corrupt data".
  - `UnsafePickleError`: the pickle uses an opcode or construct the restricted reader does not evaluate.
  - plain `TorchFileError`: the archive is readable but is not what was asked for (a legacy file, a tensor outside
    its storage, a state dict with non-tensor entries, ...).

Writing (`save_pth`) produces the same zip layout with a protocol-2 pickle of dicts / OrderedDicts, numbers,
strings and numpy arrays; `torch.load(path, weights_only=True)` loads it. Arrays given as the same object share
one storage (so a tied `lm_head.weight` / `wte.weight` stays tied after `load_state_dict`).
"""

from __future__ import annotations

import collections
import io
import os
import pickletools
import struct
import zipfile
import zlib
from typing import Any, BinaryIO, Dict, Mapping, Optional, Union

import ml_dtypes
import numpy as np

__all__ = [
  "TorchFileError",
  "TorchFileCorruptError",
  "UnsafePickleError",
  "TensorRef",
  "Opaque",
  "STORAGE_DTYPES",
  "find_opaque",
  "load_pth",
  "read_state_dict",
  "save_pth",
]


class TorchFileError(ValueError):
  """The file is not a usable `torch.save` zip archive: readable, but not what the caller asked for (base class)."""


class TorchFileCorruptError(TorchFileError):
  """The bytes are not a readable torch zip archive (garbage, truncated, missing or short members, bad pickle)."""


class UnsafePickleError(TorchFileError):
  """The pickle uses an opcode or construct this reader does not evaluate."""


# torch storage class -> numpy dtype.
STORAGE_DTYPES = {
  "FloatStorage": np.dtype(np.float32),
  "DoubleStorage": np.dtype(np.float64),
  "HalfStorage": np.dtype(np.float16),
  "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
  "LongStorage": np.dtype(np.int64),
  "IntStorage": np.dtype(np.int32),
  "ShortStorage": np.dtype(np.int16),
  "CharStorage": np.dtype(np.int8),
  "ByteStorage": np.dtype(np.uint8),
  "BoolStorage": np.dtype(np.bool_),
  "UInt16Storage": np.dtype(np.uint16),
  "UInt32Storage": np.dtype(np.uint32),
  "UInt64Storage": np.dtype(np.uint64),
}
_DTYPE_STORAGES = {v: k for k, v in STORAGE_DTYPES.items()}
_REBUILD_TENSOR = ("torch._utils", "_rebuild_tensor_v2")
_REBUILD_PARAMETER = ("torch._utils", "_rebuild_parameter")
_ORDERED_DICT = ("collections", "OrderedDict")


class _Global:
  __slots__ = ("module", "name")

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name

  @property
  def key(self):
    return (self.module, self.name)

  def __repr__(self):
    return f"{self.module}.{self.name}"


class Opaque:
  """An object of a non-allowlisted class, recorded but never constructed."""

  __slots__ = ("what",)

  def __init__(self, what: str):
    self.what = what

  def __repr__(self):
    return f"<not loaded: {self.what}>"


class _Storage:
  __slots__ = ("dtype", "key", "numel", "type_name")

  def __init__(self, dtype, key, numel, type_name):
    self.dtype, self.key, self.numel, self.type_name = dtype, key, numel, type_name


class TensorRef:
  """A tensor in the archive: dtype, shape, strides (elements), offset; `.numpy()` reads it.

  `storage.type_name` is the torch storage class (`"IntStorage"`, ...); `requires_grad`, `backward_hooks` and
  `metadata` are the remaining `_rebuild_tensor_v2` arguments as decoded (hooks: `{}` when none; metadata: `None`).
  """

  __slots__ = ("_archive", "storage", "offset", "shape", "stride", "requires_grad", "backward_hooks", "metadata")

  def __init__(
    self,
    archive,
    storage: _Storage,
    offset: int,
    shape: tuple,
    stride: tuple,
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
  ):
    self._archive, self.storage, self.offset, self.shape, self.stride = archive, storage, offset, shape, stride
    self.requires_grad, self.backward_hooks, self.metadata = requires_grad, backward_hooks, metadata

  @property
  def dtype(self):
    return self.storage.dtype

  def numpy(self) -> np.ndarray:
    return self._archive.tensor(self)

  def __repr__(self):
    return f"TensorRef({self.dtype}, {self.shape})"


_MARK = object()
# Largest `data.pkl` read (a state dict's pickle is kilobytes to a few MB; the tensors live in other members).
MAX_PICKLE_BYTES = 64 * 2**20
# What a damaged zip member can raise while it is read (zipfile raises ValueError for e.g. negative seeks).
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError, ValueError)


class _Archive:
  """An opened torch zip archive; reads (and caches) storages on demand."""

  def __init__(self, data: Union[str, os.PathLike, bytes], name: Optional[str] = None):
    if isinstance(data, (bytes, bytearray, memoryview)):
      data = bytes(data)
      head, fileobj, name = data[:8], io.BytesIO(data), name or "<bytes>"
    else:
      name = name or os.fspath(data)
      with open(data, "rb") as f:
        head = f.read(8)
      fileobj = data
    self.name = name
    if head[:4] != b"PK\x03\x04":
      if head[:1] == b"\x80":
        raise TorchFileError(
          f"{name}: legacy (pre-1.6, non-zip) torch serialisation is not supported; re-save it with "
          "torch >= 1.6 (`torch.save(torch.load(f), g)`, in a trusted environment)"
        )
      raise TorchFileCorruptError(f"{name}: not a torch.save zip archive")
    try:
      self.zf = zipfile.ZipFile(fileobj)
      names = self.zf.namelist()
    except _ZIP_ERRORS as e:
      raise TorchFileCorruptError(f"{name}: unreadable zip archive: {e}") from None
    pkl = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
    pkl = [n for n in pkl if n.count("/") <= 1]
    if len(pkl) != 1:
      raise TorchFileCorruptError(f"{name}: expected one data.pkl in the archive, found {pkl}")
    self.prefix = pkl[0][: -len("data.pkl")]
    self.byteorder = "little"
    if self.prefix + "byteorder" in names:
      self.byteorder = self.read_member(self.prefix + "byteorder", max_bytes=16).decode("ascii", "replace").strip()
    if self.byteorder not in ("little", "big"):
      raise TorchFileCorruptError(f"{name}: bad byteorder record {self.byteorder!r}")
    self.pickle_bytes = self.read_member(pkl[0], max_bytes=MAX_PICKLE_BYTES)
    self._cache: Dict[str, np.ndarray] = {}

  def declared_size(self, member: str) -> int:
    """The member's uncompressed size as the zip directory declares it (reading never inflates more)."""
    try:
      return self.zf.getinfo(member).file_size
    except KeyError:
      raise TorchFileCorruptError(f"{self.name}: member {member!r} is missing from the archive") from None

  def read_member(self, member: str, max_bytes: Optional[int] = None) -> bytes:
    """The member's bytes; with ``max_bytes``, a member declaring more is refused before anything is inflated."""
    if max_bytes is not None:
      declared = self.declared_size(member)
      if declared > max_bytes:
        raise TorchFileCorruptError(
          f"{self.name}: member {member!r} declares {declared} bytes uncompressed, more than the "
          f"{max_bytes} it may have; refused unread"
        )
    try:
      return self.zf.read(member)
    except KeyError:
      raise TorchFileCorruptError(f"{self.name}: member {member!r} is missing from the archive") from None
    except _ZIP_ERRORS as e:
      raise TorchFileCorruptError(f"{self.name}: member {member!r} is unreadable: {e}") from None

  def storage_array(self, st: _Storage) -> np.ndarray:
    if st.key not in self._cache:
      member = f"{self.prefix}data/{st.key}"
      dtype = st.dtype.newbyteorder("<" if self.byteorder == "little" else ">")
      needed = st.numel * dtype.itemsize
      declared = self.declared_size(member)
      if declared > needed:  # checked before inflating: a small member may declare (and inflate to) gigabytes
        raise TorchFileCorruptError(
          f"{self.name}: storage member {member!r} declares {declared} bytes uncompressed, but its "
          f"{st.numel} x {st.dtype} elements need {needed}; refused unread"
        )
      raw = self.read_member(member)  # declared size already checked against `needed`
      if len(raw) < needed:
        raise TorchFileCorruptError(
          f"{self.name}: storage member {member!r} is truncated "
          f"({len(raw)} bytes, {st.numel} x {dtype.itemsize} expected)"
        )
      arr = np.frombuffer(raw, dtype=dtype, count=st.numel)
      self._cache[st.key] = arr.astype(st.dtype, copy=False)
    return self._cache[st.key]

  def tensor(self, ref: TensorRef) -> np.ndarray:
    st = ref.storage
    shape, stride = tuple(ref.shape), tuple(ref.stride)
    if any(s < 0 for s in shape) or any(s < 0 for s in stride) or len(shape) != len(stride):
      raise TorchFileError(f"{self.name}: malformed tensor geometry {shape} / {stride}")
    empty = bool(shape) and min(shape) == 0
    last = ref.offset + sum((n - 1) * s for n, s in zip(shape, stride))
    if not empty and (ref.offset < 0 or last >= st.numel):  # checked before the storage is read
      raise TorchFileError(f"{self.name}: tensor of shape {shape} extends past its storage {st.key!r}")
    base = self.storage_array(st)
    if empty:
      return np.zeros(shape, base.dtype)
    contiguous = [1]
    for n in reversed(shape[1:]):
      contiguous.insert(0, contiguous[0] * n)
    if (
      ref.offset == 0 and int(np.prod(shape)) == base.size and (tuple(contiguous) == stride or int(np.prod(shape)) == 1)
    ):
      return base.reshape(shape)  # the whole storage, C order: a read-only view, no copy
    item = base.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
      base[ref.offset :], shape=shape, strides=[s * item for s in stride], writeable=False
    )
    return np.array(view, copy=True)


_KEY_TYPES = (str, int, float, bool, tuple, type(None))


_INT_OPS = frozenset({"BININT", "BININT1", "BININT2", "LONG1", "LONG4", "INT", "LONG"})  # INT may decode to a bool
_FLOAT_OPS = frozenset({"BINFLOAT", "FLOAT"})
_STR_OPS = frozenset(
  {"BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
)
_BYTES_OPS = frozenset({"BINBYTES", "SHORT_BINBYTES", "BINBYTES8"})
_LITERALS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False, "EMPTY_TUPLE": ()}


class _PickleMachine:
  """Evaluates `data.pkl` opcode by opcode on a stack, without importing, constructing or calling anything.

  One method per opcode group (`_HANDLERS` maps each supported opcode to its method); anything else is an
  `UnsafePickleError`. `storages` collects the storages that persistent ids reference, by key.
  """

  def __init__(self, archive: _Archive):
    self.archive = archive
    self.stack: list = []
    self.memo: dict = {}
    self.storages: Dict[str, _Storage] = {}

  def run(self) -> Any:
    try:
      ops = list(pickletools.genops(self.archive.pickle_bytes))
    except Exception as e:  # pylint: disable=broad-except
      raise TorchFileCorruptError(f"{self.archive.name}: malformed pickle: {e}") from None
    for op, arg, pos in ops:
      name = op.name
      if name == "STOP":
        if len(self.stack) != 1:
          raise self.unsafe("pickle stack not balanced at STOP")
        return self.stack[0]
      handler = self._HANDLERS.get(name)
      if handler is None:
        raise self.unsafe(f"pickle opcode {name} is not supported by the restricted reader")
      try:
        handler(self, name, arg)
      except TorchFileError:
        raise
      except (TypeError, ValueError, IndexError, KeyError, RecursionError) as e:  # e.g. an unhashable dict key
        raise self.unsafe(f"pickle opcode {name} at byte {pos} cannot be evaluated: {type(e).__name__}: {e}") from None
    raise TorchFileCorruptError(f"{self.archive.name}: pickle has no STOP opcode")

  # -- stack helpers ------------------------------------------------------------------------------------------
  def unsafe(self, msg: str) -> UnsafePickleError:
    return UnsafePickleError(f"{self.archive.name}: {msg}")

  def pop_mark(self) -> list:
    stack = self.stack
    for i in range(len(stack) - 1, -1, -1):
      if stack[i] is _MARK:
        items = stack[i + 1 :]
        del stack[i:]
        return items
    raise self.unsafe("pickle MARK missing")

  def pop(self):
    if not self.stack or self.stack[-1] is _MARK:
      raise self.unsafe("pickle stack underflow")
    return self.stack.pop()

  def top(self):
    if not self.stack or self.stack[-1] is _MARK:
      raise self.unsafe("pickle stack underflow")
    return self.stack[-1]

  def set_items(self, target: dict, items: list) -> None:
    for k, v in zip(items[::2], items[1::2]):
      if not isinstance(k, _KEY_TYPES):
        raise self.unsafe(f"dict key of unexpected type {type(k).__name__}")
      target[k] = v

  # -- opcode groups ------------------------------------------------------------------------------------------
  def op_framing(self, name, arg) -> None:  # PROTO, FRAME: nothing to evaluate
    del name, arg

  def op_constant(self, name, arg) -> None:
    if name in _INT_OPS:
      self.stack.append(arg)
    elif name in _FLOAT_OPS:
      self.stack.append(float(arg))
    elif name in _STR_OPS:
      self.stack.append(str(arg))
    elif name in _BYTES_OPS:
      self.stack.append(bytes(arg))
    else:
      self.stack.append(_LITERALS[name])

  def op_stack(self, name, arg) -> None:
    del arg
    if name == "MARK":
      self.stack.append(_MARK)
    elif name == "POP":
      self.pop()
    elif name == "POP_MARK":
      self.pop_mark()
    else:  # DUP
      self.stack.append(self.top())

  def op_memo(self, name, arg) -> None:
    if name in ("BINPUT", "LONG_BINPUT", "PUT"):
      self.memo[arg] = self.top()
    elif name == "MEMOIZE":
      self.memo[len(self.memo)] = self.top()
    else:  # BINGET, LONG_BINGET, GET
      if arg not in self.memo:
        raise self.unsafe("pickle memo reference to an unknown slot")
      self.stack.append(self.memo[arg])

  def op_tuple(self, name, arg) -> None:
    del arg
    if name == "TUPLE":
      self.stack.append(tuple(self.pop_mark()))
    else:  # TUPLE1, TUPLE2, TUPLE3
      items = [self.pop() for _ in range(int(name[-1]))][::-1]
      self.stack.append(tuple(items))

  def op_dict(self, name, arg) -> None:
    del arg
    if name == "EMPTY_DICT":
      self.stack.append({})
      return
    if name == "DICT":
      items = self.pop_mark()
      if len(items) % 2:
        raise self.unsafe("DICT with an odd number of items")
      d: dict = {}
      self.set_items(d, items)
      self.stack.append(d)
      return
    if name == "SETITEM":
      v = self.pop()
      items = [self.pop(), v]
    else:  # SETITEMS
      items = self.pop_mark()
    if len(items) % 2:
      raise self.unsafe(f"{name} with an odd number of items")
    target = self.top()
    if isinstance(target, Opaque):
      return
    if not isinstance(target, dict):
      raise self.unsafe(f"{name} on a non-dict")
    self.set_items(target, items)

  def op_list(self, name, arg) -> None:
    del arg
    if name in ("EMPTY_LIST", "EMPTY_SET"):  # a set becomes a list
      self.stack.append([])
    elif name == "LIST":
      self.stack.append(list(self.pop_mark()))
    elif name == "ADDITEMS":
      items = self.pop_mark()
      if not isinstance(self.top(), list):
        raise self.unsafe("ADDITEMS on a non-set")
      self.stack[-1].extend(items)
    else:  # APPEND, APPENDS
      items = [self.pop()] if name == "APPEND" else self.pop_mark()
      if isinstance(self.top(), Opaque):
        return
      if not isinstance(self.stack[-1], list):
        raise self.unsafe(f"{name} on a non-list")
      self.stack[-1].extend(items)

  def op_global(self, name, arg) -> None:
    if name == "GLOBAL":
      module, _, gname = arg.partition(" ")
    else:  # STACK_GLOBAL
      gname, module = self.pop(), self.pop()
      if not isinstance(module, str) or not isinstance(gname, str):
        raise self.unsafe("STACK_GLOBAL with non-string operands")
    g = _Global(module, gname)
    known = g.key in (_REBUILD_TENSOR, _REBUILD_PARAMETER, _ORDERED_DICT) or (
      module == "torch" and gname in STORAGE_DTYPES
    )
    self.stack.append(g if known else Opaque(repr(g)))

  def op_persistent_id(self, name, arg) -> None:  # BINPERSID: a storage reference
    del name, arg
    pid = self.pop()
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
      raise self.unsafe(f"unexpected persistent id {pid!r}")
    _, cls, key, _location, numel = pid
    if not isinstance(cls, _Global) or cls.module != "torch" or cls.name not in STORAGE_DTYPES:
      raise self.unsafe(f"unsupported storage type {cls!r}")
    if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
      raise self.unsafe("malformed storage reference")
    st = self.storages.setdefault(key, _Storage(STORAGE_DTYPES[cls.name], key, numel, cls.name))
    if st.dtype != STORAGE_DTYPES[cls.name] or st.numel != numel:
      raise self.unsafe(f"storage {key!r} is referenced with different types or sizes")
    self.stack.append(st)

  def op_reduce(self, name, arg) -> None:  # REDUCE: only the allowlisted calls are evaluated, and not by calling
    del name, arg
    args = self.pop()
    fn = self.pop()
    if isinstance(fn, Opaque):
      self.stack.append(Opaque(f"result of {fn.what}"))
      return
    if not isinstance(fn, _Global) or not isinstance(args, tuple):
      raise self.unsafe("REDUCE of something that is not a global")
    if fn.key == _ORDERED_DICT:
      if args:
        raise self.unsafe("OrderedDict with constructor arguments")
      self.stack.append({})
    elif fn.key == _REBUILD_TENSOR:
      self.stack.append(self._rebuild_tensor(args))
    elif fn.key == _REBUILD_PARAMETER:
      if not args or not isinstance(args[0], TensorRef):
        raise self.unsafe("_rebuild_parameter without a tensor")
      self.stack.append(args[0])
    else:
      self.stack.append(Opaque(f"{fn!r}(...)"))

  def _rebuild_tensor(self, args: tuple) -> TensorRef:
    if len(args) not in (6, 7):  # (storage, offset, size, stride, requires_grad, backward_hooks[, metadata])
      raise self.unsafe(f"_rebuild_tensor_v2 with {len(args)} arguments")
    storage, offset, size, stride, requires_grad, hooks = args[:6]
    if not isinstance(storage, _Storage):
      raise self.unsafe("tensor without a storage")
    if not (
      isinstance(offset, int)
      and isinstance(size, tuple)
      and isinstance(stride, tuple)
      and all(isinstance(s, int) for s in size + stride)
    ):
      raise self.unsafe("malformed tensor geometry")
    if not isinstance(requires_grad, bool):
      raise self.unsafe("malformed requires_grad")
    metadata = args[6] if len(args) == 7 else None
    return TensorRef(self.archive, storage, offset, size, stride, requires_grad, hooks, metadata)

  def op_object(self, name, arg) -> None:  # NEWOBJ, NEWOBJ_EX, BUILD: recorded as Opaque, never constructed
    del arg
    if name == "BUILD":
      self.pop()  # state: an OrderedDict's `_metadata` attribute, or an opaque object's state; never applied
      self.top()
      return
    if name == "NEWOBJ_EX":
      self.pop()
    self.pop()
    cls = self.pop()
    self.stack.append(Opaque(f"instance of {cls!r}"))

  _GROUPS = {
    op_framing: ("PROTO", "FRAME"),
    op_constant: (*_INT_OPS, *_FLOAT_OPS, *_STR_OPS, *_BYTES_OPS, *_LITERALS),
    op_stack: ("MARK", "POP", "POP_MARK", "DUP"),
    op_memo: ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE", "BINGET", "LONG_BINGET", "GET"),
    op_tuple: ("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3"),
    op_dict: ("EMPTY_DICT", "DICT", "SETITEM", "SETITEMS"),
    op_list: ("EMPTY_LIST", "EMPTY_SET", "LIST", "ADDITEMS", "APPEND", "APPENDS"),
    op_global: ("GLOBAL", "STACK_GLOBAL"),
    op_persistent_id: ("BINPERSID",),
    op_reduce: ("REDUCE",),
    op_object: ("NEWOBJ", "NEWOBJ_EX", "BUILD"),
  }
  _HANDLERS = {op: fn for fn, ops in _GROUPS.items() for op in ops}


def _interpret(archive: _Archive) -> Any:
  return _PickleMachine(archive).run()


def find_opaque(obj: Any) -> Optional[Opaque]:
  """The first `Opaque` inside `obj` (itself, or inside its dicts, lists and tuples), or None."""
  todo, seen = [obj], set()
  while todo:
    x = todo.pop()
    if isinstance(x, Opaque):
      return x
    if id(x) in seen or not isinstance(x, (dict, list, tuple)):
      continue
    seen.add(id(x))
    if isinstance(x, dict):
      todo.extend(reversed([y for kv in x.items() for y in kv]))
    else:
      todo.extend(reversed(x))
  return None


def load_pth(data: Union[str, os.PathLike, bytes], name: Optional[str] = None) -> Any:
  """The object stored by `torch.save`, with tensors as lazy `TensorRef`s and foreign objects as `Opaque`.

  `data`: a path or the file's bytes; `name`: what error messages call it (default: the path, or `<bytes>`).
  """
  return _interpret(_Archive(data, name))


def read_state_dict(data: Union[str, os.PathLike, bytes], key: Optional[str] = "auto") -> Dict[str, np.ndarray]:
  """A model state dict as `{name: np.ndarray}`, from a plain state dict or a dict holding one.

  `key='auto'`: the file's top-level dict is the state dict if all its values are tensors, else its
  `'state_dict'` entry (Little-GPT's "complete state" and 1B files), else its `'model'` entry. Only the
  tensors of the selected dict are read. Raises TorchFileError naming any entry that is not a tensor.
  """
  obj = load_pth(data)
  where = "<bytes>" if isinstance(data, (bytes, bytearray, memoryview)) else os.fspath(data)
  if not isinstance(obj, dict):
    raise TorchFileError(f"{where}: top-level object is {type(obj).__name__}, expected a dict")
  if key == "auto":
    if obj and all(isinstance(v, TensorRef) for v in obj.values()):
      sd = obj
    elif isinstance(obj.get("state_dict"), dict):
      sd = obj["state_dict"]
    elif isinstance(obj.get("model"), dict):
      sd = obj["model"]
    else:
      raise TorchFileError(
        f"{where}: neither a state dict nor a dict with a 'state_dict' entry; top-level keys: {sorted(map(str, obj))}"
      )
  elif key is None:
    sd = obj
  else:
    if not isinstance(obj.get(key), dict):
      raise TorchFileError(f"{where}: no dict entry {key!r}; top-level keys: {sorted(map(str, obj))}")
    sd = obj[key]
  bad = {str(k): v for k, v in sd.items() if not isinstance(v, TensorRef) or not isinstance(k, str)}
  if bad:
    shown = ", ".join(f"{k} ({type(v).__name__}: {v!r})" for k, v in list(bad.items())[:10])
    raise TorchFileError(f"{where}: the state dict has entries that are not tensors: {shown}")
  return {k: v.numpy() for k, v in sd.items()}


# ------------------------------------------------------------------------------------------------ writer
class _Writer:
  def __init__(self):
    self.out = io.BytesIO()
    self.storages: Dict[int, tuple] = {}  # id(array) -> (key, array)

  def w(self, b: bytes):
    self.out.write(b)

  def string(self, s: str):
    b = s.encode("utf-8")
    self.w(b"X" + struct.pack("<I", len(b)) + b)

  def integer(self, v: int):
    if 0 <= v < 256:
      self.w(b"K" + bytes([v]))
    elif 0 <= v < 65536:
      self.w(b"M" + struct.pack("<H", v))
    elif -(2**31) <= v < 2**31:
      self.w(b"J" + struct.pack("<i", v))
    else:
      b = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
      self.w(b"\x8a" + bytes([len(b)]) + b)  # LONG1

  def glob(self, module: str, name: str):
    self.w(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

  def ordered_dict_empty(self):
    self.glob(*_ORDERED_DICT)
    self.w(b")R")  # EMPTY_TUPLE REDUCE

  def tensor(self, arr: np.ndarray):
    dtype = np.dtype(arr.dtype).newbyteorder("=")
    if dtype not in _DTYPE_STORAGES:
      raise TypeError(f"no torch storage type for dtype {arr.dtype}")
    ident = id(arr)
    if ident not in self.storages:
      self.storages[ident] = (str(len(self.storages)), arr)
    key = self.storages[ident][0]
    shape = arr.shape
    stride, acc = [], 1
    for n in reversed(shape):
      stride.append(acc)
      acc *= n
    stride = tuple(reversed(stride))
    self.glob(*_REBUILD_TENSOR)
    self.w(b"((")  # MARK (args), MARK (persistent id)
    self.string("storage")
    self.glob("torch", _DTYPE_STORAGES[dtype])
    self.string(key)
    self.string("cpu")
    self.integer(int(arr.size))
    self.w(b"tQ")  # TUPLE, BINPERSID
    self.integer(0)
    self.w(b"(")
    for n in shape:
      self.integer(int(n))
    self.w(b"t(")
    for s in stride:
      self.integer(int(s))
    self.w(b"t\x89")  # TUPLE, NEWFALSE (requires_grad)
    self.ordered_dict_empty()  # backward hooks
    self.w(b"tR")  # TUPLE, REDUCE

  def value(self, v: Any):
    if isinstance(v, np.ndarray):
      self.tensor(v)
    elif isinstance(v, (np.generic,)):
      self.value(v.item())
    elif isinstance(v, Mapping):
      if isinstance(v, collections.OrderedDict):
        self.ordered_dict_empty()
      else:
        self.w(b"}")
      if v:
        self.w(b"(")
        for k, x in v.items():
          self.value(k)
          self.value(x)
        self.w(b"u")  # SETITEMS
    elif isinstance(v, bool):
      self.w(b"\x88" if v else b"\x89")
    elif isinstance(v, int):
      self.integer(v)
    elif isinstance(v, float):
      self.w(b"G" + struct.pack(">d", v))
    elif isinstance(v, str):
      self.string(v)
    elif v is None:
      self.w(b"N")
    elif isinstance(v, list):
      self.w(b"]")  # EMPTY_LIST
      if v:
        self.w(b"(")
        for x in v:
          self.value(x)
        self.w(b"e")  # APPENDS
    elif isinstance(v, tuple):
      self.w(b"(")
      for x in v:
        self.value(x)
      self.w(b"t")
    else:
      raise TypeError(f"save_pth cannot serialise {type(v).__name__}")


def save_pth(obj: Any, path: Union[str, os.PathLike, BinaryIO], archive_name: str = "archive") -> None:
  """Writes `obj` (dicts/OrderedDicts, lists, numbers, strings, numpy arrays) in the `torch.save` zip format.

  `path`: a file name or a writable binary file object. The bytes depend only on `obj` (fixed zip timestamps).
  """
  writer = _Writer()
  writer.w(b"\x80\x02")
  writer.value(obj)
  writer.w(b".")
  with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:

    def put(member, payload):
      zf.writestr(zipfile.ZipInfo(f"{archive_name}/{member}", date_time=(1980, 1, 1, 0, 0, 0)), payload)

    put("data.pkl", writer.out.getvalue())
    put("byteorder", b"little")
    for key, arr in writer.storages.values():
      little = np.ascontiguousarray(arr).astype(np.dtype(arr.dtype).newbyteorder("<"), copy=False)
      info = zipfile.ZipInfo(f"{archive_name}/data/{key}", date_time=(1980, 1, 1, 0, 0, 0))
      with zf.open(info, "w", force_zip64=little.nbytes > 2**31) as f:
        f.write(little.reshape(-1).view(np.uint8).data)
    put("version", b"3\n")
