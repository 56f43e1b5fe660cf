"""Reads PyTorch `.pth` checkpoints into numpy arrays, without torch.

Two on-disk formats exist:

* zip (torch >= 1.6): a zip archive `<name>/data.pkl` + `<name>/data/<key>`,
  one raw little-endian record per storage;
* legacy (older torch, or `_use_new_zipfile_serialization=False`): a stream of
  pickles (magic number, protocol version, sys-info dict, the object, the list
  of storage keys) followed by each storage as an int64 element count and its
  raw bytes.

In both, the object pickle refers to storages by persistent id, and tensors
are rebuilt by calling `torch._utils._rebuild_tensor_v2(storage, offset,
size, stride, ...)`. Here the pickle is read with an unpickler whose
`find_class` only knows those few names and maps them to local stand-ins, so
a checkpoint can never run code; any other global is refused.
"""
import collections
import io
import mmap
import os
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np

from jaxdissect.errors import UserError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# The storage classes torch names in persistent ids, and their element dtype.
STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "UntypedStorage": np.uint8,  # counted in bytes
}


class _StorageType:
    """Stand-in for a torch storage class such as `torch.FloatStorage`."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)


class _Storage:
    """A storage named in the pickle; `data` (a flat array) is filled in later."""

    def __init__(self, key, dtype, numel):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.data = None


class _StorageView:
    """A slice of a storage (legacy files from very old torch only)."""

    def __init__(self, base, offset, numel):
        self.base, self.offset, self.numel = base, offset, numel


class _Tensor:
    """A tensor awaiting its storage's bytes: a strided view of a storage."""

    def __init__(self, storage, offset, shape, stride):
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    """Stand-in for torch._utils._rebuild_tensor and _rebuild_tensor_v2."""
    if not isinstance(storage, (_Storage, _StorageView)):
        raise pickle.UnpicklingError("tensor rebuilt from something that is not a storage")
    offset, size, stride = int(storage_offset), tuple(map(int, size)), tuple(map(int, stride))
    if len(size) != len(stride) or min((offset, *size, *stride)) < 0:
        raise pickle.UnpicklingError(f"bad tensor layout: offset {offset}, size {size}, stride {stride}")
    return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data, *unused):
    """Stand-in for torch._utils._rebuild_parameter(data, requires_grad, hooks[, state])."""
    return data


def _allowed_globals():
    names = {("collections", "OrderedDict"): collections.OrderedDict}
    for function in ("_rebuild_tensor", "_rebuild_tensor_v2"):
        names[("torch._utils", function)] = _rebuild_tensor
    for function in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
        names[("torch._utils", function)] = _rebuild_parameter
    for storage, dtype in STORAGE_DTYPES.items():
        names[("torch", storage)] = _StorageType(dtype)
    names[("torch.storage", "UntypedStorage")] = names[("torch", "UntypedStorage")]
    return names


ALLOWED_GLOBALS = _allowed_globals()


class _ForbiddenGlobal(Exception):
    pass


class _Unpickler(pickle.Unpickler):
    """Knows only the globals in `allowed`; collects the storages the pickle names."""

    def __init__(self, file, allow_storages=False, allowed=ALLOWED_GLOBALS):
        super().__init__(file)
        self.allow_storages = allow_storages
        self.allowed = allowed
        self.storages = {}

    def find_class(self, module, name):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise _ForbiddenGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid):
        if not self.allow_storages:
            raise pickle.UnpicklingError("unexpected persistent id")
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        if numel < 0:
            raise pickle.UnpicklingError(f"storage {key} has {numel} elements")
        view = pid[5] if len(pid) == 6 else None
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = _Storage(key, storage_type.dtype, numel)
        if view is not None:
            _, view_offset, view_numel = view
            return _StorageView(storage, int(view_offset), int(view_numel))
        return storage


def _unpickle(file, path, what, allow_storages=False, allowed=ALLOWED_GLOBALS):
    """Reads one pickle from `file`; returns (object, storages it names)."""
    unpickler = _Unpickler(file, allow_storages, allowed)
    try:
        return unpickler.load(), unpickler.storages
    except _ForbiddenGlobal as e:
        raise UserError(f"{path}: refusing to load {what}: it references the global {e}, "
                        "which a plain tensor checkpoint never needs (it could run code)") from None
    except UserError:
        raise
    except Exception as e:  # any parse failure of untrusted bytes is the file's fault
        raise UserError(f"{path}: cannot read the {what} ({type(e).__name__}: {e}); "
                        "corrupt or truncated file?") from None


def _fill_storage(storage, raw, path, byteorder="<"):
    """Sets `storage.data` from raw bytes; raises if there are too few."""
    needed = storage.numel * storage.dtype.itemsize
    if len(raw) < needed:
        raise UserError(f"{path}: storage {storage.key} needs {needed} bytes of data, "
                        f"the file has only {len(raw)}")
    data = np.frombuffer(raw, storage.dtype.newbyteorder(byteorder), count=storage.numel)
    storage.data = data.astype(storage.dtype)


def _read_zip(path, allowed):
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{path}: corrupt zip archive ({e})") from None
    with archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise UserError(f"{path}: a zip archive but not a PyTorch checkpoint "
                            "(expected exactly one <name>/data.pkl)")
        prefix = pickles[0][:-len("data.pkl")]

        def read(name, what):
            try:
                return archive.read(name)
            except KeyError:
                raise UserError(f"{path}: missing record {name} ({what})") from None
            except Exception as e:
                raise UserError(f"{path}: corrupt record {name} ({type(e).__name__}: {e})") from None

        byteorder = "<"
        if prefix + "byteorder" in names:
            byteorder = {b"little": "<", b"big": ">"}.get(read(prefix + "byteorder", "").strip())
            if byteorder is None:
                raise UserError(f"{path}: unknown byte order in {prefix}byteorder")
        obj, storages = _unpickle(io.BytesIO(read(pickles[0], "")), path, "data.pkl",
                                  allow_storages=True, allowed=allowed)
        for key, storage in storages.items():
            _fill_storage(storage, read(f"{prefix}data/{key}", f"the data of storage {key}"),
                          path, byteorder)
    return obj


def _read_legacy(path, file, allowed=ALLOWED_GLOBALS):
    magic, _ = _unpickle(file, path, "legacy torch header (the file is not a zip archive)")
    if magic != LEGACY_MAGIC:
        raise UserError(f"{path}: not a PyTorch checkpoint (no zip archive, wrong magic number)")
    protocol, _ = _unpickle(file, path, "legacy torch header")
    if protocol != LEGACY_PROTOCOL:
        raise UserError(f"{path}: unsupported legacy protocol version {protocol!r}")
    sys_info, _ = _unpickle(file, path, "legacy torch header")
    if not isinstance(sys_info, dict):
        raise UserError(f"{path}: corrupt header (sys-info is not a dict)")
    byteorder = "<" if sys_info.get("little_endian", True) else ">"
    obj, storages = _unpickle(file, path, "object pickle", allow_storages=True, allowed=allowed)
    keys, _ = _unpickle(file, path, "storage key list")
    if not isinstance(keys, list):
        raise UserError(f"{path}: corrupt storage key list")
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise UserError(f"{path}: storage {key} has data but no tensor refers to it")
        count_bytes = file.read(8)
        if len(count_bytes) < 8:
            raise UserError(f"{path}: file ends before the data of storage {key}")
        (count,) = struct.unpack(byteorder + "q", count_bytes)
        if count != storage.numel:
            raise UserError(f"{path}: storage {key} holds {count} elements, "
                            f"the pickle says {storage.numel}")
        _fill_storage(storage, file.read(count * storage.dtype.itemsize), path, byteorder)
    missing = [key for key, s in storages.items() if s.data is None]
    if missing:
        raise UserError(f"{path}: no data for storage {missing[0]}")
    return obj


def _to_array(tensor, path):
    """Copies a strided view of a storage into a new C-ordered array."""
    storage, offset = tensor.storage, tensor.offset
    if isinstance(storage, _StorageView):
        flat = storage.base.data[storage.offset:storage.offset + storage.numel]
        storage = storage.base
    else:
        flat = storage.data
    if 0 in tensor.shape:
        return np.zeros(tensor.shape, flat.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(tensor.shape, tensor.stride))
    if last >= flat.size:
        raise UserError(f"{path}: a tensor of shape {list(tensor.shape)} at offset {offset} "
                        f"lies outside its storage {storage.key} of {flat.size} elements")
    item = flat.itemsize
    view = np.lib.stride_tricks.as_strided(flat[offset:], tensor.shape,
                                           [s * item for s in tensor.stride], writeable=False)
    return np.array(view, order="C")


def unpickle(file, path, what, allowed):
    """One pickle from `file`, resolving only the globals in `allowed` ({(module, name): stand-in});
    any other global is refused with a UserError naming it."""
    return _unpickle(file, path, what, allowed=allowed)[0]


def storage_from_bytes(data, path):
    """The storage in `data`, a legacy torch.save of one storage (as pickles of torch modules
    embed them, see torch.storage._load_from_bytes); its tensors become arrays in `materialize`."""
    return _read_legacy(path, io.BytesIO(data))


def materialize(obj, path):
    """Replaces every tensor (or bare storage) in dicts, lists and tuples by a numpy array."""
    if isinstance(obj, _Tensor):
        return _to_array(obj, path)
    if isinstance(obj, _Storage):
        return obj.data.copy()
    if isinstance(obj, dict):
        return {key: materialize(value, path) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(materialize(value, path) for value in obj)
    return obj


def load(path, extra_globals=None):
    """Reads a `.pth` file; returns its object with every tensor as a numpy array.

    Dicts (including OrderedDicts) come back as plain dicts in file order.
    `extra_globals` ({(module, name): stand-in}) allows more globals than
    tensors need. Raises UserError on anything unreadable or not a plain
    tensor checkpoint.
    """
    allowed = {**ALLOWED_GLOBALS, **(extra_globals or {})}
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise UserError(f"{path}: empty file, not a PyTorch checkpoint")
    with open(path, "rb") as file:
        head = file.read(4)
        is_zip = zipfile.is_zipfile(file)
        if is_zip:
            obj = _read_zip(path, allowed)
        elif head == b"PK\x03\x04":
            raise UserError(f"{path}: truncated or corrupt zip archive")
        else:
            # Reads from a memory map never allocate more than the file holds,
            # whatever lengths a corrupt pickle claims.
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                obj = _read_legacy(path, mapped, allowed)
    return materialize(obj, path)


def load_state_dict(path):
    """Reads a `.pth` state dict as {name: numpy array}, in file order.

    A checkpoint saved as {"state_dict": ..., ...} is unwrapped. Every value
    must be a tensor; a ByteStorage tensor is uint8, BFloat16 is ml_dtypes.bfloat16.
    """
    obj = load(path)
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise UserError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, np.ndarray):
            raise UserError(f"{path}: entry {key!r} of the state dict is a "
                            f"{type(value).__name__}, not a tensor")
    return obj
