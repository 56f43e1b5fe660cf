"""Arrays a user brings to `--mode=dissect_arrays`: featuremaps of any model, with their segmentations.

One `.npz` file, or a folder of `.npy` files (one per array, named by the
array), holding:

| array | shape | dtype |
|---|---|---|
| one per layer, named by it | (N, h, w, U) | float |
| `segmentation` | (N, K, H, W) | integer, 0 = no label |
| `labels` | (L,) | strings; index 0 is the empty label |
| `categories` (optional) | (L,) | strings: each label's category |
| `images` (optional) | (N, 3, H', W') | float in [-1, 1] (for the report's pictures) |

Arrays of a folder of `.npy` files, and of an `.npz` written uncompressed
(`np.savez`), are memory-mapped, so inputs larger than memory stream; arrays
of a compressed `.npz` are read whole. Everything is checked before any
work starts: shapes, dtypes, label numbers, and that every value is finite.
"""
import os
import zipfile

import numpy as np

from jaxdissect.errors import UserError

RESERVED = ("segmentation", "labels", "categories", "images")
# Rows checked at a time when scanning arrays for bad values.
SCAN_BYTES = 64 << 20


class Arrays:
    """The validated arrays of one file or folder (see the module docstring)."""

    def __init__(self, path, arrays):
        self.path = path
        self.segmentation = arrays["segmentation"]
        self.labels = tuple(str(x) for x in arrays["labels"])
        self.categories = (tuple(str(x) for x in arrays["categories"]) if "categories" in arrays
                           else ("object",) * len(self.labels))
        self.images = arrays.get("images")
        self.layers = {name: a for name, a in arrays.items() if name not in RESERVED}
        self.samples = self.segmentation.shape[0]


def open_arrays(path, flag="arrays"):
    """The validated `Arrays` at `path`; UserError naming --flag, the file and the array otherwise."""
    if not os.path.exists(path):
        raise UserError(f"--{flag}={path}: no such file or folder")
    arrays = _read_folder(path, flag) if os.path.isdir(path) else _read_npz(path, flag)
    _check(path, arrays)
    return Arrays(path, arrays)


def _read_folder(path, flag):
    names = sorted(f for f in os.listdir(path) if f.endswith(".npy"))
    if not names:
        raise UserError(f"--{flag}={path}: a folder without .npy files")
    return {name[:-4]: _load_npy(os.path.join(path, name)) for name in names}


def _load_npy(path):
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # np.load raises several types for a bad file
        raise UserError(f"{path}: not a readable .npy array ({type(e).__name__}: {e})") from None


def _read_npz(path, flag):
    try:
        with zipfile.ZipFile(path) as archive:
            members = {m.filename[:-4]: m for m in archive.infolist() if m.filename.endswith(".npy")}
            if not members:
                raise UserError(f"--{flag}={path}: an archive without .npy arrays")
            return {name: _npz_member(path, archive, member) for name, member in members.items()}
    except zipfile.BadZipFile:
        raise UserError(f"--{flag}={path}: not an .npz file (or a folder of .npy files)") from None


def _npz_member(path, archive, member):
    """One array of an .npz: memory-mapped when stored uncompressed, else read whole."""
    where = f"{path}: array {member.filename[:-4]!r}"
    try:
        with archive.open(member) as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
            if member.compress_type == zipfile.ZIP_STORED and not fortran and not dtype.hasobject:
                offset = _member_data_offset(path, member) + f.tell()
                return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
        with archive.open(member) as f:
            return np.lib.format.read_array(f, allow_pickle=False)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{where}: unreadable ({type(e).__name__}: {e})") from None


def _member_data_offset(path, member):
    """Where a stored zip member's bytes start in the file (after its local header)."""
    with open(path, "rb") as f:
        f.seek(member.header_offset)
        header = f.read(30)
    name_length, extra_length = int.from_bytes(header[26:28], "little"), int.from_bytes(header[28:30], "little")
    return member.header_offset + 30 + name_length + extra_length


def _check(path, arrays):
    """Raises UserError (one line: the file, the array, what is wrong) for any bad input."""
    for name in ("segmentation", "labels"):
        if name not in arrays:
            raise UserError(f"{path}: no {name!r} array (found: {', '.join(sorted(arrays))})")
    labels = arrays["labels"]
    _require(path, "labels", labels.ndim == 1 and labels.dtype.kind in "US" and len(labels) >= 2,
             f"must be a 1-D array of at least 2 names (index 0 the empty label); got {_describe(labels)}")
    if "categories" in arrays:
        categories = arrays["categories"]
        _require(path, "categories", categories.ndim == 1 and categories.dtype.kind in "US"
                 and len(categories) == len(labels),
                 f"must be {len(labels)} names, one per label; got {_describe(categories)}")
    seg = arrays["segmentation"]
    _require(path, "segmentation", seg.ndim == 4 and seg.dtype.kind in "iu" and seg.shape[0] >= 1,
             f"must be (N, K, H, W) integers; got {_describe(seg)}")
    layers = [name for name in arrays if name not in RESERVED]
    if not layers:
        raise UserError(f"{path}: no featuremap arrays (one (N, h, w, U) float array per layer)")
    for name in layers:
        _require(path, name, arrays[name].ndim == 4 and arrays[name].dtype.kind == "f"
                 and arrays[name].shape[0] == seg.shape[0],
                 f"must be (N, h, w, U) floats with N = {seg.shape[0]} as in 'segmentation'; "
                 f"got {_describe(arrays[name])}")
    if "images" in arrays:
        images = arrays["images"]
        _require(path, "images", images.ndim == 4 and images.dtype.kind == "f"
                 and images.shape[:2] == (seg.shape[0], 3),
                 f"must be (N, 3, H, W) floats with N = {seg.shape[0]}; got {_describe(images)}")
    _scan(path, "segmentation", seg, lambda rows: (rows < 0) | (rows >= len(labels)),
          f"has values outside 0..{len(labels) - 1} (the {len(labels)} labels)")
    for name in layers + (["images"] if "images" in arrays else []):
        _scan(path, name, arrays[name], lambda rows: ~np.isfinite(rows), "has NaN or infinite values")


def _require(path, name, ok, what):
    if not ok:
        raise UserError(f"{path}: array {name!r} {what}")


def _scan(path, name, array, bad, what):
    """Raises UserError naming the first row where `bad(rows)` (elementwise) holds anywhere; reads the
    array a few rows at a time (memory-mapped arrays stay on disk)."""
    row_bytes = max(int(np.prod(array.shape[1:])) * array.dtype.itemsize, 1)
    step = max(SCAN_BYTES // row_bytes, 1)
    for start in range(0, array.shape[0], step):
        flagged = bad(np.asarray(array[start:start + step])).reshape(-1, int(np.prod(array.shape[1:])))
        if flagged.any():
            raise UserError(f"{path}: array {name!r} {what} (first in row {start + int(np.argmax(flagged.any(1)))})")


def _describe(array):
    return f"shape {tuple(array.shape)}, dtype {array.dtype}"
