"""A small writer of PyTorch `.pth` files, for tests (torch is not installed).

Pickles are written opcode by opcode (protocol 2), so they can name torch's
globals, or for the security tests dangerous ones, without importing them.
The layouts follow fixtures/proggan/README.md section 6.
"""
import dataclasses
import io
import pickle
import struct
import zipfile

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_TYPES = {"float32": "FloatStorage", "float64": "DoubleStorage", "float16": "HalfStorage",
                 "bfloat16": "BFloat16Storage", "int64": "LongStorage", "int32": "IntStorage",
                 "int16": "ShortStorage", "int8": "CharStorage", "uint8": "ByteStorage",
                 "bool": "BoolStorage"}


@dataclasses.dataclass
class Global:
    module: str
    name: str


@dataclasses.dataclass
class Call:
    """`function(*args)`, pickled as REDUCE."""
    function: object
    args: tuple = ()


@dataclasses.dataclass
class NewObject:
    """`cls.__new__(cls, *args)`, pickled as NEWOBJ (how instances such as argparse.Namespace are saved)."""
    cls: Global
    args: tuple = ()


@dataclasses.dataclass
class PersistentId:
    value: tuple


@dataclasses.dataclass
class Build:
    """`obj` with BUILD `state` applied (how torch attaches `_metadata`)."""
    obj: object
    state: object


@dataclasses.dataclass
class OrderedDict:
    items: dict


@dataclasses.dataclass
class Storage:
    """One torch storage: its key in the file and its flat data (any numpy dtype)."""
    key: str
    data: np.ndarray
    type_name: str = None  # default: the typed storage of data's dtype, e.g. FloatStorage


@dataclasses.dataclass
class Tensor:
    storage: Storage
    offset: int
    shape: tuple
    stride: tuple
    parameter: bool = False  # wrap in torch._utils._rebuild_parameter
    view: tuple = None  # legacy only: (view key, offset, numel) of a slice of the storage


def contiguous(storage_key, array):
    """A tensor owning a fresh storage that holds `array` in C order."""
    array = np.array(array, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
    strides = tuple(s // array.itemsize for s in array.strides)
    return Tensor(Storage(storage_key, array.reshape(-1)), 0, array.shape, strides)


def pickle_bytes(obj, legacy=False):
    out = io.BytesIO()
    out.write(b"\x80\x02")
    _emit(obj, out, legacy)
    out.write(b".")
    return out.getvalue()


def _emit(obj, out, legacy):
    emit = lambda o: _emit(o, out, legacy)
    if obj is None:
        out.write(b"N")
    elif obj is True or obj is False:
        out.write(b"\x88" if obj else b"\x89")
    elif isinstance(obj, int):
        if -2**31 <= obj < 2**31:
            out.write(b"J" + struct.pack("<i", obj))
        else:
            encoded = pickle.encode_long(obj)
            out.write(b"\x8a" + bytes([len(encoded)]) + encoded)
    elif isinstance(obj, float):
        out.write(b"G" + struct.pack(">d", obj))
    elif isinstance(obj, str):
        encoded = obj.encode()
        out.write(b"X" + struct.pack("<I", len(encoded)) + encoded)
    elif isinstance(obj, tuple):
        out.write(b"(")
        for item in obj:
            emit(item)
        out.write(b"t")
    elif isinstance(obj, list):
        out.write(b"](")
        for item in obj:
            emit(item)
        out.write(b"e")
    elif isinstance(obj, dict):
        out.write(b"}(")
        for key, value in obj.items():
            emit(key)
            emit(value)
        out.write(b"u")
    elif isinstance(obj, Global):
        out.write(f"c{obj.module}\n{obj.name}\n".encode())
    elif isinstance(obj, Call):
        emit(obj.function)
        emit(tuple(obj.args))
        out.write(b"R")
    elif isinstance(obj, NewObject):
        emit(obj.cls)
        emit(tuple(obj.args))
        out.write(b"\x81")
    elif isinstance(obj, PersistentId):
        emit(obj.value)
        out.write(b"Q")
    elif isinstance(obj, Build):
        emit(obj.obj)
        emit(obj.state)
        out.write(b"b")
    elif isinstance(obj, OrderedDict):
        emit(Call(Global("collections", "OrderedDict")))
        out.write(b"(")
        for key, value in obj.items.items():
            emit(key)
            emit(value)
        out.write(b"u")
    elif isinstance(obj, Tensor):
        storage = obj.storage
        storage_type = Global("torch", storage.type_name or STORAGE_TYPES[storage.data.dtype.name])
        pid = ("storage", storage_type, storage.key, "cpu", storage.data.size)
        rebuilt = Call(Global("torch._utils", "_rebuild_tensor_v2"),
                       (PersistentId(pid + (obj.view,) if legacy else pid), obj.offset,
                        tuple(obj.shape), tuple(obj.stride), False, OrderedDict({})))
        if obj.parameter:
            rebuilt = Call(Global("torch._utils", "_rebuild_parameter"),
                           (rebuilt, True, OrderedDict({})))
        emit(rebuilt)
    else:
        raise TypeError(f"pth_writer cannot pickle {type(obj).__name__}")


def storages_of(obj):
    """The distinct storages of all tensors in `obj`, by key, in order of appearance."""
    found = {}

    def visit(o):
        if isinstance(o, Tensor):
            found.setdefault(o.storage.key, o.storage)
        elif isinstance(o, (list, tuple)):
            for item in o:
                visit(item)
        elif isinstance(o, (dict, OrderedDict)):
            for item in (o.items if isinstance(o, OrderedDict) else o).values():
                visit(item)
        elif isinstance(o, Build):
            visit(o.obj)
    visit(obj)
    return found


def legacy_bytes(obj):
    """The legacy (pre-1.6) format: header pickles, object pickle, keys, raw storages."""
    storages = storages_of(obj)
    keys = sorted(storages)
    parts = [pickle.dumps(LEGACY_MAGIC, protocol=2), pickle.dumps(1001, protocol=2),
             pickle.dumps({"protocol_version": 1001, "little_endian": True,
                           "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2),
             pickle_bytes(obj, legacy=True), pickle.dumps(keys, protocol=2)]
    for key in keys:
        data = storages[key].data
        parts.append(struct.pack("<q", data.size) + _little_endian_bytes(data))
    return b"".join(parts)


def zip_bytes(obj, name="archive", replace_records=None):
    """The zip format: `<name>/data.pkl` plus one `<name>/data/<key>` record per storage.

    `replace_records` maps storage keys to the bytes to write instead (None: no record).
    """
    replace_records = replace_records or {}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{name}/data.pkl", pickle_bytes(obj))
        archive.writestr(f"{name}/byteorder", "little")
        for key, storage in storages_of(obj).items():
            raw = replace_records.get(key, _little_endian_bytes(storage.data))
            if raw is not None:
                archive.writestr(f"{name}/data/{key}", raw)
        archive.writestr(f"{name}/version", "3\n")
    return out.getvalue()


def _little_endian_bytes(array):
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def state_dict(arrays, metadata=False):
    """An OrderedDict of contiguous tensors (storage keys '0', '1', ...), as `model.state_dict()`."""
    items = OrderedDict({name: contiguous(str(i), a) for i, (name, a) in enumerate(arrays.items())})
    if metadata:
        return Build(items, {"_metadata": OrderedDict({"": {"version": 1}})})
    return items
