"""A strict reader of the checkpoint files ``torch.save`` writes, without ``torch.load``.

The pinned torch 2.2.1 trusts the sizes and offsets stored in a file even with ``weights_only=True``:
a crafted file can make it read past a storage (process memory ends up in the "weights") or crash
the process. PEACE therefore parses the zip archive itself:

- only stored (uncompressed) zip entries, as ``torch.save`` writes them: no zip bombs;
- ``data.pkl`` is scanned for a whitelist of pickle opcodes, then unpickled with a whitelist of
  globals (``OrderedDict``, ``_rebuild_tensor_v2``, ``_rebuild_parameter``, the storage types):
  nothing else can be named, nothing from torch is called while unpickling;
- every storage's zip entry must hold exactly ``numel x itemsize`` bytes, every tensor view must lie
  inside its storage, and the declared total is checked against ``max_bytes`` before any storage is
  read; tensors are then built from those bytes with numpy and copied.

The legacy (pre-1.6, non-zip) format is read the same way: its storage records are checked against
the declared sizes before any is read. Sparse, meta, nested and quantized tensors, tensor
subclasses and TorchScript archives are refused with an error that names what was found and how to
save a plain state dict instead.
"""
from __future__ import annotations

import collections
import io
import math
import pickle
import pickletools
import reprlib
import struct
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from peace.core.errors import PeaceError

__all__ = ["MAX_ENTRIES", "MAX_NDIM", "MAX_NODES", "MAX_PICKLE_BYTES", "PLAIN", "read_torch_file"]

MAX_PICKLE_BYTES = 32 * 2**20  # data.pkl of a state dict with ~100k tensors is a few MiB
MAX_ENTRIES = 200_000
MAX_NDIM = 8
MAX_NODES = 2_000_000  # values in the unpickled tree, shared ones counted each time they are reached
_MEMO_OPS = frozenset({"BINPUT", "LONG_BINPUT", "BINGET", "LONG_BINGET"})

_DTYPES = {  # storage type -> (torch dtype, numpy dtype of the same width read from the bytes)
    "FloatStorage": (torch.float32, np.float32), "DoubleStorage": (torch.float64, np.float64),
    "HalfStorage": (torch.float16, np.float16), "BFloat16Storage": (torch.bfloat16, np.int16),
    "LongStorage": (torch.int64, np.int64), "IntStorage": (torch.int32, np.int32),
    "ShortStorage": (torch.int16, np.int16), "CharStorage": (torch.int8, np.int8),
    "ByteStorage": (torch.uint8, np.uint8), "BoolStorage": (torch.bool, np.bool_),
}
_OPCODES = frozenset({
    "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP", "NONE", "NEWTRUE", "NEWFALSE",
    "BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
    "EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "DICT", "LIST",
    "APPEND", "APPENDS", "SETITEM", "SETITEMS", "BINPUT", "LONG_BINPUT", "MEMOIZE", "BINGET", "LONG_BINGET",
    "GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD", "BINPERSID",
})
_REFUSED = {  # globals of tensor kinds PEACE does not read, with what they are
    "_rebuild_sparse_tensor": "a sparse tensor", "_rebuild_sparse_csr_tensor": "a sparse tensor",
    "_rebuild_meta_tensor_no_storage": "a meta tensor (no values)", "_rebuild_nested_tensor": "a nested tensor",
    "_rebuild_wrapper_subclass": "a tensor subclass or meta tensor", "_rebuild_from_type_v2": "a tensor subclass",
    "_rebuild_from_type": "a tensor subclass", "_rebuild_qtensor": "a quantized tensor",
    "_rebuild_device_tensor_from_numpy": "a tensor saved through numpy", "_rebuild_xla_tensor": "an XLA tensor",
    "_rebuild_mps_tensor": "an MPS tensor",
}
PLAIN = "Save a plain state dict (torch.save(model.state_dict(), path)) or convert it to safetensors."


class _Storage:
    __slots__ = ("key", "dtype", "numel")

    def __init__(self, key: str, dtype: str, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


class _StorageType:
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


class _TensorRef:
    """A tensor as the pickle declares it; only turned into a tensor after every bound is checked."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None) -> _TensorRef:
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None) -> Any:
    return data


def _rebuild_parameter_with_state(data, requires_grad=True, backward_hooks=None, state=None) -> Any:
    return data


_GLOBALS = {("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state}


def _objects_refused(source: str, objects: list[str]) -> PeaceError:
    """The refusal of a file that names Python objects (``module.name``), saying so where they are a whole model
    (a torch module, or a class of the script that saved it: what ``torch.save(model)`` pickles)."""
    whole = any(o.startswith(("torch.nn.", "__main__.")) for o in objects)
    return PeaceError(f"{source}: refused: the file stores Python objects ({', '.join(objects[:3])}), not only tensors"
                      f"{' (a whole model, saved with torch.save(model))' if whole else ''}, and PEACE never unpickles "
                      f"code or objects from model files. {PLAIN}")


def _allowed(dotted: str) -> bool:
    module, _, name = dotted.rpartition(".")
    return (module, name) in _GLOBALS or (module == "torch" and name in _DTYPES)


class _Unpickler(pickle.Unpickler):
    def __init__(self, stream: IO[bytes], source: str):
        super().__init__(stream)
        self.source, self.storages = source, {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _GLOBALS:
            return _GLOBALS[(module, name)]
        if module == "torch" and name in _DTYPES:
            return _StorageType(name)
        if name in _REFUSED:
            raise PeaceError(f"{self.source}: refused: the file holds {_REFUSED[name]} ({module}.{name}); PEACE reads "
                             f"dense tensors of numbers only. {PLAIN}")
        raise _objects_refused(self.source, [f"{module}.{name}"])

    def persistent_load(self, pid: Any) -> _Storage:
        # zip format: ('storage', type, key, location, numel); legacy: the same plus view metadata (None)
        ok = (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage" and isinstance(pid[1], _StorageType)
              and isinstance(pid[2], str) and pid[2].isalnum() and type(pid[4]) is int and pid[4] >= 0
              and (len(pid) == 5 or pid[5] is None))
        if not ok:
            raise PeaceError(f"{self.source}: malformed or unsupported storage reference {reprlib.repr(pid)}")
        _, typ, key, _, numel = pid[:5]
        old = self.storages.setdefault(key, _Storage(key, typ.name, numel))
        if (old.dtype, old.numel) != (typ.name, numel):
            raise PeaceError(f"{self.source}: storage {key} is declared twice with different types or sizes")
        return old


class _Clamped:
    """A stream whose reads never ask for more than the bytes left: a pickle opcode that declares a
    2^56-byte string must fail as a short read, not allocate the 2^56 bytes first."""

    def __init__(self, stream: IO[bytes]):
        self.stream = stream
        here = stream.tell()
        self.end = stream.seek(0, io.SEEK_END)
        stream.seek(here)

    def _left(self, n: int | None) -> int:
        left = max(0, self.end - self.stream.tell())
        return left if n is None or n < 0 else min(n, left)

    def read(self, n: int | None = -1) -> bytes:
        return self.stream.read(self._left(n))

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[:len(data)] = data
        return len(data)

    def readline(self, limit: int = -1) -> bytes:
        return self.stream.readline(self._left(limit))

    def tell(self) -> int:
        return self.stream.tell()

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        return self.stream.seek(pos, whence)


def _unpickle(stream: IO[bytes], source: str) -> tuple[Any, list[_TensorRef], list[_Storage]]:
    """One pickle from ``stream`` (opcodes and globals whitelisted), its tensor records and their storages."""
    stream = _Clamped(stream)  # type: ignore[assignment]
    start = stream.tell()
    named: list[str] = []  # the classes and functions the pickle names (GLOBAL, as torch.save's protocol 2 writes)
    try:
        for n_ops, (op, arg, pos) in enumerate(pickletools.genops(stream)):
            if op.name == "GLOBAL":
                named.append(str(arg).replace(" ", "."))
            if op.name not in _OPCODES:
                objects = [g for g in named if not _allowed(g)]
                if objects:  # say what the file holds, not only which opcode gave it away
                    raise _objects_refused(source, objects)
                raise PeaceError(f"{source}: refused: pickle opcode {op.name} at byte {pos} is not used by plain "
                                 f"state dicts. {PLAIN}")
            if op.name in _MEMO_OPS and arg > n_ops:  # the C unpickler sizes its memo table to the index
                raise PeaceError(f"{source}: refused: pickle memo index {arg} at byte {pos}, where a pickle of "
                                 f"{n_ops} opcodes has at most {n_ops} entries (a crafted file)")
            if pos - start > MAX_PICKLE_BYTES:
                raise PeaceError(f"{source}: refused: a pickle of more than {MAX_PICKLE_BYTES} bytes; a state dict's "
                                 f"pickle is a few MiB. {PLAIN}")
    except PeaceError:
        raise
    except (ValueError, EOFError, UnicodeDecodeError) as e:  # pickletools' errors for bad bytes
        raise PeaceError(f"{source}: corrupted PyTorch file: not a valid pickle ({e})") from None
    stream.seek(start)
    unpickler = _Unpickler(stream, source)
    try:
        obj = unpickler.load()
    except PeaceError:
        raise
    except RecursionError:
        raise PeaceError(f"{source}: refused: the pickle nests too deeply") from None
    except Exception as e:  # malformed pickle streams: UnpicklingError, TypeError of a bad REDUCE, ...
        raise PeaceError(f"{source}: corrupted PyTorch file: the pickle does not load as a checkpoint "
                         f"({type(e).__name__}: {str(e)[:160]})") from None
    refs: list[_TensorRef] = []
    try:
        _refs(obj, refs)
    except PeaceError as e:
        raise PeaceError(f"{source}: refused: {e}") from None
    for r in refs:
        _check_view(r, source)
    return obj, refs, list({r.storage.key: r.storage for r in refs}.values())


def _refs(obj: Any, out: list, depth: int = 0, seen: list | None = None) -> None:
    """Every _TensorRef in a tree of dicts, lists and tuples (anything else is plain data). At most
    ``MAX_NODES`` values are visited, a shared one each time it is reached: memo references can make a
    few bytes of pickle stand for a tree of 10^30 values, which rebuilding or printing would expand."""
    seen = [0] if seen is None else seen
    seen[0] += 1
    if seen[0] > MAX_NODES:
        raise PeaceError(f"more than {MAX_NODES:,} values once shared references are expanded (a crafted file)")
    if depth > 100:
        raise PeaceError("nesting deeper than 100 levels")
    if isinstance(obj, _TensorRef):
        out.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            _refs(v, out, depth + 1, seen)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _refs(v, out, depth + 1, seen)


def _check_view(t: _TensorRef, source: str) -> None:
    """The view (offset, size, stride) must lie inside its storage, every number fitting torch's int64."""
    ints = lambda v: isinstance(v, tuple) and all(type(i) is int and 0 <= i < 2**62 for i in v)  # noqa: E731
    if not isinstance(t.storage, _Storage) or type(t.offset) is not int or not 0 <= t.offset < 2**62 or not ints(t.size) \
            or not ints(t.stride) or len(t.size) != len(t.stride) or len(t.size) > MAX_NDIM:
        raise PeaceError(f"{source}: malformed tensor record (offset {reprlib.repr(t.offset)}, size "
                         f"{reprlib.repr(t.size)}, stride {reprlib.repr(t.stride)})")
    if math.prod(t.size) and t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride)) >= t.storage.numel:
        raise PeaceError(f"{source}: refused: a tensor of shape {t.size} (offset {t.offset}, stride {t.stride}) reaches "
                         f"past its storage of {t.storage.numel} values (a corrupted or crafted file)")


def _nbytes(s: _Storage) -> int:
    return s.numel * np.dtype(_DTYPES[s.dtype][1]).itemsize


def _check_budget(storages: list[_Storage], refs: list[_TensorRef], source: str, max_bytes: int) -> None:
    """Storages and the tensors cut from them (each is copied out) must fit ``max_bytes``: a view of
    stride 0 can claim a huge shape over one value."""
    declared = sum(_nbytes(s) for s in storages)
    copied = sum(math.prod(r.size) * np.dtype(_DTYPES[r.storage.dtype][1]).itemsize for r in refs)
    if copied > max_bytes:
        raise PeaceError(f"{source}: refused: its tensors' shapes declare {copied / 2**20:.1f} MiB of values, over "
                         f"the {max_bytes / 2**20:.0f} MiB limit (a crafted shape, or raise --max-size MIB)")
    if declared > max_bytes:
        raise PeaceError(f"{source}: its tensors declare {declared / 2**20:.1f} MiB, over the "
                         f"{max_bytes / 2**20:.0f} MiB limit; raise it (--max-size MIB) if you expect a model "
                         f"that large")


def _tensor(raw: bytes, s: _Storage, big_endian: bool = False) -> torch.Tensor:
    dtype, np_dtype = _DTYPES[s.dtype]
    a = np.frombuffer(raw, dtype=np.dtype(np_dtype).newbyteorder(">" if big_endian else "<"))
    t = torch.from_numpy(a.astype(np_dtype))  # native byte order, a writable copy
    return t.view(dtype) if dtype == torch.bfloat16 else t


def read_torch_file(path: str | Path, max_bytes: int) -> Any:
    """The object ``torch.save`` stored in ``path`` (dicts, lists, tuples, numbers, strings, tensors),
    parsed strictly; any deviation from a plain checkpoint is a ``PeaceError`` naming it."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        return _read_zip(path, str(path), max_bytes)
    with path.open("rb") as f:
        if f.read(1) != b"\x80":
            raise PeaceError(f"{path}: corrupted or truncated PyTorch file (neither a zip archive nor a pickle)")
        f.seek(0)
        return _read_legacy(f, str(path), max_bytes)


def _read_zip(path: Path, source: str, max_bytes: int) -> Any:
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise PeaceError(f"{source}: corrupted or truncated PyTorch file ({e})") from None
    with z:
        infos = z.infolist()
        if len(infos) > MAX_ENTRIES:
            raise PeaceError(f"{source}: refused: {len(infos)} zip entries (more than {MAX_ENTRIES})")
        names = {i.filename: i for i in infos}
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            raise PeaceError(f"{source}: a TorchScript archive, not a state dict. Load it in PyTorch and save "
                             f"model.state_dict(), or convert it to safetensors.")
        pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise PeaceError(f"{source}: not a PyTorch checkpoint (expected one ARCHIVE/data.pkl entry, found {len(pkl)})")
        prefix = pkl[0][: -len("data.pkl")]
        packed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
        if packed:
            raise PeaceError(f"{source}: refused: compressed zip entries ({packed[0]}); torch.save stores entries "
                             f"uncompressed, so this file was made by another tool (or is a zip bomb). {PLAIN}")
        if names[pkl[0]].file_size > MAX_PICKLE_BYTES:
            raise PeaceError(f"{source}: refused: data.pkl is {names[pkl[0]].file_size} bytes (limit {MAX_PICKLE_BYTES})")
        try:
            order = names.get(prefix + "byteorder")
            big_endian = order is not None and order.file_size <= 16 and z.read(order).strip() == b"big"
            obj, refs, storages = _unpickle(io.BytesIO(z.read(pkl[0])), source)
            for s in storages:
                entry = names.get(f"{prefix}data/{s.key}")
                if entry is None:
                    raise PeaceError(f"{source}: corrupted PyTorch file: storage {s.key} has no data entry")
                if entry.file_size != _nbytes(s):
                    raise PeaceError(f"{source}: refused: storage {s.key} declares {s.numel} {s.dtype} values "
                                     f"({_nbytes(s)} bytes) but its entry holds {entry.file_size} bytes (a corrupted "
                                     f"or crafted file)")
            _check_budget(storages, refs, source, max_bytes)
            tensors = {s.key: _tensor(z.read(f"{prefix}data/{s.key}"), s, big_endian) for s in storages}  # CRC-checked
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise PeaceError(f"{source}: corrupted or truncated PyTorch file ({e})") from None
    return _build(obj, tensors)


_LEGACY_MAGIC, _LEGACY_PROTOCOL = 0x1950A86A20F9469CFC6C, 1001


def _read_legacy(f: IO[bytes], source: str, max_bytes: int) -> Any:
    """The pre-1.6 format: magic, protocol and system-info pickles, the object's pickle, the list of
    storage keys, then per key an int64 element count and the raw values."""
    head = [_unpickle(f, source)[0] for _ in range(3)]
    if head[0] != _LEGACY_MAGIC or head[1] != _LEGACY_PROTOCOL or not isinstance(head[2], dict):
        raise PeaceError(f"{source}: a pickle, but not a PyTorch checkpoint (no torch.save header)")
    if not head[2].get("little_endian", True):
        raise PeaceError(f"{source}: a big-endian legacy PyTorch file; re-save it with a current torch.save")
    obj, refs, storages = _unpickle(f, source)
    keys, _, _ = _unpickle(f, source)
    by_key = {s.key: s for s in storages}
    if not isinstance(keys, list) or set(keys) != set(by_key) or len(keys) != len(by_key):
        raise PeaceError(f"{source}: corrupted PyTorch file: the storage list does not match the tensors")
    _check_budget(storages, refs, source, max_bytes)
    start, tensors = f.tell(), {}
    for pass_ in ("check", "read"):  # every size is checked before any storage is read
        f.seek(start)
        for key in keys:
            s, count = by_key[key], f.read(8)
            if len(count) != 8 or struct.unpack("<q", count)[0] != s.numel:
                raise PeaceError(f"{source}: refused: storage {key} declares {s.numel} values but its data record "
                                 f"says otherwise or is truncated (a corrupted or crafted file)")
            if pass_ == "check":
                f.seek(_nbytes(s), io.SEEK_CUR)
            else:
                raw = f.read(_nbytes(s))
                if len(raw) != _nbytes(s):
                    raise PeaceError(f"{source}: corrupted or truncated PyTorch file (storage {key})")
                tensors[key] = _tensor(raw, s)
        if pass_ == "check" and f.tell() > f.seek(0, io.SEEK_END):
            raise PeaceError(f"{source}: corrupted or truncated PyTorch file (its storages run past its end)")
    return _build(obj, tensors)


def _build(obj: Any, arrays: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, _TensorRef):
        return torch.as_strided(arrays[obj.storage.key], obj.size, obj.stride, obj.offset).clone()
    if isinstance(obj, dict):
        out = type(obj)() if type(obj) in (dict, collections.OrderedDict) else {}
        out.update((k, _build(v, arrays)) for k, v in obj.items())
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_build(v, arrays) for v in obj)
    return obj
