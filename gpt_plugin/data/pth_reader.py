"""Read (and write) ``torch.save``-serialised 1-D integer tensors without torch.

The original project's shards hold ``<key>.input_id.pth`` members: a
``torch.save``d 1-D ``torch.int32`` tensor of token ids.  ``torch.save`` writes
a zip archive ``<name>/data.pkl`` (a pickle that references storages by
persistent id), ``<name>/data/<storage key>`` (raw little-endian bytes) and a
few small metadata entries (``byteorder``, ``version``).

Nothing here executes pickle.  ``data.pkl`` is parsed opcode by opcode with
:func:`pickletools.genops` (which only decodes, never runs) and interpreted by a
tiny stack machine that knows exactly the opcodes ``torch.save`` emits for a
plain tensor.  The only globals it accepts are ``torch._utils._rebuild_tensor_v2``,
integer ``torch.*Storage`` classes and ``collections.OrderedDict``; it never
imports them, it only matches names.  Anything else (other globals, other
opcodes, a non-contiguous or multi-dimensional tensor, float storages, hooks)
raises :class:`UnsafePickleError` / :class:`PthFormatError`.
"""
from __future__ import annotations

import io
import pickletools
import zipfile

import numpy as np

__all__ = [
    "PthFormatError",
    "PthCorruptError",
    "UnsafePickleError",
    "read_pth_int_tensor",
    "write_pth_int_tensor",
]


class PthFormatError(ValueError):
    """The bytes are a readable archive, but not a plain 1-D integer tensor."""


class UnsafePickleError(PthFormatError):
    """The pickle references something other than a plain tensor rebuild."""


class PthCorruptError(PthFormatError):
    """The bytes are not a readable torch zip archive (truncated, garbage...)."""


# torch storage class name -> numpy dtype (integer storages only).
_INT_STORAGES = {
    "IntStorage": np.int32,
    "LongStorage": np.int64,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    # torch >= 2.3 has unsigned storages for uint16/32/64 tensors.
    "UInt16Storage": np.uint16,
    "UInt32Storage": np.uint32,
    "UInt64Storage": np.uint64,
}
_REBUILD = ("torch._utils", "_rebuild_tensor_v2")
_ORDERED_DICT = ("collections", "OrderedDict")


class _Global:
    """A matched, never-imported global."""

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __repr__(self):
        return f"{self.module}.{self.name}"


class _Mark:
    pass


_MARK = _Mark()


class _Storage:
    __slots__ = ("dtype", "key", "location", "numel")

    def __init__(self, dtype, key, location, numel):
        self.dtype, self.key, self.location, self.numel = dtype, key, location, numel


class _Tensor:
    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


_ALLOWED_GLOBALS = {_REBUILD, _ORDERED_DICT} | {("torch", n) for n in _INT_STORAGES}
# Non-integer storages: recognised (so the error says "wrong dtype"), still rejected.
_OTHER_STORAGES = {"FloatStorage", "DoubleStorage", "HalfStorage", "BFloat16Storage", "BoolStorage",
                   "ComplexFloatStorage", "ComplexDoubleStorage"}


def _check_global(module: str, name: str) -> _Global:
    if module == "torch" and name in _OTHER_STORAGES:
        raise PthFormatError(f"tensor has dtype torch.{name[:-len('Storage')]}; expected an integer tensor")
    if (module, name) not in _ALLOWED_GLOBALS:
        raise UnsafePickleError(
            f"pickle references global {module}.{name!s}; only a plain integer tensor is accepted")
    return _Global(module, name)


def _interpret(pkl: bytes):
    """Evaluates the restricted pickle subset; returns the top-level object."""
    stack: list = []
    memo: dict = {}
    try:
        ops = list(pickletools.genops(pkl))
    except Exception as e:  # malformed opcode stream
        raise PthCorruptError(f"malformed pickle: {e}") from None

    def pop_mark():
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is _MARK:
                items = stack[i + 1:]
                del stack[i:]
                return items
        raise UnsafePickleError("pickle MARK missing")

    for op, arg, _pos in ops:
        name = op.name
        if name in ("PROTO", "FRAME"):
            continue
        if name == "STOP":
            if len(stack) != 1:
                raise UnsafePickleError("pickle stack not balanced at STOP")
            return stack[0]
        if name in ("GLOBAL",):
            module, _, gname = arg.partition(" ")
            stack.append(_check_global(module, gname))
        elif name == "STACK_GLOBAL":
            gname, module = stack.pop(), stack.pop()
            if not isinstance(module, str) or not isinstance(gname, str):
                raise UnsafePickleError("STACK_GLOBAL with non-string operands")
            stack.append(_check_global(module, gname))
        elif name == "MARK":
            stack.append(_MARK)
        elif name in ("BININT", "BININT1", "BININT2", "LONG1", "INT", "LONG"):
            if isinstance(arg, bool) or not isinstance(arg, int):
                raise UnsafePickleError(f"unexpected {name} argument")
            stack.append(arg)
        elif name in ("BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE",
                      "SHORT_BINSTRING", "BINSTRING"):
            stack.append(str(arg))
        elif name == "NONE":
            stack.append(None)
        elif name == "NEWFALSE":
            stack.append(False)
        elif name == "NEWTRUE":
            stack.append(True)
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name == "TUPLE":
            stack.append(tuple(pop_mark()))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            if len(stack) < n:
                raise UnsafePickleError("pickle stack underflow")
            items = tuple(stack[-n:])
            del stack[-n:]
            stack.append(items)
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name in ("SETITEM", "SETITEMS"):
            items = [stack.pop(), stack.pop()][::-1] if name == "SETITEM" else pop_mark()
            target = stack[-1]
            if not isinstance(target, dict) or len(items) % 2:
                raise UnsafePickleError(f"{name} on a non-dict")
            for k, v in zip(items[::2], items[1::2]):
                if not isinstance(k, (str, int)):
                    raise UnsafePickleError("dict key of unexpected type")
                target[k] = v
        elif name in ("APPEND", "APPENDS"):
            items = [stack.pop()] if name == "APPEND" else pop_mark()
            if not isinstance(stack[-1], list):
                raise UnsafePickleError(f"{name} on a non-list")
            stack[-1].extend(items)
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[arg] = stack[-1]
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            if arg not in memo:
                raise UnsafePickleError("pickle memo reference to unknown slot")
            stack.append(memo[arg])
        elif name == "BINPERSID":
            pid = stack.pop()
            stack.append(_persistent_load(pid))
        elif name == "REDUCE":
            args, fn = stack.pop(), stack.pop()
            stack.append(_reduce(fn, args))
        else:
            raise UnsafePickleError(f"pickle opcode {name} is not allowed in a tensor file")
    raise PthCorruptError("pickle has no STOP opcode")


def _persistent_load(pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
        raise UnsafePickleError(f"unexpected persistent id {pid!r}")
    _, storage_cls, key, location, numel = pid
    if not isinstance(storage_cls, _Global) or storage_cls.module != "torch":
        raise UnsafePickleError(f"storage type {storage_cls!r} is not an integer storage")
    if storage_cls.name not in _INT_STORAGES:
        raise PthFormatError(f"storage type torch.{storage_cls.name} is not an integer storage")
    if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
        raise UnsafePickleError("malformed storage reference")
    return _Storage(np.dtype(_INT_STORAGES[storage_cls.name]), key, location, numel)


def _reduce(fn, args):
    if not isinstance(fn, _Global) or not isinstance(args, tuple):
        raise UnsafePickleError("REDUCE of something that is not an allowed global")
    if (fn.module, fn.name) == _ORDERED_DICT:
        if args:
            raise UnsafePickleError("OrderedDict with arguments")
        return {}
    if (fn.module, fn.name) == _REBUILD:
        if len(args) not in (6, 7):
            raise UnsafePickleError("_rebuild_tensor_v2 with unexpected arguments")
        storage, offset, size, stride, requires_grad, hooks = args[:6]
        if not isinstance(storage, _Storage):
            raise UnsafePickleError("tensor without a storage")
        if hooks or (len(args) == 7 and args[6]):
            raise UnsafePickleError("tensor with backward hooks or metadata")
        if not (isinstance(offset, int) and isinstance(size, tuple) and isinstance(stride, tuple)):
            raise UnsafePickleError("malformed tensor geometry")
        if not isinstance(requires_grad, bool):
            raise UnsafePickleError("malformed requires_grad")
        return _Tensor(storage, offset, size, stride)
    raise UnsafePickleError(f"REDUCE of {fn!r} is not allowed")


def read_pth_int_tensor(data: bytes) -> np.ndarray:
    """Returns the 1-D integer array stored by ``torch.save(tensor)`` in ``data``.

    Raises :class:`PthCorruptError` for unreadable bytes, :class:`UnsafePickleError`
    for pickles that reference anything but a plain tensor, and
    :class:`PthFormatError` for tensors that are not 1-D contiguous integer tensors.
    """
    if data[:4] != b"PK\x03\x04":
        if data[:2] == b"\x80\x02" or data[:1] == b"\x80":
            raise PthFormatError(
                "legacy (pre-1.6, non-zip) torch serialisation is not supported; re-save with torch>=1.6")
        raise PthCorruptError("not a torch zip archive")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        names = zf.namelist()
        pkl_names = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl_names) != 1:
            raise PthCorruptError("archive has no single data.pkl")
        prefix = pkl_names[0][: -len("data.pkl")]
        pkl = zf.read(pkl_names[0])
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
        obj = _interpret(pkl)
        if not isinstance(obj, _Tensor):
            raise PthFormatError(f"top-level object is {type(obj).__name__}, not a tensor")
        st = obj.storage
        if len(obj.size) != 1:
            raise PthFormatError(f"tensor has shape {obj.size}; expected 1-D")
        n = obj.size[0]
        if n > 1 and obj.stride != (1,):
            raise PthFormatError(f"tensor is not contiguous (stride {obj.stride})")
        if obj.offset < 0 or obj.offset + n > st.numel:
            raise PthFormatError("tensor extends past its storage")
        raw = zf.read(f"{prefix}data/{st.key}")
    except PthFormatError:
        raise
    except (zipfile.BadZipFile, KeyError, EOFError, OSError, ValueError) as e:
        raise PthCorruptError(f"unreadable torch archive: {e}") from None
    if byteorder not in ("little", "big"):
        raise PthCorruptError(f"bad byteorder {byteorder!r}")
    dtype = st.dtype.newbyteorder("<" if byteorder == "little" else ">")
    if len(raw) < st.numel * dtype.itemsize:
        raise PthCorruptError("storage data is truncated")
    arr = np.frombuffer(raw, dtype=dtype, count=st.numel)[obj.offset: obj.offset + n]
    return arr.astype(st.dtype.newbyteorder("="), copy=False)


# --------------------------------------------------------------------------- writer
_DTYPE_TO_STORAGE = {np.dtype(v): k for k, v in _INT_STORAGES.items()}


def _pickle_tensor(storage_name: str, numel: int) -> bytes:
    """The protocol-2 pickle torch.save writes for a contiguous 1-D tensor."""
    out = io.BytesIO()
    w = out.write

    def uni(s: str):
        b = s.encode()
        w(b"X" + len(b).to_bytes(4, "little") + b)

    def integer(v: int):
        if 0 <= v < 256:
            w(b"K" + bytes([v]))
        elif 0 <= v < 65536:
            w(b"M" + v.to_bytes(2, "little"))
        elif -(2 ** 31) <= v < 2 ** 31:
            w(b"J" + v.to_bytes(4, "little", signed=True))
        else:
            raise ValueError("tensor too large")

    w(b"\x80\x02")                                   # PROTO 2
    w(b"ctorch._utils\n_rebuild_tensor_v2\nq\x00")  # GLOBAL, BINPUT 0
    w(b"((")                                         # MARK MARK
    uni("storage")
    w(b"ctorch\n" + storage_name.encode() + b"\nq\x01")
    uni("0")
    uni("cpu")
    integer(numel)
    w(b"tq\x02Q")                                    # TUPLE, BINPUT, BINPERSID
    integer(0)                                       # storage offset
    integer(numel)
    w(b"\x85q\x03")                                  # TUPLE1 (size)
    integer(1)
    w(b"\x85q\x04")                                  # TUPLE1 (stride)
    w(b"\x89")                                       # NEWFALSE (requires_grad)
    w(b"ccollections\nOrderedDict\nq\x05)Rq\x06")    # OrderedDict()
    w(b"tq\x07Rq\x08.")                              # TUPLE, REDUCE, STOP
    return out.getvalue()


def write_pth_int_tensor(ids, name: str = "archive") -> bytes:
    """Serialises a 1-D integer array in the ``torch.save`` zip format (loadable by
    ``torch.load(..., weights_only=True)``), without torch."""
    arr = np.ascontiguousarray(np.asarray(ids))
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise ValueError("expected a 1-D integer array")
    arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    storage_name = _DTYPE_TO_STORAGE.get(np.dtype(arr.dtype.newbyteorder("=")))
    if storage_name is None:
        raise ValueError(f"no torch storage for dtype {arr.dtype}")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for member, payload in ((f"{name}/data.pkl", _pickle_tensor(storage_name, arr.size)),
                                (f"{name}/byteorder", b"little"),
                                (f"{name}/data/0", arr.tobytes()),
                                (f"{name}/version", b"3\n")):
            zf.writestr(zipfile.ZipInfo(member, date_time=(1980, 1, 1, 0, 0, 0)), payload)
    return buf.getvalue()
